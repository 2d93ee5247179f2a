"""Tests for the groups of a kernel and their norms (prox/_groups.py)."""

from __future__ import annotations

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
@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
def test_group_norms_match_loops(shape, group):
    x = random_kernel(shape, 3)
    norms = np.asarray(prox.group_norms(jnp.asarray(x), group))
    masks = reference_groups(shape, group)
    broadcast = np.broadcast_to(norms, shape)
    for mask in masks:
        np.testing.assert_allclose(broadcast[mask], np.linalg.norm(x[mask]), rtol=1e-5)
    assert norms.size == len(masks)


def test_group_axes_on_flax_layouts():
    assert prox.group_axes(4, "weight") == ()
    assert prox.group_axes(4, "kernel") == (0, 1)
    assert prox.group_axes(4, "input") == (0, 1, 3)
    assert prox.group_axes(4, "output") == (0, 1, 2)
    assert prox.group_axes(2, "kernel") == ()  # a Dense "kernel" is one weight
    assert prox.group_axes(2, "input") == (1,)
    assert prox.group_axes(2, "output") == (0,)


@pytest.mark.parametrize("bad", ["channel", "inputs", None, 3])
def test_unknown_group_is_rejected(bad):
    with pytest.raises(ValueError, match="group"):
        prox.l1(jnp.ones(DENSE_SHAPE), 1.0, group=bad)


def test_input_group_needs_a_matrix():
    with pytest.raises(ValueError, match="ndim >= 2"):
        prox.l0(jnp.ones(5), 1.0, group="input")


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_group_norms_at_extreme_scales(scale):
    x = random_kernel(CONV_SHAPE, 11) * np.float32(scale)
    for group in ("kernel", "input", "output"):
        norms = np.asarray(prox.group_norms(jnp.asarray(x), group)).ravel()
        expected = [
            np.linalg.norm(x[m].astype(np.float64)) for m in reference_groups(CONV_SHAPE, group)
        ]
        np.testing.assert_allclose(np.sort(norms), np.sort(expected), rtol=1e-6)
