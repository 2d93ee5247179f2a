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


def _newton(magnitudes, radius, theta_start, caps_start):
    r"""``(theta, caps)`` of the exact l1,inf projection, Newton's method from ``theta_start``.

    :math:`\mu_i(	heta)` is the l1-ball threshold of row ``i`` for radius :math:`	heta`
    (so :math:`\mu_i(0) = \max_j a_{ij}`); :math:`F(	heta) = \sum_i \mu_i(	heta) - \eta` is
    convex, decreasing and piecewise affine, with :math:`\mu_i = (S_i - 	heta)/k_i` on each
    piece. Newton's method from a point left of the root never overshoots it (a tangent of a
    convex function lies below it), increases monotonically, and stops exactly once the
    pieces stop changing. From a warm start right of the root (the previous training step's
    threshold) the first step goes left, to a point that is left of the root for the same
    reason; the iteration then increases as from a cold start. A start that is not a
    positive finite number, or one where every row is spent (zero slope), starts from 0.

    ``caps_start`` warm-starts the per-row thresholds of the first evaluation (any start gives
    the same caps). At :math:`	heta = 0` the caps are the row maxima, taken without a
    threshold search (from a cold start that search was the longest of all).
    """
    rows, width = magnitudes.shape
    row_sum, row_max = jnp.sum(magnitudes, axis=-1), jnp.max(magnitudes, axis=-1)
    dtype = magnitudes.dtype

    def caps_at(theta, caps):
        def search(caps):
            radii = jnp.broadcast_to(theta, (rows,))
            return jnp.maximum(_active_set_threshold(magnitudes, radii, caps, row_sum), 0)

        caps = jax.lax.cond(theta == 0, lambda _: row_max, search, caps)
        return jnp.where(row_sum <= theta, 0, caps)

    def step(state):
        theta, caps, used, _, iteration = state
        caps = caps_at(theta, caps)
        count, total = _newton_structure(magnitudes, caps)
        inverse = jnp.where(count > 0, 1 / jnp.maximum(count, 1).astype(dtype), 0)
        slope = jnp.sum(inverse)
        root = (jnp.sum(total * inverse) - radius) / jnp.where(slope > 0, slope, 1)
        changed = jnp.any(count != used)
        # The first step may go down (from a warm start right of the root); later ones only
        # up. Without slope a warm start has spent every row: restart from 0.
        first = jnp.where(slope > 0, jnp.maximum(root, 0), 0)
        later = jnp.where(changed & (slope > 0), jnp.maximum(theta, root), theta)
        new_theta = jnp.where(iteration == 0, first, later)
        # A step that leaves theta unchanged (to the bit) would repeat this evaluation and
        # stop: stop now, with the caps of this theta.
        return new_theta, caps, count, changed & (new_theta != theta), iteration + 1

    def keep_going(state):
        *_, changed, iteration = state
        return changed & (iteration < rows * (width + 1) + 3)

    theta_start = jnp.asarray(theta_start, dtype)
    theta_start = jnp.where(jnp.isfinite(theta_start) & (theta_start > 0), theta_start, 0)
    caps_start = jnp.where(theta_start == 0, row_max, caps_start)
    start = (theta_start, caps_start, jnp.full((rows,), -1, jnp.int32), jnp.array(True), 0)
    # A cold start's first step (theta = 0, caps = row maxima) gives theta = root > 0 or the
    # exact answer 0; the loop's last evaluation is at the returned theta.
    _, caps, _, _, _ = state = jax.lax.while_loop(keep_going, step, start)
    theta = state[0]
    # A NaN row drops out of the Newton sums; it must still poison every cap, and so must an
    # infinite total (an inf entry or an overflow: the caller returns the input at radius inf).
    caps = jnp.where(jnp.isfinite(jnp.sum(row_sum)), caps, jnp.nan)
    return theta, jnp.where(radius == 0, 0, caps)


@jax.custom_jvp
def _l1inf_caps(magnitudes, radius, theta_start, caps_start):
    r"""Per-row caps :math:`\mu_i` and the threshold :math:`\theta` (see :func:`_newton`).

    The starts do not change the answer, so they get no derivative.
    """
    theta, caps = _newton(magnitudes, radius, theta_start, caps_start)
    return caps, theta


@_l1inf_caps.defjvp
def _l1inf_caps_jvp(primals, tangents):
    magnitudes, radius, *starts = primals
    magnitudes_dot, radius_dot, *_ = tangents
    caps, theta = _l1inf_caps(magnitudes, radius, *starts)
    # On fixed pieces: k_i mu_i = S_i - theta for live rows, and sum_i mu_i = eta.
    held = (magnitudes > caps[:, None]) & (caps[:, None] > 0)
    count = jnp.sum(held, axis=-1)
    inverse = jnp.where(count > 0, 1 / jnp.maximum(count, 1).astype(caps.dtype), 0)
    total_dot = jnp.sum(jnp.where(held, magnitudes_dot, 0), axis=-1)
    slope = jnp.sum(inverse)
    theta_dot = (jnp.sum(total_dot * inverse) - radius_dot) / jnp.where(slope > 0, slope, 1)
    caps_dot = jnp.where(count > 0, (total_dot - theta_dot) * inverse, 0)
    return (caps, theta), (caps_dot, jnp.where(slope > 0, theta_dot, 0))


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
    zero = jnp.zeros((), radius.dtype)
    return _l1inf_warm_core(x, group_axis, radius, zero, zero)[0]


@functools.partial(jax.jit, static_argnums=1)
def _l1inf_warm_core(x, group_axis, radius, theta_start, caps_start):
    """The projection, its threshold and its caps, Newton's method from a warm start.

    For the projection transformations, which keep ``(theta, caps)`` between training steps:
    from the last step's answer the solve takes two or three Newton steps of a few passes
    each, against about eight from ``theta = 0`` (the answer does not depend on the start).
    """
    rows = _group_rows(x, group_axis)
    magnitudes = jnp.abs(rows)
    inside = jnp.sum(jnp.max(magnitudes, axis=-1)) <= radius
    caps_start = jnp.broadcast_to(jnp.asarray(caps_start, radius.dtype), magnitudes.shape[:1])
    caps, theta = _l1inf_caps(magnitudes, radius, theta_start, caps_start)
    clipped = jnp.sign(rows) * jnp.minimum(magnitudes, caps[:, None])
    projected = _ungroup_rows(jnp.where(inside, _flush_denormals(rows), clipped), x, group_axis)
    return projected, jnp.where(inside, 0, theta), caps
