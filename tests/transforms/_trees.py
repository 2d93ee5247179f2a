"""Parameter trees with ``None`` nodes, optax-masked parts and int/bool leaves, as users have.

Shared by the transform tests: each case says which leaves a transformation must constrain and
which it must leave alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax


@jax.tree_util.register_pytree_with_keys_class
class Linear:
    """An Equinox-like module: attribute leaves, ``bias=None`` when the layer has none."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def tree_flatten_with_keys(self):
        keys = (jax.tree_util.GetAttrKey("weight"), jax.tree_util.GetAttrKey("bias"))
        return tuple(zip(keys, (self.weight, self.bias))), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)


class Case(NamedTuple):
    params: Any
    where: Any  # the selection to pass (None: the default, kernels)
    selected: tuple[str, ...]  # paths the transformation must act on
    wrap: Any  # tx -> tx (identity, or optax.masked)


def _kernel(seed, shape):
    """Entries of magnitude in [2, 3], random signs: every ball of radius 1 is violated."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(2.0, 3.0, shape) * rng.choice([-1.0, 1.0], shape), jnp.float32)


def _identity(tx):
    return tx


def cases() -> dict[str, Case]:
    """The trees, by name. A ``None`` node comes before a selected leaf in flattening order."""
    linen = {
        "Dense_0": {"bias": None, "kernel": _kernel(0, (4, 3))},
        "Dense_1": {"bias": jnp.ones(2), "kernel": _kernel(1, (3, 2))},
        "Dropout_0": None,
        "Dense_2": {"kernel": _kernel(2, (2, 5))},
    }
    equinox = {
        "layers": [
            Linear(_kernel(3, (4, 3)), None),
            Linear(_kernel(4, (3, 3)), jnp.ones(3)),
            Linear(_kernel(5, (3, 2)), None),
        ],
        "activation": None,
    }
    masked = {
        "Dense_0": {"bias": jnp.ones(3), "kernel": _kernel(6, (4, 3))},
        "Dense_1": {"bias": jnp.ones(2), "kernel": _kernel(7, (3, 2))},
        "Dense_2": {"bias": jnp.ones(5), "kernel": _kernel(8, (2, 5))},
    }
    mask = {
        "Dense_0": {"bias": False, "kernel": False},
        "Dense_1": {"bias": False, "kernel": True},
        "Dense_2": {"bias": True, "kernel": True},
    }
    return {
        "linen_none": Case(
            linen, None, ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"), _identity
        ),
        "equinox_none": Case(
            equinox,
            "weight",
            ("layers/0/weight", "layers/1/weight", "layers/2/weight"),
            _identity,
        ),
        "optax_masked": Case(
            masked, None, ("Dense_1/kernel", "Dense_2/kernel"), lambda tx: optax.masked(tx, mask)
        ),
    }


def by_path(tree) -> dict[str, np.ndarray]:
    """``{path_string: float64 array}`` of the leaves (``None`` nodes have none)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {sparsejax.path_string(p): np.asarray(x, np.float64) for p, x in flat}


def one_step(tx, case: Case, grads_value: float = 0.0):
    """Runs ``case.wrap(tx)`` for one update; returns (old, new) leaves by path."""
    tx = case.wrap(tx)
    grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, grads_value), case.params)
    updates, _ = tx.update(grads, tx.init(case.params), case.params)
    return by_path(case.params), by_path(optax.apply_updates(case.params, updates))


def run_beside_clean(build, params, grads):
    """Runs ``optax.apply_if_finite(build())`` over ``grads`` beside ``build()`` fed only the
    finite gradients; checks the parameters agree after every step and returns
    ``(wrapped state, clean state, params)``."""
    tx = optax.apply_if_finite(build(), max_consecutive_errors=3)
    clean = build()
    state, clean_state, clean_params = tx.init(params), clean.init(params), params
    update, clean_update = jax.jit(tx.update), jax.jit(clean.update)
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        if all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(g)):
            clean_updates, clean_state = clean_update(g, clean_state, clean_params)
            clean_params = optax.apply_updates(clean_params, clean_updates)
        chex.assert_trees_all_close(params, clean_params, atol=1e-6)
    return state, clean_state, params
