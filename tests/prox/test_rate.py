"""Tests for pruning to a compression rate (prox/_rate.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import prox
from tests.prox._reference import (
    CONV_SHAPE,
    DENSE_SHAPE,
    GROUPINGS,
    random_kernel,
    reference_groups,
)


@pytest.mark.parametrize("group", GROUPINGS)
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_prune_smallest_zeroes_the_requested_number_of_groups(group, rate):
    x = random_kernel(CONV_SHAPE, 16)
    out = np.asarray(prox.prune_smallest(jnp.asarray(x), rate, group=group))
    masks = reference_groups(CONV_SHAPE, group)
    zeroed = [m for m in masks if np.all(out[m] == 0)]
    kept = [m for m in masks if not np.all(out[m] == 0)]
    assert len(zeroed) == round(rate * len(masks))
    for m in kept:
        np.testing.assert_array_equal(out[m], x[m])  # kept groups are untouched
    if zeroed and kept:  # the smallest groups went
        assert max(np.linalg.norm(x[m]) for m in zeroed) <= min(np.linalg.norm(x[m]) for m in kept)


def test_prune_smallest_ties_zero_the_first_groups_in_row_major_order():
    x = jnp.ones((2, 2, 3, 2))
    out = np.asarray(prox.prune_smallest(x, 0.5, group="kernel"))  # 6 equal groups, 3 zeroed
    zero_groups = [(i, o) for i in range(3) for o in range(2) if np.all(out[:, :, i, o] == 0)]
    assert zero_groups == [(0, 0), (0, 1), (1, 0)]


def test_prune_smallest_counts_zero_groups_among_the_pruned():
    x = np.asarray(random_kernel(DENSE_SHAPE, 17))
    x[1] = 0.0
    out = np.asarray(prox.prune_smallest(jnp.asarray(x), 2 / 6, group="input"))
    assert [bool(np.all(row == 0)) for row in out].count(True) == 2
    assert np.all(out[1] == 0)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.77])
@pytest.mark.parametrize("tied", [False, True])
def test_prune_smallest_matches_numpy_stable_ranking(rate, tied):
    rng = np.random.default_rng(18)
    x = rng.integers(-2, 3, (50, 3)) if tied else rng.normal(size=(50, 3))  # tied: many ties
    x = x.astype(np.float32)
    out = np.asarray(prox.prune_smallest(jnp.asarray(x), rate, group="weight"))
    order = np.argsort(np.abs(x).ravel(), kind="stable")
    expected = x.ravel().copy()
    expected[order[: round(rate * x.size)]] = 0
    np.testing.assert_array_equal(out.ravel(), expected)


def test_prune_smallest_extreme_values():
    x = jnp.array([[np.inf, 1.0], [np.nan, 0.0], [1e-38, 1e38], [-0.0, 2.0]])
    out = np.asarray(prox.prune_smallest(x, 0.75, group="weight"))  # 6 of 8 zeroed
    # order of |x|: 0 (row 1), -0 (row 3), 1e-38, 1, 2, 1e38 go; inf and NaN (last) stay
    assert np.isinf(out[0, 0]) and np.isnan(out[1, 0])
    assert np.count_nonzero(out[~np.isnan(out)]) == 1


@pytest.mark.parametrize("rate", [1.5, -0.25, float("nan"), np.float32(2), "0.5", None])
def test_prune_smallest_rejects_a_rate_outside_zero_one(rate):
    with pytest.raises(ValueError, match="rate="):
        prox.prune_smallest(jnp.ones((4, 3)), rate, group="input")


def test_prune_smallest_traced_rate_stays_jittable():
    x = jnp.asarray(random_kernel(DENSE_SHAPE, 19))
    jitted = jax.jit(lambda x, rate: prox.prune_smallest(x, rate, group="input"))
    np.testing.assert_array_equal(jitted(x, 0.5), prox.prune_smallest(x, 0.5, group="input"))


@pytest.mark.parametrize("function", [prox.keep_largest, prox.keep_largest_inputs])
@pytest.mark.parametrize("keep", [-1, 2.5, float("nan"), "2", np.array([1, 2])])
def test_keep_largest_rejects_a_bad_count(function, keep):
    with pytest.raises(ValueError, match="keep="):
        function(jnp.ones((4, 3)), keep)


def test_keep_largest_ranks_float64_exactly():
    with jax.enable_x64(True):
        x = np.array([1.0, 1.0 + 1e-12, 1.0 + 2e-12, 0.5, -(1.0 + 3e-12)])  # equal in float32
        for keep in range(6):
            got = np.asarray(prox.keep_largest(jnp.asarray(x), keep))
            expected = x.copy()
            expected[np.argsort(-np.abs(x), kind="stable")[keep:]] = 0
            np.testing.assert_array_equal(got, expected)


def test_keep_largest_inputs_empty_and_one_dimensional():
    assert prox.keep_largest_inputs(jnp.zeros((0, 5)), 2).shape == (0, 5)
    with pytest.raises(ValueError, match="kernel"):
        prox.keep_largest_inputs(jnp.ones(4), 2)
