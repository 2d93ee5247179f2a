"""The lottery optimizer with one projection (Guyard & Barlaud, 2020, Alg. 4) and masked retraining.

The recipe, with ``model``/``params`` any Flax parameter pytree::

    # 1. dense training from the initial weights W*
    init_params = params
    params = train(params, optax.adam(1e-3))
    # 2. one projection (any constraint) -> the mask M0 of surviving weights
    params = sparsejax.project_once(sparsejax.project_l11(eta=400.0), params)
    mask = sparsejax.support_mask(params)
    # 3a. rewind to W* (the paper's Alg. 4) ...
    params = sparsejax.rewind(init_params, mask)
    # 3b. ... or keep the projected weights (the variant of the authors' later code)
    # 4. retrain; pruned weights stay exactly zero whatever Adam's moments say
    params = train(params, optax.chain(optax.adam(1e-3), sparsejax.keep_pruned(mask)))

:func:`magnitude_mask` gives the mask of global (or per-layer) magnitude pruning, the baseline
a user would otherwise reach for.

Reference: Guyard & Barlaud (2020), Alg. 4; Zhou et al., "Deconstructing lottery tickets"
(2019).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax.prox._rate import _smallest
from sparsejax.transforms import _selection as selection


def support_mask(params: Any, *, where: selection.Where = None) -> Any:
    """Returns the boolean mask of the nonzero entries of the selected leaves.

    Args:
      params: a parameter pytree.
      where: which leaves the mask constrains (default: kernels); unselected leaves get an
        all-``True`` mask so that they train freely.

    Returns:
      A pytree of boolean arrays with the structure and shapes of ``params``.

    Raises:
      ValueError: if ``where`` selects no leaf.

    >>> import jax.numpy as jnp
    >>> mask = support_mask({"kernel": jnp.array([[1.0, 0.0]]), "bias": jnp.zeros(2)})
    >>> mask["kernel"].tolist(), mask["bias"].tolist()
    ([[True, False]], [True, True])
    """
    chosen = {path for path, _ in selection.selected_leaves(params, where)}

    def leaf_mask(path, leaf):
        if selection.path_string(path) in chosen:
            return jnp.asarray(leaf) != 0
        return jnp.ones(np.shape(leaf), bool)

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def rewind(init_params: Any, mask: Any) -> Any:
    """Returns the initial parameters with the masked-out entries set to zero (Alg. 4, step 3).

    >>> import jax.numpy as jnp
    >>> rewind({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
    [1.0, 0.0]
    """
    return jax.tree_util.tree_map(
        lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), init_params, mask
    )


def project_once(tx: optax.GradientTransformation, params: Any) -> Any:
    """Applies a projection transformation once to ``params`` and returns the projected tree.

    Args:
      tx: a ``project_*`` transformation (any transformation that maps ``params`` with a zero
        update onto its constraint set).
      params: the parameter pytree.

    Returns:
      ``P(params)``, with the structure of ``params``.

    >>> import jax.numpy as jnp, sparsejax
    >>> p = project_once(sparsejax.project_l1(1.0), {"kernel": jnp.array([[2.0, 0.5]])})
    >>> p["kernel"].tolist()
    [[1.0, 0.0]]
    """
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    return optax.apply_updates(params, updates)


class KeepPrunedState(NamedTuple):
    """``keep_pruned`` holds no state: the mask is a constant of the transformation."""


def keep_pruned(mask: Any) -> optax.GradientTransformation:
    r"""Keeps the masked-out parameters exactly zero (masked retraining, Alg. 4 step 4).

    .. math::

       u'_j = \begin{cases} u_j & M_j = 1 \\ -w_j & M_j = 0 \end{cases}

    so the new parameter is exactly ``0`` wherever the mask is ``False``, whatever the
    optimizer before it proposes (Adam's moments keep a memory of old gradients and would
    otherwise revive pruned weights). Place it last in the chain.

    Args:
      mask: a pytree of booleans with the structure of the parameters (e.g. from
        :func:`support_mask` or :func:`magnitude_mask`), each leaf of exactly its parameter's
        shape (a mask that merely broadcasts, e.g. ``(3,)`` on a ``(4, 3)`` kernel, is most
        likely built for another leaf and is refused).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: when updated without ``params``; at ``init`` (and ``update``) when a mask
        leaf's shape differs from its parameter's, naming the path and both shapes.

    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.array([1.0, 0.0])}
    >>> tx = optax.chain(optax.adam(0.1), keep_pruned({"w": jnp.array([True, False])}))
    >>> updates, _ = tx.update({"w": jnp.array([1.0, 1.0])}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"].round(3).tolist()
    [0.9, 0.0]
    """

    def init_fn(params):
        _check_mask_shapes(mask, params)
        return KeepPrunedState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(selection.NO_PARAMS_MSG)
        _check_mask_shapes(mask, params)  # shapes are static: free under jit
        masked = jax.tree_util.tree_map(
            lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params, mask
        )
        return masked, state

    return optax.GradientTransformation(init_fn, update_fn)


def _check_mask_shapes(mask: Any, params: Any) -> None:
    def check(path, leaf, leaf_mask):
        if np.shape(leaf_mask) != np.shape(leaf):
            raise ValueError(
                f"keep_pruned: the mask at {selection.path_string(path)!r} has shape "
                f"{np.shape(leaf_mask)} but the parameter has shape {np.shape(leaf)}; masks "
                "must match exactly (build them with support_mask or magnitude_mask)."
            )

    jax.tree_util.tree_map_with_path(check, params, mask)


def magnitude_mask(
    params: Any, sparsity: float, *, where: selection.Where = None, scope: str = "global"
) -> Any:
    """Returns the mask that keeps the largest-magnitude weights (magnitude pruning).

    Args:
      params: a parameter pytree.
      sparsity: the fraction of the selected weights to prune, in ``[0, 1]``.
      where: which leaves are pruned (default: kernels); the others keep an all-``True`` mask.
      scope: ``"global"`` ranks all selected weights together (one threshold);
        ``"layer"`` prunes the same fraction of every selected leaf.

    Returns:
      A pytree of boolean arrays with the structure of ``params``. Exactly
      ``floor(sparsity * n)`` of the ``n`` ranked weights are pruned (per leaf for
      ``scope="layer"``); among equal magnitudes the earlier ones go first (leaves in
      tree-flattening order, entries in row-major order), so ties never prune more than
      asked. NaN magnitudes rank last (kept).

    Raises:
      ValueError: ``sparsity`` that is not a real number in ``[0, 1]``, an unknown ``scope``,
        or an empty selection.

    >>> import jax.numpy as jnp
    >>> m = magnitude_mask({"kernel": jnp.array([[1.0, -3.0], [0.5, 2.0]])}, 0.5)
    >>> m["kernel"].tolist()
    [[False, True], [False, True]]
    """
    _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    chosen = dict(selection.selected_leaves(params, where))

    def keep(magnitudes):
        """Flat mask keeping all but the floor(sparsity * n) smallest (ties: earliest go)."""
        magnitudes = magnitudes.astype(jnp.promote_types(magnitudes.dtype, jnp.float32))
        n_pruned = int(np.floor(float(sparsity) * magnitudes.size))
        return ~_smallest(magnitudes, jnp.asarray(n_pruned, jnp.int32))

    magnitudes = {name: jnp.abs(jnp.ravel(jnp.asarray(leaf))) for name, leaf in chosen.items()}
    if scope == "global":
        flat = keep(jnp.concatenate(list(magnitudes.values())))
        ends = np.cumsum([m.size for m in magnitudes.values()])
        kept = dict(zip(magnitudes, jnp.split(flat, ends[:-1]), strict=True))
    else:
        kept = {name: keep(m) for name, m in magnitudes.items()}

    def leaf_mask(path, leaf):
        name = selection.path_string(path)
        if name not in chosen:
            return jnp.ones(np.shape(leaf), bool)
        return kept[name].reshape(np.shape(leaf))

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def _check_sparsity(sparsity: Any) -> None:
    valid = (
        not isinstance(sparsity, bool)
        and isinstance(sparsity, (int, float, np.integer, np.floating))
        and 0.0 <= float(sparsity) <= 1.0
    )
    if not valid:
        raise ValueError(
            f"sparsity must be a number in [0, 1] (the fraction of the selected weights to "
            f"prune), got sparsity={sparsity!r}."
        )
