"""Milliseconds per call of the l1-ball projections, ours beside Optax's in the same run.

For each float32 matrix shape and each radius (a fraction of every row's l1 norm, one radius
per row), times the row-wise projection with

- ``sort``: ``sparsejax.projections.l1_ball(method="sort")`` (Duchi et al. + exact polish);
- ``active_set``: ``l1_ball(method="active_set")`` (Michelot's sort-free fixed point), cold;
- ``warm``: the active-set threshold warm-started from the thresholds of a slightly perturbed
  matrix (relative noise 1e-3, as between two training steps), plus the shrinkage;
- ``optax``: ``jax.vmap(optax.projections.projection_l1_ball)``;

and ``l11_ball`` on the same matrix (radius = the same fraction of the whole l1 norm). Every
function is jitted; each figure is the median over ``--repeats`` calls after a warm-up call,
timed with ``block_until_ready``. The last columns give the largest absolute difference to
Optax (over our three l1 variants) and each side's largest error against an exact float64
NumPy projection (sort + cumsum in float64). A second table times the other operators once
each, at a radius of 10% of the input's own norm.

    python benchmarks/projections.py [--repeats 5] [--json benchmarks/results/projections.json]
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
import numpy as np
import optax

from sparsejax import projections

SHAPES = ((1024, 1024), (4096, 1024), (256, 16384))
FRACTIONS = (0.01, 0.1, 0.5)


def median_ms(function, *args, repeats):
    jax.block_until_ready(function(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def float64_projection(x, radius):
    """Exact reference: Duchi et al.'s rule evaluated in float64."""
    magnitudes = np.abs(np.asarray(x, np.float64))
    radius = np.asarray(radius, np.float64)
    descending = -np.sort(-magnitudes, axis=1)
    partial_sums = np.cumsum(descending, axis=1)
    ranks = np.arange(1, magnitudes.shape[1] + 1)
    support = np.sum(descending * ranks > partial_sums - radius[:, None], axis=1)
    top_sum = np.take_along_axis(partial_sums, support[:, None] - 1, axis=1)[:, 0]
    theta = np.maximum((top_sum - radius) / support, 0)
    return np.sign(np.asarray(x, np.float64)) * np.maximum(magnitudes - theta[:, None], 0)


def warm_projection(x, radius, init):
    magnitudes = jnp.abs(x)
    theta = projections.l1_threshold(magnitudes, radius, init=init)
    return jnp.sign(x) * jnp.maximum(magnitudes - theta[:, None], 0)


FUNCTIONS = {
    "sort": jax.jit(lambda x, r: projections.l1_ball(x, r, method="sort")),
    "active_set": jax.jit(lambda x, r: projections.l1_ball(x, r, method="active_set")),
    "warm": jax.jit(warm_projection),
    "optax": jax.jit(jax.vmap(optax.projections.projection_l1_ball)),
    "l11": jax.jit(projections.l11_ball),
    "threshold": jax.jit(projections.l1_threshold),
}


def run_case(shape, fraction, repeats, key):
    noise_key, data_key = jax.random.split(key)
    x = jax.random.normal(data_key, shape, jnp.float32)
    previous = x * (1 + 1e-3 * jax.random.normal(noise_key, shape, jnp.float32))
    radius = fraction * jnp.sum(jnp.abs(x), axis=1)
    init = FUNCTIONS["threshold"](jnp.abs(previous), radius)
    reference = FUNCTIONS["optax"](x, radius)
    exact = float64_projection(x, radius)
    row = {"shape": list(shape), "fraction": fraction}
    differences, errors = [], []
    for name, args in (
        ("sort", (x, radius)),
        ("active_set", (x, radius)),
        ("warm", (x, radius, init)),
        ("optax", (x, radius)),
        ("l11", (x, fraction * jnp.sum(jnp.abs(x)))),
    ):
        row[f"{name}_ms"] = median_ms(FUNCTIONS[name], *args, repeats=repeats)
        if name in ("sort", "active_set", "warm"):
            ours = FUNCTIONS[name](*args)
            differences.append(float(jnp.max(jnp.abs(ours - reference))))
            errors.append(float(np.max(np.abs(np.asarray(ours, np.float64) - exact))))
    row["max_abs_diff_to_optax"] = max(differences)
    row["max_abs_error_ours"] = max(errors)
    row["max_abs_error_optax"] = float(np.max(np.abs(np.asarray(reference, np.float64) - exact)))
    return row


def norm_l21(x):
    return jnp.sum(jnp.linalg.norm(x, axis=1))


def norm_l1inf(x):
    return jnp.sum(jnp.max(jnp.abs(x), axis=1))


def norm_nuclear(x):
    return jnp.sum(jnp.linalg.svd(x, compute_uv=False))


def norm_l1(x):
    return jnp.sum(jnp.abs(x))


OTHERS = (
    ("l21_ball", projections.l21_ball, (1024, 1024), norm_l21),
    ("l11_ball", projections.l11_ball, (1024, 1024), norm_l1),
    ("l111_ball (conv)", projections.l111_ball, (3, 3, 256, 256), norm_l1),
    ("bilevel_l1inf_ball", projections.bilevel_l1inf_ball, (1024, 1024), norm_l1inf),
    ("l1inf_ball", projections.l1inf_ball, (1024, 1024), norm_l1inf),
    ("nuclear_ball", projections.nuclear_ball, (256, 256), norm_nuclear),
)


def run_others(repeats, key):
    rows = []
    for name, function, shape, norm in OTHERS:
        x = jax.random.normal(key, shape, jnp.float32)
        milliseconds = median_ms(jax.jit(function), x, 0.1 * norm(x), repeats=repeats)
        rows.append({"operator": name, "shape": list(shape), "ms": milliseconds})
    return rows


def markdown(rows):
    lines = [
        "| shape | r / row l1 | sort | active_set | warm | optax (vmap) | optax / active_set "
        "| l11_ball | max abs diff to optax | max abs error ours / optax |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape'][0]}x{row['shape'][1]} | {row['fraction']:g} "
            f"| {row['sort_ms']:.1f} | {row['active_set_ms']:.1f} | {row['warm_ms']:.1f} "
            f"| {row['optax_ms']:.1f} | {row['optax_ms'] / row['active_set_ms']:.0f}x "
            f"| {row['l11_ms']:.1f} | {row['max_abs_diff_to_optax']:.1e} "
            f"| {row['max_abs_error_ours']:.1e} / {row['max_abs_error_optax']:.1e} |"
        )
    return "\n".join(lines)


def markdown_others(rows):
    lines = ["| operator | shape | ms |", "|---|---|---|"]
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"| {row['operator']} | {shape} | {row['ms']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="write the raw figures here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    key = jax.random.key(0)
    rows = []
    for shape in SHAPES:
        for fraction in FRACTIONS:
            key, sub = jax.random.split(key)
            rows.append(run_case(shape, fraction, args.repeats, sub))
    others = run_others(args.repeats, key)
    load_after = os.getloadavg()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, optax {optax.__version__}, {device.platform} ({device}),")
    print(f"{platform.processor() or platform.machine()}; ms per call, median of {args.repeats};")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if load_before[0] > 0.5:
        print("WARNING: load average above 0.5 at the start; something else was running")
    print()
    print(markdown(rows))
    print()
    print(markdown_others(others))
    if args.json:
        figures = {
            "device": str(device),
            "repeats": args.repeats,
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "rows": rows,
            "others": others,
        }
        with open(args.json, "w") as file:
            json.dump(figures, file, indent=1)


if __name__ == "__main__":
    main()
