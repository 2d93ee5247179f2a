"""Float64 NumPy / SciPy references and shared fixtures for the projection tests."""

import numpy as np
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
