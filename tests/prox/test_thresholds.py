"""Tests for the elementwise soft and hard thresholds (prox/_thresholds.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import prox
from tests.prox._reference import (
    DENSE_SHAPE,
    random_kernel,
)


def test_soft_threshold_hand_checked():
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5])
    expected = [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5]
    np.testing.assert_array_equal(prox.soft_threshold(x, 1.0), expected)


def test_hard_threshold_hand_checked():
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5])
    expected = [-3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.5]  # |x| == threshold is zeroed
    np.testing.assert_array_equal(prox.hard_threshold(x, 1.0), expected)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_thresholds_random_with_per_weight_thresholds(dtype):
    x = random_kernel(DENSE_SHAPE, 0)
    t = np.abs(random_kernel(DENSE_SHAPE, 1))
    soft = prox.soft_threshold(jnp.asarray(x, dtype), jnp.asarray(t))
    hard = prox.hard_threshold(jnp.asarray(x, dtype), jnp.asarray(t))
    assert soft.dtype == dtype and hard.dtype == dtype
    xd, td = (
        np.asarray(jnp.asarray(x, dtype), np.float32),
        np.asarray(jnp.asarray(t, dtype), np.float32),
    )
    np.testing.assert_allclose(
        np.asarray(soft, np.float32), np.sign(xd) * np.maximum(np.abs(xd) - td, 0), atol=1e-2
    )
    np.testing.assert_array_equal(np.asarray(hard, np.float32), np.where(np.abs(xd) > td, xd, 0))


def test_soft_threshold_is_the_prox_of_the_l1_norm():
    z = random_kernel((7,), 2).astype(np.float64)
    t = 0.4
    out = np.asarray(prox.soft_threshold(jnp.asarray(z, jnp.float32), t))
    for zi, oi in zip(z, out):
        grid = np.linspace(-4, 4, 80001)
        best = grid[np.argmin(0.5 * (grid - zi) ** 2 + t * np.abs(grid))]
        assert abs(oi - best) < 2e-4


@pytest.mark.parametrize("function", [prox.soft_threshold, prox.hard_threshold])
@pytest.mark.parametrize("threshold", [-1.0, float("nan"), np.array([0.5, -0.5]), "1"])
def test_bad_concrete_thresholds_raise_naming_threshold(function, threshold):
    with pytest.raises(ValueError, match="threshold="):
        function(jnp.ones(2), threshold)
