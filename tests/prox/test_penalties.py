"""Tests for the (group) L1 and L0 proximal operators (prox/_penalties.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from sparsejax import prox
from tests.prox._reference import (
    CONV_SHAPE,
    DENSE_SHAPE,
    GROUPINGS,
    between_middle_values,
    random_kernel,
    reference_group_shrink,
    reference_groups,
    reference_l0,
    weighted_group_objective,
)


def test_l0_hand_checked_threshold_convention():
    # keep z iff z^2 > 2 lam mu: with lam = 1, mu = 2 the threshold on |z| is 2.
    z = jnp.array([-2.5, -2.0, 1.75, 2.0, 2.25])
    np.testing.assert_array_equal(prox.l0(z, 1.0, 2.0), [-2.5, 0.0, 0.0, 0.0, 2.25])


def test_l0_group_hand_checked():
    z = jnp.array([[3.0, 4.0], [1.0, 1.0]])  # row energies 25 and 2
    np.testing.assert_array_equal(prox.l0(z, 1.0, 1.0, group="input"), [[3.0, 4.0], [0.0, 0.0]])
    # per-weight steps weigh the energy: 1/0.1 + 1/0.1 = 20 > 2 keeps the second row now
    mu = jnp.array([[1.0, 1.0], [0.1, 0.1]])
    np.testing.assert_array_equal(prox.l0(z, 1.0, mu, group="input"), z)


@pytest.mark.parametrize("group", GROUPINGS)
@pytest.mark.parametrize("per_weight_step", [False, True])
def test_l0_random_conv_kernel(group, per_weight_step):
    z = random_kernel(CONV_SHAPE, 4)
    mu = np.abs(random_kernel(CONV_SHAPE, 5)) + 0.05 if per_weight_step else np.float32(0.3)
    mu_full = np.broadcast_to(mu, CONV_SHAPE)
    energies = [np.sum(z[m] ** 2 / mu_full[m]) for m in reference_groups(CONV_SHAPE, group)]
    lam = between_middle_values(energies) / 2
    out = np.asarray(prox.l0(jnp.asarray(z), lam, jnp.asarray(mu), group=group))
    expected = reference_l0(z.astype(np.float64), lam, mu, group)
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert 0 < np.count_nonzero(out) < out.size  # the case is not trivial


def test_l0_zero_step_keeps_nonzero_weights():
    z = jnp.array([[0.0, 0.125], [0.5, 0.0]])
    mu = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    out = prox.l0(z, 1.0, mu, group="weight")
    np.testing.assert_array_equal(out, [[0.0, 0.125], [0.0, 0.0]])
    out = prox.l0(z, 1.0, mu, group="input")
    np.testing.assert_array_equal(out, [[0.0, 0.125], [0.0, 0.0]])
    assert not np.any(np.isnan(np.asarray(out)))


def test_l1_group_hand_checked():
    z = jnp.array([[3.0, 4.0], [0.3, 0.4]])  # row norms 5 and 0.5
    out = prox.l1(z, 1.0, 1.0, group="input")
    np.testing.assert_allclose(out, [[2.4, 3.2], [0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("group", GROUPINGS)
def test_l1_random_conv_kernel_scalar_step(group):
    z = random_kernel(CONV_SHAPE, 6)
    mu = 0.5
    norms = [np.linalg.norm(z[m]) for m in reference_groups(CONV_SHAPE, group)]
    lam = between_middle_values(norms) / mu
    out = np.asarray(prox.l1(jnp.asarray(z), lam, mu, group=group))
    expected = reference_group_shrink(z.astype(np.float64), lam * mu, group)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert 0 < np.count_nonzero(out) < out.size


@pytest.mark.parametrize("group", GROUPINGS)
def test_l1_per_weight_step_satisfies_optimality(group):
    """The weighted prox's optimality conditions, checked group by group in float64."""
    z = random_kernel(CONV_SHAPE, 7).astype(np.float64)
    mu = 10.0 ** np.random.default_rng(8).uniform(-2, 1, CONV_SHAPE)
    masks = reference_groups(CONV_SHAPE, group)
    lam = between_middle_values([np.linalg.norm(z[m] / mu[m]) for m in masks])
    out = np.asarray(
        prox.l1(jnp.asarray(z, jnp.float32), lam, jnp.asarray(mu, jnp.float32), group=group)
    )
    kept = 0
    for mask in reference_groups(CONV_SHAPE, group):
        w, zg, mg = out[mask].astype(np.float64), z[mask], mu[mask]
        if np.all(w == 0):
            # 0 is optimal iff ||z / mu|| <= lam (0 lies in the subdifferential at 0)
            assert np.linalg.norm(zg / mg) <= lam * (1 + 1e-5)
        else:
            kept += 1
            residual = (w - zg) / mg + lam * w / np.linalg.norm(w)
            assert np.abs(residual).max() <= 1e-4 * (1 + np.abs(zg / mg).max())
    assert 0 < kept < len(reference_groups(CONV_SHAPE, group))


def test_l1_per_weight_step_matches_scipy():
    z = random_kernel((2, 2, 3, 2), 9).astype(np.float64)
    mu = 10.0 ** np.random.default_rng(10).uniform(-1, 0.5, z.shape)
    lam = 0.8
    out = np.asarray(
        prox.l1(jnp.asarray(z, jnp.float32), lam, jnp.asarray(mu, jnp.float32), group="input")
    )
    for mask in reference_groups(z.shape, "input"):
        zg, mg = z[mask], mu[mask]
        solution = minimize(
            weighted_group_objective,
            zg,
            args=(zg, mg, lam),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 40000},
        )
        ours = weighted_group_objective(out[mask].astype(np.float64), zg, mg, lam)
        assert ours <= solution.fun + 1e-6
        np.testing.assert_allclose(out[mask], solution.x, atol=1e-3)


def test_l1_per_weight_step_constant_in_group_equals_scalar_step():
    z = random_kernel(CONV_SHAPE, 11)
    mu = np.full(CONV_SHAPE, 0.7, np.float32)
    for group in GROUPINGS:
        weighted = prox.l1(jnp.asarray(z), 1.3, jnp.asarray(mu), group=group)
        scalar = prox.l1(jnp.asarray(z), 1.3, 0.7, group=group)
        np.testing.assert_allclose(weighted, scalar, atol=1e-6)


@pytest.mark.parametrize("penalty", [prox.l1, prox.l0])
def test_single_weight_groups_coincide_with_the_scalar_prox(penalty):
    dense = jnp.asarray(random_kernel(DENSE_SHAPE, 12))
    mu = jnp.asarray(np.abs(random_kernel(DENSE_SHAPE, 13)) + 0.1)
    # a Dense kernel's "kernel" group is one weight
    chex.assert_trees_all_close(penalty(dense, 0.6, mu, group="kernel"), penalty(dense, 0.6, mu))
    # 1x1 convolution kernels are single weights too
    conv = dense.reshape(1, 1, *DENSE_SHAPE)
    chex.assert_trees_all_close(
        penalty(conv, 0.6, mu.reshape(conv.shape), group="kernel").reshape(DENSE_SHAPE),
        penalty(dense, 0.6, mu),
        atol=1e-6,
    )


def test_l1_weight_group_is_soft_threshold():
    z = jnp.asarray(random_kernel(DENSE_SHAPE, 14))
    mu = jnp.asarray(np.abs(random_kernel(DENSE_SHAPE, 15)))
    np.testing.assert_array_equal(prox.l1(z, 0.5, mu), prox.soft_threshold(z, 0.5 * mu))


def test_l1_zero_step_and_zero_groups_are_finite():
    z = jnp.array([[0.0, 0.0], [0.5, 0.0], [2.0, -1.0]])
    mu = jnp.array([[0.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = np.asarray(prox.l1(z, 1.0, mu, group="input"))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], [0.0, 0.0])
    np.testing.assert_allclose(out[1], [0.5, 0.0])  # zero step on the nonzero weight: unchanged
    np.testing.assert_allclose(out[2], np.array([2.0, -1.0]) * (1 - 0.5 / np.sqrt(5.0)), rtol=1e-6)


def test_jit_with_traced_hyperparameters_matches_eager():
    z = jnp.asarray(random_kernel(CONV_SHAPE, 19))
    mu = jnp.asarray(np.abs(random_kernel(CONV_SHAPE, 20)) + 0.1)

    @jax.jit
    def all_ops(z, lam, mu, rate):
        return (
            prox.l1(z, lam, mu, group="input"),
            prox.l0(z, lam, mu, group="kernel"),
            prox.prune_smallest(z, rate, group="output"),
            prox.soft_threshold(z, lam * mu),
        )

    jitted = all_ops(z, 0.7, mu, 0.4)
    eager = (
        prox.l1(z, 0.7, mu, group="input"),
        prox.l0(z, 0.7, mu, group="kernel"),
        prox.prune_smallest(z, 0.4, group="output"),
        prox.soft_threshold(z, 0.7 * mu),
    )
    chex.assert_trees_all_close(jitted, eager, atol=1e-6)


def test_vmap_over_a_batch_of_kernels():
    z = jnp.asarray(random_kernel((3, *DENSE_SHAPE), 21))
    batched = jax.vmap(lambda k: prox.l1(k, 0.5, 1.0, group="output"))(z)
    for b in range(3):
        chex.assert_trees_all_close(batched[b], prox.l1(z[b], 0.5, 1.0, group="output"))


def test_gradients_are_finite_at_zero():
    z = jnp.zeros(DENSE_SHAPE)
    mu = jnp.ones(DENSE_SHAPE)

    @jax.jit
    def gradients(z):
        return [
            jax.grad(lambda x, step=step, group=group: jnp.sum(prox.l1(x, 0.5, step, group=group)))(
                z
            )
            for step in (1.0, mu)
            for group in ("weight", "input")
        ]

    for gradient in gradients(z):
        assert np.all(np.isfinite(np.asarray(gradient)))


def test_gradient_of_the_weighted_group_shrinkage_matches_finite_differences():
    z = jnp.asarray(random_kernel(DENSE_SHAPE, 22), jnp.float32)
    mu = jnp.asarray(np.abs(random_kernel(DENSE_SHAPE, 23)) + 0.2)
    direction = jnp.asarray(random_kernel(DENSE_SHAPE, 24))

    def objective(x):
        return jnp.sum(jnp.sin(prox.l1(x, 0.6, mu, group="output")))

    gradient = jax.jit(jax.grad(objective))(z)
    h = 1e-3
    finite_difference = (objective(z + h * direction) - objective(z - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(gradient, direction), finite_difference, rtol=2e-2)


def test_nan_propagates():
    z = jnp.array([[jnp.nan, 1.0], [3.0, 4.0]])
    assert np.isnan(np.asarray(prox.l1(z, 0.1, 1.0, group="input"))[0]).all()
    assert np.isnan(np.asarray(prox.soft_threshold(z, 0.1))[0, 0])


@pytest.mark.parametrize("penalty", [prox.l1, prox.l0])
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lam": -0.1}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": np.float32(-1)}, "lam"),
        ({"lam": jnp.asarray(-2.0)}, "lam"),
        ({"lam": "0.5"}, "lam"),
        ({"lam": True}, "lam"),
        ({"lam": 0.5, "step": -1.0}, "step"),
        ({"lam": 0.5, "step": np.array([[0.1], [-0.1]])}, "step"),
    ],
)
def test_bad_concrete_hyperparameters_raise_naming_them(penalty, kwargs, name):
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=rf"{name}=") as error:
        penalty(x, **kwargs)
    assert "nonnegative" in str(error.value) or "real number" in str(error.value)


@pytest.mark.parametrize("penalty", [prox.l1, prox.l0])
def test_traced_lam_and_step_stay_jittable(penalty):
    x = random_kernel(CONV_SHAPE, 7)
    mu = np.abs(random_kernel(CONV_SHAPE, 8)) + 0.1
    jitted = jax.jit(lambda x, lam, mu: penalty(x, lam, mu, group="input"))
    np.testing.assert_allclose(jitted(x, 0.3, mu), penalty(x, 0.3, mu, group="input"), rtol=1e-6)
    # A device array of per-weight steps is not read back (no host synchronisation).
    assert penalty(x, 0.3, jnp.asarray(mu), group="input").shape == CONV_SHAPE


@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("group", ["kernel", "input", "output"])
def test_l1_groups_at_extreme_scales(scale, group):
    """The prox is homogeneous, prox(s z; s lam) = s prox(z; lam), also where z**2 under- or
    overflows in float32."""
    z = random_kernel(CONV_SHAPE, 9)
    norms = [np.linalg.norm(z[m]) for m in reference_groups(CONV_SHAPE, group)]
    lam = between_middle_values(norms)
    zs = jnp.asarray(z * np.float32(scale))
    got = np.asarray(prox.l1(zs, lam * scale, group=group), np.float64) / scale
    expected = reference_group_shrink(z.astype(np.float64), lam, group)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    mu = np.abs(random_kernel(CONV_SHAPE, 10)) + 0.1
    per_weight = np.asarray(prox.l1(zs, lam * scale, mu, group=group), np.float64) / scale
    unscaled = np.asarray(prox.l1(jnp.asarray(z), lam, mu, group=group), np.float64)
    np.testing.assert_allclose(per_weight, unscaled, atol=1e-5)
    assert not np.allclose(per_weight, z, atol=1e-3)  # the case is not trivial


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (2, 0, 3, 4)])
def test_empty_kernels_come_back_empty(shape):
    x = jnp.zeros(shape)
    for group in ("kernel", "input", "output"):
        assert prox.l1(x, 0.5, jnp.full(shape, 0.1), group=group).shape == shape
        assert prox.l0(x, 0.5, jnp.full(shape, 0.1), group=group).shape == shape
        assert prox.prune_smallest(x, 0.5, group=group).shape == shape
