"""Structured constraints on coupled unit groups (see :func:`sparsejax.coupled_groups`).

A coupled group spans several layers (a residual channel: every layer that writes it and every
layer that reads it). Its weights are gathered, over all layers, into one row of a padded
``(groups, max_len)`` matrix; the existing projections of :mod:`sparsejax.projections` act on
the rows, and the rows are scattered back. Zero padding changes no row norm (l1, l2, linf) and
every projection used maps a zero entry to zero, so the projection of the padded matrix is the
projection of the concatenated groups. A zero row is a whole coupled group at zero: removable
by construction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import projections, prox
from sparsejax.transforms import _constraints as constraints
from sparsejax.transforms._selection import (
    check_every_k_steps,
    check_radius,
    every_k,
    is_floating,
    path_string,
)

__all__ = [
    "CoupledProjectionState",
    "coupled_rows",
    "project_coupled",
    "project_coupled_tree",
    "prox_coupled_tree",
]

_BALLS = {
    "l21": projections.l21_ball,
    "l11": projections.l11_ball,
    "l1inf": projections.l1inf_ball,
    "bilevel_l1inf": projections.bilevel_l1inf_ball,
}


# The same constraints as the per-leaf projections, with their warm starts: the padded
# (groups, max_len) matrix is projected as one leaf whose groups are its rows.
_CONSTRAINTS = {
    "l21": constraints._L21,
    "l11": constraints._L11,
    "l1inf": constraints._ExactL1Inf,
    "bilevel_l1inf": constraints._BiLevelL1Inf,
}


class CoupledProjectionState(NamedTuple):
    """State of :func:`project_coupled`.

    Attributes:
      count: number of updates done.
      thresholds: the last projection's thresholds (the outer l1 threshold of the group
        measures, and for ``"l11"``/``"l1inf"`` one inner threshold or cap per group), the
        next projection's warm start; zeros before the first.
    """

    count: jax.Array
    thresholds: Any


def _check_side(side) -> None:
    if side not in ("inputs", "all"):
        raise ValueError(f"side must be 'inputs' or 'all', got side={side!r}")


def _layout(params, groups, side="inputs"):
    """Flat indices (into the concatenated leaves) of each removable group's weights."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [path_string(p) for p, _ in leaves]
    shapes = [np.shape(x) for _, x in leaves]
    # Integer/bool leaves take no room in the concatenation: they never go through floats.
    sizes = [int(np.prod(s)) if is_floating(x) else 0 for s, (_, x) in zip(shapes, leaves)]
    offsets = np.cumsum([0] + sizes)
    where = {n: k for k, n in enumerate(names)}
    rows = []
    for g, group in enumerate(groups):
        if not group.removable:
            continue
        flat: set[int] = set()
        for m in group.members:
            if side == "inputs" and not m.reads:
                continue
            if m.path not in where:
                raise ValueError(f"groups: group {g} names {m.path!r}, which is not in params")
            k = where[m.path]
            if not is_floating(leaves[k][1]):
                raise ValueError(
                    f"groups: group {g} names {m.path!r}, which is not a floating-point leaf "
                    f"(dtype {jnp.result_type(leaves[k][1])}); pass groups of weights only"
                )
            grid = np.arange(offsets[k], offsets[k + 1]).reshape(shapes[k])
            flat.update(np.take(grid, list(m.indices), axis=m.axis).reshape(-1).tolist())
        if flat:
            rows.append(sorted(flat))
    if not rows:
        raise ValueError("groups: no removable coupled group")
    seen = np.concatenate([np.asarray(r) for r in rows])
    if len(np.unique(seen)) != len(seen):
        raise ValueError(
            "groups: the coupled groups overlap (e.g. attention heads and head dimensions share "
            "weights); pass a non-overlapping subset"
        )
    total = int(offsets[-1])
    width = max(len(r) for r in rows)
    index = np.full((len(rows), width), total, dtype=np.int32)  # ``total`` is the zero pad
    for i, r in enumerate(rows):
        index[i, : len(r)] = r
    return index, treedef, shapes, total


def coupled_rows(params, groups, *, side: str = "inputs") -> jax.Array:
    """Returns the padded ``(groups, max_len)`` matrix of the removable groups' weights.

    Args:
      params: the parameter tree the groups name (``nnx.state(model, nnx.Param)`` or Linen
        variables).
      groups: the result of :func:`sparsejax.coupled_groups` (or a subset).
      side: ``"inputs"`` (default): a group's weights are its units' input rows over every
        layer that reads them (``GroupMember.reads``), so a zero group is unused and removable
        whatever its other weights; these sets never overlap. ``"all"``: every weight the group
        touches (a kernel entry belongs to its input and its output unit, so groups of
        consecutive layers overlap and are refused).

    Returns:
      Row ``g`` holds every weight of removable group ``g``, over all layers, zero padded.

    Example:
      >>> import jax.numpy as jnp
      >>> from sparsejax.nn import CoupledGroup, GroupMember
      >>> g = CoupledGroup((GroupMember("a", 1, (0,), True), GroupMember("b", 0, (0,), True)), True)
      >>> coupled_rows({"a": jnp.ones((2, 1)), "b": jnp.full((1,), 3.0)}, [g])
      Array([[1., 1., 3.]], dtype=float32)
    """
    _check_side(side)
    index, _, _, _ = _layout(params, groups, side)
    return _concatenated(jax.tree_util.tree_leaves(params))[index]


def _floating_dtype(leaves):
    """The dtype of the concatenation of the floating-point leaves."""
    floats = [x for x in leaves if is_floating(x)]
    return jnp.result_type(*floats) if floats else jnp.float32


def _concatenated(leaves) -> jax.Array:
    """The floating-point leaves, raveled and concatenated, then one zero (the padding)."""
    floats = [jnp.ravel(x) for x in leaves if is_floating(x)]
    return jnp.concatenate([*floats, jnp.zeros((1,), _floating_dtype(leaves))])


def project_coupled_tree(params, radius, groups, *, ball: str = "l21", side: str = "inputs"):
    r"""Projects the coupled groups of a parameter tree onto a structured ball.

    With :math:`w_g` the concatenation of every weight of coupled group :math:`g` over all the
    layers it spans, e.g. for ``ball="l21"`` (Guyard & Barlaud, 2020):

    .. math:: \min_{v} \|v - w\|_2 \ \text{s.t.}\ \sum_g \|v_g\|_2 \le \eta .

    Weights in no removable group are unchanged.

    Args:
      params: the parameter tree.
      radius: the radius :math:`\eta` (nonnegative scalar).
      groups: the coupled groups (non-overlapping among the removable ones).
      ball: ``"l21"``, ``"l11"`` (bi-level l1,1), ``"l1inf"`` or ``"bilevel_l1inf"``.
      side: ``"inputs"`` (default): a group's weights are its units' input rows over every
        layer that reads them (``GroupMember.reads``), so a zero group is unused and removable
        whatever its other weights; these sets never overlap. ``"all"``: every weight the group
        touches (a kernel entry belongs to its input and its output unit, so groups of
        consecutive layers overlap and are refused).

    Returns:
      The projected tree.

    Raises:
      ValueError: an unknown ``ball``, overlapping groups, a path not in ``params``.
    """
    if ball not in _BALLS:
        raise ValueError(f"ball must be one of {sorted(_BALLS)}, got ball={ball!r}")
    _check_side(side)
    return _map_rows(params, groups, side, lambda rows: _BALLS[ball](rows, radius, group_axis=0))


def _map_rows(params, groups, side, fn):
    """Gathers the groups' rows, applies ``fn`` to the padded matrix, scatters them back."""
    return _map_rows_carrying(params, groups, side, lambda rows: (fn(rows), None))[0]


def _map_rows_carrying(params, groups, side, fn):
    """As :func:`_map_rows` with ``fn(rows) -> (rows, extra)``; returns ``(tree, extra)``."""
    index, treedef, shapes, total = _layout(params, groups, side)
    leaves = jax.tree_util.tree_leaves(params)
    flat = _concatenated(leaves)
    rows, extra = fn(flat[index])
    flat = flat.at[index].set(rows)[:total]
    floating = [is_floating(x) for x in leaves]
    sizes = np.cumsum([int(np.prod(s)) if f else 0 for s, f in zip(shapes, floating)])[:-1]
    parts = jnp.split(flat, sizes)
    tree = jax.tree_util.tree_unflatten(
        treedef,
        [
            p.reshape(s).astype(x.dtype) if f else x
            for p, s, x, f in zip(parts, shapes, leaves, floating, strict=True)
        ],
    )
    return tree, extra


_PROX = {
    "l1": lambda rows, lam, step: prox.l1(rows, lam, step, group="input"),
    "l0": lambda rows, lam, step: prox.l0(rows, lam, step, group="input"),
    "rate": lambda rows, rate, step: prox.prune_smallest(rows, rate, group="input"),
}


def prox_coupled_tree(params, lam, groups, *, penalty="l1", step=1.0, side="inputs"):
    r"""Group prox (or compression rate) on coupled groups spanning several layers.

    With :math:`w_g` the concatenation of group :math:`g`'s weights over all its layers
    (Formanek & Hadházi):

    .. math::

       \text{l1: } w_g \max\!\Big(1 - \frac{\lambda\mu}{\|w_g\|_2}, 0\Big), \quad
       \text{l0: } w_g\,[\|w_g\|_2^2 > 2\lambda\mu], \quad
       \text{rate: zero the } \operatorname{round}(\lambda G) \text{ smallest } \|w_g\|_2 .

    Args:
      params: the parameter tree.
      lam: the penalty weight :math:`\lambda` (for ``penalty="rate"``: the fraction of groups
        to zero).
      groups: the coupled groups.
      penalty: ``"l1"``, ``"l0"`` or ``"rate"``.
      step: the step :math:`\mu` (a scalar).
      side: as for :func:`project_coupled_tree`.

    Returns:
      The tree after the prox; weights in no group are unchanged.

    Raises:
      ValueError: an unknown ``penalty`` or ``side``, groups that do not fit ``params``, a
        (concrete) ``lam`` or ``step`` that is not one finite number ``>= 0`` (``lam <= 1``
        for ``"rate"``).
    """
    if not isinstance(penalty, str) or penalty not in _PROX:
        raise ValueError(f"penalty must be one of {sorted(_PROX)}, got penalty={penalty!r}")
    _check_side(side)
    # Concrete values are checked (traced ones cannot be): a negative lam would grow weights.
    check_radius(lam, "lam")
    check_radius(step, "step")
    if penalty == "rate" and not isinstance(lam, jax.core.Tracer) and np.asarray(lam) > 1:
        raise ValueError(f"lam (the fraction of groups to zero) must be in [0, 1], got lam={lam!r}")
    return _map_rows(params, groups, side, lambda rows: _PROX[penalty](rows, lam, step))


def project_coupled(
    radius, groups, *, ball: str = "l21", side: str = "inputs", every_k_steps: int = 1
) -> optax.GradientTransformation:
    r"""Projection-gradient step onto a structured ball over coupled groups.

    The returned update :math:`u'` makes :math:`w + u' = P(w + u)`, with :math:`P`
    :func:`project_coupled_tree`; chain it after an optimizer (Guyard & Barlaud, 2020).

    Args:
      radius: the radius :math:`\eta`, a nonnegative number.
      groups: the result of :func:`sparsejax.coupled_groups` for the model of the params.
      ball: ``"l21"``, ``"l11"``, ``"l1inf"`` or ``"bilevel_l1inf"``.
      side: ``"inputs"`` (default): a group's weights are its units' input rows over every
        layer that reads them (``GroupMember.reads``), so a zero group is unused and removable
        whatever its other weights; these sets never overlap. ``"all"``: every weight the group
        touches (a kernel entry belongs to its input and its output unit, so groups of
        consecutive layers overlap and are refused).
      every_k_steps: project on every k-th update only (on the updates with
        ``(count + 1) % every_k_steps == 0``); the others pass through unchanged.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`CoupledProjectionState`.

    Raises:
      ValueError: a ``radius`` that is not one finite number ``>= 0`` (a list, a string, a
        negative or NaN value), an unknown ``ball`` or an ``every_k_steps`` below 1 (at
        build), groups that do not fit the params (at init).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from sparsejax.nn import CoupledGroup, GroupMember
      >>> gs = [CoupledGroup((GroupMember("w", 0, (i,), True),), True) for i in range(2)]
      >>> tx = optax.chain(optax.sgd(1.0), project_coupled(1.0, gs))
      >>> p = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
      >>> u, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(p), p)
      >>> optax.apply_updates(p, u)["w"].round(3)
      Array([[0.6, 0.8],
             [0. , 0. ]], dtype=float32)
    """
    if ball not in _BALLS:
        raise ValueError(f"ball must be one of {sorted(_BALLS)}, got ball={ball!r}")
    check_radius(radius, "radius")
    _check_side(side)
    check_every_k_steps(every_k_steps)
    groups = tuple(groups)

    constraint = _CONSTRAINTS[ball]()

    def rows_leaf(shape, dtype):
        return constraints._Leaf(0, "coupled", shape, 0, radius, dtype)

    def init_fn(params):
        index, _, _, _ = _layout(params, groups, side)  # validates the groups
        leaf = rows_leaf(index.shape, _floating_dtype(jax.tree_util.tree_leaves(params)))
        warm = (jnp.zeros((), leaf.dtype), constraint.init_inner(leaf))
        return CoupledProjectionState(jnp.zeros((), jnp.int32), warm)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_coupled needs params in update(updates, state, params)")

        def project_rows(rows, warm):
            leaf = rows_leaf(rows.shape, rows.dtype)
            outs, warm = constraints._project(constraint, [rows], [leaf], {"coupled": warm}, None)
            return outs[0], warm["coupled"]

        def project(updates, warm):
            new = optax.apply_updates(params, updates)
            projected, warm = _map_rows_carrying(
                new, groups, side, lambda rows: project_rows(rows, warm)
            )
            # int/bool leaves are in no group: their updates pass through unchanged
            out = jax.tree_util.tree_map(
                lambda a, b, u: a - b if is_floating(b) else u, projected, params, updates
            )
            return out, warm

        def project_as_updates(updates, warm):  # the skip branch's dtypes, for lax.cond
            out, warm = project(updates, warm)
            return jax.tree_util.tree_map(lambda o, u: o.astype(u.dtype), out, updates), warm

        one = isinstance(every_k_steps, (int, np.integer)) and every_k_steps == 1
        out, warm = every_k(
            every_k_steps,
            state.count,
            project if one else project_as_updates,
            lambda u, w: (u, w),
            updates,
            state.thresholds,
        )
        return out, CoupledProjectionState(state.count + 1, warm)

    return optax.GradientTransformation(init_fn, update_fn)
