"""Tests for sparsejax.projections against float64 NumPy / SciPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from sparsejax import projections

# --------------------------------------------------------------------------- references


def ref_l1_theta(magnitudes, radius):
    """Threshold of the l1-ball projection by bisection (float64), one 1-D row."""
    magnitudes = np.asarray(magnitudes, np.float64)
    if magnitudes.sum() <= radius:
        return 0.0
    low, high = 0.0, magnitudes.max()
    for _ in range(80):  # 2**-80 of the bracket: below float64 resolution
        mid = 0.5 * (low + high)
        if np.maximum(magnitudes - mid, 0).sum() > radius:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def ref_l1(v, radius):
    v = np.asarray(v, np.float64)
    theta = ref_l1_theta(np.abs(v), radius)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0)


def ref_l1_rows(matrix, radii):
    matrix = np.asarray(matrix, np.float64)
    radii = np.broadcast_to(radii, matrix.shape[:-1])
    out = np.empty_like(matrix)
    for index in np.ndindex(matrix.shape[:-1]):
        out[index] = ref_l1(matrix[index], radii[index])
    return out


def as_groups(x, group_axis):
    moved = np.moveaxis(np.asarray(x, np.float64), group_axis, 0)
    return moved.reshape(moved.shape[0], -1), moved.shape


def from_groups(rows, moved_shape, group_axis):
    return np.moveaxis(rows.reshape(moved_shape), 0, group_axis)


def ref_l21(x, radius, group_axis=0):
    rows, shape = as_groups(x, group_axis)
    norms = np.linalg.norm(rows, axis=1)
    targets = ref_l1(norms, radius)
    scale = np.where(norms > 0, targets / np.where(norms > 0, norms, 1), 1)
    return from_groups(rows * scale[:, None], shape, group_axis)


def ref_l11(x, radius, group_axis=0):
    rows, shape = as_groups(x, group_axis)
    budgets = ref_l1(np.abs(rows).sum(axis=1), radius)
    out = np.stack([ref_l1(row, budget) for row, budget in zip(rows, budgets, strict=True)])
    return from_groups(out, shape, group_axis)


def ref_nested(x, radius, axes):
    """Recursive definition of the nested bi-level operator on ``axes`` (outermost first)."""
    x = np.asarray(x, np.float64)
    if not axes:
        return ref_l1(x.ravel(), radius).reshape(x.shape)
    axis, rest = axes[0], axes[1:]
    children = [np.take(x, i, axis=axis) for i in range(x.shape[axis])]
    budgets = ref_l1(np.array([np.abs(child).sum() for child in children]), radius)
    shifted = [a - 1 if a > axis else a for a in rest]
    projected = [ref_nested(c, b, shifted) for c, b in zip(children, budgets, strict=True)]
    return np.stack(projected, axis=axis)


def ref_bilevel_l1inf(x, radius, group_axis=0):
    rows, shape = as_groups(x, group_axis)
    caps = ref_l1(np.abs(rows).max(axis=1), radius)
    return from_groups(np.clip(rows, -caps[:, None], caps[:, None]), shape, group_axis)


def ref_l1inf(x, radius, group_axis=0):
    """Bisection on theta with mu_i(theta) = max(0, max_k (S_i(k) - theta) / k)."""
    rows, shape = as_groups(x, group_axis)
    magnitudes = np.abs(rows)
    if magnitudes.max(axis=1).sum() <= radius:
        return np.asarray(x, np.float64)
    top_sums = np.cumsum(-np.sort(-magnitudes, axis=1), axis=1)
    ranks = np.arange(1, magnitudes.shape[1] + 1)

    def caps(theta):
        return np.maximum(0, ((top_sums - theta) / ranks).max(axis=1))

    low, high = 0.0, magnitudes.sum(axis=1).max()
    for _ in range(80):  # 2**-80 of the bracket: below float64 resolution
        mid = 0.5 * (low + high)
        low, high = (mid, high) if caps(mid).sum() > radius else (low, mid)
    mu = caps(0.5 * (low + high))
    return from_groups(np.sign(rows) * np.minimum(magnitudes, mu[:, None]), shape, group_axis)


def slsqp_l1inf(x, radius):
    """Generic solver: min ||w - v||^2 s.t. -u_i <= w_ij <= u_i, sum_i u_i <= radius."""
    v = np.asarray(x, np.float64)
    groups, width = v.shape
    size = groups * width
    pick = np.kron(np.eye(groups), np.ones((width, 1)))  # maps u to each w_ij's group
    # Constraints A @ [w, u] + b >= 0.
    a = np.vstack(
        [
            np.hstack([-np.eye(size), pick]),
            np.hstack([np.eye(size), pick]),
            np.concatenate([np.zeros(size), -np.ones(groups)])[None],
        ]
    )
    b = np.concatenate([np.zeros(2 * size), [radius]])
    result = scipy.optimize.minimize(
        lambda z: 0.5 * np.sum((z[:size] - v.ravel()) ** 2),
        np.concatenate([np.zeros(size), np.full(groups, radius / groups)]),
        jac=lambda z: np.concatenate([z[:size] - v.ravel(), np.zeros(groups)]),
        constraints=[{"type": "ineq", "fun": lambda z: a @ z + b, "jac": lambda z: a}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert result.success, result.message
    return result.x[:size].reshape(v.shape)


def ref_nuclear(x, radius):
    matrix = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return ((u * ref_l1(s, radius)) @ vt).reshape(x.shape)


def l1_norm(w):
    return np.abs(w).sum()


def l21_norm(w):
    return np.linalg.norm(np.asarray(w, np.float64).reshape(w.shape[0], -1), axis=1).sum()


def l1inf_norm(w):
    return np.abs(np.asarray(w, np.float64)).reshape(w.shape[0], -1).max(axis=1).sum()


def nuclear_norm(w):
    return np.linalg.svd(np.asarray(w, np.float64), compute_uv=False).sum()


def assert_projection_certificate(x, p, radius, norm, dual_norm, rng, tol=1e-6):
    """Feasibility plus the variational inequality <x - p, y - p> <= tol for every y in the ball.

    The inequality is linear in y, so its worst case over the ball is ``radius *
    dual_norm(x - p) - <x - p, p>``; sampled feasible points are checked as well.
    """
    x, p = np.asarray(x, np.float64), np.asarray(p, np.float64)
    scale = 1 + np.abs(x).max() ** 2
    assert norm(p) <= radius * (1 + 1e-5) + 1e-6
    residual = x - p
    assert radius * dual_norm(residual) - np.vdot(residual, p) <= tol * scale
    for _ in range(20):
        y = rng.standard_normal(x.shape)
        y *= radius * rng.uniform() / max(norm(y), 1e-12)
        assert np.vdot(residual, y - p) <= tol * scale


# Most tests use this shape so that the jitted cores compile once per function.
SHAPE = (6, 5)

REFERENCES = {
    "l1": ref_l1_rows,
    "l1_sort": ref_l1_rows,
    "l21": ref_l21,
    "l11": ref_l11,
    "l111": lambda x, r: ref_nested(x, r, [0, 1]),
    "bilevel_l1inf": ref_bilevel_l1inf,
    "l1inf": ref_l1inf,
    "nuclear": ref_nuclear,
}
FUNCTIONS = {
    "l1": projections.l1_ball,
    "l1_sort": lambda x, r: projections.l1_ball(x, r, method="sort"),
    "l21": projections.l21_ball,
    "l11": projections.l11_ball,
    "l111": projections.l111_ball,
    "bilevel_l1inf": projections.bilevel_l1inf_ball,
    "l1inf": projections.l1inf_ball,
    "nuclear": projections.nuclear_ball,
}
METHODS = ["active_set", "sort"]


# --------------------------------------------------------------------------- l1 ball


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("shape", "axis"), [(SHAPE, -1), (SHAPE, 0), ((2, 6, 5), 1)])
def test_l1_ball_matches_reference_with_per_row_radii(method, shape, axis):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    moved = np.moveaxis(x, axis, -1)
    norms = np.abs(moved).sum(-1)
    # Outside, boundary, inside and zero radii, one per row.
    fractions = rng.choice([0.0, 0.05, 0.4, 1.0, 1.5], size=norms.shape)
    radius = (fractions * norms).astype(np.float32)
    got = projections.l1_ball(x, radius, axis=axis, method=method)
    chex.assert_shape(got, shape)
    expected = np.moveaxis(ref_l1_rows(moved, radius), -1, axis)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_l1_ball_certificate_idempotence_and_optax(method):
    rng = np.random.default_rng(1)
    x = 3 * rng.standard_normal(SHAPE).astype(np.float32)
    radius = np.float32(4.0)
    p = np.asarray(projections.l1_ball(x, radius, method=method))
    for row, projected in zip(x, p, strict=True):
        assert_projection_certificate(
            row, projected, radius, l1_norm, lambda d: np.abs(d).max(), rng
        )
    np.testing.assert_allclose(projections.l1_ball(p, radius, method=method), p, atol=1e-6)
    optax_l1 = jax.jit(jax.vmap(optax.projections.projection_l1_ball, in_axes=(0, None)))
    np.testing.assert_allclose(p, optax_l1(x, radius), atol=2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_l1_ball_inside_boundary_zero_radius_and_ties(method):
    x = np.array(
        [
            [0.5, -0.25, 0.125, 0.0, 0.0],  # inside: returned bitwise
            [3.0, -1.0, 0.5, 0.0, 2.0],  # radius 0: zeros
            [1.0, 2.0, -3.0, 0.0, 0.0],  # exactly on the boundary
            [1.0, 1.0, 1.0, 1.0, 1.0],  # all equal
            [3.0, 3.0, 1.0, -1.0, 1.0],  # threshold exactly at the tied value 1
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    radius = np.array([1.0, 0.0, 6.0, 2.5, 4.0, 0.0], np.float32)
    got = np.asarray(projections.l1_ball(x, radius, method=method))
    assert np.array_equal(got[0], x[0])
    assert np.array_equal(got[[1, 5]], np.zeros((2, 5)))
    np.testing.assert_allclose(got, ref_l1_rows(x, radius), atol=1e-6)
    theta = projections.l1_threshold(np.abs(x), radius, method=method)
    np.testing.assert_allclose(theta, [0.0, 3.0, 0.0, 0.5, 1.0, 0.0], atol=1e-6)


def test_l1_threshold_warm_start_from_any_start():
    rng = np.random.default_rng(2)
    magnitudes = np.abs(rng.standard_normal((6, 200))).astype(np.float32)
    radius = rng.uniform(0.5, 100.0, size=6).astype(np.float32)
    cold = np.asarray(projections.l1_threshold(magnitudes, radius))
    expected = [ref_l1_theta(m, r) for m, r in zip(magnitudes, radius, strict=True)]
    np.testing.assert_allclose(cold, expected, rtol=1e-5, atol=1e-6)
    starts = [
        cold * rng.uniform(1.0, 3.0, 6),  # above
        cold * rng.uniform(0.0, 1.0, 6),  # below
        cold * (1 + 1e-3),  # close, as from the previous training step
        np.zeros(6),
        np.full(6, 1e6),  # above every entry: restart from the lower bound
    ]
    for start in starts:
        warm = projections.l1_threshold(magnitudes, radius, init=start.astype(np.float32))
        np.testing.assert_allclose(warm, cold, rtol=1e-6, atol=1e-7)


def test_l1_threshold_axis_and_broadcast_radius():
    rng = np.random.default_rng(3)
    magnitudes = np.abs(rng.standard_normal((4, 6, 3))).astype(np.float32)
    radius = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)  # broadcasts to (4, 3)
    theta = projections.l1_threshold(magnitudes, radius, axis=-2)
    chex.assert_shape(theta, (4, 3))
    for i, k in np.ndindex(4, 3):
        expected = ref_l1_theta(magnitudes[i, :, k], radius[i, 0])
        np.testing.assert_allclose(theta[i, k], expected, rtol=1e-5)


def test_l1_long_row_near_boundary_stays_feasible():
    rng = np.random.default_rng(4)
    v = rng.standard_normal(1_000_003).astype(np.float32)  # not a multiple of any block
    magnitudes = np.abs(v.astype(np.float64))
    for gap in (1e-4, 1e-6):
        radius = np.float32(magnitudes.sum() * (1 - gap))
        theta = ref_l1_theta(magnitudes, float(radius))
        for method in METHODS:
            w = np.asarray(projections.l1_ball(v, radius, method=method), np.float64)
            assert np.abs(w).sum() <= float(radius) * (1 + 1e-6)
            expected = np.sign(v) * np.maximum(magnitudes - theta, 0)
            np.testing.assert_allclose(w, expected, atol=1e-6)


def test_l1_ball_nan_radius_traced_and_vmap():
    x = jax.random.normal(jax.random.key(2), (2, *SHAPE))
    got = jax.jit(projections.l1_ball)(x[0], jnp.array([jnp.nan, 1, 1, 1, 1, 1]))
    assert np.all(np.isnan(got[0])) and np.all(np.isfinite(got[1:]))
    radius = np.float32(2.0)
    mapped = jax.vmap(lambda m: projections.l1_ball(m, radius, axis=0))(x)
    np.testing.assert_allclose(mapped, projections.l1_ball(x, radius, axis=1), atol=1e-6)


# --------------------------------------------------------------------------- group balls

GROUP_NAMES = ["l21", "l11", "bilevel_l1inf", "l1inf"]


@pytest.mark.parametrize("name", GROUP_NAMES)
@pytest.mark.parametrize(("shape", "group_axis"), [(SHAPE, 0), ((3, 4, 5), -2)])
def test_group_balls_match_reference(name, shape, group_axis):
    function, reference = FUNCTIONS[name], REFERENCES[name]
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    for radius in (0.7, 3.0):
        got = function(x, np.float32(radius), group_axis=group_axis)
        chex.assert_shape(got, shape)
        expected = reference(x, radius, group_axis=group_axis)
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_inside_zero_radius_and_idempotence(name):
    function = FUNCTIONS[name]
    x = jax.random.normal(jax.random.key(3), SHAPE)
    assert np.array_equal(function(x, np.float32(1e4)), x)  # bitwise
    np.testing.assert_array_equal(function(x, np.float32(0)), 0.0)
    np.testing.assert_array_equal(function(jnp.zeros(SHAPE), np.float32(0)), 0.0)
    once = function(x, np.float32(1.5))
    np.testing.assert_allclose(function(once, np.float32(1.5)), once, atol=1e-5)


def test_exact_projections_certificates():
    rng = np.random.default_rng(7)
    x = 2 * rng.standard_normal(SHAPE).astype(np.float32)
    exact = [
        (projections.l21_ball, l21_norm, lambda d: np.linalg.norm(d, axis=1).max()),
        (projections.l1inf_ball, l1inf_norm, lambda d: np.abs(d).sum(axis=1).max()),
        (projections.nuclear_ball, nuclear_norm, lambda d: np.linalg.norm(d, 2)),
    ]
    for function, norm, dual_norm in exact:
        for radius in (0.5, 2.0, 6.0):
            p = function(x, np.float32(radius))
            assert_projection_certificate(x, p, radius, norm, dual_norm, rng)


def test_l1inf_matches_generic_solver_and_ties():
    rng = np.random.default_rng(8)
    for radius in (0.4, 1.5):
        x = rng.standard_normal(SHAPE)
        got = projections.l1inf_ball(x.astype(np.float32), np.float32(radius))
        np.testing.assert_allclose(got, slsqp_l1inf(x, radius), atol=1e-5)
    ties = np.ones(SHAPE, np.float32) * np.array([[1], [1], [2], [2], [0.5], [0]], np.float32)
    ties[2, :2] = 0.5
    for radius in (0.5, 1.0, 2.5):
        got = projections.l1inf_ball(ties, np.float32(radius))
        np.testing.assert_allclose(got, ref_l1inf(ties, radius), atol=1e-6)


def test_bilevel_operators_zero_whole_groups_but_l21_budget_holds():
    x = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    for function, norm in (
        (projections.l11_ball, l1_norm),
        (projections.bilevel_l1inf_ball, l1inf_norm),
        (projections.l21_ball, l21_norm),
    ):
        w = np.asarray(function(x, np.float32(2.0)))
        assert norm(w) <= 2.0 * (1 + 1e-5)
        zero_groups = np.all(w == 0, axis=1)
        assert 0 < zero_groups.sum() < SHAPE[0]
    # l1,1 is not the Euclidean projection onto the same set (that is the flat l1 ball).
    flat = ref_l1(x.ravel(), 2.0).reshape(SHAPE)
    assert not np.allclose(projections.l11_ball(x, np.float32(2.0)), flat, atol=1e-3)


# --------------------------------------------------------------------------- nested l1,1,1


def test_l111_matches_recursive_definition():
    rng = np.random.default_rng(10)
    kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)  # (kh, kw, in, out)
    for radius in (2.0, 15.0):
        got = projections.l111_ball(kernel, np.float32(radius))
        np.testing.assert_allclose(got, ref_nested(kernel, radius, [2, 3]), atol=1e-5)
    w = np.asarray(got)
    assert np.any(np.all(w == 0, axis=(0, 1, 3)))  # whole input channels removed
    assert np.any(np.all(w == 0, axis=(0, 1)) & np.any(w != 0, axis=(0, 1, 3))[:, None])
    got = projections.l111_ball(kernel, np.float32(5.0), group_axes=(3, 0, -2))
    np.testing.assert_allclose(got, ref_nested(kernel, 5.0, [3, 0, 2]), atol=1e-5)


def test_l111_reduces_to_l11_on_dense_kernels():
    x = jax.random.normal(jax.random.key(4), SHAPE)
    radius = np.float32(3.0)
    np.testing.assert_allclose(projections.l111_ball(x, radius), projections.l11_ball(x, radius))
    np.testing.assert_allclose(
        projections.l111_ball(x, radius, group_axes=(-1,)),
        ref_l11(x, 3.0, group_axis=-1),
        atol=1e-5,
    )


# --------------------------------------------------------------------------- nuclear


def test_nuclear_ball_matches_reference_wide_tall_and_conv():
    rng = np.random.default_rng(11)
    for shape in (SHAPE, SHAPE[::-1], (3, 3, 2, 4)):
        x = rng.standard_normal(shape).astype(np.float32)
        for radius in (1.0, 3.0):
            got = projections.nuclear_ball(x, np.float32(radius))
            chex.assert_shape(got, shape)
            np.testing.assert_allclose(got, ref_nuclear(x, radius), atol=2e-5)
    matrix = np.asarray(got).reshape(18, 4)  # the documented (kh * kw * in, out) reading
    assert np.linalg.matrix_rank(matrix, tol=1e-4) < 4


# --------------------------------------------------------------------------- every operator


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_gradients_finite_everywhere_and_correct_at_a_generic_point(name):
    """One jitted, vmapped grad per operator: at 0, at ties, at repeated singular values and
    at a generic point, for radii 0, 0.5 and 2 (traced, so never checked)."""
    function, reference = FUNCTIONS[name], REFERENCES[name]
    generic = np.random.default_rng(12).standard_normal(SHAPE)
    points = [np.zeros(SHAPE), np.ones(SHAPE), 3 * np.eye(*SHAPE), generic]
    radii = [0.0, 0.5, 2.0]
    xs = np.array([p for p in points for _ in radii], np.float32)
    rs = np.array([r for _ in points for r in radii], np.float32)

    def loss(x, r):
        return jnp.sum(jnp.sin(function(x, r)))

    grad_x, grad_r = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, rs)
    assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_r))
    # Inside the ball, including at 0 for a positive radius, the projection is the identity.
    np.testing.assert_allclose(grad_x[1], 1.0)

    def reference_loss(x, r):
        return np.sum(np.sin(reference(x, r)))

    direction = np.random.default_rng(13).standard_normal(SHAPE)
    step = 1e-6
    numeric_x = (
        reference_loss(generic + step * direction, 2.0)
        - reference_loss(generic - step * direction, 2.0)
    ) / (2 * step)
    numeric_r = (reference_loss(generic, 2.0 + step) - reference_loss(generic, 2.0 - step)) / (
        2 * step
    )
    np.testing.assert_allclose(np.vdot(grad_x[-1], direction), numeric_x, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(grad_r[-1], numeric_r, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_bfloat16_input(name):
    x = jax.random.normal(jax.random.key(8), SHAPE).astype(jnp.bfloat16)
    got = FUNCTIONS[name](x, np.float32(2.0))
    assert got.dtype == jnp.bfloat16
    expected = REFERENCES[name](np.asarray(x, np.float64), 2.0)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
def test_l1_ball_float16_and_float32(dtype):
    x = jax.random.normal(jax.random.key(1), SHAPE).astype(dtype)
    got = projections.l1_ball(x, np.float32(1.5))
    assert got.dtype == dtype
    expected = ref_l1_rows(np.asarray(x, np.float64), 1.5)
    atol = {jnp.float16: 2e-3, jnp.float32: 1e-6}[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=atol)
    assert projections.l1_threshold(jnp.abs(x), 1.5).dtype == jnp.float32


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_nan_input_gives_nan_output(name):
    x = jnp.ones(SHAPE).at[1, 2].set(jnp.nan)
    got = np.asarray(FUNCTIONS[name](x, np.float32(1.0)))
    if name in ("l1", "l1_sort"):  # independent rows: the row with the NaN, and only it
        assert np.all(np.isnan(got[1])) and np.all(np.isfinite(np.delete(got, 1, axis=0)))
    else:  # one problem over the whole array
        assert np.all(np.isnan(got))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: projections.l1_ball(jnp.ones(3), -1.0), "radius"),
        (lambda: projections.l1_ball(jnp.ones((2, 3)), np.array([1.0, -2.0])), "radius"),
        (lambda: projections.l1_ball(jnp.ones(3), float("nan")), "radius"),
        (lambda: projections.l1_ball(jnp.ones((2, 3)), jnp.ones(3)), "radius"),
        (lambda: projections.l1_ball(jnp.ones(3), 1.0, axis=1), "axis"),
        (lambda: projections.l1_ball(jnp.ones(3), 1.0, axis=1.0), "axis"),
        (lambda: projections.l1_ball(jnp.arange(3), 1.0), "x"),
        (lambda: projections.l1_ball(jnp.ones(3), 1.0, method="bisect"), "method"),
        (lambda: projections.l1_threshold(jnp.ones(3), 1.0, axis=-2), "axis"),
        (lambda: projections.l1_threshold(jnp.ones((2, 3)), 1.0, init=jnp.ones(3)), "init"),
        (lambda: projections.l1_threshold(jnp.ones(3, jnp.int32), 1.0), "abs_x"),
        (lambda: projections.l21_ball(jnp.ones((2, 3)), 1.0, group_axis=2), "group_axis"),
        (lambda: projections.l21_ball(jnp.ones((2, 3)), jnp.ones(2)), "radius"),
        (lambda: projections.l11_ball(jnp.ones((2, 3)), -0.5), "radius"),
        (lambda: projections.l11_ball(jnp.ones((2, 3)), 1.0, group_axis=-3), "group_axis"),
        (lambda: projections.l11_ball(jnp.ones((2, 3)), 1.0, method="fast"), "method"),
        (lambda: projections.l1inf_ball(jnp.ones((2, 3), jnp.int8), 1.0), "x"),
        (lambda: projections.bilevel_l1inf_ball(jnp.ones((2, 3)), -1), "radius"),
        (lambda: projections.l111_ball(jnp.ones((2, 3)), 1.0, group_axes=(0, -2)), "group_axes"),
        (lambda: projections.l111_ball(jnp.ones((2, 3)), 1.0, group_axes=()), "group_axes"),
        (lambda: projections.l111_ball(jnp.ones((2, 3)), 1.0, group_axes=(5,)), "group_axes"),
        (lambda: projections.nuclear_ball(jnp.ones(3), 1.0), "x"),
        (lambda: projections.nuclear_ball(jnp.ones((2, 3)), -1.0), "radius"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
