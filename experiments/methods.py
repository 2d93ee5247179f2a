"""Training methods: what each ``--method``/``--schedule`` of the CLI does, as phases.

Every sparsifying method has the same budget: ``epochs`` of its sparsifying phase followed by
``retrain_epochs`` of masked retraining with Adam (pruned weights stay exactly zero), except SIS,
which is post-training only. ``adam`` is the dense baseline (``epochs`` epochs), and it is also
the shared first phase of the schedules that start from a dense network.

Projection schedules (``pgl1``, ``pgl21``, ``pgl11``, ``pgl1inf``, ``pgl1inf_bilevel``):

* ``alg4`` — Guyard & Barlaud's Algorithm 4, what the paper used: dense Adam training, one
projection,
  rewind the surviving weights to their initial values, masked retraining.
* ``alg4_norewind`` — the same, retraining from the projected weights.
* ``alg1`` — Algorithm 1: Adam with a projection after every step from the initial weights,
  then masked fine-tuning of the projected weights.
* ``dense_alg1`` — dense Adam training, then Algorithm 1 from the trained weights, then masked
  fine-tuning (three phases; the projected phase takes ``epochs`` epochs too).

Other methods: ``prox_rmsprop`` (Formanek & Hadházi), ``xrda`` (Siegel et al.), ``magnitude``
(global
magnitude pruning of the dense network at a given sparsity, then masked fine-tuning) and
``sis`` (Verma & Pesquet (2021), post-training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparsejax
from experiments import checkpoints, training

__all__ = [
    "METHODS",
    "PROJECTIONS",
    "SCHEDULES",
    "Experiment",
    "MethodResult",
    "Settings",
    "non_overlapping",
    "removable_coupled_groups",
    "selected_sparsity",
]

PROJECTIONS = {
    "pgl1": "project_l1",
    "pgl21": "project_l21",
    "pgl11": "project_l11",
    "pgl1inf": "project_l1inf",
    "pgl1inf_bilevel": "project_bilevel_l1inf",
}
# The ball of each structured method over coupled groups (--group-axis coupled).
COUPLED_BALLS = {"pgl21": "l21", "pgl11": "l11", "pgl1inf": "l1inf"}
COUPLED_BALLS["pgl1inf_bilevel"] = "bilevel_l1inf"
SCHEDULES = ("alg1", "dense_alg1", "alg4", "alg4_norewind")
METHODS = ("adam", *PROJECTIONS, "prox_rmsprop", "xrda", "magnitude", "sis")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Hyperparameters of a run (the CLI's arguments that shape the training)."""

    layers: str
    lr: float = 1e-3
    epochs: int = 8
    retrain_epochs: int = 8
    schedule: str = "alg1"
    group_axis: str = "inputs"
    prox_lam: float = 1e-4
    prox_every: int = 0
    xrda_lr: float = 1.0
    xrda_lam: float = 1e-6
    sis_steps: int = 300
    prox_group: str = "input"
    retrain_lr: str = "constant"
    prune_dead: bool = False
    prox_rate: float | None = None


@dataclasses.dataclass
class MethodResult:
    """The outcome of one method: final weights, per-phase histories and its settings."""

    method: str
    label: str
    params: Any
    rest: Any
    phases: dict
    settings: dict


def _eta_key(eta: Any) -> str:
    # Exact (repr), not rounded: two radii that differ anywhere are two runs.
    if isinstance(eta, dict):
        return "-".join(f"{k}={float(v)!r}" for k, v in eta.items()).replace("/", "_")
    return repr(float(eta))


def _eta_label(eta: Any) -> str:
    if isinstance(eta, dict):
        return ",".join(f"{k}={v:g}" for k, v in eta.items())
    return f"{eta:g}"


def selected_sparsity(params: Any, layers: str) -> float:
    """Fraction of exact zeros among the weights of the leaves selected by ``layers``."""
    leaves = [leaf for _, leaf in sparsejax.selected_leaves(params, layers)]
    zeros = sum(int(jnp.sum(leaf == 0)) for leaf in leaves)
    return zeros / sum(leaf.size for leaf in leaves)


def _dense_chain(params: Any) -> list[str] | None:
    """``["fc1", ..., "fcN"]`` when ``params`` is a fully connected chain (MLP), else None."""
    names = [f"fc{index}" for index in range(1, len(params) + 1)]
    if set(params) != set(names) or any(set(params[n]) != {"kernel", "bias"} for n in names):
        return None
    return names


def prune_dead_units(params: Any, mask: Any) -> Any:
    """Clears from ``mask`` every weight of a hidden unit that cannot reach the output.

    For a fully connected chain, a hidden unit is dead when its outgoing row in the next
    kernel is all masked (nothing reads it) or its incoming column is all masked (it is a
    constant, which the next layer's bias can absorb during retraining); its column, bias and
    row then go. Repeated until nothing changes. Other models get ``mask`` back unchanged.
    """
    chain = _dense_chain(params)
    if chain is None:
        return mask
    kernels = [np.asarray(mask[name]["kernel"]) & (np.asarray(params[name]["kernel"]) != 0)
               for name in chain]  # fmt: skip
    alive = [np.ones(k.shape[1], bool) for k in kernels[:-1]]
    while True:
        before = sum(a.sum() for a in alive)
        for index in range(len(alive)):
            reaches = kernels[index + 1].any(axis=1)
            fed = kernels[index].any(axis=0)
            alive[index] &= reaches & fed
            kernels[index][:, ~alive[index]] = False
            kernels[index + 1][~alive[index], :] = False
        if sum(a.sum() for a in alive) == before:
            break
    pruned = {name: dict(mask[name]) for name in chain}
    for index, name in enumerate(chain):
        pruned[name]["kernel"] = jnp.asarray(kernels[index])
        if index < len(alive):
            pruned[name]["bias"] = jnp.asarray(np.asarray(mask[name]["bias"]) & alive[index])
    return pruned


# Settings that only change the retraining phase (not in the digest of the phases before it).
_RETRAIN_FIELDS = ("retrain_epochs", "retrain_lr", "prune_dead")


def removable_coupled_groups(split: training.SplitModel, example: Any, layers: str) -> list:
    """The coupled groups of ``split``'s model with a weight in a ``layers`` kernel that
    surgery can remove once their weights are zero: not those tied to the input or output, nor
    those an operation keeps (units a LayerNorm or softmax reduces over, q/k depths); where
    groups cross (heads and head dimensions), the larger ones (:func:`non_overlapping`)."""
    model = training.merge_model(split.eval_graph, split.params, split.rest)
    pattern = re.compile(layers)
    groups = [
        group
        for group in sparsejax.coupled_groups(model, example)
        if group.removable and any(pattern.search(m.path) for m in group.members)
    ]
    groups = non_overlapping(groups, split.params)
    # With every candidate zeroed, the ones surgery would still keep say why.
    zeroed = sparsejax.transforms.project_coupled_tree(split.params, 0.0, groups)
    verdicts = sparsejax.nn.dead_groups(
        training.merge_model(split.eval_graph, zeroed, split.rest), example
    )
    removable = {verdict.group for verdict in verdicts if verdict.dead}
    return [group for group in groups if group in removable]


def non_overlapping(groups: list, params: Any) -> list:
    """The largest coupled groups first, each kept when its weights (the rows its units read)
    share none with a group kept before: attention heads over head dimensions, whose weights
    cross theirs. Returned in their original order."""
    shapes = {
        sparsejax.path_string(path): np.shape(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }

    def reads(group):
        return [member for member in group.members if member.reads]

    def size(index):
        return sum(
            len(m.indices) * math.prod(shapes[m.path]) // shapes[m.path][m.axis]
            for m in reads(groups[index])
        )

    taken: dict[str, tuple[int, set]] = {}  # path -> (axis, indices taken on it)
    kept = []
    for index in sorted(range(len(groups)), key=size, reverse=True):
        members = reads(groups[index])
        free = all(
            m.path not in taken
            or (taken[m.path][0] == m.axis and not taken[m.path][1].intersection(m.indices))
            for m in members
        )
        if free and members:
            for m in members:
                taken.setdefault(m.path, (m.axis, set()))[1].update(m.indices)
            kept.append(index)
    return [groups[index] for index in sorted(kept)]


def _non_default(settings: Settings) -> dict:
    """The settings that differ from their defaults (new options keep old digests valid)."""
    return {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(settings)
        if field.default is dataclasses.MISSING or getattr(settings, field.name) != field.default
    }


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def arrays_digest(*trees: Any) -> str:
    """A digest of the bytes, shapes and dtypes of every array in ``trees`` (host copies)."""
    digest = hashlib.sha1()
    for tree in trees:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if checkpoints.is_key_array(leaf):
                leaf = jax.random.key_data(leaf)
            array = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:12]


class Experiment:
    """Runs methods on one model and dataset, sharing phases between them.

    Args:
      split: the model as returned by :func:`experiments.training.split_model` (its params are
        the initial weights ``W*``).
      data: the training/test arrays and batching settings.
      settings: the hyperparameters.
      workdir: where phase checkpoints go (``None``: no checkpoints).
      resume: continue phases from their checkpoints.
      progress: show a progress bar per epoch.
      log: where progress lines go.
      identity: what else tells this run apart (e.g. ``{"model": "lfc4"}``): mixed into every
        checkpoint key, with a digest of the data arrays and the initial weights.
      keep_checkpoints: how many of each phase's latest epoch checkpoints to keep.
    """

    def __init__(
        self,
        split: training.SplitModel,
        data: training.TrainData,
        settings: Settings,
        *,
        workdir: str | None,
        resume: bool,
        progress: bool = True,
        log: Callable[[str], None] = print,
        identity: dict | None = None,
        keep_checkpoints: int = 2,
    ):
        self.split = split
        self.keep_checkpoints = keep_checkpoints
        self.data = data
        self.settings = settings
        self.workdir = workdir
        self.resume = resume
        self.progress = progress
        self.log = log
        self._done: dict[str, training.PhaseResult] = {}
        # Checkpoint directories carry a digest of what determines them, so a workdir reused
        # with other settings never resumes the wrong run. The data and the initial weights
        # enter as a digest of their bytes: a dataset, data directory, source, subset or split
        # that changes any example changes every key. The dense phase depends on nothing else
        # but the learning rate, batch size and seed, and is shared by every method.
        arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
        if data.val_labels is not None:  # the held-out examples are part of the data too
            arrays += (data.val_images, data.val_labels)
        shared = {
            "lr": settings.lr,
            "batch": data.batch_size,
            "seed": data.seed,
            "data": arrays_digest(*arrays),
            "init": arrays_digest(split.params, split.rest),
            **(identity or {}),
        }
        self._dense_tag = _digest(shared)
        chosen = _non_default(settings)
        retraining = {name: chosen.pop(name) for name in _RETRAIN_FIELDS if name in chosen}
        self._tag = _digest({**shared, **chosen})
        self._retrain_tag = f"-{_digest(retraining)}" if retraining else ""
        self.steps_per_epoch = len(data.train_labels) // data.batch_size

    # ------------------------------------------------------------------ phases

    def _run(self, phase: training.Phase, params: Any, rest: Any) -> training.PhaseResult:
        if phase.key not in self._done:
            self._done[phase.key] = training.run_phase(
                phase,
                self.split,
                params,
                rest,
                self.data,
                workdir=self.workdir,
                resume=self.resume,
                progress=self.progress,
                log=self.log,
                keep_checkpoints=self.keep_checkpoints,
            )
        return self._done[phase.key]

    def dense(self) -> training.PhaseResult:
        """Adam from the initial weights for ``epochs`` epochs (shared by several methods)."""
        s = self.settings
        key = f"dense-e{s.epochs}-{self._dense_tag}"
        phase = training.Phase(key, s.epochs, lambda _: optax.adam(s.lr))
        return self._run(phase, self.split.params, self.split.rest)

    def finished_dense(self) -> training.PhaseResult | None:
        """The dense phase's result if this experiment ran it, else None."""
        s = self.settings
        return self._done.get(f"dense-e{s.epochs}-{self._dense_tag}")

    def _retrain_label(self) -> str:
        """How the masked retraining differs from Guyard & Barlaud's (same epochs, constant
        rate)."""
        s = self.settings
        parts = [f"retrain={s.retrain_epochs}"] if s.retrain_epochs != s.epochs else []
        parts += ["cosine"] if s.retrain_lr == "cosine" else []
        parts += ["prune-dead"] if s.prune_dead else []
        return "".join(f" {part}" for part in parts)

    def _mask_of(self, params: Any) -> Any:
        """The retraining mask: the support of the constrained kernels (minus dead units)."""
        mask = sparsejax.support_mask(params, where=self.settings.layers)
        return prune_dead_units(params, mask) if self.settings.prune_dead else mask

    def _finetune(self, key: str, params: Any, rest: Any, mask: Any) -> training.PhaseResult:
        s = self.settings
        params = sparsejax.rewind(params, mask)
        if s.retrain_lr == "cosine":
            lr = optax.cosine_decay_schedule(s.lr, s.retrain_epochs * self.steps_per_epoch)
        else:
            lr = s.lr
        make_tx = lambda mask: optax.chain(optax.adam(lr), sparsejax.keep_pruned(mask))
        phase = training.Phase(
            f"{key}-{self._tag}/retrain-e{s.retrain_epochs}{self._retrain_tag}",
            s.retrain_epochs,
            make_tx,
            aux=mask,
        )
        if s.retrain_epochs == 0:
            return training.PhaseResult(params, rest, [])
        return self._run(phase, params, rest)

    # ------------------------------------------------------------------ methods

    def adam(self) -> MethodResult:
        dense = self.dense()
        return MethodResult("adam", "adam", dense.params, dense.rest, {"dense": dense.history}, {})

    def projection(self, method: str, eta: Any) -> MethodResult:
        """A ``pgl*`` method with the settings' schedule and radius ``eta``."""
        s = self.settings
        make_projection = self._projection_factory(method, eta)
        key = f"{method}-eta{_eta_key(eta)}-{s.schedule}-e{s.epochs}"
        phases: dict = {}
        if s.schedule in ("alg4", "alg4_norewind"):
            dense = self.dense()
            phases["dense"] = dense.history
            projected = sparsejax.project_once(make_projection(), dense.params)
            mask = self._mask_of(projected)
            start = sparsejax.rewind(self.split.params, mask) if s.schedule == "alg4" else projected
            rest = self.split.rest if s.schedule == "alg4" else dense.rest
        else:
            if s.schedule == "dense_alg1":
                origin = self.dense()
                phases["dense"] = origin.history
            else:
                origin = training.PhaseResult(self.split.params, self.split.rest, [])
            phase = training.Phase(
                f"{key}-{self._tag}/project",
                s.epochs,
                lambda _: optax.chain(optax.adam(s.lr), make_projection()),
            )
            trained = self._run(phase, origin.params, origin.rest)
            phases["project"] = trained.history
            start, rest = trained.params, trained.rest
            mask = self._mask_of(start)
        final = self._finetune(key, start, rest, mask)
        phases["retrain"] = final.history
        # The group axis names the row unless it is the default (input units), or pgl1's.
        axis = "" if s.group_axis == "inputs" or method == "pgl1" else f" {s.group_axis}"
        label = f"{method}{axis} eta={_eta_label(eta)} {s.schedule}{self._retrain_label()}"
        return MethodResult(method, label, final.params, final.rest, phases, {"eta": eta})

    def _projection_factory(self, method: str, eta: Any) -> Callable[[], Any]:
        s = self.settings
        if s.group_axis == "coupled" and method != "pgl1":
            groups = self._coupled_groups()
            ball = COUPLED_BALLS[method]
            return lambda: sparsejax.transforms.project_coupled(eta, groups, ball=ball)
        factory = getattr(sparsejax, PROJECTIONS[method])
        options = {"where": s.layers}
        if method != "pgl1":
            options["group_axis"] = s.group_axis
        return lambda: factory(eta, **options)

    def _coupled_groups(self) -> list:
        example = jnp.asarray(self.data.train_images[:2])
        return removable_coupled_groups(self.split, example, self.settings.layers)

    def magnitude(self, sparsity: float) -> MethodResult:
        """Global magnitude pruning of the dense network, then masked fine-tuning."""
        s = self.settings
        dense = self.dense()
        mask = sparsejax.magnitude_mask(dense.params, sparsity, where=s.layers)
        # No dead-unit pruning here: the baseline keeps exactly the sparsity it is matched to.
        pruned = sparsejax.rewind(dense.params, mask)
        final = self._finetune(
            f"magnitude-s{float(sparsity)!r}-e{s.epochs}", pruned, dense.rest, mask
        )
        phases = {"dense": dense.history, "retrain": final.history}
        label = f"magnitude sparsity={100 * sparsity:.1f}%{self._retrain_label()}"
        return MethodResult(
            "magnitude", label, final.params, final.rest, phases, {"sparsity": sparsity}
        )

    def prox_rmsprop(self) -> MethodResult:
        """Proximal RMSProp with a group L0 penalty (Formanek & Hadházi), then masked
        fine-tuning."""
        s = self.settings
        every = s.prox_every or self.steps_per_epoch
        strength = {"rate": s.prox_rate} if s.prox_rate is not None else {"lam": s.prox_lam}
        make_tx = lambda _: sparsejax.proximal_rmsprop(
            s.lr, penalty="l0", group=s.prox_group, every_k_steps=every, where=s.layers, **strength
        )
        name, value = next(iter(strength.items()))
        key = f"prox_rmsprop-{name}{value:g}-k{every}-e{s.epochs}"
        phase = training.Phase(f"{key}-{self._tag}/train", s.epochs, make_tx)
        trained = self._run(phase, *self._init())
        mask = self._mask_of(trained.params)
        final = self._finetune(key, trained.params, trained.rest, mask)
        phases = {"train": trained.history, "retrain": final.history}
        label = f"prox_rmsprop {name}={value:g} {s.prox_group}{self._retrain_label()}"
        settings = {**strength, "group": s.prox_group, "every_k_steps": every}
        return MethodResult("prox_rmsprop", label, final.params, final.rest, phases, settings)

    def xrda(self) -> MethodResult:
        """xRDA with adaptive l1 weights (Siegel et al.), then masked fine-tuning."""
        s = self.settings
        total = s.epochs * self.steps_per_epoch
        make_tx = lambda _: sparsejax.xrda(total, s.xrda_lr, s.xrda_lam, where=s.layers)
        key = f"xrda-lr{s.xrda_lr:g}-lam{s.xrda_lam:g}-e{s.epochs}"
        phase = training.Phase(f"{key}-{self._tag}/train", s.epochs, make_tx)
        trained = self._run(phase, *self._init())
        mask = self._mask_of(trained.params)
        final = self._finetune(key, trained.params, trained.rest, mask)
        phases = {"train": trained.history, "retrain": final.history}
        label = f"xrda s0={s.xrda_lr:g} lam={s.xrda_lam:g}{self._retrain_label()}"
        settings = {"lr": s.xrda_lr, "lam": s.xrda_lam}
        return MethodResult("xrda", label, final.params, final.rest, phases, settings)

    def sis(self, sparsity: float) -> MethodResult:
        """SIS (Verma & Pesquet, reconstructed) on the dense network: post-training, no
        retraining."""
        s = self.settings
        dense = self.dense()
        model = training.merge_model(self.split.eval_graph, dense.params, dense.rest)
        batch = self.data.batch_size
        images = self.data.train_images
        batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
        params, _ = sparsejax.sis_sparsify(
            model, batches[:64], sparsity={s.layers: sparsity}, steps=s.sis_steps
        )
        phases = {"dense": dense.history}
        label = f"sis sparsity={100 * sparsity:.1f}%"
        return MethodResult(
            "sis", label, nnx.to_pure_dict(params), dense.rest, phases, {"sparsity": sparsity}
        )

    def _init(self) -> tuple[Any, Any]:
        return self.split.params, self.split.rest


def as_numpy(tree: Any) -> Any:
    """Host copy of a pytree of arrays."""
    return jax.tree.map(np.asarray, tree)
