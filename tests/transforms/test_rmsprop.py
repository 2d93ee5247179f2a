"""Tests of proximal_rmsprop against a NumPy reference of Formanek & Hadházi's eq. (18)."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax
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
