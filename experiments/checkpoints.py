"""Phase checkpoints on orbax: one per finished epoch, asynchronous, atomic, the last k kept.

A phase's directory holds orbax steps named by the number of finished epochs; each step has
two items, ``state`` (the pytree of arrays: params, rest, optimizer state, step counter) and
``meta`` (JSON: the per-epoch history and whether the phase is finished). Orbax writes a step
into a temporary directory and renames it when complete, so a run killed at any point leaves
the previous steps intact and an unfinished one is never read; writes run in the background
while the next epoch trains. Arrays keep their shardings (orbax writes each shard from the
process that holds it), so the same code serves one device, a data-parallel mesh and several
hosts.

Typed PRNG keys (dropout streams in ``rest``) are stored as their raw key data and rewrapped
with the template's implementation on restore.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["PhaseCheckpoints", "holds_checkpoints", "is_key_array"]

_ITEMS = ("state", "meta")

# Orbax reports every save at INFO through absl; the CLI's own log says what matters.
logging.getLogger("absl").setLevel(logging.WARNING)


def is_key_array(leaf: Any) -> bool:
    """Whether ``leaf`` is a typed PRNG key array (stored as its raw key data)."""
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _storable(tree: Any) -> Any:
    # A copy: the training step donates its state, so the buffers handed to the background
    # writer must be ones no later step reuses.
    return jax.tree.map(
        lambda leaf: jax.random.key_data(leaf) if is_key_array(leaf) else leaf.copy(), tree
    )


def _rewrap(restored: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda value, leaf: (
            jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
            if is_key_array(leaf)
            else value
        ),
        restored,
        template,
    )


def holds_checkpoints(directory: str) -> bool:
    """Whether any phase directory below ``directory`` holds a complete checkpoint."""
    for root, names, _ in os.walk(directory):
        if os.path.basename(root) == "checkpoints" and any(name.isdigit() for name in names):
            return True
    return False


class PhaseCheckpoints:
    """The checkpoints of one training phase under ``directory/checkpoints``.

    Args:
      directory: the phase's directory (created if missing).
      keep: how many of the latest checkpoints to keep (older ones are deleted).
    """

    def __init__(self, directory: str, *, keep: int = 2):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=True
        )
        self.directory = os.path.join(os.path.abspath(directory), "checkpoints")
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    @property
    def latest_epoch(self) -> int | None:
        """The number of finished epochs of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def latest_meta(self) -> dict | None:
        """The ``meta`` of the latest complete checkpoint, or None when there is none."""
        epoch = self.latest_epoch
        if epoch is None:
            return None
        restored = self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return restored.meta

    def restore(self, template: Any) -> tuple[Any, dict]:
        """Reads the latest checkpoint into the structure, shapes and dtypes of ``template``.

        Raises:
          ValueError: when there is no checkpoint, or its tree or shapes do not fit
            ``template`` (orbax refuses to pad or truncate).
        """
        epoch = self.latest_epoch
        if epoch is None:
            raise ValueError(f"no checkpoint in {self.directory}")
        storable = jax.tree.map(
            lambda leaf: jax.random.key_data(leaf) if is_key_array(leaf) else leaf, template
        )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(storable), meta=ocp.args.JsonRestore()
        )
        try:
            restored = self._manager.restore(epoch, args=args)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"checkpoint {self.directory}/{epoch} does not match the model/optimizer "
                f"structure: {err}"
            ) from err
        return _rewrap(restored.state, template), restored.meta

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        """Starts writing ``state`` and ``meta`` as the checkpoint after ``epoch`` epochs; the
        write finishes in the background (:meth:`wait` or :meth:`close` to wait for it)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_storable(state)), meta=ocp.args.JsonSave(meta)
        )
        self._manager.save(epoch, args=args, force=True)

    def wait(self) -> None:
        """Blocks until every started write is complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the writes and releases the manager."""
        self._manager.close()

    def __enter__(self) -> PhaseCheckpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
