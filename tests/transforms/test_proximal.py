"""Tests of the prox_* transformations and proximal_rmsprop against NumPy references."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.linear_model import Lasso, MultiTaskLasso

import sparsejax

CONV = "params/Conv_0/kernel"
DENSE = "params/Dense_0/kernel"


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "Conv_0": {
                "kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=4), jnp.float32),
            },
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=3), jnp.float32),
            },
        }
    }


def flat(tree):
    return {
        sparsejax.path_string(path): np.asarray(leaf, np.float64)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


# --------------------------------------------------------------------------- NumPy references


def group_masks(shape, group):
    """One boolean mask per group, by explicit loops over the Flax kernel layout."""
    kept_axes = {
        "weight": range(len(shape)),
        "kernel": (len(shape) - 2, len(shape) - 1),
        "input": (len(shape) - 2,),
        "output": (len(shape) - 1,),
    }[group]
    masks = []
    for index in itertools.product(*(range(shape[a]) for a in kept_axes)):
        mask = np.zeros(shape, bool)
        selector = [slice(None)] * len(shape)
        for axis, i in zip(kept_axes, index):
            selector[axis] = i
        mask[tuple(selector)] = True
        masks.append(mask)
    return masks


def ref_l1(z, lam, mu, group):
    """Scalar-step group shrinkage, or per-weight soft thresholding."""
    mu = np.broadcast_to(mu, z.shape)
    out = np.zeros_like(z)
    for mask in group_masks(z.shape, group):
        if group == "weight":
            out[mask] = np.sign(z[mask]) * np.maximum(np.abs(z[mask]) - lam * mu[mask], 0)
        else:
            norm = np.linalg.norm(z[mask])
            threshold = lam * mu[mask][0]  # callers pass a group-constant step here
            out[mask] = z[mask] * max(1 - threshold / norm, 0) if norm > 0 else 0
    return out


def ref_l0(z, lam, mu, group):
    mu = np.broadcast_to(mu, z.shape)
    out = np.zeros_like(z)
    for mask in group_masks(z.shape, group):
        if np.sum(z[mask] ** 2 / (2 * mu[mask])) > lam:  # zeroing costs more than lam
            out[mask] = z[mask]
    return out


def ref_prune(z, rate, group):
    masks = group_masks(z.shape, group)
    norms = np.array([np.linalg.norm(z[m]) for m in masks])
    out = z.copy()
    for g in np.argsort(norms, kind="stable")[: int(np.round(rate * len(masks)))]:
        out[masks[g]] = 0
    return out


def random_grads(params, step):
    return jax.tree_util.tree_map(
        lambda p: jnp.asarray(np.random.default_rng(100 + step).normal(size=p.shape), jnp.float32),
        params,
    )


def run_steps(tx, params, n_steps):
    """Applies tx for n_steps with fixed pseudo-random gradients; returns params and updates."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for step in range(n_steps):
        updates, state = update(random_grads(params, step), state, params)
        history.append(updates)
        params = optax.apply_updates(params, updates)
    return params, history, state


# --------------------------------------------------------------------------- prox-SGD


def between_middle_values(values):
    """A level strictly between the two middle values: about half the groups on each side."""
    ordered = np.sort(np.asarray(values, np.float64))
    return (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2


@pytest.mark.parametrize(
    ("penalty", "group"),
    [("l1", "weight"), ("l1", "input"), ("l0", "kernel"), ("l0", "output"), ("rate", "input")],
)
def test_prox_sgd_step_matches_reference(penalty, group):
    params = make_params()
    lr = 0.5
    moved = flat(jax.tree_util.tree_map(lambda p, g: p - lr * g, params, random_grads(params, 0)))
    # per-layer lam halfway through the group norms, so that about half the groups go
    norms = {
        path: [np.linalg.norm(moved[path][m]) for m in group_masks(moved[path].shape, group)]
        for path in (CONV, DENSE)
    }
    middle = {path: between_middle_values(norms[path]) for path in norms}
    if penalty == "l1":
        lam = {path: middle[path] / lr for path in norms}
        tx = sparsejax.prox_l1({"Conv": lam[CONV], "Dense": lam[DENSE]}, lr, group=group)
        reference = {path: ref_l1(moved[path], lam[path], lr, group) for path in norms}
    elif penalty == "l0":
        lam = {path: middle[path] ** 2 / (2 * lr) for path in norms}
        tx = sparsejax.prox_l0({"Conv": lam[CONV], "Dense": lam[DENSE]}, lr, group=group)
        reference = {path: ref_l0(moved[path], lam[path], lr, group) for path in norms}
    else:
        tx = sparsejax.prune_to_rate(0.5, group=group)
        reference = {path: ref_prune(moved[path], 0.5, group) for path in norms}
    got = flat(run_steps(optax.chain(optax.sgd(lr), tx), params, 1)[0])
    for path in (CONV, DENSE):
        np.testing.assert_allclose(got[path], reference[path], atol=1e-6)
        assert 0 < np.count_nonzero(got[path]) < got[path].size
    for path in ("params/Conv_0/bias", "params/Dense_0/bias"):  # not selected: plain SGD
        np.testing.assert_allclose(got[path], moved[path], atol=1e-6)


def test_every_k_steps_only_touches_steps_k_2k():
    params = make_params()
    tx = optax.chain(optax.sgd(0.1), sparsejax.prox_l0(5.0, 0.1, every_k_steps=3))
    _, history, _ = run_steps(tx, params, 6)
    current = flat(params)
    for step, updates in enumerate(history):
        sgd = flat(jax.tree_util.tree_map(lambda g: -0.1 * g, random_grads(params, step)))
        got = flat(updates)
        for path in current:
            if (step + 1) % 3 == 0 and path in (CONV, DENSE):
                expected = ref_l0(current[path] + sgd[path], 5.0, 0.1, "weight")
                np.testing.assert_allclose(current[path] + got[path], expected, atol=1e-6)
            else:  # untouched steps pass the update through bit for bit
                np.testing.assert_array_equal(got[path], sgd[path])
            current[path] = current[path] + got[path]


def test_step_size_schedule_is_evaluated_at_the_step_count():
    params = make_params()
    schedule = optax.linear_schedule(0.3, 0.1, transition_steps=2)
    tx = optax.chain(optax.sgd(schedule), sparsejax.prox_l1(1.0, schedule, where="Dense"))
    _, history, _ = run_steps(tx, params, 3)
    current = flat(params)[DENSE]
    for step, updates in enumerate(history):
        lr = float(schedule(step))
        moved = current - lr * np.asarray(random_grads(params, step)["params"]["Dense_0"]["kernel"])
        new = current + flat(updates)[DENSE]
        np.testing.assert_allclose(new, ref_l1(moved, 1.0, lr, "weight"), atol=1e-6)
        current = new


def test_per_layer_lam_and_where():
    params = make_params()
    tx = optax.chain(optax.sgd(0.0), sparsejax.prox_l0({"Conv": 0.0, "Dense": 1e6}, 1.0))
    got = flat(run_steps(tx, params, 1)[0])
    np.testing.assert_array_equal(got[CONV], flat(params)[CONV])  # lam = 0 keeps everything
    assert np.all(got[DENSE] == 0)
    tx = optax.chain(optax.sgd(0.0), sparsejax.prox_l0(1e6, 1.0, where=r"Conv_0/(kernel|bias)"))
    got = flat(run_steps(tx, params, 1)[0])
    assert np.all(got[CONV] == 0) and np.all(got["params/Conv_0/bias"] == 0)
    np.testing.assert_array_equal(got[DENSE], flat(params)[DENSE])


def test_inject_hyperparams_traces_lam_and_step_size():
    params = make_params()
    injected = optax.chain(
        optax.sgd(0.2),
        optax.inject_hyperparams(sparsejax.prox_l1)(lam=1.5, step_size=0.2, group="input"),
    )
    plain = optax.chain(optax.sgd(0.2), sparsejax.prox_l1(1.5, 0.2, group="input"))
    got, _, state = run_steps(injected, params, 2)
    chex.assert_trees_all_close(got, run_steps(plain, params, 2)[0], atol=1e-6)
    # changing the injected value changes the threshold
    state[1].hyperparams["lam"] = jnp.asarray(0.0)
    updates, _ = jax.jit(injected.update)(random_grads(params, 0), state, params)
    chex.assert_trees_all_close(
        updates, jax.tree_util.tree_map(lambda g: -0.2 * g, random_grads(params, 0)), atol=1e-6
    )


def test_bfloat16_params_keep_their_dtype():
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), make_params())
    tx = optax.chain(optax.sgd(0.1), sparsejax.prox_l1(0.5, 0.1, group="output"))
    grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.bfloat16), random_grads(params, 0))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    chex.assert_trees_all_equal_dtypes(updates, params)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sparsejax.prox_l1(-1.0), "lam"),
        (lambda: sparsejax.prox_l1({"Dense": float("nan")}), "lam"),
        (lambda: sparsejax.prox_l0(1.0, step_size=-0.1), "step_size"),
        (lambda: sparsejax.prox_l0(1.0, group="channel"), "group='channel'"),
        (lambda: sparsejax.prox_l1(1.0, every_k_steps=0), "every_k_steps"),
        (lambda: sparsejax.prune_to_rate(1.5), "rate"),
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


def test_bad_selection_raises_at_init_and_missing_params_at_update():
    params = make_params()
    with pytest.raises(ValueError, match="selects no parameter"):
        sparsejax.prox_l1(1.0, where="nothing").init(params)
    with pytest.raises(ValueError, match="match no selected parameter"):
        sparsejax.prox_l0({"Embed": 1.0}).init(params)
    with pytest.raises(ValueError, match="Conv_0/bias"):
        sparsejax.prox_l0(1.0, group="input", where="bias").init(params)
    tx = sparsejax.proximal_rmsprop(1e-3, 1.0)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


# --------------------------------------------------------------------------- Proximal RMSProp


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


# --------------------------------------------------------------------------- convergence


N_SAMPLES, N_FEATURES, N_INFORMATIVE, N_TASKS = 400, 200, 10, 3


@pytest.fixture(scope="module")
def sparse_problem():
    """Least squares with 200 features of which 10 are informative (shared by all tasks)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_SAMPLES, N_FEATURES))
    support = np.sort(rng.choice(N_FEATURES, N_INFORMATIVE, replace=False))
    w = np.zeros((N_FEATURES, N_TASKS))
    signs = rng.choice([-1.0, 1.0], (N_INFORMATIVE, N_TASKS))
    w[support] = signs * rng.uniform(1.0, 2.0, (N_INFORMATIVE, N_TASKS))
    y = x @ w + 0.1 * rng.normal(size=(N_SAMPLES, N_TASKS))
    return x, y, support


def train(tx, x, y, n_steps, batch_size=None, seed=0):
    """Minimises 0.5 * mean ||x w - y||^2 over w = params["kernel"] with tx; returns w."""
    xs, ys = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    params = {"kernel": jnp.zeros((x.shape[1], y.shape[1]))}

    def loss(params, xb, yb):
        return 0.5 * jnp.mean(jnp.sum((xb @ params["kernel"] - yb) ** 2, axis=-1))

    def step(carry, key):
        params, state = carry
        if batch_size is None:
            xb, yb = xs, ys
        else:
            rows = jax.random.permutation(key, x.shape[0])[:batch_size]
            xb, yb = xs[rows], ys[rows]
        updates, state = tx.update(jax.grad(loss)(params, xb, yb), state, params)
        return (optax.apply_updates(params, updates), state), None

    keys = jax.random.split(jax.random.PRNGKey(seed), n_steps)
    run = jax.jit(lambda carry: jax.lax.scan(step, carry, keys)[0])
    params, _ = run((params, tx.init(params)))
    return np.asarray(params["kernel"], np.float64)


def support_of(w):
    return np.flatnonzero(np.abs(w).sum(axis=1))


def lipschitz_step(x):
    return 1.0 / np.linalg.eigvalsh(x.T @ x / x.shape[0]).max()


def test_prox_gradient_l1_matches_sklearn_lasso(sparse_problem):
    x, y, support = sparse_problem
    alpha = 0.05  # Lasso: (1/2n) ||y - x w||^2 + alpha ||w||_1, the same objective
    lasso = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
    expected = lasso.fit(x, y[:, 0]).coef_
    step = lipschitz_step(x)
    tx = optax.chain(optax.sgd(step), sparsejax.prox_l1(alpha, step))
    w = train(tx, x, y[:, :1], 300)[:, 0]
    np.testing.assert_array_equal(support_of(w[:, None]), support)
    np.testing.assert_array_equal(np.flatnonzero(expected), support)
    np.testing.assert_allclose(w, expected, atol=1e-5)


def test_group_prox_gradient_matches_sklearn_multitask_lasso(sparse_problem):
    x, y, support = sparse_problem
    alpha = 0.1  # MultiTaskLasso: (1/2n) ||Y - X W||_F^2 + alpha sum_j ||W_j||_2 (rows = inputs)
    multitask = MultiTaskLasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
    expected = multitask.fit(x, y).coef_.T
    step = lipschitz_step(x)
    tx = optax.chain(optax.sgd(step), sparsejax.prox_l1(alpha, step, group="input"))
    w = train(tx, x, y, 300)
    np.testing.assert_array_equal(support_of(w), support)
    np.testing.assert_array_equal(support_of(expected), support)
    np.testing.assert_allclose(w, expected, atol=1e-5)


def test_prox_sgd_l0_recovers_the_support(sparse_problem):
    x, y, support = sparse_problem
    tx = optax.chain(optax.sgd(0.05), sparsejax.prox_l0(0.05, 0.05, every_k_steps=10))
    w = train(tx, x, y[:, :1], 1500, batch_size=40)
    np.testing.assert_array_equal(support_of(w), support)
    least_squares = np.linalg.lstsq(x[:, support], y[:, 0], rcond=None)[0]
    np.testing.assert_allclose(w[support, 0], least_squares, atol=0.02)


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
