"""Structured constraints on coupled groups, against a NumPy reference of the concatenation."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparsejax
from sparsejax.nn import CoupledGroup, GroupMember, coupled_groups
from sparsejax.transforms._coupled import (
    coupled_rows,
    project_coupled,
    project_coupled_tree,
    prox_coupled_tree,
)
from tests._models import Residual


def _setup():
    model = Residual(nnx.Rngs(1))
    groups = coupled_groups(model, jnp.ones((1, 3)))
    params = nnx.state(model, nnx.Param)
    return params, groups


def _numpy_groups(params, groups):
    """Each removable group's weights, gathered independently of the library (no padding)."""
    leaves = {
        "/".join(
            str(getattr(k, "key", getattr(k, "name", k)))
            for k in path[:-1]
            if not (hasattr(k, "name") and k.name == "value")
        ): np.asarray(x)
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    out = []
    for g in groups:
        if not g.removable:
            continue
        mark = {p: np.zeros(v.shape, bool) for p, v in leaves.items()}
        for m in g.members:
            if not m.reads:
                continue
            sl = [slice(None)] * mark[m.path].ndim
            sl[m.axis] = list(m.indices)
            mark[m.path][tuple(sl)] = True
        if any(v.any() for v in mark.values()):
            out.append({p: mark[p] for p in leaves if mark[p].any()})
    return leaves, out


def _reference_l21(vectors, radius):
    norms = np.array([np.linalg.norm(v) for v in vectors])
    if norms.sum() <= radius:
        return [v.copy() for v in vectors]
    lo, hi = 0.0, norms.max()
    for _ in range(200):  # bisection on the l1 threshold of the group norms
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.maximum(norms - mid, 0).sum() > radius else (lo, mid)
    t = np.maximum(norms - hi, 0)
    return [v * (ti / n if n > 0 else 0) for v, ti, n in zip(vectors, t, norms, strict=True)]


def test_l21_on_coupled_groups_matches_numpy_reference():
    params, groups = _setup()
    leaves, marks = _numpy_groups(params, groups)
    radius = 1.5
    vectors = [np.concatenate([leaves[p][m] for p, m in mk.items()]) for mk in marks]
    expected = _reference_l21(vectors, radius)
    got = project_coupled_tree(params, radius, groups, ball="l21")
    got_leaves, _ = _numpy_groups(got, groups)
    for mk, e in zip(marks, expected, strict=True):
        np.testing.assert_allclose(
            np.concatenate([got_leaves[p][m] for p, m in mk.items()]), e, atol=1e-5
        )
    total = sum(
        np.linalg.norm(np.concatenate([got_leaves[p][m] for p, m in mk.items()])) for mk in marks
    )
    assert total == pytest.approx(radius, rel=1e-4)
    # weights that read no removable unit (biases, the first layer's input rows) are unchanged
    for name in ("a/kernel", "a/bias", "b/bias", "b2/bias", "c/bias"):
        np.testing.assert_array_equal(got_leaves[name], leaves[name])
    # a zero group is zero in EVERY layer it spans: removable by construction
    zero = [mk for mk, e in zip(marks, expected, strict=True) if not np.any(e)]
    assert zero
    for mk in zero:
        for p, m in mk.items():
            assert not np.any(got_leaves[p][m])


@pytest.mark.parametrize("ball", ["l11", "l1inf", "bilevel_l1inf"])
def test_other_balls_feasible_and_zero_rows_removable(ball):
    params, groups = _setup()
    radius = 0.8
    got = project_coupled_tree(params, radius, groups, ball=ball)
    rows = np.asarray(coupled_rows(got, groups))
    before = np.abs(np.asarray(coupled_rows(params, groups)))
    if ball == "l11":
        assert before.sum() > radius
        assert np.abs(rows).sum() <= radius * (1 + 1e-4)
    else:
        assert before.max(axis=1).sum() > radius
        assert np.abs(rows).max(axis=1).sum() <= radius * (1 + 1e-4)
    # idempotent
    again = np.asarray(coupled_rows(project_coupled_tree(got, radius, groups, ball=ball), groups))
    np.testing.assert_allclose(again, rows, atol=1e-5)


def test_l1inf_matches_row_projection_of_concatenation():
    params, groups = _setup()
    rows = np.asarray(coupled_rows(params, groups))
    from sparsejax.projections import l1inf_ball

    got = np.asarray(coupled_rows(project_coupled_tree(params, 0.5, groups, ball="l1inf"), groups))
    np.testing.assert_allclose(got, np.asarray(l1inf_ball(jnp.asarray(rows), 0.5)), atol=1e-6)


def test_transformation_jits_and_validates():
    params, groups = _setup()
    tx = optax.chain(optax.sgd(0.1), project_coupled(1.0, groups))
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    step = jax.jit(lambda p, s: tx.update(grads, s, p))
    updates, state = step(params, state)
    new = optax.apply_updates(params, updates)
    rows = np.asarray(coupled_rows(new, groups))
    assert np.linalg.norm(rows, axis=1).sum() <= 1.0 + 1e-4
    with pytest.raises(ValueError, match="ball="):
        project_coupled(1.0, groups, ball="l2")
    with pytest.raises(ValueError, match="radius="):
        project_coupled(-1.0, groups)
    with pytest.raises(ValueError, match="overlap"):
        project_coupled(1.0, groups, side="all").init(params)
    with pytest.raises(ValueError, match="side="):
        project_coupled(1.0, groups, side="outputs")


@pytest.mark.parametrize("penalty", ["l1", "l0", "rate"])
def test_group_prox_on_coupled_groups_matches_numpy(penalty):
    params, groups = _setup()
    rows = np.asarray(coupled_rows(params, groups))
    norms = np.linalg.norm(rows, axis=1)
    lam, step = (0.25, 1.0) if penalty == "rate" else (float(np.median(norms)) * 0.9, 1.0)
    if penalty == "l1":
        expected = rows * np.maximum(1 - lam * step / norms, 0)[:, None]
    elif penalty == "l0":
        expected = rows * (norms**2 > 2 * lam * step)[:, None]
    else:
        n_zero = int(np.round(lam * len(norms)))
        expected = rows.copy()
        expected[np.argsort(norms, kind="stable")[:n_zero]] = 0
    got = prox_coupled_tree(params, lam, groups, penalty=penalty, step=step)
    np.testing.assert_allclose(np.asarray(coupled_rows(got, groups)), expected, atol=1e-6)
    assert np.any(np.all(expected == 0, axis=1))  # the case zeroes at least one whole group
    with pytest.raises(ValueError, match="penalty="):
        prox_coupled_tree(params, lam, groups, penalty="l2")


# ------------------------------------------------------------------ issue 10: bad inputs

_TWO_ROWS = [
    CoupledGroup((GroupMember("w", 0, (i,), True),), True) for i in range(2)
]  # each row of "w" is one group


@pytest.mark.parametrize("radius", [[1.0], (1.0,), "1", True, np.ones(2), -1.0, float("nan")])
def test_project_coupled_refuses_a_radius_that_is_not_one_number(radius):
    # Issue 10, item 11: a list, string, bool or array radius was accepted at build time.
    with pytest.raises(ValueError, match="radius=" + re.escape(repr(radius)[:4])):
        project_coupled(radius, _TWO_ROWS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": -1.0}, "lam=-1.0"),
        ({"lam": [1.0]}, r"lam=\[1.0\]"),
        ({"lam": 0.5, "step": -1.0}, "step=-1.0"),
        ({"lam": 1.5, "penalty": "rate"}, "lam=1.5"),
    ],
)
def test_prox_coupled_tree_refuses_bad_lam_and_step(kwargs, match):
    # Issue 10, item 11: lam < 0 made the weights grow; a list lam was broadcast silently.
    with pytest.raises(ValueError, match=match):
        prox_coupled_tree({"w": jnp.ones((2, 2))}, groups=_TWO_ROWS, **kwargs)


def test_int_and_bool_leaves_never_go_through_floats():
    # Issue 10, item 8: 2**24 + 1 came back as 2**24 (float32 round trip); a bool leaf crashed
    # project_coupled with a bare TypeError.
    params = {
        "w": jnp.full((2, 2), 3.0),
        "step": jnp.asarray(2**24 + 1, jnp.int32),
        "flag": jnp.asarray(True),
    }
    projected = project_coupled_tree(params, 1.0, _TWO_ROWS)
    assert int(projected["step"]) == 2**24 + 1 and bool(projected["flag"])
    norms = np.linalg.norm(np.asarray(projected["w"]), axis=1)
    assert norms.sum() == pytest.approx(1.0, rel=1e-5)
    tx = project_coupled(1.0, _TWO_ROWS)
    updates = {
        "w": jnp.zeros((2, 2)),
        "step": jnp.asarray(1, jnp.int32),
        "flag": jnp.asarray(False),
    }
    new_updates, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    assert int(new_updates["step"]) == 1 and not bool(new_updates["flag"])
    with pytest.raises(ValueError, match=r"'step'.*int32"):
        project_coupled_tree(
            params, 1.0, [CoupledGroup((GroupMember("step", 0, (0,), True),), True)]
        )


# ------------------------------------------- the project_* factories with groups= (issue 12)


def _l1_ball_numpy(v, radius):
    """Euclidean projection onto the l1 ball by sorting (Duchi et al.), in float64."""
    a = np.abs(v)
    if a.sum() <= radius:
        return v.copy()
    if radius <= 0:
        return np.zeros_like(v)
    u = np.sort(a)[::-1]
    cumulative = np.cumsum(u) - radius
    k = np.nonzero(u > cumulative / np.arange(1, len(u) + 1))[0][-1]
    return np.sign(v) * np.maximum(a - cumulative[k] / (k + 1), 0)


def _reference_l11(vectors, radius):
    # Bi-level l1,1 (Guyard & Barlaud, Alg. 3) of the concatenated groups: the group l1 norms
    # onto the l1 ball, then each group onto the l1 ball of its share.
    shares = _l1_ball_numpy(np.array([np.abs(v).sum() for v in vectors]), radius)
    return [_l1_ball_numpy(v, t) for v, t in zip(vectors, shares, strict=True)]


def _group_vectors(params, groups):
    leaves, marks = _numpy_groups(params, groups)
    return [
        np.concatenate([leaves[p][m] for p, m in mk.items()]).astype(np.float64) for mk in marks
    ]


@pytest.mark.parametrize(
    ("factory", "reference"),
    [(sparsejax.project_l21, _reference_l21), (sparsejax.project_l11, _reference_l11)],
)
def test_factories_with_groups_match_numpy_reference(factory, reference):
    params, groups = _setup()
    radius = 1.2
    tx = optax.chain(optax.sgd(0.0), factory(radius, groups=groups))
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    got = _group_vectors(optax.apply_updates(params, updates), groups)
    expected = reference(_group_vectors(params, groups), radius)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)
    assert any(not np.any(e) for e in expected)  # whole coupled groups vanish


@pytest.mark.parametrize(
    ("factory", "ball"),
    [
        (sparsejax.project_l21, "l21"),
        (sparsejax.project_l11, "l11"),
        (sparsejax.project_l1inf, "l1inf"),
        (sparsejax.project_bilevel_l1inf, "bilevel_l1inf"),
    ],
)
def test_factories_with_groups_are_project_coupled(factory, ball):
    params, groups = _setup()
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    ours = optax.chain(optax.adam(0.1), factory(0.7, groups=groups))
    theirs = optax.chain(optax.adam(0.1), project_coupled(0.7, groups, ball=ball))
    u1, _ = ours.update(grads, ours.init(params), params)
    u2, _ = theirs.update(grads, theirs.init(params), params)
    chex.assert_trees_all_close(u1, u2, atol=0)


def test_groups_every_k_steps_projects_only_on_the_kth_update():
    params, groups = _setup()
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    tx = sparsejax.project_l21(0.5, groups=groups, every_k_steps=2)
    traces = []
    step = jax.jit(lambda u, s, p: (traces.append(1), tx.update(u, s, p))[1])
    state = tx.init(params)
    first, state = step(grads, state, params)
    chex.assert_trees_all_equal(first, grads)  # the first update passes through
    second, state = step(grads, state, params)
    rows = np.asarray(coupled_rows(optax.apply_updates(params, second), groups))
    assert np.linalg.norm(rows, axis=1).sum() == pytest.approx(0.5, rel=1e-4)
    assert len(traces) == 1 and int(state.count) == 2  # no recompilation


def test_groups_radius_can_be_scheduled():
    params, groups = _setup()
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.inject_hyperparams(sparsejax.project_l11)(
        eta=optax.linear_schedule(1.0, 0.5, 1), groups=groups
    )
    step = jax.jit(tx.update)
    state = tx.init(params)
    for radius in (1.0, 0.5):
        updates, state = step(zero, state, params)
        rows = np.asarray(coupled_rows(optax.apply_updates(params, updates), groups))
        assert np.abs(rows).sum() == pytest.approx(radius, rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"where": "kernel"}, "where='kernel'"),
        ({"group_axis": 0}, "group_axis=0"),
        ({"global_budget": True}, "global_budget=True"),
        ({"eta": {"a": 1.0}}, "eta="),
        ({"groups": "coupled"}, "groups='coupled'"),
        ({"groups": [1, 2]}, "got 1"),
        ({"groups": [CoupledGroup((GroupMember("w", 0, (0,), True),), False)]}, "no removable"),
        ({"eta": -1.0}, "eta=-1.0"),
        ({"every_k_steps": 0}, "every_k_steps"),
    ],
)
def test_factories_with_groups_refuse_bad_arguments_at_build(kwargs, match):
    arguments = {"eta": 1.0, "groups": _TWO_ROWS, **kwargs}
    for factory in (sparsejax.project_l21, sparsejax.project_l11, sparsejax.project_l1inf):
        with pytest.raises(ValueError, match=re.escape(match)):
            factory(**arguments)


@pytest.mark.parametrize("ball", ["l21", "l11", "l1inf", "bilevel_l1inf"])
def test_warm_started_steps_equal_cold_projections(ball):
    # The state carries the last thresholds into the next projection; every step must still
    # land on the exact (cold, stateless) projection of the Adam iterate.
    params, groups = _setup()
    adam = optax.adam(0.05)
    tx = project_coupled(0.6, groups, ball=ball)
    traces = []

    @jax.jit
    def step(params, adam_state, state, grads):
        traces.append(1)
        updates, adam_state = adam.update(grads, adam_state, params)
        projected, state = tx.update(updates, state, params)
        cold = project_coupled_tree(optax.apply_updates(params, updates), 0.6, groups, ball=ball)
        return optax.apply_updates(params, projected), cold, adam_state, state

    adam_state, state = adam.init(params), tx.init(params)
    assert not np.any(np.asarray(state.thresholds[0]))  # cold before the first step
    key = jax.random.key(0)
    for _ in range(6):
        key, sub = jax.random.split(key)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(sub, len(leaves))
        grads = treedef.unflatten(
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        )
        params, cold, adam_state, state = step(params, adam_state, state, grads)
        chex.assert_trees_all_close(params, cold, atol=1e-5)
        assert float(state.thresholds[0]) > 0  # the outer threshold is kept for the next step
    assert len(traces) == 1
