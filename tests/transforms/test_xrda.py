"""Tests for sparsejax.dual_averaging: xRDA with adaptively weighted l1 (Siegel et al.)."""

from __future__ import annotations

import itertools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.linear_model import Lasso

import sparsejax
from sparsejax.transforms import XRDAState, adaptive_l1_weight
from tests.transforms import _trees as trees

# ----------------------------------------------------------------------------- NumPy reference


def _reference_leaf_step(theta, grad, st, n, hp, lam, kernel_structure):
    """The design notes' listing, line by line, in float64 (st: dict z, v, a, S)."""
    progress = min(n, hp["N"]) / hp["N"]
    s = hp["s0"] * (1 + math.cos(math.pi * progress)) / 2
    alpha = (1 - math.cos(math.pi * progress)) / 2 if hp["alpha"] is None else hp["alpha"]
    g = grad + hp["wd"] * theta
    magnitude = np.abs(theta)
    if kernel_structure:
        magnitude = np.broadcast_to(magnitude.mean(axis=(0, 1), keepdims=True), theta.shape)
    eb = math.exp(-s / hp["T_b"])
    st["a"] = eb * st["a"] + (1 - eb) * magnitude
    big_m = st["a"].max()
    w = (hp["beta"] + 1) / (hp["beta"] + st["a"] / big_m) if big_m > 0 else np.ones_like(theta)
    st["S"] = alpha * st["S"] + s * w
    st["z"] = alpha * st["z"] + (1 - alpha) * theta
    e = math.exp(-s / hp["T"])
    st["v"] = e * st["v"] + (1 - e) * g
    st["z"] = st["z"] - s * st["v"]
    return np.sign(st["z"]) * np.maximum(np.abs(st["z"]) - lam * st["S"], 0)


def _reference_run(thetas, lams, grad_fn, steps, hp, kernel_flags):
    thetas = [np.asarray(t, np.float64) for t in thetas]
    states = [
        {"z": t.copy(), "v": np.zeros_like(t), "a": np.zeros_like(t), "S": np.zeros_like(t)}
        for t in thetas
    ]
    for n in range(1, steps + 1):
        grads = grad_fn(thetas, n)
        thetas = [
            _reference_leaf_step(t, g, st, n, hp, lam, k)
            for t, g, st, lam, k in zip(thetas, grads, states, lams, kernel_flags)
        ]
    return thetas, states


def _run(tx, params, grad_fn, steps):
    """Runs ``tx`` (its update jitted once) on ``grad_fn``'s gradients; returns params, state."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for n in range(1, steps + 1):
        leaves, treedef = jax.tree.flatten(params)
        grads = treedef.unflatten([jnp.asarray(g, jnp.float32) for g in grad_fn(leaves, n)])
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {
            "bias": jnp.asarray(rng.normal(size=4), jnp.float32),
            "kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
        },
        "dense": {
            "bias": jnp.asarray(rng.normal(size=3), jnp.float32),
            "kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
        },
        "zero": {"kernel": jnp.zeros((2, 3), jnp.float32)},  # max a = 0 at the first step
    }


def _quadratic_grads(seed):
    """Gradients of 0.5 ||theta - target||^2 plus fixed per-step noise (same in both runs)."""
    rng = np.random.default_rng(seed)
    noise = [rng.normal(size=(20, *shape)) for shape in [(4,), (3, 3, 2, 4), (3,), (5, 3), (2, 3)]]
    targets = [rng.normal(size=x.shape[1:]) * 0.3 for x in noise]

    def grad_fn(thetas, n):
        return [t - c + 0.5 * e[n] for t, c, e in zip(thetas, targets, noise)]

    return grad_fn


HYPER = dict(N=8, s0=0.5, beta=0.1, T=3.0, T_b=2.0, wd=0.01, alpha=None)


def _xrda_from(hp, lam, **kwargs):
    return sparsejax.xrda(
        hp["N"],
        hp["s0"],
        lam,
        beta=hp["beta"],
        momentum_timescale=hp["T"],
        magnitude_timescale=hp["T_b"],
        weight_decay=hp["wd"],
        alpha=hp["alpha"],
        **kwargs,
    )


@pytest.mark.parametrize("structure", ["weight", "kernel"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_matches_numpy_listing(structure, per_layer):
    lam = {"dense": 0.1, "conv": 0.03, "zero": 0.05} if per_layer else 0.05
    params = _params()
    grad_fn = _quadratic_grads(1)
    steps = 6  # the last two steps run past N's middle, where alpha and s are far from 0 and 1
    got, state = _run(_xrda_from(HYPER, lam, structure=structure), params, grad_fn, steps)

    # leaf order: conv/bias, conv/kernel, dense/bias, dense/kernel, zero/kernel
    lam_of = (lambda name: lam[name]) if per_layer else (lambda name: lam)
    lams = [0.0, lam_of("conv"), 0.0, lam_of("dense"), lam_of("zero")]
    kernel_flags = [False, structure == "kernel", False, False, False]
    want, ref_states = _reference_run(
        jax.tree.leaves(params), lams, grad_fn, steps, HYPER, kernel_flags
    )
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), want):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-5)
    for got_z, ref in zip(jax.tree.leaves(state.z), ref_states):
        np.testing.assert_allclose(got_z, ref["z"], rtol=1e-5, atol=1e-5)
    penalised = [ref for ref, lam_i in zip(ref_states, lams) if lam_i > 0]
    for got_s, ref in zip(jax.tree.leaves(state.S), penalised):
        np.testing.assert_allclose(np.broadcast_to(got_s, ref["S"].shape), ref["S"], rtol=1e-5)
    # the data must exercise the threshold: some weights zero, some not
    kernels = np.concatenate([np.ravel(w) for w, lam_i in zip(want, lams) if lam_i > 0])
    assert 0.1 < np.mean(kernels == 0) < 0.9
    assert state.count == steps


def test_state_layout():
    params = _params()
    state = sparsejax.xrda(10, structure="kernel").init(params)
    assert isinstance(state, XRDAState)
    assert isinstance(state.a["conv"]["bias"], optax.MaskedNode)  # unpenalised: no a, S
    assert state.a["conv"]["kernel"].shape == (1, 1, 2, 4)  # one weight per 3x3 kernel
    assert state.S["dense"]["kernel"].shape == (5, 3)  # Dense kernels stay weight-wise
    chex.assert_trees_all_equal(state.z, params)


# ------------------------------------------------------------- special cases with known answers


def _soft_threshold_after(threshold):
    """prox of threshold*||.||_1 applied to params + updates (independent of sparsejax)."""

    def update_fn(updates, state, params):
        target = jax.tree.map(lambda p, u: p + u, params, updates)
        new = jax.tree.map(lambda x: jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0), target)
        return jax.tree.map(lambda a, b: a - b, new, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _kernel_only(seed=0):
    rng = np.random.default_rng(seed)
    return {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)}


def _noisy_quadratic(seed):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(6, 4)) * 0.3
    noise = rng.normal(size=(40, 6, 4))
    return lambda thetas, n: [thetas[0] - target + 0.5 * noise[n]]


def test_alpha_zero_is_proximal_sgd_with_momentum():
    step, lam, wd, timescale = 0.2, 0.3, 0.01, 2.0
    mu = math.exp(-step / timescale)
    tx = sparsejax.xrda(
        30,
        lambda n: step,  # constant s, so the momentum e^{-s/T} is constant too
        lam,
        alpha=0.0,
        beta=1e8,  # adaptive weights equal to 1
        momentum_timescale=timescale,
        weight_decay=wd,
    )
    # v = mu v + (1 - mu) g is (1 - mu) times optax's trace g + mu trace
    reference = optax.chain(
        optax.add_decayed_weights(wd),
        optax.sgd(step * (1 - mu), momentum=mu),
        _soft_threshold_after(lam * step),
    )
    grad_fn = _noisy_quadratic(2)
    got, _ = _run(tx, _kernel_only(), grad_fn, 30)
    want, _ = _run(reference, _kernel_only(), grad_fn, 30)
    np.testing.assert_allclose(got["kernel"], want["kernel"], atol=1e-5)
    assert np.any(got["kernel"] == 0)


def test_alpha_one_is_regularized_dual_averaging():
    step, lam, steps = 0.2, 0.05, 12
    tx = sparsejax.xrda(
        steps, lambda n: step, lam, alpha=1.0, beta=1e8, weight_decay=0.0, momentum_timescale=1e-9
    )  # momentum e^{-s/T} = 0: v is the gradient
    grad_fn = _noisy_quadratic(3)
    theta0 = np.asarray(_kernel_only()["kernel"], np.float64)
    got, _ = _run(tx, _kernel_only(), grad_fn, steps)
    # RDA: theta_{n+1} = soft(theta_0 - s sum_k g_k, lam s n)
    theta, grad_sum = theta0, np.zeros_like(theta0)
    for n in range(1, steps + 1):
        grad_sum += grad_fn([theta], n)[0]
        z = theta0 - step * grad_sum
        theta = np.sign(z) * np.maximum(np.abs(z) - lam * step * n, 0)
    np.testing.assert_allclose(got["kernel"], theta, atol=1e-5)


def test_adaptive_weight_formula():
    a = np.array([[0.0, 0.5], [2.0, 1.0]])
    beta = 0.25
    np.testing.assert_allclose(
        adaptive_l1_weight(jnp.asarray(a), beta), (beta + 1) / (beta + a / 2.0), rtol=1e-6
    )
    np.testing.assert_array_equal(adaptive_l1_weight(jnp.zeros((2, 2)), beta), np.ones((2, 2)))


def test_given_schedules_reproduce_the_defaults():
    total = 10
    default = sparsejax.xrda(total, 0.5, 0.05)
    scheduled = sparsejax.xrda(
        total,
        optax.cosine_decay_schedule(0.5, total),
        0.05,
        alpha=lambda n: 1 - optax.cosine_decay_schedule(1.0, total)(n),
    )
    grad_fn = _noisy_quadratic(4)
    got, _ = _run(scheduled, _kernel_only(), grad_fn, total)
    want, _ = _run(default, _kernel_only(), grad_fn, total)
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-6, atol=1e-6)


def test_inject_hyperparams_matches_and_can_change_lam():
    kwargs = dict(total_steps=10, learning_rate=0.5, lam=0.05, beta=0.1)
    grad_fn = _noisy_quadratic(5)
    injected = optax.inject_hyperparams(sparsejax.xrda)(**kwargs)
    got, state = _run(injected, _kernel_only(), grad_fn, 10)
    want, _ = _run(sparsejax.xrda(**kwargs), _kernel_only(), grad_fn, 10)
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-6, atol=1e-6)
    # past total_steps s = 0 and alpha = 1, so the next weights are soft(z, lam * S) exactly
    state.hyperparams["lam"] = jnp.asarray(0.5)
    updates, _ = injected.update(jax.tree.map(jnp.zeros_like, got), state, got)
    z, big_s = state.inner_state.z["kernel"], state.inner_state.S["kernel"]
    want_after = np.sign(z) * np.maximum(np.abs(z) - 0.5 * big_s, 0)
    after = optax.apply_updates(got, updates)["kernel"]
    np.testing.assert_allclose(after, want_after, atol=1e-6)
    assert np.sum(after == 0) > np.sum(got["kernel"] == 0)


def test_bfloat16_keeps_its_dtype():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
    tx = sparsejax.xrda(5, 0.5, 0.05, structure="kernel")
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(params, state, params)  # the params as gradients
    for tree in (updates, state.z, state.v, state.a, state.S):
        assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.bfloat16)}


# ------------------------------------------------------------------------- chaining and errors


def _numpy_l1_ball(v, radius):
    """Sort-based Euclidean projection onto the l1 ball (Duchi et al. 2008)."""
    a = np.abs(v)
    if radius <= 0:
        return np.zeros_like(v)
    if a.sum() <= radius:
        return v
    u = np.sort(a)[::-1]
    cumsum = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(u) + 1) > cumsum - radius)[0][-1]
    theta = (cumsum[rho] - radius) / (rho + 1)
    return np.sign(v) * np.maximum(a - theta, 0)


def _numpy_l11(kernel, eta):
    """Bi-level l1,1 (Guyard & Barlaud Alg. 3) on the rows (input units) of a Dense kernel."""
    budgets = _numpy_l1_ball(np.abs(kernel).sum(axis=1), eta)
    return np.stack([_numpy_l1_ball(row, t) for row, t in zip(kernel, budgets)])


def test_chain_with_l11_projection():
    eta, lam, steps = 2.0, 0.02, 8
    kwargs = dict(total_steps=steps, learning_rate=0.3, lam=lam, beta=0.1)
    chained = optax.chain(sparsejax.xrda(**kwargs), sparsejax.project_l11(eta))
    grad_fn = _noisy_quadratic(6)
    got, _ = _run(chained, _kernel_only(), grad_fn, steps)
    # reference: the xRDA step on the weights the model holds, then the projection
    alone = sparsejax.xrda(**kwargs)
    params = _kernel_only()
    state = alone.init(params)
    for n in range(1, steps + 1):
        grads = {"kernel": jnp.asarray(grad_fn([params["kernel"]], n)[0], jnp.float32)}
        updates, state = alone.update(grads, state, params)
        stepped = np.asarray(optax.apply_updates(params, updates)["kernel"], np.float64)
        params = {"kernel": jnp.asarray(_numpy_l11(stepped, eta), jnp.float32)}
    np.testing.assert_allclose(got["kernel"], params["kernel"], atol=1e-5)
    assert np.abs(got["kernel"]).sum() <= eta * (1 + 1e-5)
    assert np.any(np.all(got["kernel"] == 0, axis=1))  # whole input units removed


def test_needs_params():
    tx = sparsejax.xrda(10)
    params = _kernel_only()
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=2.5), "total_steps"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(lam=-1e-3), "lam"),
        (dict(lam={"dense": float("nan")}), "lam"),
        (dict(beta=0.0), "beta"),
        (dict(momentum_timescale=0.0), "momentum_timescale"),
        (dict(magnitude_timescale=-1.0), "magnitude_timescale"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(alpha=1.5), "alpha"),
        (dict(structure="filter"), "structure"),
    ],
)
def test_bad_hyperparameters_raise_when_built(kwargs, name):
    kwargs = {"total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        sparsejax.xrda(**kwargs)


def test_bad_selection_raises_at_init():
    with pytest.raises(ValueError, match="where"):
        sparsejax.xrda(10, where="no_such_layer").init(_params())
    with pytest.raises(ValueError, match="lam"):
        sparsejax.xrda(10, lam={"no_such_layer": 1e-3}).init(_params())


# ------------------------------------------------------------ sparse regression with an answer


@pytest.fixture(scope="module")
def regression():
    """200 features, 10 informative, 300 noisy samples."""
    rng = np.random.default_rng(0)
    n, p, k = 300, 200, 10
    x = rng.standard_normal((n, p))
    w_true = np.zeros(p)
    support = rng.choice(p, k, replace=False)
    w_true[support] = rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
    y = x @ w_true + 0.1 * rng.standard_normal(n)
    return x, y, w_true


def _xrda_least_squares(x, y, steps, **kwargs):
    """Full-batch xRDA on 0.5 * mean (x w - y)^2 (sklearn Lasso's loss), from w = 0."""
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    loss = lambda p: 0.5 * jnp.mean((xj @ p["kernel"][:, 0] - yj) ** 2)
    tx = sparsejax.xrda(steps, weight_decay=0.0, **kwargs)
    params = {"kernel": jnp.zeros((x.shape[1], 1))}

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return np.asarray(params["kernel"][:, 0])


def _lasso(x, y, lam):
    return Lasso(alpha=lam, fit_intercept=False, max_iter=100_000, tol=1e-10).fit(x, y).coef_


def test_unweighted_xrda_converges_to_the_lasso(regression):
    x, y, _ = regression
    lam = 0.01
    w = _xrda_least_squares(x, y, 800, learning_rate=1.0, lam=lam, beta=1e8)
    lasso = _lasso(x, y, lam)
    np.testing.assert_array_equal(w != 0, lasso != 0)
    np.testing.assert_allclose(w, lasso, atol=1e-4)


def test_adaptive_weights_recover_the_true_support(regression):
    x, y, w_true = regression
    lam = 0.01
    w = _xrda_least_squares(x, y, 500, learning_rate=0.5, lam=lam, beta=0.05)
    np.testing.assert_array_equal(w != 0, w_true != 0)
    # the lasso needs a larger lam to find the support, and is then more biased
    lasso_same_lam = _lasso(x, y, lam)
    assert np.all(lasso_same_lam[w_true != 0] != 0)
    assert np.count_nonzero(lasso_same_lam) > np.count_nonzero(w_true)
    lasso_right_support = _lasso(x, y, 0.05)
    np.testing.assert_array_equal(lasso_right_support != 0, w_true != 0)
    assert np.abs(w - w_true).max() < np.abs(lasso_right_support - w_true).max() / 2


# -------------------------------------------------------------------------- a small CNN on digits


class _DigitsCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
        self.head = nnx.Linear(16 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        return self.head(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[..., None], data.target


def _train_digits(digits, structure, steps=300, checkpoints=5):
    """Trains with xRDA; returns per-checkpoint (zero fraction, mean threshold, conv2 kernels)."""
    images, labels = digits
    model = _DigitsCNN(nnx.Rngs(0))
    tx = sparsejax.xrda(steps, 0.5, 1e-3, structure=structure)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        optimizer.update(model, nnx.grad(loss_fn)(model))

    rng = np.random.default_rng(0)
    history = []
    for i in range(1, steps + 1):
        batch = rng.integers(0, len(images), 64)
        train_step(model, optimizer, images[batch], labels[batch])
        if i % (steps // checkpoints) == 0:
            kernels = [np.asarray(m.kernel[...]) for m in (model.conv1, model.conv2, model.head)]
            zeros = sum(np.sum(k == 0) for k in kernels) / sum(k.size for k in kernels)
            thresholds = jax.tree.leaves(optimizer.opt_state.S)
            history.append((zeros, np.mean([np.mean(t) for t in thresholds]), kernels[1]))
    accuracy = np.mean(np.argmax(model(images), axis=-1) == labels)
    return history, accuracy


@pytest.fixture(scope="module")
def weight_training(digits):
    return _train_digits(digits, "weight")


@pytest.fixture(scope="module")
def kernel_training(digits):
    return _train_digits(digits, "kernel")


def test_cnn_zero_fraction_grows_as_the_threshold_accumulates(weight_training):
    history, accuracy = weight_training
    zeros = [h[0] for h in history]
    thresholds = [h[1] for h in history]
    assert all(later >= earlier for earlier, later in itertools.pairwise(zeros))
    assert zeros[0] > 0.2 and zeros[-1] > zeros[0] + 0.1 and zeros[-1] > 0.8
    assert all(later > earlier for earlier, later in itertools.pairwise(thresholds))
    assert accuracy > 0.85  # it still learns


def test_cnn_kernel_structure_prunes_whole_kernels(weight_training, kernel_training):
    def partial_kernels(conv_kernel):  # kernels with some but not all weights zero
        zero = conv_kernel == 0
        return np.mean(np.any(zero, axis=(0, 1)) & ~np.all(zero, axis=(0, 1)))

    (weight_history, _), (kernel_history, accuracy) = weight_training, kernel_training
    dead_kernels = [np.mean(np.all(h[2] == 0, axis=(0, 1))) for h in kernel_history]
    assert dead_kernels[-1] > dead_kernels[0] + 0.3
    assert partial_kernels(kernel_history[-1][2]) < partial_kernels(weight_history[-1][2]) - 0.05
    assert accuracy > 0.85


# ------------------------------------------------------------------ issue 10: awkward trees


def _first_step_reference(theta, lam, s0=1.0, total=1000, beta=2e-3):
    """Step 1 of the listing with zero gradients and no weight decay: z = theta, S = s1 w1."""
    s = s0 * (1 + math.cos(math.pi / total)) / 2
    ratio = np.abs(theta) / np.abs(theta).max()  # the (1 - e^{-s/T_b}) factor cancels
    threshold = lam * s * (beta + 1) / (beta + ratio)
    return np.sign(theta) * np.maximum(np.abs(theta) - threshold, 0.0)


@pytest.mark.parametrize("tree", list(trees.cases()))
def test_none_nodes_and_masks_do_not_shift_lam(tree):
    # Issue 10, item 1: lam must land on the selected leaves, whatever None nodes precede them.
    case = trees.cases()[tree]
    tx = sparsejax.xrda(1000, 1.0, lam=2.0, weight_decay=0.0, where=case.where)
    old, new = trees.one_step(tx, case)
    for path in old:
        if path in case.selected:
            expected = _first_step_reference(old[path], 2.0)
            assert 0 < np.count_nonzero(expected) < expected.size
        else:
            expected = old[path]
        np.testing.assert_allclose(new[path], expected, atol=1e-5, err_msg=path)


def test_int_and_bool_leaves_pass_through():
    # Issue 10, item 8: a bool leaf crashed xrda with a bare TypeError.
    params = {
        **_params(),
        "step": jnp.asarray(4, jnp.int32),
        "flag": jnp.asarray(False),
        "ids": {"kernel": jnp.ones((2, 3), jnp.int32)},
    }
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    tx = sparsejax.xrda(10, lam=1e-3)
    state = tx.init(params)
    assert isinstance(state.z["flag"], optax.MaskedNode)
    update = jax.jit(tx.update)
    for _ in range(2):
        updates, state = update(grads, state, params)
        for key in ("step", "flag", "ids"):
            chex.assert_trees_all_equal(updates[key], grads[key])
        params = optax.apply_updates(params, updates)
    plain = {k: v for k, v in params.items() if k not in ("step", "flag", "ids")}
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(plain))
    with pytest.raises(ValueError, match=r"'(flag|step|ids/kernel)'.*(bool|int32)"):
        sparsejax.xrda(10, where=".*").init(params)


BAD_VALUES = [[1.0, 2.0], (0.5,), "0.5", -1.0, float("nan"), True, np.ones(2)]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize(
    "name",
    [
        "learning_rate",
        "lam",
        "beta",
        "momentum_timescale",
        "magnitude_timescale",
        "weight_decay",
        "alpha",
        "total_steps",
    ],
)
def test_bad_hyperparameter_is_refused_when_built_naming_it(name, value):
    # Issue 10, item 11: a list was accepted (np.all over its entries) and failed later.
    kwargs = {"total_steps": 10, name: value}
    with pytest.raises(ValueError, match=name + ".*" + re.escape(repr(value)[:6])):
        sparsejax.xrda(**kwargs)
    if name == "lam":
        with pytest.raises(ValueError, match=r"lam\['dense'\]"):
            sparsejax.xrda(10, lam={"dense": value})


def test_bad_where_is_refused_when_built():
    with pytest.raises(ValueError, match="regular expression"):
        sparsejax.xrda(10, where="(")


def test_training_continues_under_apply_if_finite():
    # Issue 10, item 12: a NaN gradient poisons z and v for good; optax.apply_if_finite skips
    # that step and the run goes on as if it never came.
    params = _params()
    rng = np.random.default_rng(3)
    grads = [
        jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(5)
    ]
    grads.insert(2, jax.tree_util.tree_map(lambda g: g.at[(0,) * g.ndim].set(jnp.inf), grads[2]))
    build = lambda: sparsejax.xrda(6, learning_rate=0.5, lam=1e-2)
    state, clean_state, params = trees.run_beside_clean(build, params, grads)
    assert int(state.total_notfinite) == 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves((state, params)))
    chex.assert_trees_all_close(state.inner_state, clean_state, atol=1e-6)


def test_weakly_typed_params_do_not_recompile():
    # Found attacking: the state copied the weak type of jnp.full(..., 2.0) params; the first
    # update made it strongly typed and the jitted step compiled a second time.
    params = {"kernel": jnp.full((3, 2), 2.0), "scale": jnp.asarray(1.0)}
    assert params["kernel"].weak_type and params["scale"].weak_type
    grads = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, jnp.float32), params)
    tx = sparsejax.xrda(10, lam=1e-3)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(3):
        _, state = update(grads, state, params)
    assert update._cache_size() == 1
