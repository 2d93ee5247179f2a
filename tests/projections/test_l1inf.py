"""Tests for the exact l1,inf projection (projections/_l1inf.py)."""

import chex
import numpy as np
import pytest

from sparsejax import projections
from sparsejax.projections import _l1inf
from tests.projections._reference import (
    SHAPE,
    assert_projection_certificate,
    l1inf_norm,
    ref_l1inf,
    slsqp_l1inf,
)


def test_l1inf_matches_generic_solver_and_ties():
    rng = np.random.default_rng(8)
    for radius in (0.4, 1.5):
        x = rng.standard_normal(SHAPE)
        got = projections.l1inf_ball(x.astype(np.float32), np.float32(radius))
        np.testing.assert_allclose(got, slsqp_l1inf(x, radius), atol=1e-5)
    ties = np.ones(SHAPE, np.float32) * np.array([[1], [1], [2], [2], [0.5], [0]], np.float32)
    ties[2, :2] = 0.5
    for radius in (0.5, 1.0, 2.5):
        got = projections.l1inf_ball(ties, np.float32(radius))
        np.testing.assert_allclose(got, ref_l1inf(ties, radius), atol=1e-6)


@pytest.mark.parametrize(("shape", "group_axis"), [(SHAPE, 0), ((3, 4, 5), -2)])
def test_l1inf_matches_reference(shape, group_axis):
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    for radius in (0.7, 3.0):
        got = projections.l1inf_ball(x, np.float32(radius), group_axis=group_axis)
        chex.assert_shape(got, shape)
        np.testing.assert_allclose(got, ref_l1inf(x, radius, group_axis=group_axis), atol=1e-5)


def test_l1inf_certificate():
    rng = np.random.default_rng(7)
    x = 2 * rng.standard_normal(SHAPE).astype(np.float32)
    for radius in (0.5, 2.0, 6.0):
        p = projections.l1inf_ball(x, np.float32(radius))
        dual_norm = lambda d: np.abs(d).sum(axis=1).max()
        assert_projection_certificate(x, p, radius, l1inf_norm, dual_norm, rng)


def ref_l1inf_theta(x, radius):
    """The threshold theta of the l1,inf projection of the rows of ``x`` (bisection)."""
    magnitudes = np.abs(np.asarray(x, np.float64))
    top_sums = np.cumsum(-np.sort(-magnitudes, axis=1), axis=1)
    ranks = np.arange(1, magnitudes.shape[1] + 1)
    low, high = 0.0, magnitudes.sum(axis=1).max()
    for _ in range(80):
        mid = 0.5 * (low + high)
        caps = np.maximum(0, ((top_sums - mid) / ranks).max(axis=1))
        low, high = (mid, high) if caps.sum() > radius else (low, mid)
    return 0.5 * (low + high)


@pytest.mark.parametrize("radius", [0.3, 2.0, 6.0, 40.0])
def test_l1inf_warm_starts_give_the_cold_answer(radius):
    # Starts left and right of the root, far right (every row spent), and not numbers: the
    # projection, its threshold and its caps do not depend on them.
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((40, 30)) * rng.uniform(0.1, 2, (40, 1))).astype(np.float32)
    r = np.float32(radius)
    cold, cold_theta, cold_caps = _l1inf._l1inf_warm_core(x, 0, r, np.float32(0), np.float32(0))
    np.testing.assert_allclose(cold, projections.l1inf_ball(x, r), rtol=0, atol=0)
    if np.abs(x).max(1).sum() > radius:
        np.testing.assert_allclose(cold_theta, ref_l1inf_theta(x, radius), rtol=1e-5)
        np.testing.assert_allclose(cold, ref_l1inf(x, radius), atol=1e-5)
    theta = float(cold_theta)
    starts = [0.5 * theta, 0.999 * theta, theta, 1.001 * theta, 3 * theta + 1, 1e6, -1.0, np.nan]
    for start in starts:
        for caps in (cold_caps, np.zeros(40), rng.uniform(0, 3, 40), np.full(40, np.nan)):
            got, got_theta, got_caps = _l1inf._l1inf_warm_core(
                x, 0, r, np.float32(start), np.asarray(caps, np.float32)
            )
            np.testing.assert_allclose(got, cold, rtol=0, atol=1e-6, err_msg=str(start))
            np.testing.assert_allclose(got_theta, cold_theta, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got_caps, cold_caps, rtol=0, atol=1e-6)
