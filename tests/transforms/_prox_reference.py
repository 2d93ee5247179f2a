"""NumPy references, parameter trees and a sparse least-squares problem shared by the
prox_* and proximal_rmsprop tests."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def between_middle_values(values):
    """A level strictly between the two middle values: about half the groups on each side."""
    ordered = np.sort(np.asarray(values, np.float64))
    return (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2


N_SAMPLES, N_FEATURES, N_INFORMATIVE, N_TASKS = 400, 200, 10, 3


def sparse_least_squares():
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
