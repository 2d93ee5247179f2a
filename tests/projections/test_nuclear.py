"""Tests for the nuclear-ball projection (projections/_nuclear.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import projections
from sparsejax.projections import _nuclear
from tests.projections._reference import (
    SHAPE,
    assert_projection_certificate,
    nuclear_norm,
    ref_nuclear,
)


def test_nuclear_ball_matches_reference_wide_tall_and_conv():
    rng = np.random.default_rng(11)
    for shape in (SHAPE, SHAPE[::-1], (3, 3, 2, 4)):
        x = rng.standard_normal(shape).astype(np.float32)
        for radius in (1.0, 3.0):
            got = projections.nuclear_ball(x, np.float32(radius))
            chex.assert_shape(got, shape)
            np.testing.assert_allclose(got, ref_nuclear(x, radius), atol=2e-5)
    matrix = np.asarray(got).reshape(18, 4)  # the documented (kh * kw * in, out) reading
    assert np.linalg.matrix_rank(matrix, tol=1e-4) < 4


def test_nuclear_certificate():
    rng = np.random.default_rng(7)
    x = 2 * rng.standard_normal(SHAPE).astype(np.float32)
    for radius in (0.5, 2.0, 6.0):
        p = projections.nuclear_ball(x, np.float32(radius))
        dual_norm = lambda d: np.linalg.norm(d, 2)
        assert_projection_certificate(x, p, radius, nuclear_norm, dual_norm, rng)


# ------------------------------------------------------------ the warm path's certificate


def test_spectral_upper_bound_dominates_the_spectral_norm():
    rng = np.random.default_rng(3)
    cases = [
        rng.standard_normal((40, 30)),
        np.outer(rng.standard_normal(50), rng.standard_normal(20)),  # rank 1: Frobenius exact
        np.diag(np.linspace(1, 2, 12)),
        np.zeros((5, 7)),
        rng.standard_normal((3, 60)) * 1e-20,
    ]
    for c in cases:
        bound = float(_nuclear._spectral_upper_bound(jnp.asarray(c, jnp.float32)))
        assert bound >= np.linalg.norm(c, 2) * (1 - 1e-6)
    assert float(_nuclear._spectral_upper_bound(jnp.asarray(cases[1], jnp.float32))) == (
        pytest.approx(np.linalg.norm(cases[1], 2), rel=1e-5)
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_certified_ritz_projection_is_within_its_bound(dtype):
    # Low-rank matrices plus dense noise of many sizes, from starts of many qualities: the
    # certificate may refuse, but whenever it accepts, the candidate is the projection to
    # the stated Frobenius bound 16 sqrt(k) eps ||A||_F.
    rng = np.random.default_rng(4)
    m, n, k, radius = 60, 40, 8, 5.0
    accepted = refused = 0
    with jax.enable_x64(dtype == jnp.float64):
        eps = float(jnp.finfo(dtype).eps)
        ritz_fn = jax.jit(_nuclear._warm_ritz, static_argnums=2)
        for trial in range(24):
            u = np.linalg.qr(rng.standard_normal((m, 4)))[0]
            v = np.linalg.qr(rng.standard_normal((n, 4)))[0]
            a = (u * np.array([3.0, 2.0, 1.5, 1.0])) @ v.T
            a = a + 10.0 ** rng.uniform(-7, -1) * rng.standard_normal((m, n))
            mix = 10.0 ** rng.uniform(-4, 0)
            start = np.linalg.qr(
                np.concatenate([v, np.zeros((n, k - 4))], 1) + mix * rng.standard_normal((n, k))
            )[0]
            ritz = ritz_fn(jnp.asarray(a, dtype), jnp.asarray(start, dtype), trial % 3)
            theta = projections.l1_threshold(ritz.values, radius)
            certified, _ = _nuclear._ritz_certificate(ritz, theta)
            if not bool(certified):
                refused += 1
                continue
            accepted += 1
            candidate = (ritz.left * jnp.maximum(ritz.values - theta, 0)) @ ritz.right.T
            error = np.linalg.norm(np.asarray(candidate, np.float64) - ref_nuclear(a, radius))
            bound = 16 * np.sqrt(k) * eps * np.linalg.norm(a)
            # The reference itself and the float32 inputs carry rounding of that order too.
            assert error <= 2 * bound + 8 * eps * np.linalg.norm(a), (trial, error, bound)
    assert accepted >= 4 and refused >= 4, (accepted, refused)


def test_the_certificate_refuses_a_tail_above_the_threshold():
    # The start misses the largest direction: the Ritz values are the smaller ones, the
    # candidate is wrong, and the deflated matrix (which holds the missed direction) is
    # bounded above the threshold.
    rng = np.random.default_rng(5)
    m, n = 30, 20
    u = np.linalg.qr(rng.standard_normal((m, 5)))[0]
    v = np.linalg.qr(rng.standard_normal((n, 5)))[0]
    a = (u * np.array([5.0, 1.0, 0.9, 0.8, 0.7])) @ v.T
    ritz = _nuclear._warm_ritz(jnp.asarray(a, jnp.float32), jnp.asarray(v[:, 1:5], jnp.float32))
    theta = projections.l1_threshold(ritz.values, 1.0)
    certified, _ = _nuclear._ritz_certificate(ritz, theta)
    assert not bool(certified) and float(ritz.deflated) >= 5.0 * (1 - 1e-5)
    candidate = (ritz.left * jnp.maximum(ritz.values - theta, 0)) @ ritz.right.T
    assert np.abs(np.asarray(candidate) - ref_nuclear(a, 1.0)).max() > 0.1


@pytest.mark.parametrize("scale", [1e-25, 1.0, 1e25])
def test_the_certificate_does_not_depend_on_the_scale(scale):
    # Squares of 1e-25 flush to zero and squares of 1e25 overflow in float32: the certificate
    # works in units of the largest magnitude, so it decides as at scale 1.
    rng = np.random.default_rng(6)
    u = np.linalg.qr(rng.standard_normal((30, 3)))[0]
    v = np.linalg.qr(rng.standard_normal((20, 3)))[0]
    a = (u * np.array([3.0, 2.0, 1.0])) @ v.T + 1e-4 * rng.standard_normal((30, 20))
    start = jnp.asarray(np.linalg.qr(np.concatenate([v, rng.standard_normal((20, 3))], 1))[0])
    ritz = _nuclear._warm_ritz(jnp.asarray(scale * a, jnp.float32), start.astype(jnp.float32), 1)
    theta = projections.l1_threshold(ritz.values, np.float32(scale * 3.0))
    certified, _ = _nuclear._ritz_certificate(ritz, theta)
    assert bool(certified)
    candidate = (ritz.left * jnp.maximum(ritz.values - theta, 0)) @ ritz.right.T
    expected = ref_nuclear(a, 3.0)
    np.testing.assert_allclose(np.asarray(candidate, np.float64) / scale, expected, atol=1e-5)
