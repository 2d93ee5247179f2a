"""Tests of the prox_* and prune_to_rate transformations against NumPy and scikit-learn."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.linear_model import Lasso, MultiTaskLasso

import sparsejax
from tests.transforms import _trees as trees
from tests.transforms._prox_reference import (
    CONV,
    DENSE,
    between_middle_values,
    flat,
    group_masks,
    lipschitz_step,
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


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sparsejax.prox_l1(-1.0), "lam"),
        (lambda: sparsejax.prox_l1({"Dense": float("nan")}), "lam"),
        (lambda: sparsejax.prox_l0(1.0, step_size=-0.1), "step_size"),
        (lambda: sparsejax.prox_l0(1.0, group="channel"), "group='channel'"),
        (lambda: sparsejax.prox_l1(1.0, every_k_steps=0), "every_k_steps"),
        (lambda: sparsejax.prune_to_rate(1.5), "rate"),
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
    tx = sparsejax.prox_l1(1.0)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


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


# ------------------------------------------------------------------ issue 10: awkward trees


def _soft(x):  # prox_l1(lam=1, step=1), weight-wise, in NumPy
    return np.sign(x) * np.maximum(np.abs(x) - 1.0, 0.0)


def _hard(x):  # prox_l0(lam=3.125, step=1): keep iff x^2 > 6.25
    return np.where(x**2 > 6.25, x, 0.0)


PROXES = {
    "prox_l1": (lambda where: sparsejax.prox_l1(1.0, 1.0, where=where), _soft),
    "prox_l0": (lambda where: sparsejax.prox_l0(3.125, 1.0, where=where), _hard),
    "prune_to_rate": (lambda where: sparsejax.prune_to_rate(0.5, where=where), None),
}


@pytest.mark.parametrize("tree", list(trees.cases()))
@pytest.mark.parametrize("name", list(PROXES))
def test_none_nodes_and_masks_do_not_shift_the_prox(name, tree):
    # Issue 10, item 1: a None node before a kernel sent lam to the wrong leaf.
    case = trees.cases()[tree]
    build, reference = PROXES[name]
    old, new = trees.one_step(build(case.where), case)
    for path in old:
        if path not in case.selected:
            np.testing.assert_array_equal(new[path], old[path], err_msg=path)
        elif reference is not None:
            np.testing.assert_allclose(new[path], reference(old[path]), atol=1e-6, err_msg=path)
        else:  # round(G / 2) (half to even) of the weights, the smallest, are zeroed
            magnitudes = np.abs(old[path]).ravel()
            n_zero = int(np.round(0.5 * magnitudes.size))
            kept = np.abs(old[path]) > np.sort(magnitudes)[n_zero - 1]
            np.testing.assert_array_equal(new[path], np.where(kept, old[path], 0.0), path)


@pytest.mark.parametrize("name", list(PROXES))
def test_int_and_bool_leaves_pass_through_or_are_refused_by_name(name):
    # Issue 10, item 8: default selection skips them; explicit selection names them.
    build, _ = PROXES[name]
    params = {
        "a": {"kernel": jnp.full((4, 2), 7, jnp.int32)},
        "b": {"kernel": jnp.ones((4, 2), bool)},
        "c": {"kernel": jnp.full((4, 2), 2.0)},
    }
    updates = {"a": {"kernel": jnp.ones((4, 2), jnp.int32)}, "b": {"kernel": params["b"]["kernel"]}}
    updates["c"] = {"kernel": jnp.zeros((4, 2))}
    tx = build(None)
    new_updates, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    chex.assert_trees_all_equal(new_updates["a"], updates["a"])
    chex.assert_trees_all_equal(new_updates["b"], updates["b"])
    assert float(jnp.abs(new_updates["c"]["kernel"]).sum()) > 0
    for where in ("a/kernel", "b/", ".*"):
        with pytest.raises(ValueError, match=r"'[ab]/kernel'.*(int32|bool)"):
            build(where).init(params)


BAD_VALUES = [[1.0, 2.0], (0.5,), "0.5", -1.0, float("nan"), True, np.ones(2), None]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("lam", lambda v: sparsejax.prox_l1(v)),
        ("lam", lambda v: sparsejax.prox_l0(v)),
        ("rate", lambda v: sparsejax.prune_to_rate(v)),
        ("step_size", lambda v: sparsejax.prox_l1(1.0, v)),
        ("lam\\['Dense'\\]", lambda v: sparsejax.prox_l1({"Dense": v})),
        ("rate\\['Dense'\\]", lambda v: sparsejax.prune_to_rate({"Dense": v})),
    ],
)
def test_bad_budget_is_refused_when_built_naming_it(name, build, value):
    # Issue 10, item 11: lists and other non-numbers were accepted and failed later.
    with pytest.raises(ValueError, match=name + ".*" + re.escape(repr(value)[:6])):
        build(value)


def test_bad_where_or_empty_mapping_is_refused_when_built():
    with pytest.raises(ValueError, match="regular expression"):
        sparsejax.prox_l1(1.0, where="[")
    with pytest.raises(ValueError, match=r"lam=\{\}"):
        sparsejax.prox_l0({})
