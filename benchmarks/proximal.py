"""Cost of one optimizer update on LFC4-sized kernels: Proximal RMSProp vs optax.rmsprop.

Prints ms per jitted update (median of repeats) with the prox applied on every step (the
worst case; with every_k_steps=k the prox runs on one step in k).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax

WIDTHS = (784, 1000, 1000, 512, 128, 10)


def make_params(key):
    params = {}
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        key, sub = jax.random.split(key)
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(sub, (a, b)) * 0.05,
            "bias": jnp.zeros(b),
        }
    return params


def time_update(tx, params, grads, repeats=20):
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = update(grads, state, params)
    jax.block_until_ready(out)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(update(grads, state, params))
        samples.append(time.perf_counter() - start)
    return 1e3 * float(np.median(samples))


def main():
    params = make_params(jax.random.PRNGKey(0))
    grads = jax.tree_util.tree_map(
        lambda p: 1e-2 * jnp.sin(jnp.arange(p.size).reshape(p.shape) * 1.0), params
    )
    rows = [
        ("optax.rmsprop(1e-3)  [peer]", optax.rmsprop(1e-3)),
        ("proximal_rmsprop l0 weight", sparsejax.proximal_rmsprop(1e-3, 1e-4)),
        ("proximal_rmsprop l0 output", sparsejax.proximal_rmsprop(1e-3, 1e-4, group="output")),
        ("proximal_rmsprop l1 weight", sparsejax.proximal_rmsprop(1e-3, 1e-4, penalty="l1")),
        (
            "proximal_rmsprop l1 input (weighted Newton)",
            sparsejax.proximal_rmsprop(1e-3, 1e-3, penalty="l1", group="input"),
        ),
        (
            "proximal_rmsprop rate 0.5 input",
            sparsejax.proximal_rmsprop(1e-3, rate=0.5, group="input"),
        ),
        ("proximal_rmsprop rate 0.5 weight", sparsejax.proximal_rmsprop(1e-3, rate=0.5)),
        (
            "proximal_rmsprop l0 weight, every 100",
            sparsejax.proximal_rmsprop(1e-3, 1e-4, every_k_steps=100),
        ),
        ("optax.sgd(1e-2)  [peer]", optax.sgd(1e-2)),
        ("sgd + prox_l1 weight", optax.chain(optax.sgd(1e-2), sparsejax.prox_l1(1e-4, 1e-2))),
        (
            "sgd + prox_l1 input",
            optax.chain(optax.sgd(1e-2), sparsejax.prox_l1(1e-4, 1e-2, group="input")),
        ),
        ("sgd + prox_l0 weight", optax.chain(optax.sgd(1e-2), sparsejax.prox_l0(1e-4, 1e-2))),
    ]
    count = sum(p.size for p in jax.tree_util.tree_leaves(params))
    print(f"LFC4 kernels {WIDTHS}, {count} parameters, backend {jax.default_backend()}")
    print(f"{'transformation':48s} {'ms/update':>10s}")
    for name, tx in rows:
        print(f"{name:48s} {time_update(tx, params, grads):10.2f}")


if __name__ == "__main__":
    main()
