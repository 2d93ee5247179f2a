"""Tests for the nuclear-ball projection (projections/_nuclear.py)."""

import chex
import numpy as np

from sparsejax import projections
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
