"""Inference time of a sparsified LFC4 before and after surgery, beside its effective-MACC ratio.

LFC4 (784-1000-1000-512-128-10, ``experiments.models``) gets Guyard & Barlaud's l1,1 bi-level
projection (``sparsejax.projections.l11_ball``, groups = input units) of every kernel but the
last, applied once to its initial weights with radius ``--eta``: the weights are not trained,
only the sparsity structure matters for the timing. ``sparsejax.remove_dead_units`` then
builds the smaller dense model. Both forward passes are jitted with their parameters as
arguments and timed in the same run, interleaved, on the same inputs; each figure is the
median over ``--repeats`` calls (``block_until_ready``) after a warm-up call.

    python benchmarks/surgery.py [--eta 40] [--repeats 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sparsejax
from experiments.models import create_model
from sparsejax import projections

BATCHES = (1, 256)


def sparsified_lfc4(eta: float) -> nnx.Module:
    model = create_model("lfc4", input_shape=(28, 28, 1), num_classes=10, seed=0)
    layers = [getattr(model, f"fc{index}") for index in range(1, model.num_layers)]
    for layer in layers:  # every kernel but the classifier's, as in Guyard & Barlaud's LFC4 runs
        layer.kernel[...] = projections.l11_ball(layer.kernel[...], eta, group_axis=0)
    return model


def jitted_forward(model: nnx.Module):
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: forward(state, x)


def interleaved_medians(functions, x, repeats):
    """Median seconds per call of each function, calls alternating between functions."""
    for function in functions:
        jax.block_until_ready(function(x))
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, samples in zip(functions, times):
            start = time.perf_counter()
            jax.block_until_ready(function(x))
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eta", type=float, default=40.0, help="l1,1 radius per kernel")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per figure")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    model = sparsified_lfc4(args.eta)
    example = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    report = sparsejax.model_report(model, example)
    small = sparsejax.remove_dead_units(model, example)
    shapes = [tuple(getattr(small, f"fc{i}").kernel.shape) for i in range(1, model.num_layers + 1)]
    print(
        f"LFC4, l1,1 projection eta={args.eta:g} of the initial weights (all kernels but the last)"
    )
    print(f"smaller model kernels: {shapes}")
    print(
        f"MACCs: dense {report.dense_maccs:,}  effective {report.effective_maccs:,}  "
        f"ratio {report.effective_maccs / report.dense_maccs:.2%}; "
        f"sparsity {report.sparsity:.2%}"
    )
    print(
        f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].platform}; median of {args.repeats} interleaved calls"
    )
    print()
    print("| batch | sparse model (ms) | after surgery (ms) | speed-up | effective-MACC ratio |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    for batch in BATCHES:
        x = jax.random.uniform(jax.random.key(batch), (batch, 28, 28, 1))
        before, after = interleaved_medians(
            [jitted_forward(model), jitted_forward(small)], x, args.repeats
        )
        difference = float(jnp.max(jnp.abs(model(x) - small(x))))
        ratio = report.effective_maccs / report.dense_maccs
        rows.append(
            {
                "batch": batch,
                "before_ms": 1e3 * before,
                "after_ms": 1e3 * after,
                "speedup": before / after,
                "maccs_ratio": ratio,
                "max_abs_difference": difference,
            }
        )
        print(
            f"| {batch} | {1e3 * before:.3f} | {1e3 * after:.3f} | {before / after:.1f}x "
            f"| {ratio:.2%} (= {1 / ratio:.1f}x fewer) |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "eta": args.eta,
            "rows": rows,
            "kernels": shapes,
            "jax": jax.__version__,
            "report": report.to_dict(),
            "command": " ".join(sys.argv),
        }
        args.json.write_text(json.dumps(payload, indent=2))
    assert np.isfinite([row["after_ms"] for row in rows]).all()


if __name__ == "__main__":
    main()
