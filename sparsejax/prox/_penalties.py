"""Proximal operators of the (group) L1 and L0 penalties, in the metric of the step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sparsejax.prox._groups import _compute_dtype, _frobenius, _group_scale, group_axes
from sparsejax.prox._thresholds import ArrayLike, check_nonnegative, soft_threshold

# Newton on the secular equation of the weighted group-lasso prox converges monotonically and
# fast (quadratically near the root); the cap only guards against float stagnation.
_MAX_NEWTON_STEPS = 50


def l1(x: ArrayLike, lam: ArrayLike, step: ArrayLike = 1.0, *, group: str = "weight") -> jax.Array:
    r"""Proximal operator of the (group) L1 penalty: soft thresholding / group shrinkage.

    .. math::
        \operatorname*{argmin}_w \sum_i \frac{(w_i - z_i)^2}{2\mu_i}
        + \lambda \sum_g \|w_g\|_F .

    * ``group="weight"``: ``sign(z) max(|z| - lam mu, 0)``. (The paper's eq. (9) prints the
      threshold as ``rho / 2 mu``; its prox (3), ``(1/mu)||W - W'||^2 + rho H``, gives
      ``rho mu / 2``, which is ``lam mu`` with ``rho = 2 lam``.)
    * groups with a group-constant step: ``w_g = z_g max(1 - lam mu / ||z_g||, 0)``.
    * groups with per-weight steps: the exact prox in the metric ``diag(1/mu)``. The group is
      zero iff ``||z_g / mu_g||_2 <= lam``; otherwise ``w_i = z_i r / (r + lam mu_i)`` where
      ``r = ||w_g||`` is the root of ``sum_i z_i^2 / (r + lam mu_i)^2 = 1``, found by Newton's
      method on ``f(r)^{-1/2} = 1`` (a concave increasing function, so Newton from a point left
      of the root increases monotonically to it; the start
      ``max(||z_g|| - lam max mu, max_i(|z_i| - lam mu_i), 0)`` is such a point and is already
      the root when ``mu`` is constant on the group). This is the same metric in which
      :func:`l0`'s group rule is the exact prox, and it reduces to soft thresholding on
      single-weight groups. A group-mean step would be cheaper but would no longer be the prox
      of the problem RMSProp's preconditioned step solves.

    Args:
      x: the point ``z`` (a kernel).
      lam: the penalty weight, a non-negative scalar.
      step: the step ``mu``: a non-negative scalar, or an array broadcastable to ``x``
        (per-weight steps, e.g. RMSProp's ``lr / (sqrt(nu) + eps)``).
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"`` (see the module docstring).

    Returns:
      The prox, with the shape and dtype of ``x``.

    Raises:
      ValueError: as :func:`group_axes`; a concrete negative or NaN ``lam`` or ``step`` (traced
        values, e.g. under ``jit``, are not checked).

    >>> import jax.numpy as jnp
    >>> z = jnp.array([[3.0, 4.0], [0.3, 0.4]])
    >>> print(l1(z, 1.0, group="input"))
    [[2.4 3.2]
     [0.  0. ]]

    Reference: Formanek & Hadhazi, eqs. (9), (12)-(14).
    """
    check_nonnegative(lam, "lam")
    check_nonnegative(step, "step")
    x = jnp.asarray(x)
    axes = group_axes(x.ndim, group)
    dtype = _compute_dtype(x.dtype)
    z = x.astype(dtype)
    threshold = jnp.asarray(lam, dtype) * jnp.asarray(step, dtype)
    if not axes or z.size == 0:
        out = soft_threshold(z, threshold)
    elif jnp.ndim(step) == 0:
        out = z * _shrink_factor(_frobenius(z, axes), threshold)
    else:
        # The prox is homogeneous in (z, threshold): solve it at a scale where z**2 is finite.
        scale = _group_scale(z, axes)
        c = jnp.broadcast_to(threshold, z.shape) / scale
        out = scale * _weighted_group_shrink(z / scale, c, axes)
    return out.astype(x.dtype)


def _shrink_factor(norms: jax.Array, threshold: jax.Array) -> jax.Array:
    below = norms <= threshold  # False for a NaN norm, which then propagates
    return jnp.where(below, 0, 1 - threshold / jnp.where(below, 1, norms))


@functools.partial(jax.jit, static_argnums=2)  # compiled once per shape, also when called eagerly
def _weighted_group_shrink(z: jax.Array, c: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Exact prox of ``sum_g ||w_g||`` in the metric ``diag(1/c)``, with ``c = lam * mu``."""
    nonzero = z != 0
    sq = jnp.square(z)

    def group_sum(values):
        return jnp.sum(jnp.where(nonzero, values, 0), axis=axes, keepdims=True)

    # f(0) = sum z^2 / c^2 <= 1 is the zero-group condition ||z/mu|| <= lam; a weight with
    # c = 0 (zero step) and z != 0 makes it infinite, so that group always survives.
    f_at_zero = group_sum(sq / jnp.where(nonzero, jnp.square(c), 1))
    keep = ~(f_at_zero <= 1)  # a NaN keeps its group, so that it propagates

    def newton_step(r, sq, c):
        inverse = 1 / jnp.where(nonzero, r + c, 1)
        terms = sq * jnp.square(inverse)
        f = group_sum(terms)
        slope = group_sum(terms * inverse)
        safe = keep & (slope > 0)
        f = jnp.where(safe, f, 1)  # keeps sqrt's gradient finite on groups that are skipped
        step = jnp.where(safe, (f * jnp.sqrt(f) - f) / jnp.where(safe, slope, 1), 0)
        return jnp.maximum(r + step, 0), step

    radius = _secular_root(newton_step, z, c, axes)
    # One more Newton step from the root, differentiated: its value is the root and its
    # derivative is the implicit-function one (reverse mode cannot go through while_loop).
    radius, _ = newton_step(radius, sq, c)
    scale = jnp.where(keep, radius / jnp.where(keep, radius + c, 1), 0)
    return z * scale


def _secular_root(newton_step, z, c, axes):
    """Runs Newton from the left bracket until the steps stall (no gradient flows through)."""
    z, c = jax.lax.stop_gradient(z), jax.lax.stop_gradient(c)
    sq = jnp.square(z)
    norms = jnp.sqrt(jnp.sum(sq, axis=axes, keepdims=True))
    start = jnp.maximum(norms - jnp.max(c, axis=axes, keepdims=True), 0)
    start = jnp.maximum(start, jnp.max(jnp.abs(z) - c, axis=axes, keepdims=True))
    tolerance = 16 * jnp.finfo(z.dtype).eps

    def not_converged(carry):
        r, step, count = carry
        return (count < _MAX_NEWTON_STEPS) & jnp.any(jnp.abs(step) > tolerance * r)

    def body(carry):
        r, _, count = carry
        r, step = newton_step(r, sq, c)
        return r, step, count + 1

    first, step = newton_step(start, sq, c)
    radius, _, _ = jax.lax.while_loop(not_converged, body, (first, step, 1))
    return radius


def l0(x: ArrayLike, lam: ArrayLike, step: ArrayLike = 1.0, *, group: str = "weight") -> jax.Array:
    r"""Proximal operator of the (group) L0 penalty: hard thresholding of weights or groups.

    .. math::
        \operatorname*{argmin}_w \sum_i \frac{(w_i - z_i)^2}{2\mu_i}
        + \lambda\, \#\{g : w_g \ne 0\}
        \;=\; z_g \,\Big[\sum_{i \in g} z_i^2 / \mu_i > 2\lambda\Big] .

    For single weights: keep ``z_i`` iff ``z_i^2 > 2 lam mu_i`` (threshold ``sqrt(2 lam mu)``;
    the paper's eq. (11) writes ``rho mu``, which matches as a threshold on the squared value
    with ``rho = 2 lam``). A group (or weight) exactly at the threshold is zeroed: both choices
    minimise the objective, and sparsejax takes the sparser one.

    Args:
      x: the point ``z`` (a kernel).
      lam: the penalty weight, a non-negative scalar.
      step: the step ``mu``: a non-negative scalar, or an array broadcastable to ``x``. A zero
        step keeps its weight (and group) unless the weight is zero.
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"`` (see the module docstring).

    Returns:
      The prox, with the shape and dtype of ``x``.

    Raises:
      ValueError: as :func:`group_axes`; a concrete negative or NaN ``lam`` or ``step`` (traced
        values, e.g. under ``jit``, are not checked).

    >>> import jax.numpy as jnp
    >>> print(l0(jnp.array([-3.0, 0.5, 1.5]), 1.0))
    [-3.   0.   1.5]

    Reference: Formanek & Hadhazi, eqs. (10)-(14).
    """
    check_nonnegative(lam, "lam")
    check_nonnegative(step, "step")
    x = jnp.asarray(x)
    axes = group_axes(x.ndim, group)
    dtype = _compute_dtype(x.dtype)
    z = x.astype(dtype)
    lam = jnp.asarray(lam, dtype)
    step = jnp.asarray(step, dtype)
    sq = jnp.square(z)
    if not axes or step.ndim == 0:
        # Compare sum z^2 with 2 lam mu: no division, so a zero step needs no special case.
        energy = jnp.sum(sq, axis=axes, keepdims=True) if axes else sq
        keep = ~(energy <= 2 * lam * step)  # NaN propagates
    else:
        nonzero = z != 0
        weighted = jnp.where(nonzero, sq / jnp.where(nonzero, step, 1), 0)
        keep = ~(jnp.sum(weighted, axis=axes, keepdims=True) <= 2 * lam)
    return jnp.where(keep, x, jnp.zeros_like(x))
