"""Tests of sparsejax.prox against NumPy/SciPy references written here."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from sparsejax import prox

CONV_SHAPE = (3, 2, 4, 5)  # (kh, kw, in, out)
DENSE_SHAPE = (6, 4)  # (in, out)
GROUPINGS = ("weight", "kernel", "input", "output")


# --------------------------------------------------------------------------- references


def reference_groups(shape, group):
    """Index arrays (one boolean mask per group) built by explicit loops over the layout."""
    ndim = len(shape)
    masks = []
    if group == "weight":
        for index in itertools.product(*map(range, shape)):
            mask = np.zeros(shape, bool)
            mask[index] = True
            masks.append(mask)
    elif group == "kernel":
        for i, o in itertools.product(range(shape[-2]), range(shape[-1])):
            mask = np.zeros(shape, bool)
            mask[..., i, o] = True
            masks.append(mask)
    elif group == "input":
        for i in range(shape[ndim - 2]):
            mask = np.zeros(shape, bool)
            mask[..., i, :] = True
            masks.append(mask)
    else:
        for o in range(shape[-1]):
            mask = np.zeros(shape, bool)
            mask[..., o] = True
            masks.append(mask)
    return masks


def reference_l0(z, lam, mu, group):
    """Group L0 prox: keep a group iff zeroing it costs more (sum z^2 / 2mu) than lam."""
    mu = np.broadcast_to(mu, z.shape)
    out = np.zeros_like(z)
    for mask in reference_groups(z.shape, group):
        cost_of_zeroing = np.sum(z[mask] ** 2 / (2 * mu[mask]))
        if cost_of_zeroing > lam:
            out[mask] = z[mask]
    return out


def reference_group_shrink(z, threshold, group):
    """Group soft threshold with a group-constant threshold (block soft thresholding)."""
    out = np.zeros_like(z)
    for mask in reference_groups(z.shape, group):
        norm = np.linalg.norm(z[mask])
        if norm > threshold:
            out[mask] = z[mask] * (1 - threshold / norm)
    return out


def weighted_group_objective(w, z, mu, lam):
    return np.sum((w - z) ** 2 / (2 * mu)) + lam * np.linalg.norm(w)


def between_middle_values(values):
    """A level strictly between the two middle values: about half the groups on each side."""
    ordered = np.sort(np.asarray(values, np.float64))
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2


def random_kernel(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# --------------------------------------------------------------------------- elementwise


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


# --------------------------------------------------------------------------- groups


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


# --------------------------------------------------------------------------- L0


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


# --------------------------------------------------------------------------- L1


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


# --------------------------------------------------------------------------- compression rate


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


# --------------------------------------------------------------------------- jit, vmap, grad


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
