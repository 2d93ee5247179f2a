"""Tests of proximal_rmsprop against a NumPy reference of Formanek & Hadházi's eq. (18)."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax
from tests.transforms import _trees as trees
from tests.transforms._prox_reference import (
    CONV,
    DENSE,
    N_FEATURES,
    N_INFORMATIVE,
    N_TASKS,
    between_middle_values,
    flat,
    make_params,
    random_grads,
    ref_l0,
    ref_l1,
    ref_prune,
    run_steps,
    sparse_least_squares,
    support_of,
    train,
)


@pytest.fixture(scope="module")
def sparse_problem():
    return sparse_least_squares()


def ref_proximal_rmsprop(params, n_steps, lr, decay, eps, every_k_steps, apply_prox):
    """Eq. (18) of the paper in NumPy, then the prox with the per-weight steps every k steps."""
    current = flat(params)
    nu = {path: np.zeros_like(value) for path, value in current.items()}
    for step in range(n_steps):
        grads = flat(random_grads(params, step))
        for path in current:
            nu[path] = decay * nu[path] + (1 - decay) * grads[path] ** 2
            mu = lr / (np.sqrt(nu[path]) + eps)
            current[path] = current[path] - mu * grads[path]
            if (step + 1) % every_k_steps == 0 and path in (CONV, DENSE):
                current[path] = apply_prox(current[path], mu)
    return current, nu


@pytest.mark.parametrize(
    ("kwargs", "apply_prox"),
    [
        ({"lam": 0.02}, lambda z, mu: ref_l0(z, 0.02, mu, "weight")),
        ({"lam": 0.3, "group": "kernel"}, lambda z, mu: ref_l0(z, 0.3, mu, "kernel")),
        ({"lam": 0.5, "penalty": "l1"}, lambda z, mu: ref_l1(z, 0.5, mu, "weight")),
        ({"rate": 0.5, "group": "output"}, lambda z, mu: ref_prune(z, 0.5, "output")),
    ],
)
def test_proximal_rmsprop_matches_reference(kwargs, apply_prox):
    params = make_params()
    tx = sparsejax.proximal_rmsprop(0.05, every_k_steps=2, decay=0.9, eps=1e-8, **kwargs)
    got, _, state = run_steps(tx, params, 4)
    expected, expected_nu = ref_proximal_rmsprop(params, 4, 0.05, 0.9, 1e-8, 2, apply_prox)
    got = flat(got)
    for path in expected:
        np.testing.assert_allclose(got[path], expected[path], atol=1e-5)
    # the squared-gradient average saw the loss gradients only, never the prox
    for path, nu in flat(state.nu).items():
        np.testing.assert_allclose(nu, expected_nu[path], rtol=1e-5)
    assert 0 < np.count_nonzero(got[DENSE]) < got[DENSE].size


def test_proximal_rmsprop_group_l1_is_the_weighted_prox():
    """Group L1 with per-weight RMSProp steps: the optimality conditions of the weighted prox."""
    params = make_params()
    lr = 0.05
    g = np.asarray(random_grads(params, 0)["params"]["Dense_0"]["kernel"], np.float64)
    mu = lr / (np.sqrt(0.1 * g**2) + 1e-8)
    z = flat(params)[DENSE] - mu * g
    lam = between_middle_values([np.linalg.norm(z[i] / mu[i]) for i in range(z.shape[0])])
    tx = sparsejax.proximal_rmsprop(lr, lam, penalty="l1", group="input", where="Dense_0/kernel")
    got = flat(run_steps(tx, params, 1)[0])[DENSE]
    zero_rows = 0
    for i in range(z.shape[0]):
        w = got[i]
        if np.all(w == 0):
            zero_rows += 1
            assert np.linalg.norm(z[i] / mu[i]) <= lam * (1 + 1e-5)
        else:
            residual = (w - z[i]) / mu[i] + lam * w / np.linalg.norm(w)
            assert np.abs(residual).max() <= 1e-4 * np.abs(z[i] / mu[i]).max()
    assert 0 < zero_rows < z.shape[0]


def test_proximal_rmsprop_with_inject_hyperparams_and_schedule():
    params = make_params()
    schedule = optax.exponential_decay(0.05, transition_steps=1, decay_rate=0.5)
    injected = optax.inject_hyperparams(sparsejax.proximal_rmsprop)(
        learning_rate=schedule, lam=0.02, group="kernel"
    )
    plain = sparsejax.proximal_rmsprop(schedule, 0.02, group="kernel")
    chex.assert_trees_all_close(
        run_steps(injected, params, 3)[0], run_steps(plain, params, 3)[0], atol=1e-6
    )


def test_proximal_rmsprop_with_flax_nnx_optimizer():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
            self.dense = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.dense(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))

    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, sparsejax.proximal_rmsprop(1e-2, rate=0.5, group="output"), wrt=nnx.Param
    )
    x = jnp.ones((2, 5, 5, 1))

    @nnx.jit
    def train_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)

    train_step(model, optimizer)
    conv_filters = np.abs(np.asarray(model.conv.kernel[...])).sum(axis=(0, 1, 2))
    dense_units = np.abs(np.asarray(model.dense.kernel[...])).sum(axis=0)
    assert (conv_filters == 0).sum() == 2 and (dense_units == 0).sum() == 1
    assert np.all(np.asarray(model.conv.bias[...]) != 0)  # biases are not selected


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sparsejax.proximal_rmsprop(1e-3), "exactly one of lam"),
        (lambda: sparsejax.proximal_rmsprop(1e-3, 1.0, rate=0.5), "exactly one of lam"),
        (lambda: sparsejax.proximal_rmsprop(1e-3, rate=0.5, penalty="l1"), "penalty='l0'"),
        (lambda: sparsejax.proximal_rmsprop(1e-3, 1.0, penalty="l2"), "penalty='l2'"),
        (lambda: sparsejax.proximal_rmsprop(1e-3, 1.0, decay=1.0), "decay"),
        (lambda: sparsejax.proximal_rmsprop(-1e-3, 1.0), "learning_rate"),
        (lambda: sparsejax.proximal_rmsprop(1e-3, 1.0, eps=-1.0), "eps"),
    ],
)
def test_bad_hyperparameters_raise_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_missing_params_raise_at_update():
    params = make_params()
    tx = sparsejax.proximal_rmsprop(1e-3, 1.0)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lam": 0.05},
        {"lam": 0.05, "group": "input"},
        {"rate": 1 - N_INFORMATIVE / N_FEATURES, "group": "input"},
    ],
)
def test_proximal_rmsprop_recovers_the_support(sparse_problem, kwargs):
    x, y, support = sparse_problem
    tasks = N_TASKS if kwargs.get("group") == "input" else 1
    # the paper applies the prox once per epoch: 10 batches of 40 samples
    tx = sparsejax.proximal_rmsprop(1e-2, every_k_steps=10, **kwargs)
    w = train(tx, x, y[:, :tasks], 1500, batch_size=40)
    np.testing.assert_array_equal(support_of(w), support)
    least_squares = np.linalg.lstsq(x[:, support], y[:, :tasks], rcond=None)[0]
    np.testing.assert_allclose(w[support], least_squares, atol=0.1)


# ------------------------------------------------------------------ issue 10: awkward trees


def _soft(x):  # the l1 prox with lam * mu = 1, weight-wise, in NumPy
    return np.sign(x) * np.maximum(np.abs(x) - 1.0, 0.0)


def _hard(x):  # the l0 prox with 2 lam mu = 6.25: keep iff x^2 > 6.25
    return np.where(x**2 > 6.25, x, 0.0)


# Zero gradients and eps = 1: nu = 0 and every step mu = lr / (0 + 1) = 1, z = w.
MODES = {
    "l0": ({"lam": 3.125}, _hard),
    "l1": ({"lam": 1.0, "penalty": "l1"}, _soft),
}


@pytest.mark.parametrize("tree", list(trees.cases()))
@pytest.mark.parametrize("mode", list(MODES))
def test_none_nodes_and_masks_do_not_shift_the_prox(mode, tree):
    # Issue 10, item 1: a None node before a kernel sent lam to the wrong leaf.
    case = trees.cases()[tree]
    kwargs, reference = MODES[mode]
    tx = sparsejax.proximal_rmsprop(1.0, eps=1.0, where=case.where, **kwargs)
    old, new = trees.one_step(tx, case)
    for path in old:
        expected = reference(old[path]) if path in case.selected else old[path]
        np.testing.assert_allclose(new[path], expected, atol=1e-6, err_msg=path)


def test_int_and_bool_leaves_pass_through():
    # Issue 10, item 8: an int leaf's update was scaled and truncated, a bool one crashed.
    params = {
        "dense": {"kernel": jnp.full((3, 2), 0.5)},
        "ids": {"kernel": jnp.arange(6, dtype=jnp.int32).reshape(3, 2)},
        "step": jnp.asarray(4, jnp.int32),
        "flag": jnp.asarray(False),
    }
    updates = {
        "dense": {"kernel": jnp.full((3, 2), 0.1)},
        "ids": {"kernel": jnp.full((3, 2), 3, jnp.int32)},
        "step": jnp.asarray(1, jnp.int32),
        "flag": jnp.asarray(True),
    }
    tx = sparsejax.proximal_rmsprop(1e-2, lam=1e-4)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(2):
        new_updates, state = update(updates, state, params)
        for key in ("ids", "step", "flag"):
            chex.assert_trees_all_equal(new_updates[key], updates[key])
    mu = 1e-2 / (np.sqrt(0.19 * 0.01) + 1e-8)  # nu after two steps of g = 0.1
    np.testing.assert_allclose(new_updates["dense"]["kernel"], -mu * 0.1, rtol=1e-5)
    with pytest.raises(ValueError, match=r"'(flag|step|ids/kernel)'.*(bool|int32)"):
        sparsejax.proximal_rmsprop(1e-2, lam=1e-4, where=".*").init(params)


BAD_VALUES = [[1.0, 2.0], (0.5,), "0.5", -1.0, float("nan"), True, np.ones(2)]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("learning_rate", lambda v: sparsejax.proximal_rmsprop(v, lam=1.0)),
        ("lam", lambda v: sparsejax.proximal_rmsprop(1e-3, lam=v)),
        ("rate", lambda v: sparsejax.proximal_rmsprop(1e-3, rate=v)),
        ("decay", lambda v: sparsejax.proximal_rmsprop(1e-3, lam=1.0, decay=v)),
        ("eps", lambda v: sparsejax.proximal_rmsprop(1e-3, lam=1.0, eps=v)),
        ("lam\\['Dense'\\]", lambda v: sparsejax.proximal_rmsprop(1e-3, lam={"Dense": v})),
    ],
)
def test_bad_hyperparameter_is_refused_when_built_naming_it(name, build, value):
    # Issue 10, item 11.
    with pytest.raises(ValueError, match=name + ".*" + re.escape(repr(value)[:6])):
        build(value)


def test_training_continues_under_apply_if_finite():
    # Issue 10, item 12: a NaN gradient poisons nu for good (as optax.rmsprop);
    # optax.apply_if_finite skips that step, and the run goes on as if it never came.
    params = make_params()
    grads = [random_grads(params, seed) for seed in range(5)]
    grads.insert(2, jax.tree_util.tree_map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads[2]))
    inner = dict(learning_rate=1e-2, lam=1e-3, group="output", every_k_steps=2)
    state, clean_state, params = trees.run_beside_clean(
        lambda: sparsejax.proximal_rmsprop(**inner), params, grads
    )
    assert int(state.total_notfinite) == 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves((state, params)))
    chex.assert_trees_all_close(state.inner_state.nu, clean_state.nu, atol=1e-7)


def test_weakly_typed_params_do_not_recompile():
    # Found attacking: zeros_like kept the weak type of jnp.full(..., 2.0) params; the first
    # update made nu strongly typed and the jitted step compiled a second time.
    params = {"kernel": jnp.full((3, 2), 2.0)}
    assert params["kernel"].weak_type
    grads = {"kernel": jnp.ones((3, 2), jnp.float32)}
    tx = sparsejax.proximal_rmsprop(1e-2, lam=1e-3)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(3):
        _, state = update(grads, state, params)
    assert update._cache_size() == 1
