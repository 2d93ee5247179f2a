"""Tests for the projection transformations (sparsejax.constraints)."""

import os
import re
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

import sparsejax
from sparsejax import projections
from tests.projections._reference import ref_l1inf
from tests.transforms import _trees as trees

# ----------------------------------------------------------------------------- references
# Independent float64 NumPy versions of the operators (Duchi et al.'s sort-based l1 projection
# and the bi-level constructions of Guyard & Barlaud (2020) written from their definitions).


def np_l1(v, r):
    v = np.asarray(v, np.float64)
    if np.abs(v).sum() <= r:
        return v.copy()
    if r <= 0:
        return np.zeros_like(v)
    a = np.sort(np.abs(v).ravel())[::-1]
    cs = np.cumsum(a)
    j = np.arange(1, a.size + 1)
    rho = np.nonzero(a * j > cs - r)[0][-1]
    theta = (cs[rho] - r) / (rho + 1)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0)


def np_rows(x, axis):
    return np.moveaxis(np.asarray(x, np.float64), axis, 0).reshape(x.shape[axis], -1)


def np_unrows(rows, shape, axis):
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    return np.moveaxis(rows.reshape(moved), 0, axis)


def np_l11(x, r, axis):
    rows = np_rows(x, axis)
    t = np_l1(np.abs(rows).sum(1), r)
    return np_unrows(np.stack([np_l1(row, ti) for row, ti in zip(rows, t)]), x.shape, axis)


def np_l21(x, r, axis):
    rows = np_rows(x, axis)
    n = np.linalg.norm(rows, axis=1)
    t = np_l1(n, r)
    scale = np.where(n > 0, t / np.where(n > 0, n, 1), 0)
    return np_unrows(rows * scale[:, None], x.shape, axis)


def np_bilevel_l1inf(x, r, axis):
    rows = np_rows(x, axis)
    t = np_l1(np.abs(rows).max(1), r)
    return np_unrows(np.clip(rows, -t[:, None], t[:, None]), x.shape, axis)


def np_nuclear(x, r):
    m = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return ((u * np_l1(s, r)) @ vt).reshape(x.shape)


REFERENCES = {
    "l1": lambda x, r, axis: np_l1(x, r),
    "l21": np_l21,
    "l11": np_l11,
    "bilevel_l1inf": np_bilevel_l1inf,
    "nuclear": lambda x, r, axis: np_nuclear(x, r),
    "l1inf": lambda x, r, axis: np.asarray(
        projections.l1inf_ball(jnp.asarray(x), r, group_axis=axis)
    ),
}
FACTORIES = {
    "l1": sparsejax.project_l1,
    "l21": sparsejax.project_l21,
    "l11": sparsejax.project_l11,
    "bilevel_l1inf": sparsejax.project_bilevel_l1inf,
    "nuclear": sparsejax.project_nuclear,
    "l1inf": sparsejax.project_l1inf,
}
GROUPED = ("l21", "l11", "bilevel_l1inf", "l1inf")


def norm_of(name, x, axis):
    x = np.asarray(x, np.float64)
    rows = np_rows(x, axis)
    if name in ("l1", "l11"):
        return np.abs(x).sum()
    if name == "l21":
        return np.linalg.norm(rows, axis=1).sum()
    if name in ("l1inf", "bilevel_l1inf"):
        return np.abs(rows).max(1).sum()
    return np.linalg.svd(x.reshape(-1, x.shape[-1]), compute_uv=False).sum()


def step(tx, params, grads, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


# ----------------------------------------------------------------------------- operator values


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("shape,axis", [((12, 7), 0), ((3, 3, 4, 5), 2)])
def test_projection_matches_reference(name, shape, axis):
    x = jax.random.normal(jax.random.key(0), shape)
    radius = 0.2 * norm_of(name, x, axis)
    params = {"kernel": x}
    tx = FACTORIES[name](radius)
    new, _ = step(tx, params, jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params))
    expected = REFERENCES[name](np.asarray(x), radius, axis)
    np.testing.assert_allclose(new["kernel"], expected, atol=2e-5)
    assert norm_of(name, new["kernel"], axis) <= radius * (1 + 1e-5)


@pytest.mark.parametrize("name", GROUPED)
def test_outputs_grouping_matches_reference(name):
    x = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
    radius = 0.1 * norm_of(name, x, 3)
    params = {"kernel": x}
    tx = FACTORIES[name](radius, group_axis="outputs")
    new, _ = step(tx, params, {"kernel": jnp.zeros_like(x)}, tx.init(params))
    np.testing.assert_allclose(new["kernel"], REFERENCES[name](np.asarray(x), radius, 3), atol=2e-5)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_inside_ball_is_unchanged(name):
    x = jax.random.normal(jax.random.key(2), (6, 5))
    params = {"kernel": x}
    tx = FACTORIES[name](2.0 * norm_of(name, x, 0))
    new, _ = step(tx, params, {"kernel": jnp.zeros_like(x)}, tx.init(params))
    np.testing.assert_allclose(new["kernel"], x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_radius_zero_gives_zeros(name):
    params = {"kernel": jax.random.normal(jax.random.key(3), (4, 5))}
    tx = FACTORIES[name](0.0)
    new, _ = step(tx, params, {"kernel": jnp.zeros((4, 5))}, tx.init(params))
    np.testing.assert_allclose(new["kernel"], 0.0, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtype_is_preserved(dtype):
    params = {"kernel": jax.random.normal(jax.random.key(4), (8, 6)).astype(dtype)}
    tx = optax.chain(optax.sgd(0.1), sparsejax.project_l11(3.0))
    new, _ = step(tx, params, params, tx.init(params))
    assert new["kernel"].dtype == dtype
    assert float(jnp.abs(new["kernel"].astype(jnp.float32)).sum()) <= 3.0 * 1.01


def test_projection_with_update_is_projection_of_the_step():
    # The new parameters are P(params + updates), not params + P(updates).
    params = {"kernel": jax.random.normal(jax.random.key(5), (10, 4))}
    grads = {"kernel": jax.random.normal(jax.random.key(6), (10, 4))}
    tx = optax.chain(optax.sgd(0.5), sparsejax.project_l11(4.0))
    new, _ = step(tx, params, grads, tx.init(params))
    expected = np_l11(np.asarray(params["kernel"] - 0.5 * grads["kernel"]), 4.0, 0)
    np.testing.assert_allclose(new["kernel"], expected, atol=2e-5)


def test_warm_started_thresholds_give_the_cold_answer():
    key = jax.random.key(7)
    params = {"kernel": jax.random.normal(key, (32, 16))}
    tx = optax.chain(optax.sgd(0.05), sparsejax.project_l11(10.0))
    state = tx.init(params)
    update = jax.jit(lambda p, g, s: step(tx, p, g, s))
    for i in range(5):
        grads = {"kernel": jax.random.normal(jax.random.fold_in(key, i), (32, 16))}
        target = np_l11(np.asarray(params["kernel"] - 0.05 * grads["kernel"]), 10.0, 0)
        params, state = update(params, grads, state)
        np.testing.assert_allclose(params["kernel"], target, atol=3e-5)


def test_every_k_steps_projects_only_when_due():
    params = {"kernel": jnp.full((4, 4), 1.0)}
    grads = {"kernel": jnp.full((4, 4), -1.0)}
    tx = optax.chain(optax.sgd(1.0), sparsejax.project_l1(4.0, every_k_steps=3))
    state = tx.init(params)
    norms = []
    for _ in range(3):
        params, state = step(tx, params, grads, state)
        norms.append(float(jnp.abs(params["kernel"]).sum()))
    assert norms[0] == pytest.approx(32.0) and norms[1] == pytest.approx(48.0)
    assert norms[2] == pytest.approx(4.0, rel=1e-5)


def test_global_budget_matches_concatenated_reference():
    key = jax.random.key(8)
    params = {
        "a": {"kernel": jax.random.normal(key, (6, 5))},
        "b": {"kernel": 3.0 * jax.random.normal(jax.random.fold_in(key, 1), (4, 5))},
    }
    tx = sparsejax.project_l11(6.0, global_budget=True)
    new, _ = step(tx, params, jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params))
    stacked = np.concatenate([np.asarray(params["a"]["kernel"]), np.asarray(params["b"]["kernel"])])
    expected = np_l11(stacked, 6.0, 0)
    np.testing.assert_allclose(new["a"]["kernel"], expected[:6], atol=2e-5)
    np.testing.assert_allclose(new["b"]["kernel"], expected[6:], atol=2e-5)


def test_global_budget_l1inf_pads_groups_of_different_sizes():
    key = jax.random.key(9)
    params = {
        "a": {"kernel": jax.random.normal(key, (6, 3))},
        "b": {"kernel": jax.random.normal(key, (4, 7))},
    }
    tx = sparsejax.project_l1inf(2.0, global_budget=True)
    new, _ = step(tx, params, jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params))
    total = sum(float(jnp.abs(k["kernel"]).max(axis=1).sum()) for k in new.values())
    assert total == pytest.approx(2.0, rel=1e-4)
    # Optimality of the joint projection: every surviving group shares one threshold theta,
    # the sum of what it cut off, sum_j max(|v_ij| - mu_i, 0) (DESIGN.md, l1,inf).
    cut = []
    for name in ("a", "b"):
        v, w = np.asarray(params[name]["kernel"]), np.asarray(new[name]["kernel"])
        alive = np.abs(w).max(1) > 1e-6
        cut.extend((np.abs(v) - np.abs(w)).sum(1)[alive])
    assert np.ptp(cut) < 1e-4


# ----------------------------------------------------------------------------- selection / errors


def test_default_selects_kernels_only_and_per_layer_budgets():
    key = jax.random.key(10)
    params = {
        "Dense_0": {"kernel": jax.random.normal(key, (8, 6)), "bias": jnp.full((6,), 5.0)},
        "Dense_1": {"kernel": jax.random.normal(key, (6, 3)), "bias": jnp.full((3,), 5.0)},
    }
    tx = sparsejax.project_l11({"Dense_0": 1.0, "Dense_1": 2.0})
    new, _ = step(tx, params, jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params))
    assert float(jnp.abs(new["Dense_0"]["kernel"]).sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(jnp.abs(new["Dense_1"]["kernel"]).sum()) == pytest.approx(2.0, rel=1e-5)
    chex.assert_trees_all_equal(new["Dense_0"]["bias"], params["Dense_0"]["bias"])


def test_where_regex_and_callable():
    params = {"enc": {"kernel": jnp.ones((4, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for where in ("enc", lambda path, leaf: path.startswith("enc")):
        tx = sparsejax.project_l1(1.0, where=where)
        new, _ = step(tx, params, zeros, tx.init(params))
        assert float(jnp.abs(new["enc"]["kernel"]).sum()) == pytest.approx(1.0)
        chex.assert_trees_all_equal(new["head"], params["head"])


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: sparsejax.project_l11(-1.0), "eta"),
        (lambda: sparsejax.project_l11({"Dense": -2.0}), "eta"),
        (lambda: sparsejax.project_l11(1.0, group_axis="rows"), "group_axis"),
        (lambda: sparsejax.project_l11(1.0, every_k_steps=0), "every_k_steps"),
        (lambda: sparsejax.project_l11({"a": 1.0}, global_budget=True), "global_budget"),
        (lambda: sparsejax.project_l1(float("nan")), "eta"),
    ],
)
def test_bad_hyperparameters_raise_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "tx,match",
    [
        (sparsejax.project_l11(1.0, where="decoder"), "decoder"),
        (sparsejax.project_l11({"decoder": 1.0}), "decoder"),
        (sparsejax.project_l11(1.0, where="bias"), "bias"),
        (sparsejax.project_l11(1.0, group_axis=5), "group_axis=5"),
    ],
)
def test_bad_selection_raises_at_init(tx, match):
    params = {"layer": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match=match):
        tx.init(params)


def test_missing_params_raises():
    params = {"kernel": jnp.ones((3, 2))}
    tx = sparsejax.project_l11(1.0)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


# ----------------------------------------------------------------------------- optax integration


def test_inject_hyperparams_schedules_eta():
    params = {"kernel": jax.random.normal(jax.random.key(11), (8, 8))}
    schedule = optax.linear_schedule(8.0, 2.0, transition_steps=3)
    tx = optax.chain(optax.sgd(0.0), optax.inject_hyperparams(sparsejax.project_l11)(eta=schedule))
    state = tx.init(params)
    update = jax.jit(lambda p, s: step(tx, p, jax.tree_util.tree_map(jnp.zeros_like, p), s))
    for expected in (8.0, 6.0, 4.0, 2.0):
        params, state = update(params, state)
        assert float(jnp.abs(params["kernel"]).sum()) <= expected * (1 + 1e-5)
    assert float(jnp.abs(params["kernel"]).sum()) == pytest.approx(2.0, rel=1e-5)


def test_works_inside_optax_masked_and_partition():
    params = {"a": {"kernel": jnp.full((3, 3), 2.0)}, "b": {"kernel": jnp.full((3, 3), 2.0)}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.masked(sparsejax.project_l1(1.0), {"a": True, "b": False})
    new, _ = step(tx, params, zeros, tx.init(params))
    assert float(jnp.abs(new["a"]["kernel"]).sum()) == pytest.approx(1.0)
    chex.assert_trees_all_equal(new["b"], params["b"])
    tx = optax.partition(
        {"proj": sparsejax.project_l1(2.0), "free": optax.sgd(0.0)}, {"a": "proj", "b": "free"}
    )
    new, _ = step(tx, params, zeros, tx.init(params))
    assert float(jnp.abs(new["a"]["kernel"]).sum()) == pytest.approx(2.0)


class MLP(nnx.Module):
    def __init__(self, sizes, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def mlp_data(n=64, d=20):
    x = jax.random.normal(jax.random.key(12), (n, d))
    y = (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)
    return x, y


def test_card_usage_nnx_mlp_under_jit():
    eta = 3.0
    x, y = mlp_data()
    model = MLP((20, 32, 16, 2), nnx.Rngs(0))
    reference = MLP((20, 32, 16, 2), nnx.Rngs(0))
    opt = nnx.Optimizer(
        model, optax.chain(optax.adam(1e-2), sparsejax.project_l11(eta)), wrt=nnx.Param
    )
    ref_opt = nnx.Optimizer(reference, optax.adam(1e-2), wrt=nnx.Param)
    traces = []

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def train_step(m, o):
        traces.append(1)
        o.update(m, nnx.grad(loss_fn)(m))

    for _ in range(10):
        train_step(model, opt)
        train_step(reference, ref_opt)
        for layer in model.layers:
            assert float(jnp.abs(layer.kernel[...]).sum()) <= eta * (1 + 1e-5)
    assert len(traces) == 2  # one trace per optimizer; none after the first step
    zero_rows = int((jnp.abs(model.layers[0].kernel[...]).sum(axis=1) == 0).sum())
    assert zero_rows > 0
    assert float(jnp.abs(reference.layers[0].kernel[...]).sum()) > eta


def test_unselected_leaves_equal_adam_alone():
    params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), params)
    tx = optax.chain(optax.adam(1e-2), sparsejax.project_l11(1.0))
    adam = optax.adam(1e-2)
    p1, s1, p2, s2 = params, tx.init(params), params, adam.init(params)
    for _ in range(5):
        p1, s1 = step(tx, p1, grads, s1)
        p2, s2 = step(adam, p2, grads, s2)
    chex.assert_trees_all_close(p1["Dense_0"]["bias"], p2["Dense_0"]["bias"])


class CNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(8, (3, 3))(x))
        x = linen.relu(linen.Conv(8, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return linen.Dense(10)(linen.relu(linen.Dense(16)(x)))


def test_card_usage_linen_cnn_train_state():
    from flax.training import train_state

    model = CNN()
    x = jax.random.normal(jax.random.key(13), (8, 6, 6, 1))
    y = jnp.arange(8) % 10
    params = model.init(jax.random.key(0), x)["params"]
    eta = {"Conv_0": 4.0, "Conv_1": 1.5, "Dense_0": 8.0}
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.chain(optax.adam(1e-3), sparsejax.project_l11(eta)),
    )
    # TrainState.create stores step as a Python int; an array keeps the jit cache to one entry.
    state = state.replace(step=jnp.asarray(0))

    @jax.jit
    def train_step(state):
        def loss_fn(p):
            logits = state.apply_fn({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

    for i in range(3):
        state = train_step(state)
        for layer, radius in eta.items():
            assert float(jnp.abs(state.params[layer]["kernel"]).sum()) <= radius * (1 + 1e-5)
        if i == 0:  # the first projection of the dense init removes whole input channels
            conv = state.params["Conv_1"]["kernel"]
            assert int((jnp.abs(conv).sum(axis=(0, 1, 3)) == 0).sum()) > 0
    assert float(jnp.abs(state.params["Dense_1"]["kernel"]).sum()) > 8.0  # not selected
    assert train_step._cache_size() == 1


def test_sharded_run_equals_single_device(tmp_path):
    script = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, jax.numpy as jnp, numpy as np, optax, sparsejax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        assert len(jax.devices()) == 4
        key = jax.random.key(0)
        params = {"a": {"kernel": jax.random.normal(key, (64, 32))},
                  "b": {"kernel": jax.random.normal(jax.random.fold_in(key, 1), (32, 8))}}
        grads = jax.tree_util.tree_map(lambda p: 0.1 * jnp.ones_like(p), params)
        tx = optax.chain(optax.adam(1e-2), sparsejax.project_l11(20.0))
        def run(params):
            state = tx.init(params)
            def one_step(p, s):
                updates, s = tx.update(grads, s, p)
                return optax.apply_updates(p, updates), s
            f = jax.jit(one_step)
            for _ in range(3):
                params, state = f(params, state)
            return params
        single = run(params)
        mesh = Mesh(np.array(jax.devices()), ("d",))
        sharded = jax.device_put(params, NamedSharding(mesh, P("d")))
        assert len(sharded["a"]["kernel"].sharding.device_set) == 4
        multi = run(sharded)
        for k in ("a", "b"):
            np.testing.assert_allclose(multi[k]["kernel"], single[k]["kernel"], atol=1e-5)
        print("SHARDED-OK")
        """
    )
    path = tmp_path / "sharded.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert "SHARDED-OK" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("name", ["l1", "l11", "l21"])
def test_float64_params_are_projected_in_float64(name):
    # Issue 10, item 4: float64 leaves must not be rounded through float32.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(14), (40, 30), jnp.float64)
        radius = 0.3 * norm_of(name, x, 0)
        params = {"kernel": x}
        tx = FACTORIES[name](radius)
        new, state = step(tx, params, {"kernel": jnp.zeros_like(x)}, tx.init(params))
        assert new["kernel"].dtype == jnp.float64
        expected = REFERENCES[name](np.asarray(x), radius, 0)
        np.testing.assert_allclose(new["kernel"], expected, rtol=0, atol=1e-12)
        assert norm_of(name, new["kernel"], 0) <= radius * (1 + 1e-12)
        warm = jax.tree_util.tree_leaves(state.thresholds)
        assert warm and all(leaf.dtype == jnp.float64 for leaf in warm)


def test_every_k_steps_leaves_unselected_updates_untouched():
    params = {"kernel": jnp.ones((4, 4)), "bias": jnp.full((4,), 0.1)}
    updates = {"kernel": jnp.full((4, 4), 0.3), "bias": jnp.full((4,), 1e-8)}
    for k in (1, 2):
        tx = sparsejax.project_l1(2.0, every_k_steps=k)
        new_updates, _ = tx.update(updates, tx.init(params), params)
        chex.assert_trees_all_equal(new_updates["bias"], updates["bias"])


# ------------------------------------------------------------------ issue 10: awkward trees

ALL_FACTORIES = {**FACTORIES, "l111": sparsejax.project_l111}


def ball_norm(name, x):
    """The norm each projection bounds, on the input-unit rows of a Dense kernel (NumPy)."""
    return np.abs(np.asarray(x, np.float64)).sum() if name == "l111" else norm_of(name, x, 0)


@pytest.mark.parametrize("tree", list(trees.cases()))
@pytest.mark.parametrize("name", list(ALL_FACTORIES))
def test_none_nodes_and_masks_do_not_shift_the_constraint(name, tree):
    # Issue 10, item 1: a None node before a kernel sent the radius to the wrong leaf.
    case = trees.cases()[tree]
    old, new = trees.one_step(ALL_FACTORIES[name](1.0, where=case.where), case)
    for path in old:
        if path in case.selected:
            assert ball_norm(name, old[path]) > 2.0
            assert ball_norm(name, new[path]) <= 1.0 + 1e-5, path
        else:
            np.testing.assert_array_equal(new[path], old[path], err_msg=path)


def test_int_and_bool_kernels_are_not_selected_by_default():
    # Issue 10, item 8: an int kernel was projected and silently truncated.
    params = {
        "int": {"kernel": jnp.full((3, 2), 7, jnp.int32)},
        "bool": {"kernel": jnp.ones((3, 2), bool)},
        "float": {"kernel": jnp.full((3, 2), 7.0)},
    }
    updates = {
        "int": {"kernel": jnp.ones((3, 2), jnp.int32)},
        "bool": {"kernel": jnp.ones((3, 2), bool)},
        "float": {"kernel": jnp.zeros((3, 2))},
    }
    for name, factory in ALL_FACTORIES.items():
        tx = factory(1.0)
        new_updates, _ = jax.jit(tx.update)(updates, tx.init(params), params)
        chex.assert_trees_all_equal(new_updates["int"], updates["int"])
        chex.assert_trees_all_equal(new_updates["bool"], updates["bool"])
        new = params["float"]["kernel"] + new_updates["float"]["kernel"]
        assert ball_norm(name, new) <= 1 + 1e-5, name


@pytest.mark.parametrize("where", ["bool/kernel", "int/kernel", ".*", lambda path, leaf: True])
def test_explicitly_selecting_a_non_float_leaf_names_it(where):
    params = {
        "bool": {"kernel": jnp.ones((3, 2), bool)},
        "float": {"kernel": jnp.ones((3, 2))},
        "int": {"kernel": jnp.ones((3, 2), jnp.int32)},
    }
    tx = sparsejax.project_l1(1.0, where=where)
    with pytest.raises(ValueError, match=r"'(bool|int)/kernel'.*(bool|int32).*where"):
        tx.init(params)


BAD_VALUES = [[1.0, 2.0], (1.0,), "0.5", -1.0, float("inf"), True, np.ones(2), None]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("name", list(ALL_FACTORIES))
def test_bad_eta_is_refused_when_built_naming_it(name, value):
    # Issue 10, item 11: a list eta was accepted and failed later about a bias.
    with pytest.raises(ValueError, match=r"eta.*" + re.escape(repr(value)[:6])):
        ALL_FACTORIES[name](value)
    with pytest.raises(ValueError, match=r"eta\['Dense'\].*" + re.escape(repr(value)[:6])):
        ALL_FACTORIES[name]({"Dense": value})


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: sparsejax.project_l1({}), r"eta=\{\}"),
        (lambda: sparsejax.project_l1({0: 1.0}), "eta keys"),
        (lambda: sparsejax.project_l1({"(": 1.0}), "regular expression"),
        (lambda: sparsejax.project_l1(1.0, where="("), "regular expression"),
        (lambda: sparsejax.project_l1(1.0, where=3), "where"),
        (lambda: sparsejax.project_l1(1.0, global_budget="yes"), "global_budget='yes'"),
    ],
)
def test_bad_selection_or_mapping_is_refused_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_valid_budgets_still_work_scalar_arrays_dicts_and_injected():
    params = {"a": {"kernel": jnp.full((3, 2), 2.0)}, "b": {"kernel": jnp.full((3, 2), 2.0)}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for eta in (jnp.float32(1.0), np.float64(1.0), 1, {"a/": 1.0, "b/": jnp.asarray(1.0)}):
        tx = sparsejax.project_l1(eta)
        new, _ = step(tx, params, zeros, tx.init(params))
        for layer in ("a", "b"):
            assert float(jnp.abs(new[layer]["kernel"]).sum()) == pytest.approx(1.0, rel=1e-5)
    injected = optax.inject_hyperparams(sparsejax.project_l1)(eta=1.0)
    update = jax.jit(injected.update)
    state = injected.init(params)
    new_updates, state = update(zeros, state, params)
    assert float(
        jnp.abs(params["a"]["kernel"] + new_updates["a"]["kernel"]).sum()
    ) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("name", ["l1", "l11", "l21", "bilevel_l1inf", "l1inf", "nuclear"])
def test_thresholds_recover_after_a_nan_step(name):
    # Issue 10, item 12: a NaN step may leave NaN warm starts; the next finite step must give
    # the projection of its own input.
    x = jax.random.normal(jax.random.key(21), (10, 6))
    params = {"kernel": x}
    tx = FACTORIES[name](1.0)
    state = tx.init(params)
    update = jax.jit(tx.update)
    _, state = update({"kernel": jnp.full_like(x, jnp.nan)}, state, params)
    for _ in range(2):
        new_updates, state = update({"kernel": jnp.zeros_like(x)}, state, params)
        new = params["kernel"] + new_updates["kernel"]
        np.testing.assert_allclose(new, REFERENCES[name](np.asarray(x), 1.0, 0), atol=2e-5)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state))


def test_training_continues_under_apply_if_finite():
    params = {"kernel": jax.random.normal(jax.random.key(22), (8, 4))}
    grads = [{"kernel": jnp.full((8, 4), g)} for g in (0.1, jnp.nan, -0.2, 0.3)]
    tx = optax.apply_if_finite(optax.chain(optax.adam(0.1), sparsejax.project_l11(1.0)), 3)
    state = tx.init(params)
    clean = optax.chain(optax.adam(0.1), sparsejax.project_l11(1.0))
    clean_state, clean_params = clean.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        if np.isfinite(g["kernel"]).all():
            clean_updates, clean_state = clean.update(g, clean_state, clean_params)
            clean_params = optax.apply_updates(clean_params, clean_updates)
        np.testing.assert_allclose(params["kernel"], clean_params["kernel"], atol=1e-6)
    assert int(state.total_notfinite) == 1
    assert np.abs(np.asarray(params["kernel"])).sum() <= 1.0 + 1e-5


def test_jit_does_not_recompile_across_steps():
    params = {"a": {"kernel": jnp.ones((4, 3))}, "b": None}
    zeros = {"a": {"kernel": jnp.zeros((4, 3))}, "b": None}
    for factory in ALL_FACTORIES.values():
        for kwargs in ({}, {"every_k_steps": 2}):
            tx = factory(1.0, **kwargs)
            update = jax.jit(tx.update)
            state = tx.init(params)
            for _ in range(3):
                _, state = update(zeros, state, params)
            assert update._cache_size() == 1, factory


@pytest.mark.parametrize("global_budget", [False, True])
def test_l1inf_warm_starts_give_the_cold_projection_over_steps(global_budget):
    # Issue 13: project_l1inf keeps the last (theta, caps) as the start of the next Newton
    # solve. A radius that grows (the root moves left of the start) and shrinks (right of
    # it) must give, at every step, the projection of the point the optimizer reached.
    key = jax.random.key(23)
    params = {
        "a": {"kernel": jax.random.normal(key, (24, 16))},
        "b": {"kernel": jax.random.normal(jax.random.fold_in(key, 1), (16, 9))},
    }
    radii = [6.0, 6.0, 9.0, 3.0, 3.0, 12.0]
    factory = optax.inject_hyperparams(sparsejax.project_l1inf, static_args=("global_budget",))
    tx = optax.chain(
        optax.adam(1e-2),
        factory(eta=lambda count: jnp.asarray(radii)[count], global_budget=global_budget),
    )
    adam = optax.adam(1e-2)
    update = jax.jit(tx.update)
    state, adam_state = tx.init(params), adam.init(params)
    for i, radius in enumerate(radii):
        sub = jax.random.fold_in(key, 10 + i)
        grads = jax.tree_util.tree_map(lambda p, k=sub: jax.random.normal(k, p.shape), params)
        step, adam_state = adam.update(grads, adam_state, params)
        point = optax.apply_updates(params, step)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if global_budget:
            rows = [np.asarray(point[k]["kernel"]) for k in ("a", "b")]
            padded = np.concatenate([np.pad(r, ((0, 0), (0, 16 - r.shape[1]))) for r in rows])
            cold = np.asarray(projections.l1inf_ball(jnp.asarray(padded), radius))
            expected = {"a": cold[:24], "b": cold[24:, :9]}
        else:
            expected = {
                k: np.asarray(projections.l1inf_ball(point[k]["kernel"], radius)) for k in "ab"
            }
        for k in ("a", "b"):
            np.testing.assert_allclose(params[k]["kernel"], expected[k], rtol=0, atol=1e-6)
            reference = ref_l1inf(np.asarray(point[k]["kernel"]), radius)
            if not global_budget:
                np.testing.assert_allclose(params[k]["kernel"], reference, atol=1e-5)
    assert update._cache_size() == 1
