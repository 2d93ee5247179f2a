r"""Group balls: the exact l2,1 projection and the bi-level l1,1 and l1,inf operators."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sparsejax.projections._common import (
    _check_method,
    _flush_denormals,
    _group_rows,
    _ungroup_rows,
    _unless_empty,
    _validate_groups,
)
from sparsejax.projections._l1 import _last_axis_threshold, _shrink, _shrink_nonnegative


def _budget_split(group_norms, radius):
    """Guyard & Barlaud's (2020) first stage: ``t = P_l1(norms, radius)`` for nonnegative norms."""
    theta = _last_axis_threshold(group_norms, radius)
    return _shrink_nonnegative(group_norms, theta[..., None]), theta


def l21_ball(x, radius, *, group_axis=0):
    r"""Euclidean projection onto the l2,1 (group lasso) ball (Guyard & Barlaud (2020), Alg. 2).

    .. math::

        t = P_{\ell_1}\big((\|v_i\|_2)_i, \eta\big), \qquad
        w_i = v_i \, \frac{t_i}{\max(t_i, \|v_i\|_2)},

    the exact projection onto :math:`\{w : \sum_i \|w_i\|_2 \le \eta\}`. The paper's text
    writes :math:`\|v_i\|_1` in the first step; with l1 norms the result is not this
    projection, so sparsejax uses l2 norms (DESIGN.md).

    The group norms are computed as ``s * ||v_i / s||`` with ``s`` the group's largest
    magnitude, so inputs at 1e-30 or 1e30 (whose squares under- or overflow in float32)
    are projected like any other scale. An ``inf`` entry gives NaN below a finite radius.

    Args:
      x: floating array of any rank >= 1.
      radius: nonnegative scalar :math:`\eta`.
      group_axis: a group is the slice ``x[..., i, ...]`` at index ``i`` of this axis
        (all other axes belong to the group).

    Returns:
      The projection, shape and dtype of ``x``. An empty ``x`` (no group, or groups
      with no entry) is returned as is.

    Raises:
      ValueError: for a non-floating ``x``, a bad ``group_axis``, or a concrete negative,
        NaN or non-scalar ``radius``.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from sparsejax.projections import l21_ball
      >>> w = l21_ball(jnp.array([[3.0, 4.0], [0.6, 0.8]]), 2.0)
      >>> print(np.asarray(w).round(3))
      [[1.2 1.6]
       [0.  0. ]]
    """
    return _unless_empty(_l21_core, *_validate_groups(x, group_axis, radius))


def _l2_norms(rows):
    """Row l2 norms: ``sqrt(sum(row**2))`` when every row's sum of squares is finite and far
    above the underflow threshold (then no square that underflows can matter), else the
    scaled form of :func:`_scaled_l2_norms`. One pass over the data in the common case."""
    squares = jnp.sum(jnp.square(rows), axis=-1)
    info = jnp.finfo(rows.dtype)
    plain = jnp.all(jnp.isfinite(squares) & (squares >= info.tiny / info.eps))
    return jax.lax.cond(
        plain, lambda r, q: jnp.sqrt(q), lambda r, q: _scaled_l2_norms(r), rows, squares
    )


def _scaled_l2_norms(rows):
    """Row l2 norms as ``s * ||row / s||`` with ``s`` the row's peak magnitude: plain squares
    of 1e-30 underflow and of 1e30 overflow in float32. Rows with an inf (NaN) have norm inf
    (NaN)."""
    # The norm is homogeneous, so the scale is a constant for the derivative. XLA divides by
    # multiplying with 1 / s, which must stay a normal number: s is capped at 2^(maxexp - 8).
    peak = jax.lax.stop_gradient(jnp.max(jnp.abs(rows), axis=-1))
    live = (peak > 0) & (peak < jnp.inf)
    scale = jnp.where(live, jnp.minimum(peak, 2.0 ** (jnp.finfo(rows.dtype).maxexp - 8)), 1)
    squares = jnp.sum(jnp.square(rows / scale[:, None]), axis=-1)
    # Double select: sqrt has an infinite slope at 0, which must not reach the gradient.
    norms = scale * jnp.sqrt(jnp.where(live, squares, 1))
    return jnp.where(live, norms, peak)  # 0, inf or NaN as the peak is


@functools.partial(jax.jit, static_argnums=1)
def _l21_core(x, group_axis, radius):
    rows = _group_rows(x, group_axis)
    norms = _l2_norms(rows)
    targets, theta = _budget_split(norms, radius)
    scale = jnp.where(norms == 0, 1, targets / jnp.where(norms == 0, 1, norms))
    projected = jnp.where(theta == 0, _flush_denormals(rows), rows * scale[:, None])
    return _ungroup_rows(projected, x, group_axis)


def _nested_l1(values, radius, depth, method):
    """Bi-level l1 over ``depth`` nested group axes at the front of ``values``.

    ``values`` has shape ``(d_1, ..., d_depth, m)``. Level ``k`` splits each level-``k-1``
    budget between its ``d_k`` children in proportion given by an l1 projection of their l1
    norms; the last level projects each length-``m`` row onto its own budget.
    """
    magnitudes = jnp.abs(values)
    norms = [jnp.sum(magnitudes, axis=-1)]
    for _ in range(depth - 1):
        norms.insert(0, jnp.sum(norms[0], axis=-1))
    budget, top_theta = _budget_split(norms[0], radius)
    for level_norms in norms[1:]:
        budget, _ = _budget_split(level_norms, budget)
    theta = _last_axis_threshold(magnitudes, budget, method=method)
    projected = _shrink(values, magnitudes, theta)
    # Inside the ball every budget equals its norm; return the input exactly.
    return jnp.where(top_theta == 0, _flush_denormals(values), projected)


def l11_ball(x, radius, *, group_axis=0, method="active_set"):
    r"""Bi-level l1,1 projection (Guyard & Barlaud (2020), Alg. 3): it zeroes whole groups.

    .. math::

        t = P_{\ell_1}\big((\|v_i\|_1)_i, \eta\big), \qquad w_i = P_{\ell_1}(v_i, t_i),

    one batched :func:`l1_ball` call with per-group radii. The result satisfies
    :math:`\sum_{ij} |w_{ij}| \le \eta`, but it is not the Euclidean projection onto that
    set (that is :func:`l1_ball` of the flattened array): a group whose l1 norm falls below
    the first-stage threshold is zeroed as a whole.

    Args:
      x: floating array of any rank >= 1.
      radius: nonnegative scalar :math:`\eta`.
      group_axis: a group is the slice at one index of this axis. ``0`` groups a Dense
        kernel ``(in, out)`` by input unit; ``-1`` groups by output unit.
      method: the l1 method of the second stage (see :func:`l1_threshold`).

    Returns:
      The bi-level projection, shape and dtype of ``x``. An empty ``x`` (no group, or groups
      with no entry) is returned as is.

    Raises:
      ValueError: for a non-floating ``x``, a bad ``group_axis`` or ``method``, or a
        concrete negative, NaN or non-scalar ``radius``.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from sparsejax.projections import l11_ball
      >>> w = l11_ball(jnp.array([[3.0, 2.0], [0.5, 0.5]]), 3.0)
      >>> print(np.asarray(w).round(3))
      [[2. 1.]
       [0. 0.]]
    """
    _check_method(method)
    return _unless_empty(_l11_core, *_validate_groups(x, group_axis, radius), method)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _l11_core(x, group_axis, radius, method):
    projected = _nested_l1(_group_rows(x, group_axis), radius, 1, method)
    return _ungroup_rows(projected, x, group_axis)


def bilevel_l1inf_ball(x, radius, *, group_axis=0):
    r"""Bi-level l1,inf projection: split the budget on group maxima, then clip.

    .. math::

        t = P_{\ell_1}\big((\max_j |v_{ij}|)_i, \eta\big), \qquad
        w_{ij} = \operatorname{clip}(v_{ij}, -t_i, t_i).

    The result satisfies :math:`\sum_i \max_j |w_{ij}| \le \eta` and zeroes whole groups, but
    it is not the Euclidean projection (:func:`l1inf_ball` is).

    Args:
      x: floating array of any rank >= 1.
      radius: nonnegative scalar :math:`\eta`.
      group_axis: a group is the slice at one index of this axis.

    Returns:
      The bi-level projection, shape and dtype of ``x``. An empty ``x`` (no group, or groups
      with no entry) is returned as is.

    Raises:
      ValueError: for a non-floating ``x``, a bad ``group_axis``, or a concrete negative,
        NaN or non-scalar ``radius``.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from sparsejax.projections import bilevel_l1inf_ball
      >>> w = bilevel_l1inf_ball(jnp.array([[3.0, -1.0], [0.5, 0.2]]), 2.0)
      >>> print(np.asarray(w).round(3))
      [[ 2. -1.]
       [ 0.  0.]]
    """
    return _unless_empty(_bilevel_l1inf_core, *_validate_groups(x, group_axis, radius))


@functools.partial(jax.jit, static_argnums=1)
def _bilevel_l1inf_core(x, group_axis, radius):
    rows = _group_rows(x, group_axis)
    magnitudes = jnp.abs(rows)
    caps, theta = _budget_split(jnp.max(magnitudes, axis=-1), radius)
    clipped = jnp.sign(rows) * jnp.minimum(magnitudes, caps[:, None])
    return _ungroup_rows(jnp.where(theta == 0, _flush_denormals(rows), clipped), x, group_axis)
