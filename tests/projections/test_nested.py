"""Tests for the nested l1,1,1 operator (projections/_nested.py)."""

import jax
import numpy as np

from sparsejax import projections
from tests.projections._reference import (
    SHAPE,
    ref_l11,
    ref_nested,
)


def test_l111_matches_recursive_definition():
    rng = np.random.default_rng(10)
    kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)  # (kh, kw, in, out)
    for radius in (2.0, 15.0):
        got = projections.l111_ball(kernel, np.float32(radius))
        np.testing.assert_allclose(got, ref_nested(kernel, radius, [2, 3]), atol=1e-5)
    w = np.asarray(got)
    assert np.any(np.all(w == 0, axis=(0, 1, 3)))  # whole input channels removed
    assert np.any(np.all(w == 0, axis=(0, 1)) & np.any(w != 0, axis=(0, 1, 3))[:, None])
    got = projections.l111_ball(kernel, np.float32(5.0), group_axes=(3, 0, -2))
    np.testing.assert_allclose(got, ref_nested(kernel, 5.0, [3, 0, 2]), atol=1e-5)


def test_l111_reduces_to_l11_on_dense_kernels():
    x = jax.random.normal(jax.random.key(4), SHAPE)
    radius = np.float32(3.0)
    np.testing.assert_allclose(projections.l111_ball(x, radius), projections.l11_ball(x, radius))
    np.testing.assert_allclose(
        projections.l111_ball(x, radius, group_axes=(-1,)),
        ref_l11(x, 3.0, group_axis=-1),
        atol=1e-5,
    )
