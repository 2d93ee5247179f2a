r"""The Euclidean projection onto the nuclear-norm ball (low rank)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsejax.projections._common import (
    _as_floating,
    _check_radius,
    _compute_dtype,
    _flush_denormals,
    _unless_empty,
)
from sparsejax.projections._l1 import _last_axis_threshold, _shrink_nonnegative


def _spectral_parts(matrix, radius):
    u, singular, vt = jnp.linalg.svd(matrix, full_matrices=False)
    theta = _last_axis_threshold(singular, radius)
    return u, singular, vt, theta, _shrink_nonnegative(singular, theta)


@jax.custom_jvp
def _nuclear_project(matrix, radius):
    """Nuclear-ball projection of a ``(m, n)`` matrix with ``m <= n``."""
    u, _, vt, theta, shrunk = _spectral_parts(matrix, radius)
    return jnp.where(theta == 0, _flush_denormals(matrix), (u * shrunk) @ vt)


@_nuclear_project.defjvp
def _nuclear_project_jvp(primals, tangents):
    """Derivative of the spectral operator ``U diag(f(s)) V^T`` with divided differences.

    With ``H = U^T dX V`` (``m x m``): the diagonal moves as ``df(s)[diag H]``; off the
    diagonal the symmetric part of ``H`` is scaled by ``(f_i - f_j)/(s_i - s_j)`` and the
    skew part by ``(f_i + f_j)/(s_i + s_j)``; the part of ``dX`` outside the row space of
    ``V`` by ``f_i / s_i``. The divided differences are written out per case (both
    singular values above the threshold: 1; both below: 0; one above: a ratio with a
    nonzero denominator), so repeated or zero singular values give finite derivatives.
    """
    matrix, radius = primals
    matrix_dot, radius_dot = tangents
    u, singular, vt, theta, shrunk = _spectral_parts(matrix, radius)
    projected = jnp.where(theta == 0, _flush_denormals(matrix), (u * shrunk) @ vt)

    left = u.T @ matrix_dot
    core = left @ vt.T
    diag_dot = jnp.diagonal(core)
    _, shrunk_dot = jax.jvp(
        lambda s, r: _shrink_nonnegative(s, _last_axis_threshold(s, r)),
        (singular, radius),
        (diag_dot, radius_dot),
    )

    above = singular > theta
    above_i, above_j = above[:, None], above[None, :]
    s_i, s_j = singular[:, None], singular[None, :]
    f_i, f_j = shrunk[:, None], shrunk[None, :]
    gap = jnp.where(above_i == above_j, 1, s_i - s_j)
    difference = jnp.where(above_i & above_j, 1, jnp.where(above_i, f_i, -f_j) / gap)
    difference = jnp.where(above_i | above_j, difference, 0)
    total = jnp.where(above_i | above_j, s_i + s_j, 1)
    mean_ratio = jnp.where(above_i | above_j, (f_i + f_j) / total, 0)
    symmetric, skew = (core + core.T) / 2, (core - core.T) / 2
    inner = difference * symmetric + mean_ratio * skew
    inner = inner - jnp.diag(jnp.diagonal(inner)) + jnp.diag(shrunk_dot)
    outside_ratio = jnp.where(above, shrunk / jnp.where(above, singular, 1), 0)
    outside = outside_ratio[:, None] * (left - core @ vt)
    projected_dot = u @ (inner @ vt + outside)
    return projected, jnp.where(theta == 0, matrix_dot, projected_dot)


def nuclear_ball(x, radius):
    r"""Euclidean projection onto the nuclear-norm ball :math:`\sum_k \sigma_k(W) \le \eta`.

    .. math::

        W = U \operatorname{diag}(s) V^\top, \qquad
        P(W) = U \operatorname{diag}\big(P_{\ell_1}(s, \eta)\big) V^\top.

    A 2-D ``x`` is the matrix. A tensor with ``ndim > 2`` is read as a Flax Conv kernel
    ``(kh, kw, in, out)`` (or its 1-D/3-D analogue) and reshaped to the
    ``(kh * kw * in, out)`` matrix that multiplies im2col patches; a rank-``k`` result then
    factors into a ``k``-filter convolution followed by a ``1 x 1`` convolution, which is the
    factorisation that saves MACCs. The result is reshaped back.

    The gradient uses the closed-form derivative of this spectral operator (divided
    differences of the singular values), so it stays finite at repeated and zero singular
    values, where differentiating through ``jnp.linalg.svd`` would not.

    Args:
      x: floating array with ``ndim >= 2``.
      radius: nonnegative scalar :math:`\eta`.

    Returns:
      The projection, shape and dtype of ``x``. An empty ``x`` (no group, or groups
      with no entry) is returned as is.

    Raises:
      ValueError: for a non-floating ``x``, ``x.ndim < 2``, or a concrete negative, NaN or
        non-scalar ``radius``.

    Example:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from sparsejax.projections import nuclear_ball
      >>> w = nuclear_ball(jnp.array([[3.0, 0.0], [0.0, 1.0]]), 2.0)
      >>> print(np.asarray(w).round(3))
      [[2. 0.]
       [0. 0.]]
    """
    x = _as_floating(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions, got shape {x.shape}.")
    _check_radius(radius, scalar=True)
    return _unless_empty(_nuclear_core, x, jnp.asarray(radius, _compute_dtype(x.dtype)))


@jax.jit
def _nuclear_core(x, radius):
    matrix = x.reshape(-1, x.shape[-1]).astype(radius.dtype)
    if matrix.shape[0] > matrix.shape[1]:
        projected = _nuclear_project(matrix.T, radius).T
    else:
        projected = _nuclear_project(matrix, radius)
    return projected.reshape(x.shape).astype(x.dtype)
