"""Tests for the exact l1,inf projection (projections/_l1inf.py)."""

import chex
import numpy as np
import pytest

from sparsejax import projections
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
