r"""The Euclidean projection onto the nuclear-norm ball (low rank)."""

from __future__ import annotations

from typing import NamedTuple

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


# ------------------------------------------------------------------ warm-started, certified
# The projection transformation calls these at every training step with the previous step's
# right singular vectors as a start (sparsejax.transforms, project_nuclear(warm_rank=k)).


class _Ritz(NamedTuple):
    r"""``k`` Ritz triplets of a ``(m, n)`` matrix and what their certificate needs.

    ``left @ diag(values) @ right.T`` approximates the matrix on the span of ``right``. The
    certificate's quantities are in units of ``peak`` (the largest magnitude of the matrix),
    so that neither squares nor norms under- or overflow: ``residual_sq[i]`` is
    :math:`(\|A v_i - \sigma_i u_i\|^2 + \|A^	op u_i - \sigma_i v_i\|^2) / 	ext{peak}^2` and
    ``deflated`` an upper bound on :math:`\|(I - U U^	op) A\|_2 / 	ext{peak}`.
    """

    left: jax.Array  # (m, k), orthonormal columns
    values: jax.Array  # (k,), descending
    right: jax.Array  # (n, k), orthonormal columns
    residual_sq: jax.Array  # (k,), in units of peak**2
    deflated: jax.Array  # scalar, in units of peak
    frobenius: jax.Array  # scalar: ||A||_F in units of peak, for the rounding margins
    peak: jax.Array  # scalar: max |A_ij| (1 for a zero or non-finite matrix)


def _spectral_upper_bound(matrix):
    r"""An upper bound on the spectral norm: ``min(||C||_F, sqrt(||C||_1 ||C||_inf))``.

    Both dominate the spectral norm (the second by Hölder's inequality
    :math:`\|C\|_2^2 \le \|C\|_1 \|C\|_\infty`). The entries are scaled by their largest
    magnitude first: a sum of squares of tiny entries flushes to zero, which would make the
    "bound" 0.
    """
    magnitudes = jnp.abs(matrix)
    peak = jnp.max(magnitudes)
    safe = jnp.where(peak > 0, peak, 1)
    scaled = magnitudes / safe
    frobenius = jnp.sqrt(jnp.sum(jnp.square(scaled)))
    holder = jnp.sqrt(jnp.max(jnp.sum(scaled, 0))) * jnp.sqrt(jnp.max(jnp.sum(scaled, 1)))
    return safe * jnp.minimum(frobenius, holder)


def _warm_ritz(matrix, start, iterations=0):
    r"""Ritz triplets of ``matrix`` on the block Krylov space started from ``start``.

    With :math:`P = \operatorname{orth}(A Q)`, :math:`Z = A^	op P = V \Sigma W^	op` (a thin
    SVD of an ``(n, k)`` matrix) and :math:`U = P W`: :math:`A^	op U = V \Sigma` by
    construction, so the only residual is :math:`A V - U \Sigma` (one more product), and
    :math:`(I - U U^	op) A = A - P Z^	op` is formed exactly. ``iterations`` extra subspace
    iterations :math:`Q \leftarrow \operatorname{orth}(A^	op \operatorname{orth}(A Q))` come
    first. Cost: ``4 + 2 * iterations`` products with ``k`` columns and two elementwise
    passes, against the ``O(m n min(m, n))`` of a full SVD. The matrix is scaled by its
    largest magnitude (see :class:`_Ritz`).
    """
    peak = jnp.max(jnp.abs(matrix))
    peak = jnp.where((peak > 0) & jnp.isfinite(peak), peak, 1).astype(matrix.dtype)
    a = matrix / peak
    q = start
    for _ in range(iterations):
        p, _ = jnp.linalg.qr(a @ q)
        q, _ = jnp.linalg.qr(a.T @ p)
    # Householder QR keeps the columns orthonormal even where A Q is rank deficient.
    p, _ = jnp.linalg.qr(a @ q)
    z = a.T @ p
    right, values, wt = jnp.linalg.svd(z, full_matrices=False)
    left = p @ wt.T
    left_residual = a @ right - left * values
    right_residual = z @ wt.T - right * values
    residual_sq = jnp.sum(jnp.square(left_residual), 0) + jnp.sum(jnp.square(right_residual), 0)
    deflated = _spectral_upper_bound(a - p @ z.T)
    frobenius = jnp.sqrt(jnp.sum(jnp.square(a)))
    return _Ritz(left, values * peak, right, residual_sq, deflated, frobenius, peak)


def _ritz_certificate(ritz: _Ritz, theta):
    r"""Whether ``U diag((s - theta)_+) V^T`` is the exact projection, to the tolerance.

        Split the Ritz triplets into the kept ones (:math:`\sigma_i > 	heta`: :math:`U_1, \Sigma_1,
        V_1`) and the discarded ones (:math:`U_2`), and write :math:`A = A_0 + \Delta` with

        .. math::

            A_0 = U_1 \Sigma_1 V_1^	op + (I - U_1 U_1^	op) A (I - V_1 V_1^	op), \qquad
            \Delta = U_1 R_1^	op + (I - U_1 U_1^	op) L_1 V_1^	op,

        :math:`L_1 = A V_1 - U_1 \Sigma_1`, :math:`R_1 = A^	op U_1 - V_1 \Sigma_1` (expand the
        products: everything else cancels). :math:`A_0` is block diagonal in the bases
        :math:`(U_1, U_1^\perp)`, :math:`(V_1, V_1^\perp)`, so its singular values are
        :math:`\Sigma_1` and those of the second block :math:`B`. If :math:`\|B\|_2 \le 	heta`,
        where :math:`	heta > 0` is the l1 threshold of the Ritz values for the radius (the
        discarded ones contribute nothing to it), then :math:`	heta` is also the threshold of
        the whole spectrum of :math:`A_0` and :math:`P(A_0) = U_1 (\Sigma_1 - 	heta)_+ V_1^	op`,
        the candidate. The projection is 1-Lipschitz in the Frobenius norm, hence

        .. math::

            \|P(A) - 	ext{candidate}\|_F \le \|\Delta\|_F \le \|L_1\|_F + \|R_1\|_F
            \le \sqrt{2 	extstyle\sum_{i \le r}
    ho_i^2} .

        The bound on :math:`\|B\|_2`: :math:`\|B\|_2 \le \|(I - U_1 U_1^	op) A\|_2`, and
        :math:`(I - U_1 U_1^	op) A = U_2 U_2^	op A + (I - U U^	op) A` (orthogonal column
        spaces), so :math:`\|B\|_2^2 \le \|A^	op U_2\|_2^2 + \|(I - UU^	op) A\|_2^2` with
        :math:`\|A^	op U_2\|_2 \le \max_{i > r} \sigma_i + \|R_2\|_F` and the deflated norm
        bounded by :func:`_spectral_upper_bound`. This is exact arithmetic; the rounding of the
        computed quantities (a few ulps of :math:`\|A\|_F` times :math:`\sqrt{k}`) is absorbed by
        a margin :math:`	au = 16 \sqrt{k}\, \epsilon \|A\|_F` on :math:`	heta`, and the residual
        bound must stay below :math:`	au` too (a few times its rounding floor), which is then
        the distance of the candidate from the projection in the Frobenius norm.

        Returns:
          ``(certified, kept)``: a boolean scalar (False for any NaN) and the kept mask.
    """
    k = ritz.values.shape[0]
    eps = jnp.finfo(ritz.values.dtype).eps
    kept = ritz.values > theta
    # In units of the peak magnitude, like the residuals.
    theta = theta / ritz.peak
    values = ritz.values / ritz.peak
    kept_residual = jnp.sqrt(2 * jnp.sum(jnp.where(kept, ritz.residual_sq, 0)))
    discarded = jnp.max(jnp.where(kept, 0, values)) + jnp.sqrt(
        jnp.sum(jnp.where(kept, 0, ritz.residual_sq))
    )
    tail = jnp.sqrt(jnp.square(discarded) + jnp.square(ritz.deflated))
    margin = 16 * k**0.5 * eps * ritz.frobenius
    certified = (theta > 0) & (tail + margin <= theta) & (kept_residual <= margin)
    return certified, kept
