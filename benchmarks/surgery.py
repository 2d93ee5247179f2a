"""Inference time of a sparsified model before and after surgery, beside its effective-MACC ratio.

``--model lfc4`` (784-1000-1000-512-128-10, ``experiments.models``) gets Guyard & Barlaud's
l1,1 bi-level projection (``sparsejax.projections.l11_ball``, groups = input units) of every
kernel but the last, applied once to its initial weights with radius ``--eta``. The residual
and attention models (``--model resnet20``, ``vit_tiny``) get their coupled groups
(``sparsejax.coupled_groups``, those surgery can remove: residual channels, block channels,
attention heads, MLP units) zeroed, the ``--prune`` fraction of them with the smallest root
mean square weight.
These weights are not trained: only the sparsity structure matters for the timing. With
``--checkpoint``, the model is instead the trained one that ``experiments.train`` saved in a
phase checkpoint (an orbax step directory of its workdir, e.g. the last epoch of a retraining).
``sparsejax.remove_dead_units`` then builds the smaller dense model. Both forward passes are
jitted with their parameters as arguments and timed in the same run, interleaved, on the same
inputs; each figure is the median over ``--repeats`` calls (``block_until_ready``) after a
warm-up call.

    python benchmarks/surgery.py [--model lfc4] [--eta 40] [--prune 0.75] [--repeats 200]
        [--checkpoint WORKDIR/SEED/METHOD/PHASE/checkpoints/EPOCH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sparsejax
from experiments import training
from experiments.methods import removable_coupled_groups
from experiments.models import create_model, default_constrained_layers
from sparsejax import projections, transforms

BATCHES = (1, 256)


def sparsified_lfc4(eta: float) -> nnx.Module:
    model = create_model("lfc4", input_shape=(28, 28, 1), num_classes=10, seed=0)
    layers = [getattr(model, f"fc{index}") for index in range(1, model.num_layers)]
    for layer in layers:  # every kernel but the classifier's, as in Guyard & Barlaud's LFC4 runs
        layer.kernel[...] = projections.l11_ball(layer.kernel[...], eta, group_axis=0)
    return model


def sparsified_coupled(name: str, prune: float, example: jax.Array) -> nnx.Module:
    """``name``'s initial weights with the ``prune`` fraction of its removable coupled groups
    (smallest root mean square first) set to zero, in evaluation mode."""
    split = training.split_model(create_model(name, input_shape=(28, 28, 1), seed=0))
    layers = default_constrained_layers(name)
    groups = removable_coupled_groups(split, example, layers)
    rows = np.asarray(transforms.coupled_rows(split.params, groups))
    # Root mean square over each group's own weights (rows are zero-padded to one width), so
    # that heads (many weights) and MLP units (few) compete on the same scale.
    rms = np.linalg.norm(rows, axis=1) / np.sqrt(np.maximum((rows != 0).sum(axis=1), 1))
    chosen = [groups[index] for index in np.argsort(rms, kind="stable")]
    zeroed = chosen[: int(prune * len(groups))]
    params = transforms.project_coupled_tree(split.params, 0.0, zeroed)
    print(f"{name}: {len(zeroed)} of {len(groups)} removable coupled groups zeroed")
    return training.merge_model(split.eval_graph, params, split.rest)


def trained_model(name: str, step: Path) -> nnx.Module:
    """``name`` with the parameters and batch statistics of an ``experiments.train`` phase
    checkpoint (``step``: one orbax step directory), in evaluation mode."""
    split = training.split_model(create_model(name, input_shape=(28, 28, 1), seed=0))
    stored = ocp.PyTreeCheckpointer().restore(str((step / "state").resolve()))

    def into(template, saved):
        found = {
            sparsejax.path_string(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
        }

        def leaf(path, like):
            value = found[sparsejax.path_string(path)]
            if jnp.issubdtype(like.dtype, jax.dtypes.prng_key):  # stored as key data
                return jax.random.wrap_key_data(value)
            return jnp.asarray(value, like.dtype)

        return jax.tree_util.tree_map_with_path(leaf, template)

    params, rest = into(split.params, stored["params"]), into(split.rest, stored["rest"])
    return training.merge_model(split.eval_graph, params, rest)


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
    parser.add_argument("--model", choices=("lfc4", "resnet20", "vit_tiny"), default="lfc4")
    parser.add_argument("--eta", type=float, default=40.0, help="lfc4: l1,1 radius per kernel")
    parser.add_argument(
        "--prune", type=float, default=0.75, help="resnet20, vit_tiny: fraction of groups zeroed"
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="time the trained model of this phase checkpoint step"
    )
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per figure")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    example = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    if args.checkpoint is not None:
        model = trained_model(args.model, args.checkpoint)
        print(f"{args.model}, trained: {args.checkpoint}")
    elif args.model == "lfc4":
        model = sparsified_lfc4(args.eta)
        print(f"LFC4, l1,1 projection eta={args.eta:g} of the initial weights (all kernels but "
              "the last)")  # fmt: skip
    else:
        model = sparsified_coupled(args.model, args.prune, example)
    report = sparsejax.model_report(model, example)
    small = sparsejax.remove_dead_units(model, example)
    shapes = [
        tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(small, nnx.Param))[0]
        if sparsejax.path_string(path).endswith("kernel")
    ]
    print(f"smaller model kernels: {shapes}")
    print(
        f"MACCs: dense {report.dense_maccs:,}  effective {report.effective_maccs:,}  "
        f"ratio {report.effective_maccs / report.dense_maccs:.2%}; "
        f"sparsity {report.sparsity:.2%}"
    )
    load_before = os.getloadavg()[0]
    print(
        f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].platform}; median of {args.repeats} interleaved calls; "
        f"load average {load_before:.2f} before timing"
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
            "model": args.model,
            "eta": args.eta if args.model == "lfc4" and not args.checkpoint else None,
            "prune": args.prune if args.model != "lfc4" and not args.checkpoint else None,
            "rows": rows,
            "kernels": shapes,
            "jax": jax.__version__,
            "report": report.to_dict(),
            "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
            "load_average": {"before": load_before, "after": os.getloadavg()[0]},
            "command": " ".join(sys.argv),
        }
        args.json.write_text(json.dumps(payload, indent=2))
    assert np.isfinite([row["after_ms"] for row in rows]).all()


if __name__ == "__main__":
    main()
