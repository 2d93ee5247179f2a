"""Contracts every projection shares: identity inside, zeros at radius 0, gradients,
dtypes, NaN, and argument validation (projections/_common.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import projections
from tests.projections._reference import (
    FUNCTIONS,
    REFERENCES,
    SHAPE,
    l1_norm,
    l1inf_norm,
    l21_norm,
    nuclear_norm,
)

NORMS = {
    "l1": lambda w: np.abs(w).sum(axis=-1).max(),  # every row is its own ball
    "l1_sort": lambda w: np.abs(w).sum(axis=-1).max(),
    "l21": l21_norm,
    "l11": l1_norm,
    "l111": l1_norm,
    "bilevel_l1inf": l1inf_norm,
    "l1inf": l1inf_norm,
    "nuclear": nuclear_norm,
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_inside_zero_radius_and_idempotence(name):
    function = FUNCTIONS[name]
    x = jax.random.normal(jax.random.key(3), SHAPE)
    assert np.array_equal(function(x, np.float32(1e4)), x)  # bitwise
    np.testing.assert_array_equal(function(x, np.float32(0)), 0.0)
    np.testing.assert_array_equal(function(jnp.zeros(SHAPE), np.float32(0)), 0.0)
    once = function(x, np.float32(1.5))
    np.testing.assert_allclose(function(once, np.float32(1.5)), once, atol=1e-5)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_gradients_finite_everywhere_and_correct_at_a_generic_point(name):
    """One jitted, vmapped grad per operator: at 0, at ties, at repeated singular values and
    at a generic point, for radii 0, 0.5 and 2 (traced, so never checked)."""
    function, reference = FUNCTIONS[name], REFERENCES[name]
    generic = np.random.default_rng(12).standard_normal(SHAPE)
    points = [np.zeros(SHAPE), np.ones(SHAPE), 3 * np.eye(*SHAPE), generic]
    radii = [0.0, 0.5, 2.0]
    xs = np.array([p for p in points for _ in radii], np.float32)
    rs = np.array([r for _ in points for r in radii], np.float32)

    def loss(x, r):
        return jnp.sum(jnp.sin(function(x, r)))

    grad_x, grad_r = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, rs)
    assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_r))
    # Inside the ball, including at 0 for a positive radius, the projection is the identity.
    np.testing.assert_allclose(grad_x[1], 1.0)

    def reference_loss(x, r):
        return np.sum(np.sin(reference(x, r)))

    direction = np.random.default_rng(13).standard_normal(SHAPE)
    step = 1e-6
    numeric_x = (
        reference_loss(generic + step * direction, 2.0)
        - reference_loss(generic - step * direction, 2.0)
    ) / (2 * step)
    numeric_r = (reference_loss(generic, 2.0 + step) - reference_loss(generic, 2.0 - step)) / (
        2 * step
    )
    np.testing.assert_allclose(np.vdot(grad_x[-1], direction), numeric_x, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(grad_r[-1], numeric_r, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_bfloat16_input(name):
    x = jax.random.normal(jax.random.key(8), SHAPE).astype(jnp.bfloat16)
    got = FUNCTIONS[name](x, np.float32(2.0))
    assert got.dtype == jnp.bfloat16
    expected = REFERENCES[name](np.asarray(x, np.float64), 2.0)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=2e-2)


def _assert_nan_where_undefined(name, value):
    """Projects ones with ``value`` at [1, 2] into the unit ball; returns the input."""
    x = jnp.ones(SHAPE).at[1, 2].set(value)
    got = np.asarray(FUNCTIONS[name](x, np.float32(1.0)))
    if name in ("l1", "l1_sort"):  # independent rows: the row with the value, and only it
        assert np.all(np.isnan(got[1])) and np.all(np.isfinite(np.delete(got, 1, axis=0)))
    else:  # one problem over the whole array
        assert np.all(np.isnan(got))
    return x


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_nan_input_gives_nan_output(name):
    _assert_nan_where_undefined(name, jnp.nan)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_inf_input_gives_nan_below_an_infinite_radius(name):
    x = _assert_nan_where_undefined(name, jnp.inf)
    got = np.asarray(FUNCTIONS[name](x, np.float32(np.inf)))
    if name == "nuclear":  # the SVD of a matrix holding an inf is NaN
        assert np.all(np.isnan(got))
    else:  # every array lies in the ball of infinite radius
        assert np.array_equal(got, x)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_subnormal_input_does_not_come_back_outside_the_ball(name):
    """XLA on CPU reads subnormal float32 operands as zero: the projection must not then
    return them unchanged outside a ball of (subnormal or zero) radius."""
    x = np.full(SHAPE, 1e-40, np.float32) * np.where(np.eye(*SHAPE), -1, 1).astype(np.float32)
    norm = NORMS[name]
    for radius in (np.float32(1e-41), np.float32(0), np.float32(1.0)):
        got = np.asarray(FUNCTIONS[name](x, radius), np.float64)
        assert norm(got) <= float(radius)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64) * 1e-270  # about 1e-310: subnormal float64
        got = np.asarray(FUNCTIONS[name](x64, 1e-311))
        assert got.dtype == np.float64 and norm(got) <= 1e-311


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: projections.l1_ball(jnp.ones(3), -1.0), "radius"),
        (lambda: projections.l1_ball(jnp.ones((2, 3)), np.array([1.0, -2.0])), "radius"),
        (lambda: projections.l1_ball(jnp.ones(3), float("nan")), "radius"),
        (lambda: projections.l1_ball(jnp.ones((2, 3)), jnp.ones(3)), "radius"),
        (lambda: projections.l1_ball(jnp.ones(3), 1.0, axis=1), "axis"),
        (lambda: projections.l1_ball(jnp.ones(3), 1.0, axis=1.0), "axis"),
        (lambda: projections.l1_ball(jnp.arange(3), 1.0), "x"),
        (lambda: projections.l1_ball(jnp.ones(3), 1.0, method="bisect"), "method"),
        (lambda: projections.l1_threshold(jnp.ones(3), 1.0, axis=-2), "axis"),
        (lambda: projections.l1_threshold(jnp.ones((2, 3)), 1.0, init=jnp.ones(3)), "init"),
        (lambda: projections.l1_threshold(jnp.ones(3, jnp.int32), 1.0), "abs_x"),
        (lambda: projections.l21_ball(jnp.ones((2, 3)), 1.0, group_axis=2), "group_axis"),
        (lambda: projections.l21_ball(jnp.ones((2, 3)), jnp.ones(2)), "radius"),
        (lambda: projections.l11_ball(jnp.ones((2, 3)), -0.5), "radius"),
        (lambda: projections.l11_ball(jnp.ones((2, 3)), 1.0, group_axis=-3), "group_axis"),
        (lambda: projections.l11_ball(jnp.ones((2, 3)), 1.0, method="fast"), "method"),
        (lambda: projections.l1inf_ball(jnp.ones((2, 3), jnp.int8), 1.0), "x"),
        (lambda: projections.bilevel_l1inf_ball(jnp.ones((2, 3)), -1), "radius"),
        (lambda: projections.l111_ball(jnp.ones((2, 3)), 1.0, group_axes=(0, -2)), "group_axes"),
        (lambda: projections.l111_ball(jnp.ones((2, 3)), 1.0, group_axes=()), "group_axes"),
        (lambda: projections.l111_ball(jnp.ones((2, 3)), 1.0, group_axes=(5,)), "group_axes"),
        (lambda: projections.nuclear_ball(jnp.ones(3), 1.0), "x"),
        (lambda: projections.nuclear_ball(jnp.ones((2, 3)), -1.0), "radius"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0), (3, 0, 4), (0, 2, 3), (2, 3, 0)])
def test_empty_input_comes_back_as_is(name, shape):
    """Zero groups or zero-width groups: an empty array lies in every ball."""
    x = jnp.zeros(shape, jnp.bfloat16)
    for radius in (0.0, 1.0):
        got = FUNCTIONS[name](x, np.float32(radius))
        assert got.shape == shape and got.dtype == jnp.bfloat16
    assert jax.jit(FUNCTIONS[name])(x, 1.0).shape == shape
