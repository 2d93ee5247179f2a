r"""The exact Euclidean projection onto the l1,inf ball."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sparsejax.projections._common import (
    _flush_denormals,
    _group_rows,
    _ungroup_rows,
    _unless_empty,
    _validate_groups,
)
from sparsejax.projections._l1 import _active_set_threshold, _count_and_sum


def _newton_structure(magnitudes, caps):
    """Rows with a positive cap, and the size and sum of their ``{a >= cap}`` sets.

    ``>=`` gives the right derivative of the caps in theta, which is what Newton's method
    needs at theta = 0, where each cap is its row maximum and ``{a > cap}`` is empty.
    """
    held = (magnitudes >= caps[:, None]) & (caps[:, None] > 0)
    return _count_and_sum(held.astype(jnp.int32), jnp.where(held, magnitudes, 0))


@jax.custom_jvp
def _l1inf_caps(magnitudes, radius):
    r"""Per-row caps :math:`\mu_i` of the exact l1,inf projection of ``(G, m)`` magnitudes.

    :math:`\mu_i(\theta)` is the l1-ball threshold of row ``i`` for radius :math:`\theta`
    (so :math:`\mu_i(0) = \max_j a_{ij}`); :math:`F(\theta) = \sum_i \mu_i(\theta) - \eta` is
    convex, decreasing and piecewise affine, with :math:`\mu_i = (S_i - \theta)/k_i` on each
    piece. Newton's method from :math:`\theta = 0` never overshoots the root (a tangent of a
    convex function lies below it), increases monotonically, and stops exactly once the
    pieces stop changing.
    """
    rows, width = magnitudes.shape
    row_sum, row_max = jnp.sum(magnitudes, axis=-1), jnp.max(magnitudes, axis=-1)

    def step(state):
        theta, caps, used, _, iteration = state
        radii = jnp.broadcast_to(theta, (rows,))
        caps = _active_set_threshold(magnitudes, radii, caps, row_sum)
        caps = jnp.where(theta == 0, row_max, jnp.maximum(caps, 0))
        caps = jnp.where(row_sum <= theta, 0, caps)
        count, total = _newton_structure(magnitudes, caps)
        inverse = jnp.where(count > 0, 1 / jnp.maximum(count, 1).astype(theta.dtype), 0)
        slope = jnp.sum(inverse)
        root = (jnp.sum(total * inverse) - radius) / jnp.where(slope > 0, slope, 1)
        changed = jnp.any(count != used)
        theta = jnp.where(changed & (slope > 0), jnp.maximum(theta, root), theta)
        return theta, caps, count, changed, iteration + 1

    def keep_going(state):
        *_, changed, iteration = state
        return changed & (iteration < rows * (width + 1) + 2)

    zero = jnp.zeros((), magnitudes.dtype)
    start = (zero, row_max, jnp.full((rows,), -1, jnp.int32), jnp.array(True), 0)
    _, caps, *_ = jax.lax.while_loop(keep_going, step, start)
    # A NaN row drops out of the Newton sums; it must still poison every cap, and so must an
    # infinite total (an inf entry or an overflow: the caller returns the input at radius inf).
    caps = jnp.where(jnp.isfinite(jnp.sum(row_sum)), caps, jnp.nan)
    return jnp.where(radius == 0, 0, caps)


@_l1inf_caps.defjvp
def _l1inf_caps_jvp(primals, tangents):
    magnitudes, radius = primals
    magnitudes_dot, radius_dot = tangents
    caps = _l1inf_caps(magnitudes, radius)
    # On fixed pieces: k_i mu_i = S_i - theta for live rows, and sum_i mu_i = eta.
    held = (magnitudes > caps[:, None]) & (caps[:, None] > 0)
    count = jnp.sum(held, axis=-1)
    inverse = jnp.where(count > 0, 1 / jnp.maximum(count, 1).astype(caps.dtype), 0)
    total_dot = jnp.sum(jnp.where(held, magnitudes_dot, 0), axis=-1)
    slope = jnp.sum(inverse)
    theta_dot = (jnp.sum(total_dot * inverse) - radius_dot) / jnp.where(slope > 0, slope, 1)
    caps_dot = jnp.where(count > 0, (total_dot - theta_dot) * inverse, 0)
    return caps, caps_dot


def l1inf_ball(x, radius, *, group_axis=0):
    r"""Euclidean projection onto the l1,inf ball :math:`\sum_i \max_j |w_{ij}| \le \eta`.

    The projection clips each group at its own level,
    :math:`w_{ij} = \operatorname{sign}(v_{ij}) \min(|v_{ij}|, \mu_i)`, where
    :math:`\mu_i(\theta)` is the l1-ball threshold of :math:`|v_i|` for radius
    :math:`\theta` (equivalently :math:`\max(0, \max_k (S_i(k) - \theta)/k)` with
    :math:`S_i(k)` the sum of the ``k`` largest :math:`|v_{ij}|`), and :math:`\theta` solves
    :math:`\sum_i \mu_i(\theta) = \eta`. That equation is convex, decreasing and piecewise
    affine in :math:`\theta`; it is solved exactly by Newton's method from :math:`\theta = 0`,
    which increases monotonically without overshooting and stops when the affine piece stops
    changing (each evaluation is a warm-started :func:`l1_threshold` of all groups at once).

    Args:
      x: floating array of any rank >= 1.
      radius: nonnegative scalar :math:`\eta`.
      group_axis: a group is the slice at one index of this axis.

    Returns:
      The projection, shape and dtype of ``x``. An empty ``x`` (no group, or groups
      with no entry) is returned as is.

    Raises:
      ValueError: for a non-floating ``x``, a bad ``group_axis``, or a concrete negative,
        NaN or non-scalar ``radius``.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from sparsejax.projections import bilevel_l1inf_ball, l1inf_ball
      >>> x = jnp.array([[3.0, -3.0], [2.0, 0.0]])
      >>> print(np.asarray(l1inf_ball(x, 2.0)).round(3))
      [[ 2. -2.]
       [ 0.  0.]]
      >>> print(np.asarray(bilevel_l1inf_ball(x, 2.0)).round(3))  # not the Euclidean projection
      [[ 1.5 -1.5]
       [ 0.5  0. ]]
    """
    return _unless_empty(_l1inf_core, *_validate_groups(x, group_axis, radius))


@functools.partial(jax.jit, static_argnums=1)
def _l1inf_core(x, group_axis, radius):
    rows = _group_rows(x, group_axis)
    magnitudes = jnp.abs(rows)
    inside = jnp.sum(jnp.max(magnitudes, axis=-1)) <= radius
    caps = _l1inf_caps(magnitudes, radius)
    clipped = jnp.sign(rows) * jnp.minimum(magnitudes, caps[:, None])
    return _ungroup_rows(jnp.where(inside, _flush_denormals(rows), clipped), x, group_axis)
