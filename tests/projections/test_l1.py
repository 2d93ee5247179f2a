"""Tests for sparsejax.projections' l1 ball and threshold (projections/_l1.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import projections
from sparsejax.projections._l1 import threshold_of_arrays
from tests.projections._reference import (
    METHODS,
    SHAPE,
    assert_projection_certificate,
    l1_norm,
    ref_l1_rows,
    ref_l1_theta,
)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("shape", "axis"), [(SHAPE, -1), (SHAPE, 0), ((2, 6, 5), 1)])
def test_l1_ball_matches_reference_with_per_row_radii(method, shape, axis):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    moved = np.moveaxis(x, axis, -1)
    norms = np.abs(moved).sum(-1)
    # Outside, boundary, inside and zero radii, one per row.
    fractions = rng.choice([0.0, 0.05, 0.4, 1.0, 1.5], size=norms.shape)
    radius = (fractions * norms).astype(np.float32)
    got = projections.l1_ball(x, radius, axis=axis, method=method)
    chex.assert_shape(got, shape)
    expected = np.moveaxis(ref_l1_rows(moved, radius), -1, axis)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_l1_ball_certificate_idempotence_and_optax(method):
    rng = np.random.default_rng(1)
    x = 3 * rng.standard_normal(SHAPE).astype(np.float32)
    radius = np.float32(4.0)
    p = np.asarray(projections.l1_ball(x, radius, method=method))
    for row, projected in zip(x, p, strict=True):
        assert_projection_certificate(
            row, projected, radius, l1_norm, lambda d: np.abs(d).max(), rng
        )
    np.testing.assert_allclose(projections.l1_ball(p, radius, method=method), p, atol=1e-6)
    optax_l1 = jax.jit(jax.vmap(optax.projections.projection_l1_ball, in_axes=(0, None)))
    np.testing.assert_allclose(p, optax_l1(x, radius), atol=2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_l1_ball_inside_boundary_zero_radius_and_ties(method):
    x = np.array(
        [
            [0.5, -0.25, 0.125, 0.0, 0.0],  # inside: returned bitwise
            [3.0, -1.0, 0.5, 0.0, 2.0],  # radius 0: zeros
            [1.0, 2.0, -3.0, 0.0, 0.0],  # exactly on the boundary
            [1.0, 1.0, 1.0, 1.0, 1.0],  # all equal
            [3.0, 3.0, 1.0, -1.0, 1.0],  # threshold exactly at the tied value 1
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    radius = np.array([1.0, 0.0, 6.0, 2.5, 4.0, 0.0], np.float32)
    got = np.asarray(projections.l1_ball(x, radius, method=method))
    assert np.array_equal(got[0], x[0])
    assert np.array_equal(got[[1, 5]], np.zeros((2, 5)))
    np.testing.assert_allclose(got, ref_l1_rows(x, radius), atol=1e-6)
    theta = projections.l1_threshold(np.abs(x), radius, method=method)
    np.testing.assert_allclose(theta, [0.0, 3.0, 0.0, 0.5, 1.0, 0.0], atol=1e-6)


def test_l1_threshold_warm_start_from_any_start():
    rng = np.random.default_rng(2)
    magnitudes = np.abs(rng.standard_normal((6, 200))).astype(np.float32)
    radius = rng.uniform(0.5, 100.0, size=6).astype(np.float32)
    cold = np.asarray(projections.l1_threshold(magnitudes, radius))
    expected = [ref_l1_theta(m, r) for m, r in zip(magnitudes, radius, strict=True)]
    np.testing.assert_allclose(cold, expected, rtol=1e-5, atol=1e-6)
    starts = [
        cold * rng.uniform(1.0, 3.0, 6),  # above
        cold * rng.uniform(0.0, 1.0, 6),  # below
        cold * (1 + 1e-3),  # close, as from the previous training step
        np.zeros(6),
        np.full(6, 1e6),  # above every entry: restart from the lower bound
    ]
    for start in starts:
        warm = projections.l1_threshold(magnitudes, radius, init=start.astype(np.float32))
        np.testing.assert_allclose(warm, cold, rtol=1e-6, atol=1e-7)


def test_l1_threshold_axis_and_broadcast_radius():
    rng = np.random.default_rng(3)
    magnitudes = np.abs(rng.standard_normal((4, 6, 3))).astype(np.float32)
    radius = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)  # broadcasts to (4, 3)
    theta = projections.l1_threshold(magnitudes, radius, axis=-2)
    chex.assert_shape(theta, (4, 3))
    for i, k in np.ndindex(4, 3):
        expected = ref_l1_theta(magnitudes[i, :, k], radius[i, 0])
        np.testing.assert_allclose(theta[i, k], expected, rtol=1e-5)


def test_l1_long_row_near_boundary_stays_feasible():
    rng = np.random.default_rng(4)
    v = rng.standard_normal(1_000_003).astype(np.float32)  # not a multiple of any block
    magnitudes = np.abs(v.astype(np.float64))
    for gap in (1e-4, 1e-6):
        radius = np.float32(magnitudes.sum() * (1 - gap))
        theta = ref_l1_theta(magnitudes, float(radius))
        for method in METHODS:
            w = np.asarray(projections.l1_ball(v, radius, method=method), np.float64)
            assert np.abs(w).sum() <= float(radius) * (1 + 1e-6)
            expected = np.sign(v) * np.maximum(magnitudes - theta, 0)
            np.testing.assert_allclose(w, expected, atol=1e-6)


def test_l1_ball_nan_radius_traced_and_vmap():
    x = jax.random.normal(jax.random.key(2), (2, *SHAPE))
    got = jax.jit(projections.l1_ball)(x[0], jnp.array([jnp.nan, 1, 1, 1, 1, 1]))
    assert np.all(np.isnan(got[0])) and np.all(np.isfinite(got[1:]))
    radius = np.float32(2.0)
    mapped = jax.vmap(lambda m: projections.l1_ball(m, radius, axis=0))(x)
    np.testing.assert_allclose(mapped, projections.l1_ball(x, radius, axis=1), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
def test_l1_ball_float16_and_float32(dtype):
    x = jax.random.normal(jax.random.key(1), SHAPE).astype(dtype)
    got = projections.l1_ball(x, np.float32(1.5))
    assert got.dtype == dtype
    expected = ref_l1_rows(np.asarray(x, np.float64), 1.5)
    atol = {jnp.float16: 2e-3, jnp.float32: 1e-6}[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=atol)
    assert projections.l1_threshold(jnp.abs(x), 1.5).dtype == jnp.float32


@pytest.mark.parametrize("method", METHODS)
def test_l1_ten_million_entries_high_threshold_stays_feasible(method):
    """A row of 10^7 uniform entries with a radius far below its norm: the threshold sits
    close to the largest entries, so each float32 rounding of it is multiplied by tens of
    thousands of active entries."""
    v = np.random.default_rng(0).uniform(size=10_000_000).astype(np.float32)
    magnitudes = v.astype(np.float64)
    for fraction in (1e-3, 1e-4):
        radius = np.float32(magnitudes.sum() * fraction)
        w = np.asarray(projections.l1_ball(v, radius, method=method), np.float64)
        assert np.abs(w).sum() <= float(radius) * (1 + 1e-6)
        theta = ref_l1_theta(magnitudes, float(radius))
        np.testing.assert_allclose(w, np.maximum(magnitudes - theta, 0), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_l1_near_constant_rows_with_a_tiny_radius_stay_feasible(method):
    """Thousands of entries close to 1 and a radius of 0.01-1: one float32 ulp of the
    threshold moves the projected norm by more than the radius's own precision."""
    x = 1 + np.random.default_rng(3).uniform(size=(4, 3000)) * 1e-2
    x = (x * np.array([[1], [-1], [1], [-1]])).astype(np.float32)
    for radius in (1e-2, 1e-1, 1.0):
        w = np.asarray(projections.l1_ball(x, np.float32(radius), method=method), np.float64)
        assert np.all(np.abs(w).sum(axis=-1) <= float(np.float32(radius)) * (1 + 1e-6))
        np.testing.assert_allclose(w, ref_l1_rows(x, radius), atol=2e-7)


@pytest.mark.parametrize(
    "shapes", [[(7,)], [(5, 6)], [(3, 4, 5), (8,), ()], [(2, 3, 2, 4), (0, 3), (6, 1)]]
)
@pytest.mark.parametrize("radius", [0.0, 0.3, 5.0, 1e6])
@pytest.mark.parametrize("warm", [False, True])
def test_threshold_of_arrays_is_the_threshold_of_the_concatenation(shapes, radius, warm):
    rng = np.random.default_rng(len(shapes))
    arrays = [np.abs(rng.normal(size=s)).astype(np.float32) for s in shapes]
    flat = np.concatenate([a.ravel() for a in arrays])
    expected = ref_l1_theta(flat, radius) if radius > 0 else flat.max()
    init = jnp.float32(0.5 * expected + 0.1) if warm else None
    theta = jax.jit(threshold_of_arrays)([jnp.asarray(a) for a in arrays], radius, init)
    np.testing.assert_allclose(theta, expected, rtol=1e-5, atol=1e-6)
    # Feasible: the shrunk entries have l1 norm at most the radius.
    assert np.maximum(flat - float(theta), 0).sum() <= radius * (1 + 1e-6) + 1e-6


def test_threshold_of_arrays_edge_cases():
    assert float(threshold_of_arrays([jnp.zeros((0, 3))], 1.0)) == 0.0
    nan = threshold_of_arrays([jnp.ones((2, 2)), jnp.array([jnp.nan])], 1.0)
    assert np.isnan(nan)
    inf = threshold_of_arrays([jnp.array([1.0, jnp.inf])], 1.0)
    assert np.isnan(inf)
