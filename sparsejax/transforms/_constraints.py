"""The constraints behind the ``project_*`` transformations, and the projection of leaves.

A bi-level constraint is a vector of group measures ``m`` (one per group), an outer l1
projection ``t = P_l1(m, eta)`` and a per-group shrink that brings each group's measure down to
``t_i``. l1, l2,1, l1,1, bi-level l1,inf and the nuclear norm all have this form, which is what
makes the global budget (one outer projection over all leaves' groups) uniform. The exact
l1,inf and the nested l1,1,1 operators are projected leaf by leaf with
:mod:`sparsejax.projections`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparsejax import projections
from sparsejax.projections import _l1inf, _nuclear
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


class _NuclearWarm(NamedTuple):
    """Inner state of a nuclear-norm leaf projected with a warm start (``warm_rank > 0``)."""

    basis: jax.Array  # (n, k): the leading right singular vectors of the last projection
    attempt: jax.Array  # bool: the next projection tries the warm path first
    certified: jax.Array  # bool: the last projection was the certified warm one


class _Nuclear(_BiLevel):
    """Full SVD per leaf, or a warm-started truncated SVD certified against it.

    With ``warm_rank = k > 0`` a leaf whose matrix has ``min(m, n) >= 2 k`` keeps the ``k``
    leading right singular vectors of its last projection. The next projection computes
    ``k`` Ritz triplets from them (block subspace iteration, ``O(m n k)``) and keeps them if
    :func:`sparsejax.projections._nuclear._ritz_certificate` proves that they give the
    full-SVD projection to a few ulps of ``||W||_F`` (the discarded spectrum is below the
    threshold and the kept triplets have converged); otherwise the full SVD runs, in a
    ``lax.cond``. After a full SVD the warm path is tried next only where it would have
    passed on this step's spectrum (rank ``<= k`` and the spectrum beyond the kept part below
    the threshold), so a leaf whose projection is not low rank pays for one SVD per step and
    nothing more.
    """

    name = "nuclear"
    needs_groups = False

    def __init__(self, warm_rank: int = 0):
        self.warm_rank = warm_rank

    def measure(self, x, axis):
        u, s, vt = jnp.linalg.svd(x.reshape(-1, x.shape[-1]), full_matrices=False)
        return s, (u, vt)

    def shrink(self, x, axis, t, aux, warm):
        u, vt = aux
        return ((u * t[None, :]) @ vt).reshape(x.shape), warm

    def rank_of(self, leaf: _Leaf) -> int:
        """The static warm rank of a leaf: 0 (always the full SVD) unless it pays."""
        m, n = math.prod(leaf.shape[:-1]), leaf.shape[-1]
        k = self.warm_rank
        return k if 0 < 2 * k <= min(m, n) else 0

    def init_inner(self, leaf: _Leaf):
        k = self.rank_of(leaf)
        if k == 0:
            return jnp.zeros((), leaf.dtype)
        no = jnp.zeros((), bool)
        return _NuclearWarm(jnp.zeros((leaf.shape[-1], k), leaf.dtype), no, no)


class _ExactL1Inf:
    """Exact Euclidean projection onto sum_i max_j |w_ij| <= eta (not bi-level).

    The warm starts are the last step's Newton threshold and its per-group caps.
    """

    name = "l1inf"
    needs_groups = True
    inner_warm = True

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        return jnp.zeros((leaf.shape[leaf.axis],), leaf.dtype)


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


def _l1inf_warm(x, axis, radius, theta, caps):
    """The exact l1,inf projection from a warm start: ``(projection, theta, caps)``."""
    if x.size == 0:
        return x, theta, caps
    return _l1inf._l1inf_warm_core(x, axis, jnp.asarray(radius, x.dtype), theta, caps)


def _project_l1inf_per_leaf(xs, leaves, warm):
    outs, new_warm = [], {}
    for x, leaf in zip(xs, leaves):
        y, theta, caps = _l1inf_warm(x, leaf.axis, leaf.radius, *warm[leaf.path])
        outs.append(y)
        new_warm[leaf.path] = (theta, caps)
    return outs, new_warm


def _project_l1inf_global(xs, leaves, warm, radius):
    rows = [_rows(x, leaf.axis) for x, leaf in zip(xs, leaves)]
    width = max(r.shape[1] for r in rows)
    # Zero padding leaves the l1,inf projection of the real entries unchanged: padded zeros
    # never set a group maximum and are mapped to zero.
    padded = jnp.concatenate([jnp.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
    caps = jnp.concatenate([warm[leaf.path] for leaf in leaves]).astype(padded.dtype)
    projected, theta, caps = _l1inf_warm(padded, 0, radius, warm["__global__"], caps)
    outs, new_warm, start = [], {"__global__": theta}, 0
    for x, leaf, r in zip(xs, leaves, rows):
        block = projected[start : start + r.shape[0], : r.shape[1]]
        new_warm[leaf.path] = caps[start : start + r.shape[0]].astype(leaf.dtype)
        start += r.shape[0]
        outs.append(_unrows(block, x.shape, leaf.axis))
    return outs, new_warm


# Extra subspace iterations before the Ritz step of a warm nuclear projection: one brings the
# kept triplets of a float32 step to their rounding floor; float64's floor is 1e-9 lower.
_WARM_ITERATIONS = {4: 1, 8: 3}


def _after_full_svd(s, vt, theta, k, dtype):
    """The warm state after a full SVD: its leading vectors, and whether to try warm next.

    The next step is tried warm if this one would have been certified from exact triplets:
    at most ``k`` singular values above ``theta`` and
    ``sqrt(max_{i >= rank} s_i^2 + sum_{i >= k} s_i^2) < theta`` (the bound the certificate
    applies, evaluated on the exact spectrum).
    """
    rank = jnp.sum(s > theta)
    index = jnp.arange(s.shape[0])
    discarded = jnp.max(jnp.where(index >= rank, s, 0))
    beyond = jnp.sum(jnp.where(index >= k, jnp.square(s), 0))
    hopeful = (theta > 0) & (rank <= k) & (jnp.sqrt(jnp.square(discarded) + beyond) < theta)
    return _NuclearWarm(vt[:k].T.astype(dtype), hopeful, jnp.zeros((), bool))


def _project_nuclear_group(constraint, xs, leaves, radius, outer, inners):
    """Nuclear projection of leaves that share one threshold (one leaf, or a global budget).

    Returns the projected leaves, the threshold and the new inner states.
    """
    matrices = [x.reshape(-1, x.shape[-1]) for x in xs]
    ks = [constraint.rank_of(leaf) for leaf in leaves]

    def full(_):
        svds = [jnp.linalg.svd(a, full_matrices=False) for a in matrices]
        theta = constraint.outer_threshold([s for _, s, _ in svds], radius, outer)
        outs, new_inners = [], []
        for x, (u, s, vt), k, inner in zip(xs, svds, ks, inners):
            outs.append(((u * jnp.maximum(s - theta, 0.0)[None, :]) @ vt).reshape(x.shape))
            new_inners.append(inner if k == 0 else _after_full_svd(s, vt, theta, k, x.dtype))
        return outs, theta, new_inners

    if not any(ks):
        return full(None)

    def warm(_):
        # A leaf too small to warm start is decomposed exactly here too (its triplets need no
        # certificate); the others give k Ritz triplets each.
        triplets = []
        for a, k, inner in zip(matrices, ks, inners):
            if k == 0:
                u, s, vt = jnp.linalg.svd(a, full_matrices=False)
                triplets.append((u, s, vt.T, None))
            else:
                ritz = _nuclear._warm_ritz(a, inner.basis, _WARM_ITERATIONS[a.dtype.itemsize])
                triplets.append((ritz.left, ritz.values, ritz.right, ritz))
        theta = constraint.outer_threshold([s for _, s, _, _ in triplets], radius, outer)
        certified = jnp.ones((), bool)
        for *_, ritz in triplets:
            if ritz is not None:
                certified &= _nuclear._ritz_certificate(ritz, theta)[0]

        def accept(_):
            outs, new_inners = [], []
            for x, (u, s, v, ritz), inner in zip(xs, triplets, inners):
                outs.append(((u * jnp.maximum(s - theta, 0.0)[None, :]) @ v.T).reshape(x.shape))
                yes = jnp.ones((), bool)
                new_inners.append(inner if ritz is None else _NuclearWarm(v, yes, yes))
            return outs, theta, new_inners

        return jax.lax.cond(certified, accept, full, None)

    attempt = jnp.ones((), bool)
    for k, inner in zip(ks, inners):
        if k:
            attempt &= inner.attempt
    return jax.lax.cond(attempt, warm, full, None)


def _project_nuclear(constraint, xs, leaves, warm, global_radius):
    if global_radius is not None:
        inners = [warm[leaf.path] for leaf in leaves]
        outs, theta, inners = _project_nuclear_group(
            constraint, xs, leaves, global_radius, warm["__global__"], inners
        )
        new_warm = {leaf.path: inner for leaf, inner in zip(leaves, inners)}
        new_warm["__global__"] = theta
        return outs, new_warm
    outs, new_warm = [], {}
    for x, leaf in zip(xs, leaves):
        outer, inner = warm[leaf.path]
        (y,), theta, (inner,) = _project_nuclear_group(
            constraint, [x], [leaf], leaf.radius, outer, [inner]
        )
        outs.append(y)
        new_warm[leaf.path] = (theta, inner)
    return outs, new_warm


def _project(constraint, xs, leaves, warm, global_radius):
    """Projects the selected leaves (compute dtype); returns them and the new warm starts."""
    if isinstance(constraint, _Nuclear) and constraint.warm_rank > 0:
        return _project_nuclear(constraint, xs, leaves, warm, global_radius)
    if isinstance(constraint, _BiLevel):
        if global_radius is None:
            return _project_bilevel_per_leaf(constraint, xs, leaves, warm)
        return _project_bilevel_global(constraint, xs, leaves, warm, global_radius)
    if isinstance(constraint, _ExactL1Inf):
        if global_radius is None:
            return _project_l1inf_per_leaf(xs, leaves, warm)
        return _project_l1inf_global(xs, leaves, warm, global_radius)
    outs = [projections.l111_ball(x, leaf.radius) for x, leaf in zip(xs, leaves)]
    return outs, warm
