"""Tests for the lottery-optimizer helpers (sparsejax.lottery)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax


def make_params(key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {
        "Dense_0": {"kernel": jax.random.normal(k1, (12, 8)), "bias": jnp.zeros(8)},
        "Dense_1": {"kernel": jax.random.normal(k2, (8, 3)), "bias": jnp.zeros(3)},
    }


def test_support_mask_marks_nonzeros_of_selected_leaves():
    params = make_params()
    params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[2].set(0.0)
    mask = sparsejax.support_mask(params)
    np.testing.assert_array_equal(mask["Dense_0"]["kernel"], params["Dense_0"]["kernel"] != 0)
    assert not bool(mask["Dense_0"]["kernel"][2].any())
    assert bool(mask["Dense_0"]["bias"].all())  # biases are zero but not selected


def test_rewind_restores_initial_values_on_the_support():
    init = make_params(1)
    mask = jax.tree_util.tree_map(lambda p: jnp.arange(p.size).reshape(p.shape) % 2 == 0, init)
    rewound = sparsejax.rewind(init, mask)
    for r, p, m in zip(*(jax.tree_util.tree_leaves(t) for t in (rewound, init, mask))):
        np.testing.assert_array_equal(r, np.where(m, p, 0.0))


def test_keep_pruned_holds_zeros_for_100_adam_steps():
    params = sparsejax.project_once(sparsejax.project_l11(6.0), make_params(2))
    mask = sparsejax.support_mask(params)
    pruned = ~mask["Dense_0"]["kernel"]
    assert int(pruned.sum()) > 0
    tx = optax.chain(optax.adam(1e-2), sparsejax.keep_pruned(mask))
    state = tx.init(params)
    x = jax.random.normal(jax.random.key(3), (32, 12))

    def loss_fn(p):
        h = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return jnp.sum((h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"] - 1.0) ** 2)

    @jax.jit
    def train_step(p, s):
        updates, s = tx.update(jax.grad(loss_fn)(p), s, p)
        return optax.apply_updates(p, updates), s

    start = float(loss_fn(params))
    for _ in range(100):
        params, state = train_step(params, state)
        assert not bool(jnp.any(params["Dense_0"]["kernel"][pruned] != 0))
    # Adam's moments see nonzero gradients at the pruned entries: without keep_pruned they move.
    assert float(loss_fn(params)) < start
    free = optax.adam(1e-2)
    p_free = sparsejax.project_once(sparsejax.project_l11(6.0), make_params(2))
    updates, _ = free.update(jax.grad(loss_fn)(p_free), free.init(p_free), p_free)
    assert bool(jnp.any(optax.apply_updates(p_free, updates)["Dense_0"]["kernel"][pruned] != 0))


def test_keep_pruned_requires_params():
    mask = {"w": jnp.array([True])}
    tx = sparsejax.keep_pruned(mask)
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.ones(1)}))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_magnitude_mask_global_matches_numpy(sparsity):
    params = make_params(4)
    mask = sparsejax.magnitude_mask(params, sparsity)
    values = np.concatenate(
        [np.abs(np.asarray(params[k]["kernel"])).ravel() for k in ("Dense_0", "Dense_1")]
    )
    k = int(np.floor(sparsity * values.size))
    cut = np.sort(values)[k - 1] if k else -np.inf
    for name in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(mask[name]["kernel"], np.abs(params[name]["kernel"]) > cut)
        assert bool(mask[name]["bias"].all())
    pruned = sum(int((~mask[n]["kernel"]).sum()) for n in ("Dense_0", "Dense_1"))
    assert pruned == k


def test_magnitude_mask_per_layer_prunes_each_layer_alike():
    params = make_params(5)
    mask = sparsejax.magnitude_mask(params, 0.5, scope="layer")
    assert int((~mask["Dense_0"]["kernel"]).sum()) == 48
    assert int((~mask["Dense_1"]["kernel"]).sum()) == 12


@pytest.mark.parametrize(
    "kwargs", [{"sparsity": 1.5}, {"sparsity": -0.1}, {"sparsity": 0.5, "scope": "row"}]
)
def test_magnitude_mask_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sparsejax.magnitude_mask(make_params(), **kwargs)


def test_project_once_equals_one_projection_step():
    params = make_params(6)
    projected = sparsejax.project_once(sparsejax.project_l1(3.0), params)
    for name in ("Dense_0", "Dense_1"):
        assert float(jnp.abs(projected[name]["kernel"]).sum()) == pytest.approx(3.0, rel=1e-5)
    chex.assert_trees_all_equal(projected["Dense_0"]["bias"], params["Dense_0"]["bias"])


@pytest.mark.parametrize("mask_shape", [(3,), (1, 3), (4, 1), (3, 4)])
def test_keep_pruned_refuses_a_mask_that_only_broadcasts(mask_shape):
    params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    mask = {"Dense_0": {"kernel": jnp.ones(mask_shape, bool), "bias": jnp.ones(3, bool)}}
    tx = sparsejax.keep_pruned(mask)
    with pytest.raises(ValueError, match=r"Dense_0/kernel.*\(4, 3\)") as error:
        tx.init(params)
    assert str(mask_shape) in str(error.value)
    state = sparsejax.keep_pruned(sparsejax.support_mask(params)).init(params)
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        jax.jit(tx.update)(params, state, params)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.5, 0.3, 1 / 3, 0.99])
def test_magnitude_mask_on_ties_prunes_exactly_the_fraction_earliest_first(scope, sparsity):
    params = {"a": {"kernel": jnp.full((4, 3), -2.0)}, "b": {"kernel": jnp.full((2, 3), 2.0)}}
    mask = sparsejax.magnitude_mask(params, sparsity, scope=scope)
    flat = {name: np.asarray(mask[name]["kernel"]).ravel() for name in ("a", "b")}
    if scope == "global":
        pruned = ~np.concatenate([flat["a"], flat["b"]])
        expected = np.arange(18) < int(np.floor(sparsity * 18))
        np.testing.assert_array_equal(pruned, expected)
    else:
        for name, size in (("a", 12), ("b", 6)):
            expected = np.arange(size) < int(np.floor(sparsity * size))
            np.testing.assert_array_equal(~flat[name], expected)


def test_magnitude_mask_ties_among_distinct_values_match_a_stable_numpy_ranking():
    values = np.random.default_rng(7).integers(-3, 4, (10, 6)).astype(np.float32)
    mask = sparsejax.magnitude_mask({"kernel": jnp.asarray(values)}, 0.45)["kernel"]
    order = np.argsort(np.abs(values).ravel(), kind="stable")
    expected = np.ones(values.size, bool)
    expected[order[: int(np.floor(0.45 * values.size))]] = False
    np.testing.assert_array_equal(np.asarray(mask).ravel(), expected)


@pytest.mark.parametrize("sparsity", ["0.5", None, True, float("nan"), 1.5, -0.1, [0.5]])
def test_magnitude_mask_names_a_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity=") as error:
        sparsejax.magnitude_mask(make_params(), sparsity)
    assert "[0, 1]" in str(error.value)
