"""The constraints behind the ``project_*`` transformations, and the projection of leaves.

A bi-level constraint is a vector of group measures ``m`` (one per group), an outer l1
projection ``t = P_l1(m, eta)`` and a per-group shrink that brings each group's measure down to
``t_i``. l1, l2,1, l1,1, bi-level l1,inf and the nuclear norm all have this form, which is what
makes the global budget (one outer projection over all leaves' groups) uniform. The exact
l1,inf and the nested l1,1,1 operators are projected leaf by leaf with
:mod:`sparsejax.projections`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparsejax import projections
from sparsejax.projections._l1 import threshold_of_arrays


class _Leaf(NamedTuple):
    """Static description of one selected leaf."""

    index: int  # position in the flattened params
    path: str
    shape: tuple[int, ...]
    axis: int  # resolved group axis (unused by element-wise constraints)
    radius: Any  # per-leaf radius (None with a global budget)
    dtype: Any  # compute dtype: float32 (float64 for a float64 leaf)


# --------------------------------------------------------------------------- constraints
# A bi-level constraint is: a vector of group measures m (one per group), an outer l1 projection
# t = P_l1(m, eta), and a per-group shrink that brings each group's measure down to t_i.
# l1, l2,1, l1,1, bi-level l1,inf and the nuclear norm all have this form, which is what makes
# the global budget (one outer projection over all leaves' groups) uniform.


def _rows(x: jax.Array, axis: int) -> jax.Array:
    return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _unrows(rows: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    return jnp.moveaxis(rows.reshape(moved), 0, axis)


class _BiLevel:
    """Group measure + outer l1 projection + group shrink."""

    name = "bilevel"
    needs_groups = True
    inner_warm = False

    def measure(self, x, axis):  # -> (measures (G,), aux)
        raise NotImplementedError

    def shrink(self, x, axis, t, aux, warm):  # -> (y, inner warm start)
        raise NotImplementedError

    def outer_threshold(self, measures, radius, init):
        """The l1 threshold of all groups' measures (one leaf's, or every leaf's)."""
        m = measures[0] if len(measures) == 1 else jnp.concatenate(measures)
        return projections.l1_threshold(m, radius, init=init)

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        return jnp.zeros((), leaf.dtype)


class _L1(_BiLevel):
    name = "l1"
    needs_groups = False

    # Every weight is a group: the measures keep the kernel's shape and the threshold is found
    # with reductions only, so a sharded kernel is never gathered (a flatten would be).
    def measure(self, x, axis):
        return jnp.abs(x), None

    def shrink(self, x, axis, t, aux, warm):
        return jnp.sign(x) * t, warm

    def outer_threshold(self, measures, radius, init):
        return threshold_of_arrays(measures, radius, init)


class _L21(_BiLevel):
    name = "l21"

    def measure(self, x, axis):
        squares = jnp.sum(jnp.square(_rows(x, axis)), axis=1)
        # sqrt has an infinite slope at 0: keep it out of the gradient of zero groups.
        norms = jnp.where(squares > 0, jnp.sqrt(jnp.where(squares > 0, squares, 1.0)), 0.0)
        return norms, norms

    def shrink(self, x, axis, t, norms, warm):
        scale = jnp.where(norms > 0, t / jnp.where(norms > 0, norms, 1.0), 0.0)
        return _unrows(_rows(x, axis) * scale[:, None], x.shape, axis), warm


class _L11(_BiLevel):
    name = "l11"
    inner_warm = True

    def measure(self, x, axis):
        magnitudes = jnp.abs(_rows(x, axis))
        sums = jnp.sum(magnitudes, axis=1)
        return sums, (magnitudes, sums)

    def shrink(self, x, axis, t, aux, warm):
        magnitudes, sums = aux
        # A group whose budget is 0 is zeroed whatever its threshold: give it its own l1 norm
        # as radius and 0 as start, so that it leaves the inner loop at once instead of setting
        # the loop's trip count (most groups of a sparse layer have a zero budget).
        dead = t <= 0
        radius = jnp.where(dead, sums, t)
        theta = projections.l1_threshold(magnitudes, radius, axis=-1, init=jnp.where(dead, 0, warm))
        kept = jnp.maximum(magnitudes - theta[:, None], 0.0)
        rows = jnp.where(dead[:, None], 0.0, jnp.sign(_rows(x, axis)) * kept)
        # A dead group's threshold is 0 here: its next start is cold (and never a stale NaN).
        return _unrows(rows, x.shape, axis), theta

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        return jnp.zeros((leaf.shape[leaf.axis],), leaf.dtype)


class _BiLevelL1Inf(_BiLevel):
    name = "bilevel_l1inf"

    def measure(self, x, axis):
        return jnp.max(jnp.abs(_rows(x, axis)), axis=1), None

    def shrink(self, x, axis, t, aux, warm):
        rows = _rows(x, axis)
        return _unrows(jnp.clip(rows, -t[:, None], t[:, None]), x.shape, axis), warm


class _Nuclear(_BiLevel):
    name = "nuclear"
    needs_groups = False

    def measure(self, x, axis):
        u, s, vt = jnp.linalg.svd(x.reshape(-1, x.shape[-1]), full_matrices=False)
        return s, (u, vt)

    def shrink(self, x, axis, t, aux, warm):
        u, vt = aux
        return ((u * t[None, :]) @ vt).reshape(x.shape), warm


class _ExactL1Inf:
    """Exact Euclidean projection onto sum_i max_j |w_ij| <= eta (not bi-level)."""

    name = "l1inf"
    needs_groups = True
    inner_warm = False

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        return jnp.zeros((), leaf.dtype)


class _NestedL111:
    """The tensor generalisation l1,1,1 of Guyard & Barlaud's Discussion (per leaf only)."""

    name = "l111"
    needs_groups = True
    inner_warm = False

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        return jnp.zeros((), leaf.dtype)


# --------------------------------------------------------------------------- projection of leaves


def _project_bilevel_per_leaf(constraint, xs, leaves, warm):
    outs, new_warm = [], {}
    for x, leaf in zip(xs, leaves):
        m, aux = constraint.measure(x, leaf.axis)
        outer, inner = warm[leaf.path]
        theta = constraint.outer_threshold([m], leaf.radius, outer)
        t = jnp.maximum(m - theta, 0.0)
        y, inner = constraint.shrink(x, leaf.axis, t, aux, inner)
        outs.append(y)
        new_warm[leaf.path] = (theta, inner)
    return outs, new_warm


def _project_bilevel_global(constraint, xs, leaves, warm, radius):
    measured = [constraint.measure(x, leaf.axis) for x, leaf in zip(xs, leaves)]
    theta = constraint.outer_threshold([m for m, _ in measured], radius, warm["__global__"])
    outs, new_warm = [], {"__global__": theta}
    for x, leaf, (m, aux) in zip(xs, leaves, measured):
        t = jnp.maximum(m - theta, 0.0)
        y, inner = constraint.shrink(x, leaf.axis, t, aux, warm[leaf.path])
        outs.append(y)
        new_warm[leaf.path] = inner
    return outs, new_warm


def _project_l1inf_global(xs, leaves, radius):
    rows = [_rows(x, leaf.axis) for x, leaf in zip(xs, leaves)]
    width = max(r.shape[1] for r in rows)
    # Zero padding leaves the l1,inf projection of the real entries unchanged: padded zeros
    # never set a group maximum and are mapped to zero.
    padded = jnp.concatenate([jnp.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
    projected = projections.l1inf_ball(padded, radius, group_axis=0)
    outs, start = [], 0
    for x, leaf, r in zip(xs, leaves, rows):
        block = projected[start : start + r.shape[0], : r.shape[1]]
        start += r.shape[0]
        outs.append(_unrows(block, x.shape, leaf.axis))
    return outs


def _project(constraint, xs, leaves, warm, global_radius):
    """Projects the selected leaves (compute dtype); returns them and the new warm starts."""
    if isinstance(constraint, _BiLevel):
        if global_radius is None:
            return _project_bilevel_per_leaf(constraint, xs, leaves, warm)
        return _project_bilevel_global(constraint, xs, leaves, warm, global_radius)
    if isinstance(constraint, _ExactL1Inf):
        if global_radius is None:
            outs = [
                projections.l1inf_ball(x, lf.radius, group_axis=lf.axis)
                for x, lf in zip(xs, leaves)
            ]
        else:
            outs = _project_l1inf_global(xs, leaves, global_radius)
        return outs, warm
    outs = [projections.l111_ball(x, leaf.radius) for x, leaf in zip(xs, leaves)]
    return outs, warm
