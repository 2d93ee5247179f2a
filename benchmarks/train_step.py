"""Cost of a projection in a jitted training step: ``chain(adam, project_X)`` against ``adam``.

An LFC4-sized MLP (784-1024-1024-512-10, batch 256, float32), the same data and parameters for
every optimizer, their steps interleaved in one run (median ms per step). Each row is printed
beside its target ratio to adam (issue "A projected training step at the cost of an Adam step")
and whether it is met, with the load average before and after: figures taken with anything
else running mislead, and the script says so when the load average is above 0.5.

    python benchmarks/train_step.py [--steps 60] [--json benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import sparsejax

SIZES = (784, 1024, 1024, 512, 10)
# Target ratio to adam per optimizer row (None: no target, reported for information).
TARGETS = {
    "adam + project_l1(400)": 1.15,
    "adam + project_l21(10)": 1.10,
    "adam + project_l11(400)": 1.15,
    "adam + project_bilevel_l1inf(20)": 1.10,
    "adam + project_l1inf(20)": 1.30,
    "adam + project_nuclear(50, every_k_steps=100)": None,
    "adam + project_nuclear(50)": 2.0,
}
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


def jitted_step(tx):
    """One jitted training step of the MLP with ``tx``: ``(params, state, x, y) -> (params,
    state)``."""

    @jax.jit
    def train_step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return train_step


def compiled_step(tx, params, batches):
    """Returns a jitted step and its warmed-up carry (compiled, thresholds warm)."""
    train_step = jitted_step(tx)
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
    parser.add_argument("--steps", type=int, default=60, help="timed steps per optimizer")
    parser.add_argument("--json", default=None, help="write the raw figures to this file")
    args = parser.parse_args()
    load_before = os.getloadavg()

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
    load_after = os.getloadavg()
    base = medians["adam"]
    rows = [_row(name, ms, base) for name, ms in medians.items()]
    print(
        f"LFC4-sized MLP {SIZES}, batch {BATCH}, {jax.devices()[0].platform}, "
        f"median of {args.steps} steps (nuclear at every step: 3); load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    # The run itself raises the load average (it keeps both cores busy): judge the machine
    # by the figure taken before it started.
    if load_before[0] > 0.5:
        print("WARNING: load average above 0.5 at the start; something else was running")
    print("| optimizer | ms / step | / adam | target | met |")
    print("|---|---:|---:|---:|:---:|")
    for row in rows:
        target = "" if row["target"] is None else f"<= {row['target']:.2f}"
        met = {None: "", True: "yes", False: "**no**"}[row["met"]]
        print(
            f"| {row['optimizer']} | {row['ms_per_step']:.1f} | {row['ratio_to_adam']:.3f} "
            f"| {target} | {met} |"
        )
    if args.json:
        meta = {
            "jax": jax.__version__,
            "optax": optax.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "device": str(jax.devices()[0]),
            "steps": args.steps,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "command": "python benchmarks/train_step.py "
            + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


def _row(name: str, ms: float, base: float) -> dict:
    target = TARGETS.get(name)
    ratio = ms / base
    met = None if target is None else bool(ratio <= target)
    return {
        "optimizer": name,
        "ms_per_step": ms,
        "ratio_to_adam": ratio,
        "target": target,
        "met": met,
    }


if __name__ == "__main__":
    main()
