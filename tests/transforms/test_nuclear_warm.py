"""project_nuclear's warm-started, certified truncated SVD against the full-SVD projection.

The reference is NumPy's float64 SVD of the point the optimizer reached, with the l1 threshold
of the singular values found by Duchi et al.'s sort rule; the same steps with ``warm_rank=0``
(the full SVD at every step) must agree as well.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax

M, N, RANK, K = 96, 80, 3, 8


def np_theta(s, radius):
    """The l1 threshold of nonnegative values ``s`` (0 inside the ball)."""
    s = np.sort(np.asarray(s, np.float64).ravel())[::-1]
    if s.sum() <= radius:
        return 0.0
    cs = np.cumsum(s)
    j = np.arange(1, s.size + 1)
    rho = np.nonzero(s * j > cs - radius)[0][-1]
    return (cs[rho] - radius) / (rho + 1)


def np_nuclear(x, radius):
    matrix = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return ((u * np.maximum(s - np_theta(s, radius), 0)) @ vt).reshape(x.shape)


def np_nuclear_global(xs, radius):
    svds = [np.linalg.svd(np.asarray(x, np.float64), full_matrices=False) for x in xs]
    theta = np_theta(np.concatenate([s for _, s, _ in svds]), radius)
    return [(u * np.maximum(s - theta, 0)) @ vt for u, s, vt in svds]


def low_rank(rng, shape, values, dtype):
    u = np.linalg.qr(rng.standard_normal((shape[0], len(values))))[0]
    v = np.linalg.qr(rng.standard_normal((shape[1], len(values))))[0]
    return jnp.asarray((u * np.asarray(values)) @ v.T, dtype)


def inner_of(state, path="kernel"):
    """The nuclear leaf's warm state inside chain(sgd/adam, project_nuclear)."""
    return state[1].thresholds[path][1]


def drift_steps(dtype, steps=10, noise=1e-6, seed=0):
    """Gradients of a training step that keeps growing a low-rank signal, plus dense noise.

    ``sgd(1e-2)`` on ``-<W, S>``: each step adds ``1e-2 S`` (the kept directions grow, so the
    constraint stays active) and a dense perturbation of size ``noise`` per weight.
    """
    rng = np.random.default_rng(seed)
    signal = low_rank(rng, (M, N), [4.0, 3.0, 2.0], dtype)
    params = {"kernel": signal + 1e-3 * jnp.asarray(rng.standard_normal((M, N)), dtype)}
    grads = [
        {"kernel": -signal + noise / 1e-2 * jnp.asarray(rng.standard_normal((M, N)), dtype)}
        for _ in range(steps)
    ]
    return params, grads


def run(tx, params, grads):
    """Every step's new parameters, its reference and its warm state, under one jit."""
    sgd = optax.sgd(1e-2)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state, out = tx.init(params), []
    for g in grads:
        target = optax.apply_updates(params, sgd.update(g, sgd.init(params))[0])
        params, state = step(params, state, g)
        out.append((params, target, state))
    assert step._cache_size() == 1
    return out


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
def test_warm_path_equals_the_full_svd_projection_over_a_sequence(dtype, atol):
    with jax.enable_x64(dtype == jnp.float64):
        params, grads = drift_steps(dtype)
        warm = run(
            optax.chain(optax.sgd(1e-2), sparsejax.project_nuclear(6.0, warm_rank=K)), params, grads
        )
        cold = run(
            optax.chain(optax.sgd(1e-2), sparsejax.project_nuclear(6.0, warm_rank=0)), params, grads
        )
        certified = [bool(inner_of(s).certified) for _, _, s in warm]
        # The first projection is a full SVD (no basis yet); the warm path takes over at once.
        assert not certified[0] and sum(certified) >= len(grads) - 2, certified
        for (p, target, s), (q, _, _) in zip(warm, cold):
            assert p["kernel"].dtype == dtype and inner_of(s).basis.dtype == dtype
            expected = np_nuclear(target["kernel"], 6.0)
            np.testing.assert_allclose(p["kernel"], expected, rtol=0, atol=atol)
            np.testing.assert_allclose(p["kernel"], q["kernel"], rtol=0, atol=atol)
            assert np.linalg.matrix_rank(np.asarray(p["kernel"]), 1e-4) <= RANK


def _run_with_a_dense_kick(scale, seed):
    """Four drift steps whose third gradient gets a dense Gaussian perturbation of ``scale``."""
    params, grads = drift_steps(jnp.float32, steps=4)
    rng = np.random.default_rng(seed)
    grads[2] = {"kernel": grads[2]["kernel"] + scale * jnp.asarray(rng.standard_normal((M, N)))}
    tx = optax.chain(optax.sgd(1e-2), sparsejax.project_nuclear(6.0, warm_rank=K))
    return run(tx, params, grads)


def test_fallback_when_the_rank_grows_past_k():
    # Step 3 adds a dense perturbation far above the threshold: the projection's rank jumps
    # past k, the certificate fails and the full SVD must give the exact answer.
    out = _run_with_a_dense_kick(30.0, seed=5)
    assert [bool(inner_of(s).certified) for _, _, s in out] == [False, True, False, False]
    rank = np.linalg.matrix_rank(np.asarray(out[2][0]["kernel"]), 1e-5)
    assert rank > K
    # After a full SVD of rank > k the warm path is not even tried.
    assert not bool(inner_of(out[2][2]).attempt)
    for p, target, _ in out:
        np.testing.assert_allclose(p["kernel"], np_nuclear(target["kernel"], 6.0), atol=1e-5)


def test_fallback_when_the_certificate_fails_with_the_rank_below_k():
    # A dense perturbation of spectral norm below the threshold keeps the rank at 3, but its
    # Frobenius norm (what the certificate can bound cheaply) is above it: full SVD.
    out = _run_with_a_dense_kick(0.08, seed=6)
    s = np.linalg.svd(np.asarray(out[2][1]["kernel"], np.float64), compute_uv=False)
    theta = np_theta(s, 6.0)
    assert s[RANK] < theta < np.sqrt(np.sum(s[RANK:] ** 2))
    assert [bool(inner_of(s).certified) for _, _, s in out][:3] == [False, True, False]
    for p, target, _ in out:
        np.testing.assert_allclose(p["kernel"], np_nuclear(target["kernel"], 6.0), atol=1e-5)


def test_a_wrong_start_still_gives_the_exact_projection():
    # A basis orthogonal to the last one (forced into the state): the subspace iteration
    # either recovers the signal (and the certificate says so) or falls back; either way the
    # answer is the projection.
    params, grads = drift_steps(jnp.float32, steps=3)
    tx = optax.chain(optax.sgd(1e-2), sparsejax.project_nuclear(6.0, warm_rank=K))
    update = jax.jit(tx.update)
    state = tx.init(params)
    for g in grads[:2]:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    inner = inner_of(state)
    assert bool(inner.certified) and bool(inner.attempt)
    basis = np.asarray(inner.basis, np.float64)
    other = np.linalg.qr(np.random.default_rng(7).standard_normal((N, K)))[0]
    other = np.linalg.qr(other - basis @ (basis.T @ other))[0].astype(np.float32)
    outer, _ = state[1].thresholds["kernel"]
    forced = inner._replace(basis=jnp.asarray(other))
    state = (state[0], state[1]._replace(thresholds={"kernel": (outer, forced)}))
    updates, state = update(grads[2], state, params)
    target = np.asarray(params["kernel"]) - 1e-2 * np.asarray(grads[2]["kernel"])
    new = optax.apply_updates(params, updates)["kernel"]
    np.testing.assert_allclose(new, np_nuclear(target, 6.0), atol=1e-5)
    assert update._cache_size() == 1


def test_adam_steps_equal_the_full_svd_projection():
    # Adam moves every weight by about lr: the projection's rank grows at once and the warm
    # path falls back; the results must be today's (the full SVD at every step).
    rng = np.random.default_rng(8)
    params = {"kernel": jnp.asarray(rng.standard_normal((64, 48)), jnp.float32)}
    results = []
    for k in (K, 0):
        tx = optax.chain(optax.adam(1e-2), sparsejax.project_nuclear(10.0, warm_rank=k))
        state, p = tx.init(params), params
        update = jax.jit(tx.update)
        trajectory = []
        for i in range(6):
            g = {"kernel": jnp.asarray(np.random.default_rng(i).standard_normal((64, 48)))}
            updates, state = update(g, state, p)
            p = optax.apply_updates(p, updates)
            trajectory.append(p["kernel"])
        results.append(trajectory)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_global_budget_warm_path_with_a_small_leaf():
    # Two leaves warm-started and one too small for k (decomposed exactly in both branches)
    # share one threshold.
    rng = np.random.default_rng(9)
    shapes = {"a": (M, N), "b": (80, 64), "c": (12, 10)}
    signals = {
        name: low_rank(rng, shape, [3.0, 1.5], jnp.float32) for name, shape in shapes.items()
    }
    params = {name: {"kernel": s} for name, s in signals.items()}
    grads = [
        {
            name: {
                "kernel": -signals[name]
                + 1e-4 * jnp.asarray(rng.standard_normal(shapes[name]), jnp.float32)
            }
            for name in shapes
        }
        for _ in range(5)
    ]
    tx = optax.chain(
        optax.sgd(1e-2), sparsejax.project_nuclear(8.0, warm_rank=K, global_budget=True)
    )
    update = jax.jit(tx.update)
    state = tx.init(params)
    certified = []
    for g in grads:
        target = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g, params, g)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        expected = np_nuclear_global([target[name]["kernel"] for name in shapes], 8.0)
        for name, e in zip(shapes, expected):
            np.testing.assert_allclose(params[name]["kernel"], e, atol=1e-5)
        certified.append(bool(state[1].thresholds["a/kernel"].certified))
        assert bool(state[1].thresholds["a/kernel"].certified) == bool(
            state[1].thresholds["b/kernel"].certified
        )
    assert not certified[0] and sum(certified) >= 3, certified
    chex.assert_shape(state[1].thresholds["c/kernel"], ())
    assert update._cache_size() == 1


def test_conv_kernel_warm_path():
    rng = np.random.default_rng(10)
    signal = low_rank(rng, (3 * 3 * 16, 32), [3.0, 2.0], jnp.float32).reshape(3, 3, 16, 32)
    params = {"kernel": signal}
    grads = [
        {"kernel": -signal + 1e-4 * jnp.asarray(rng.standard_normal(signal.shape), jnp.float32)}
        for _ in range(4)
    ]
    out = run(
        optax.chain(optax.sgd(1e-2), sparsejax.project_nuclear(4.0, warm_rank=K)), params, grads
    )
    assert [bool(inner_of(s).certified) for _, _, s in out][1:] == [True] * 3
    for p, target, _ in out:
        chex.assert_shape(p["kernel"], signal.shape)
        np.testing.assert_allclose(p["kernel"], np_nuclear(target["kernel"], 4.0), atol=1e-5)


def test_inject_hyperparams_schedules_eta_on_the_warm_path():
    params, grads = drift_steps(jnp.float32, steps=6)
    schedule = optax.linear_schedule(6.0, 4.0, transition_steps=5)
    factory = optax.inject_hyperparams(sparsejax.project_nuclear, static_args=("warm_rank",))
    tx = optax.chain(optax.sgd(1e-2), factory(eta=schedule, warm_rank=K))
    update = jax.jit(tx.update)
    state = tx.init(params)
    certified = []
    for i, g in enumerate(grads):
        target = np.asarray(params["kernel"]) - 1e-2 * np.asarray(g["kernel"])
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(
            params["kernel"], np_nuclear(target, float(schedule(i))), atol=1e-5
        )
        certified.append(bool(state[1].inner_state.thresholds["kernel"][1].certified))
    assert sum(certified) >= 4, certified
    assert update._cache_size() == 1
    # The default warm_rank needs no static_args; a traced warm_rank is refused by name.
    optax.inject_hyperparams(sparsejax.project_nuclear)(eta=2.0).init(params)
    traced = optax.inject_hyperparams(sparsejax.project_nuclear)(eta=2.0, warm_rank=K)
    with pytest.raises(ValueError, match="warm_rank"):
        traced.init(params)


@pytest.mark.parametrize("value", [-1, 2.0, True, "8", np.ones(2)], ids=repr)
def test_bad_warm_rank_is_refused_when_built(value):
    with pytest.raises(ValueError, match=r"warm_rank=" + repr(value)[:4].replace("(", r"\(")):
        sparsejax.project_nuclear(1.0, warm_rank=value)


def test_a_nan_step_falls_back_and_recovers():
    params, grads = drift_steps(jnp.float32, steps=5)
    grads[2] = {"kernel": jnp.full((M, N), jnp.nan)}
    tx = optax.chain(optax.sgd(1e-2), sparsejax.project_nuclear(6.0, warm_rank=K))
    update = jax.jit(tx.update)
    state = tx.init(params)
    for i, g in enumerate(grads):
        updates, state = update(g, state, params)
        if i == 2:  # what a NaN step gives is NaN; the state must not keep the warm path
            assert not np.isfinite(np.asarray(updates["kernel"])).all()
            assert not bool(inner_of(state).attempt)
            continue
        target = np.asarray(params["kernel"]) - 1e-2 * np.asarray(g["kernel"])
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["kernel"], np_nuclear(target, 6.0), atol=1e-5)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state))
    assert bool(inner_of(state).certified)
