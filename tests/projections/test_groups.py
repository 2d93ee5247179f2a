"""Tests for the group balls l2,1, l1,1 and bi-level l1,inf (projections/_groups.py)."""

import chex
import numpy as np
import pytest

from sparsejax import projections
from tests.projections._reference import (
    FUNCTIONS,
    REFERENCES,
    SHAPE,
    assert_projection_certificate,
    l1_norm,
    l1inf_norm,
    l21_norm,
    ref_l1,
)

GROUP_NAMES = ["l21", "l11", "bilevel_l1inf"]


@pytest.mark.parametrize("name", GROUP_NAMES)
@pytest.mark.parametrize(("shape", "group_axis"), [(SHAPE, 0), ((3, 4, 5), -2)])
def test_group_balls_match_reference(name, shape, group_axis):
    function, reference = FUNCTIONS[name], REFERENCES[name]
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    for radius in (0.7, 3.0):
        got = function(x, np.float32(radius), group_axis=group_axis)
        chex.assert_shape(got, shape)
        expected = reference(x, radius, group_axis=group_axis)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_l21_certificate():
    rng = np.random.default_rng(7)
    x = 2 * rng.standard_normal(SHAPE).astype(np.float32)
    for radius in (0.5, 2.0, 6.0):
        p = projections.l21_ball(x, np.float32(radius))
        dual_norm = lambda d: np.linalg.norm(d, axis=1).max()
        assert_projection_certificate(x, p, radius, l21_norm, dual_norm, rng)


def test_bilevel_operators_zero_whole_groups_but_l21_budget_holds():
    x = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    for function, norm in (
        (projections.l11_ball, l1_norm),
        (projections.bilevel_l1inf_ball, l1inf_norm),
        (projections.l21_ball, l21_norm),
    ):
        w = np.asarray(function(x, np.float32(2.0)))
        assert norm(w) <= 2.0 * (1 + 1e-5)
        zero_groups = np.all(w == 0, axis=1)
        assert 0 < zero_groups.sum() < SHAPE[0]
    # l1,1 is not the Euclidean projection onto the same set (that is the flat l1 ball).
    flat = ref_l1(x.ravel(), 2.0).reshape(SHAPE)
    assert not np.allclose(projections.l11_ball(x, np.float32(2.0)), flat, atol=1e-3)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_l21_at_extreme_scales_is_the_scaled_projection(scale):
    """The projection is homogeneous: P(s x, s r) = s P(x, r), also where x**2 under- or
    overflows in float32."""
    x = np.random.default_rng(6).standard_normal((3, 4, 5)).astype(np.float32)
    for radius in (0.7, 3.0):
        got = np.asarray(
            projections.l21_ball(x * np.float32(scale), np.float32(radius * scale), group_axis=1)
        )
        assert np.all(np.isfinite(got))
        expected = REFERENCES["l21"](x, radius, group_axis=1)
        np.testing.assert_allclose(got / scale, expected, atol=1e-5)
        assert l21_norm(np.moveaxis(got, 1, 0) / scale) <= radius * (1 + 1e-5)
