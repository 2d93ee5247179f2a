"""The training engine: a functional jitted step over an NNX model, phases, checkpoints.

An NNX model is split once into a static graph and plain nested dicts of arrays: the trainable
``params`` (what the Optax transformation sees; path strings such as ``fc1/kernel``) and the
``rest`` (batch statistics, dropout keys). The jitted step merges them back, so its cost is the
model's, with no per-call graph traversal.

A training *phase* is an optimizer run for some epochs from given parameters. After every epoch
:func:`run_phase` starts an orbax checkpoint (params, rest, optimizer state, step, history;
:mod:`experiments.checkpoints`) that is written in the background while the next epoch trains
and keeps the last few; with ``resume=True`` it continues from the last complete one.
A finished phase is recognised and not run again, so methods that share a phase (the dense
pre-training) pay for it once; its checkpoint drops the optimizer state, which nothing needs
any more (for Adam, two thirds of the bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from experiments import checkpoints as checkpoints_lib
from experiments import data as data_lib

__all__ = [
    "Phase",
    "PhaseResult",
    "SplitModel",
    "TrainState",
    "atomic_open",
    "evaluate",
    "make_train_step",
    "run_phase",
    "split_model",
]

_EVAL_BATCH = 1000


class SplitModel(NamedTuple):
    """An NNX model as static graphs (training and evaluation modes) and pure-dict state."""

    train_graph: Any
    eval_graph: Any
    params: dict
    rest: dict


def split_model(model: nnx.Module) -> SplitModel:
    """Splits ``model`` into its training/evaluation graphs, params and other state."""
    model.eval()
    eval_graph, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    train_graph, params, rest = nnx.split(model, nnx.Param, ...)
    return SplitModel(train_graph, eval_graph, nnx.to_pure_dict(params), nnx.to_pure_dict(rest))


def merge_model(graph: Any, params: dict, rest: dict) -> nnx.Module:
    """Rebuilds an NNX module from :func:`split_model`'s parts."""
    return nnx.merge(graph, params, rest)


class TrainState(NamedTuple):
    """Everything a phase carries from step to step (and checkpoints).

    Attributes:
      params: trainable parameters, nested dicts of arrays.
      rest: non-trainable model state (batch statistics, dropout keys).
      opt_state: the Optax state.
      step: number of steps taken in this phase.
    """

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimizer run.

    Attributes:
      key: a unique directory name for its checkpoints (phases with the same key are the same
        computation and are shared).
      epochs: number of epochs.
      make_tx: builds the Optax transformation from ``aux`` (e.g. a mask), which is passed to
        the jitted step as an argument so that large constants never enter the program.
      aux: the argument of ``make_tx`` (any pytree of arrays, or ``None``).
      label: a short description for the progress bar.
    """

    key: str
    epochs: int
    make_tx: Callable[[Any], optax.GradientTransformation]
    aux: Any = None
    label: str = ""


class PhaseResult(NamedTuple):
    """What a phase returns: the final state, and per-epoch history dicts."""

    params: Any
    rest: Any
    history: list


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(train_graph: Any, make_tx: Callable[[Any], optax.GradientTransformation]):
    """Returns ``step(state, aux, images, labels) -> (state, loss)``, jitted, donating state."""

    def step(state: TrainState, aux: Any, images: jax.Array, labels: jax.Array):
        def loss_fn(params):
            model = merge_model(train_graph, params, state.rest)
            loss = _loss(model(images), labels)
            return loss, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = make_tx(aux).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, rest, opt_state, state.step + 1), loss

    return jax.jit(step, donate_argnums=0)


def _make_eval_step(eval_graph: Any):
    @jax.jit
    def eval_step(params, rest, images, labels, valid):
        logits = merge_model(eval_graph, params, rest)(images)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(correct), jnp.sum(jnp.where(valid, losses, 0.0))

    return eval_step


_EVAL_STEPS: dict[int, Callable] = {}


def evaluate(split: SplitModel, params: Any, rest: Any, images: np.ndarray, labels: np.ndarray):
    """Returns ``(accuracy, mean loss)`` of the model in evaluation mode.

    Batches are padded to one fixed shape so that the evaluation compiles once.
    """
    eval_step = _EVAL_STEPS.setdefault(id(split.eval_graph), _make_eval_step(split.eval_graph))
    batch = min(_EVAL_BATCH, len(images))
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch):
        chunk_images = images[start : start + batch]
        chunk_labels = labels[start : start + batch]
        pad = batch - len(chunk_images)
        valid = np.arange(batch) < len(chunk_images)
        if pad:
            chunk_images = np.concatenate([chunk_images, np.zeros_like(images[:pad])])
            chunk_labels = np.concatenate([chunk_labels, np.zeros_like(labels[:pad])])
        hits, losses = eval_step(params, rest, chunk_images, chunk_labels, valid)
        correct += int(hits)
        loss_sum += float(losses)
    return correct / len(images), loss_sum / len(images)


# ----------------------------------------------------------------------------- checkpoints


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """Opens a fresh temporary file beside ``path`` and, when the block ends without an error,
    renames it onto ``path``: readers see the old file or the whole new one, never a part.

    The temporary name is unique (``tempfile.mkstemp``), so two writers never share one; on an
    error the temporary file is removed and ``path`` is left as it was.
    """
    directory, name = os.path.split(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide results from others
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


# ----------------------------------------------------------------------------- phases


@dataclasses.dataclass
class TrainData:
    """Standardised arrays and the batching settings shared by every phase.

    With validation arrays, each epoch is evaluated on them and the test set is left to the
    final models; without (``None``), each epoch is evaluated on the test set.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    batch_size: int
    seed: int
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    # Data parallelism: a 1-D mesh over the devices; each batch is split along its batch axis
    # and the parameters and optimizer state are replicated. None: the default device only.
    mesh: Any = None

    def place_batch(self, images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
        if self.mesh is None:
            return images, labels
        if jax.process_count() == 1:
            return jax.device_put((images, labels), self._batch_sharding)
        # Several processes: each holds the same global batch (same data, same shuffle) and
        # hands over only the rows of its own devices.
        return tuple(
            jax.make_array_from_callback(array.shape, self._batch_sharding, array.__getitem__)
            for array in (images, labels)
        )

    @functools.cached_property
    def _batch_sharding(self) -> NamedSharding:
        # Built once: place_batch runs at every training step.
        return NamedSharding(self.mesh, PartitionSpec("batch"))

    def place_replicated(self, tree: Any) -> Any:
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    @property
    def monitor(self) -> tuple[str, np.ndarray, np.ndarray]:
        """``(name, images, labels)`` of the set evaluated after each epoch."""
        if self.val_labels is not None and len(self.val_labels):
            return "val", self.val_images, self.val_labels
        return "test", self.test_images, self.test_labels


def _progress(total: int, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)


def run_phase(
    phase: Phase,
    split: SplitModel,
    params: Any,
    rest: Any,
    data: TrainData,
    *,
    workdir: str | None,
    resume: bool,
    progress: bool = True,
    log: Callable[[str], None] = print,
    keep_checkpoints: int = 2,
) -> PhaseResult:
    """Runs ``phase`` from ``(params, rest)``; checkpoints every epoch under
    ``workdir/phase.key`` and, with ``resume``, continues from the last one.

    Each epoch's history has the training loss and the accuracy and loss on
    ``data.monitor``: ``val_*`` with a validation set, else ``test_*``."""
    tx = phase.make_tx(phase.aux)
    state = TrainState(params, rest, tx.init(params), jnp.zeros((), jnp.int32))
    history: list = []
    checkpoints = _open_checkpoints(workdir, phase, resume, keep=keep_checkpoints)
    if checkpoints is not None and checkpoints.latest_epoch is not None:
        finished = checkpoints.latest_meta().get("finished", False)
        state, meta = checkpoints.restore(state._replace(opt_state=None) if finished else state)
        history = meta["history"]
        log(f"[{phase.key}] resumed after epoch {len(history)}/{phase.epochs}")
    try:
        return _train_epochs(phase, split, state, history, data, checkpoints, progress, log)
    finally:
        if checkpoints is not None:
            checkpoints.close()


def _open_checkpoints(workdir, phase, resume, *, keep):
    """The phase's checkpoints; without ``resume``, earlier ones are deleted first."""
    if not workdir:
        return None
    directory = os.path.join(workdir, phase.key)
    if not resume and jax.process_index() == 0:
        shutil.rmtree(os.path.join(directory, "checkpoints"), ignore_errors=True)
    if jax.process_count() > 1:  # no process may open the directory before it is cleared
        multihost_utils.sync_global_devices(f"checkpoints of {phase.key}")
    return checkpoints_lib.PhaseCheckpoints(directory, keep=keep)


def _train_epochs(phase, split, state, history, data, checkpoints, progress, log):
    if len(history) >= phase.epochs:
        return PhaseResult(state.params, state.rest, history)
    # The step donates its state: it must own every buffer, once (the caller may still hold
    # the initial params, e.g. to rewind, and an optimizer state may share one zeros array).
    state = data.place_replicated(jax.tree.map(lambda leaf: leaf.copy(), state))
    step = make_train_step(split.train_graph, phase.make_tx)
    aux = data.place_replicated(phase.aux)
    steps_per_epoch = data_lib.num_batches(len(data.train_labels), data.batch_size)
    for epoch in range(len(history), phase.epochs):
        started = time.perf_counter()
        bar = _progress(
            steps_per_epoch, f"{phase.label or phase.key} {epoch + 1}/{phase.epochs}", progress
        )
        losses = []
        batches = data_lib.iterate_batches(
            data.train_images, data.train_labels, data.batch_size, seed=data.seed, epoch=epoch
        )
        for images, labels in batches:
            state, loss = step(state, aux, *data.place_batch(images, labels))
            losses.append(loss)
            if bar is not None:
                bar.update()
        train_loss = float(jnp.mean(jnp.stack(losses)))
        seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        name, images, labels = data.monitor
        accuracy, monitor_loss = evaluate(split, state.params, state.rest, images, labels)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(train_loss, 5),
                f"{name}_loss": round(monitor_loss, 5),
                f"{name}_accuracy": round(accuracy, 5),
                "seconds": round(seconds, 2),
            }
        )
        log(
            f"[{phase.key}] epoch {epoch + 1}/{phase.epochs}  loss {train_loss:.4f}  "
            f"{name} acc {100 * accuracy:.2f}%  ({seconds:.1f} s)"
        )
        if checkpoints is not None:
            last = epoch + 1 == phase.epochs
            kept = state._replace(opt_state=None) if last else state
            checkpoints.save(epoch + 1, kept, {"history": history, "finished": last})
    return PhaseResult(state.params, state.rest, history)
