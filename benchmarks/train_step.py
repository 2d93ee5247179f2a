"""Cost of a projection in a jitted training step: ``chain(adam, project_X)`` against ``adam``.

An LFC4-sized MLP (784-1024-1024-512-10, batch 256, float32), the same data and parameters for
every optimizer, timed in the same run. Prints a markdown table; ``--json PATH`` writes the raw
figures.

    python benchmarks/train_step.py [--steps 30] [--json benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import sparsejax

SIZES = (784, 1024, 1024, 512, 10)
BATCH = 256


def init_params(key):
    params = {}
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        key, sub = jax.random.split(key)
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(sub, (n_in, n_out)) * (2.0 / n_in) ** 0.5,
            "bias": jnp.zeros(n_out),
        }
    return params


def loss_fn(params, x, y):
    h = x
    for i in range(len(SIZES) - 1):
        layer = params[f"Dense_{i}"]
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(SIZES) - 2:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def compiled_step(tx, params, batches):
    """Returns a jitted step and its warmed-up carry (compiled, thresholds warm)."""

    @jax.jit
    def train_step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    carry = (params, tx.init(params))
    for x, y in batches[:3]:
        carry = train_step(*carry, x, y)
    jax.block_until_ready(carry)
    return train_step, carry


def time_interleaved(optimizers, params, batches, steps):
    """Median ms per step of each optimizer, their steps interleaved round by round.

    Interleaving spreads any background load evenly over the optimizers being compared.
    """
    runs = {name: list(compiled_step(tx, params, batches)) for name, tx in optimizers.items()}
    times = {name: [] for name in optimizers}
    for i in range(steps):
        x, y = batches[i % len(batches)]
        for name, run in runs.items():
            start = time.perf_counter()
            run[1] = run[0](*run[1], x, y)
            jax.block_until_ready(run[1])
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    key = jax.random.key(0)
    params = init_params(key)
    batches = []
    for i in range(8):
        kx, ky = jax.random.split(jax.random.fold_in(key, i))
        batches.append(
            (jax.random.normal(kx, (BATCH, SIZES[0])), jax.random.randint(ky, (BATCH,), 0, 10))
        )
    # Radii well below each layer's norm, so that every constraint is active at every step.
    adam = optax.adam(1e-3)
    optimizers = {
        "adam": adam,
        "adam + project_l1(400)": optax.chain(adam, sparsejax.project_l1(400.0)),
        "adam + project_l21(10)": optax.chain(adam, sparsejax.project_l21(10.0)),
        "adam + project_l11(400)": optax.chain(adam, sparsejax.project_l11(400.0)),
        "adam + project_bilevel_l1inf(20)": optax.chain(
            adam, sparsejax.project_bilevel_l1inf(20.0)
        ),
        "adam + project_l1inf(20)": optax.chain(adam, sparsejax.project_l1inf(20.0)),
        "adam + project_nuclear(50, every_k_steps=100)": optax.chain(
            adam, sparsejax.project_nuclear(50.0, every_k_steps=100)
        ),
    }
    medians = time_interleaved(optimizers, params, batches, args.steps)
    # An SVD of every kernel at every step is far slower: timed on its own, a few steps.
    slow = {"adam + project_nuclear(50)": optax.chain(adam, sparsejax.project_nuclear(50.0))}
    medians.update(time_interleaved(slow, params, batches, 3))
    base = medians["adam"]
    rows = [
        {"optimizer": name, "ms_per_step": ms, "ratio_to_adam": ms / base}
        for name, ms in medians.items()
    ]
    print(
        f"LFC4-sized MLP {SIZES}, batch {BATCH}, {jax.devices()[0].platform}, "
        f"median of {args.steps} steps"
    )
    print("| optimizer | ms / step | / adam |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['optimizer']} | {row['ms_per_step']:.1f} | {row['ratio_to_adam']:.3f} |")
    if args.json:
        meta = {
            "jax": jax.__version__,
            "optax": optax.__version__,
            "machine": platform.machine(),
            "device": str(jax.devices()[0]),
            "steps": args.steps,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
