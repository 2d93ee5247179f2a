"""SIS (Verma & Pesquet, reconstructed) against one-shot magnitude pruning, without fine-tuning.

Trains the dense model once (Adam; the checkpoint is cached under ``--workdir``), then for each
target sparsity sparsifies every Dense layer to that fraction of zeros two ways — SIS from a few
minibatches of training images, and magnitude pruning of each layer at the same fraction — and
reports test accuracy. ``--l11`` adds SIS with the bi-level l1,1 ball (whole input units go),
its effective MACCs, and magnitude pruning at the per-layer sparsity it reached::

    python -m experiments.sis_sweep --model lenet300_100
    python -m experiments.sis_sweep --model lfc4 --sparsity 0.5 0.8 0.9 0.95 0.98
    python -m experiments.sis_sweep --model lenet300_100 --sparsity --l11 0.02 0.05 0.1
    python -m experiments.sis_sweep --model lenet300_100 --seeds 0 1 2 3 4 \\
        --out experiments/results/sis_lenet300_100_5seeds.json

Results (every figure, per-layer records, the command, versions, timings) go to
``experiments/results/sis_<model>.json``; a Markdown table is printed. ``--seeds`` repeats the
whole sweep per seed (its own dense model, initialisation and SIS minibatches; nothing shared)
and adds, per row of each table, the mean and sample standard deviation over seeds. The sweep
makes no choice (every configuration is reported), so it reads the test set only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparsejax
from experiments import data as data_lib
from experiments import methods as methods_lib
from experiments import models as models_lib
from experiments import training

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
ABLATIONS = {
    "defaults": {},
    "no ramp (ramp=0)": {"ramp": 0.0},
    "no momentum (momentum=0)": {"momentum": 0.0},
    "no Lipschitz estimate (L=1)": {"estimate_lipschitz": False},
    "no ramp, momentum or L estimate (DESIGN.md as written)": {
        "ramp": 0.0,
        "momentum": 0.0,
        "estimate_lipschitz": False,
    },
    "layer targets (targets='layer')": {"targets": "layer"},
}
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="lenet300_100", choices=("lenet300_100", "lfc4"))
    add("--sparsity", type=float, nargs="*", default=list(DEFAULT_SPARSITIES))
    add(
        "--l11",
        type=float,
        nargs="*",
        default=[],
        help="SIS with the l1,1 ball, radius = this fraction of each pretrained kernel's l1 norm",
    )
    add(
        "--units",
        type=float,
        nargs="*",
        default=[],
        help="SIS removing this fraction of the input units of every layer but the last",
    )
    add(
        "--ablation",
        type=float,
        default=None,
        help="at this sparsity, also run SIS with each of sparsejax's choices turned off",
    )
    add(
        "--l11-last",
        action="store_true",
        help="also constrain the last layer with l1,1 (default: the last layer is only refitted)",
    )
    add("--epochs", type=int, default=8, help="dense Adam epochs")
    add("--lr", type=float, default=1e-3)
    add("--batch", type=int, default=256)
    add("--sis-batches", type=int, default=16, help="training minibatches SIS sees")
    add("--steps", type=int, default=600, help="SIS steps per layer")
    add("--seed", type=int, default=0)
    add("--seeds", type=int, nargs="+", default=None, help="one sweep per seed, then mean ± sd")
    add("--workdir", default="/tmp/sparsejax_sis", help="dense checkpoint cache")
    add("--out", default=None, help="JSON path (default experiments/results/sis_<model>.json)")
    return parser.parse_args(argv)


def dense_phase(args, split, data) -> training.Phase:
    """The dense Adam phase, named by everything that determines its checkpoint."""
    # The digest of the data and of the initial weights keeps a cached checkpoint of another
    # dataset, subset or model from being reused.
    arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
    digest = methods_lib.arrays_digest(*arrays, split.params, split.rest)[:8]
    return training.Phase(
        f"{args.model}-dense-e{args.epochs}-lr{args.lr!r}-b{args.batch}-s{args.seed}-{digest}",
        args.epochs,
        lambda _: optax.adam(args.lr),
        label="dense",
    )


def train_dense(args, split, data) -> training.PhaseResult:
    phase = dense_phase(args, split, data)
    workdir = os.path.join(args.workdir, args.model)
    return training.run_phase(
        phase, split, split.params, split.rest, data, workdir=workdir, resume=True, progress=False
    )


def magnitude_pruned(params: Any, fractions: dict[str, float]) -> Any:
    """Each listed kernel keeps its largest-magnitude weights; everything else unchanged."""
    pruned = jax.tree.map(lambda x: x, params)
    for path, fraction in fractions.items():
        layer = pruned[path]
        kernel = jnp.asarray(layer["kernel"])
        keep = kernel.size - round(fraction * kernel.size)
        layer["kernel"] = sparsejax.prox.keep_largest(kernel, keep)
    return pruned


def group_magnitude_pruned(params: Any, zero_units: dict[str, int]) -> Any:
    """Each listed Dense kernel loses that many input units (rows): those of smallest l2 norm."""
    pruned = jax.tree.map(lambda x: x, params)
    for path, count in zero_units.items():
        kernel = np.asarray(pruned[path]["kernel"]).copy()
        kernel[np.argsort((kernel**2).sum(axis=1), kind="stable")[:count]] = 0
        pruned[path]["kernel"] = jnp.asarray(kernel)
    return pruned


def kernel_sparsity(params: Any) -> dict[str, float]:
    return {
        path: float(np.mean(np.asarray(layer["kernel"]) == 0))
        for path, layer in params.items()
        if isinstance(layer, dict) and "kernel" in layer
    }


def overall_sparsity(params: Any) -> float:
    kernels = [np.asarray(layer["kernel"]) for layer in params.values() if "kernel" in layer]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


class Runner:
    """Evaluation and MACC counting for one trained model."""

    def __init__(self, args, split, data, dense):
        self.split, self.data, self.dense = split, data, dense
        self.example = data.test_images[:2]

    def model(self, params: Any) -> nnx.Module:
        return training.merge_model(self.split.eval_graph, params, self.dense.rest)

    def accuracy(self, params: Any) -> float:
        accuracy, _ = training.evaluate(
            self.split, params, self.dense.rest, self.data.test_images, self.data.test_labels
        )
        return accuracy

    def maccs(self, params: Any) -> int:
        return sparsejax.effective_maccs(self.model(params), self.example)


def sis_run(runner: Runner, batches, steps: int, **control) -> tuple[Any, list, float]:
    started = time.perf_counter()
    params, records = sparsejax.sis_sparsify(
        runner.model(runner.dense.params), batches, steps=steps, **control
    )
    return nnx.to_pure_dict(params), records, time.perf_counter() - started


def record_dicts(records) -> list[dict]:
    return [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in r._asdict().items()}
        for r in records
    ]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = "python -m experiments.sis_sweep " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            raise SystemExit(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed")
        runs = [sweep(argparse.Namespace(**{**vars(args), "seed": seed})) for seed in args.seeds]
        result = {"command": command, "seeds": list(args.seeds), "per_seed": runs}
        result["aggregate"] = aggregate(runs)
        text = markdown(result["aggregate"], args.seeds)
    else:
        result = {"command": command, **sweep(args)}
        text = markdown(aggregate([result]), [args.seed])
    out = args.out or os.path.join(RESULTS_DIR, f"sis_{args.model}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(text)
    return result


# Per table of a sweep: the knob that names a row, and the figures averaged over seeds.
_TABLES = {
    "sweep": ("sparsity", ("sis_accuracy", "magnitude_accuracy", "sis_effective_maccs")),
    "units": (
        "unit_fraction",
        ("sis_accuracy", "sis_effective_maccs", "group_magnitude_accuracy",
         "group_magnitude_effective_maccs"),
    ),
    "l11": (
        "radius_fraction",
        ("sis_accuracy", "sis_effective_maccs", "overall_sparsity", "magnitude_accuracy",
         "magnitude_effective_maccs", "group_magnitude_accuracy",
         "group_magnitude_effective_maccs"),
    ),
    "ablation": ("variant", ("sis_accuracy",)),
}  # fmt: skip


def _mean_sd(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "sd": sd}


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1) over the seeds' sweeps, row by row: the
    seeds ran the same rows in the same order (the same arguments), each keyed by its knob."""
    out = {"dense_accuracy": _mean_sd([run["dense_accuracy"] for run in runs])}
    for table, (knob, figures) in _TABLES.items():
        rows = []
        for members in zip(*(run[table] for run in runs), strict=True):
            if len({row[knob] for row in members}) != 1:
                raise ValueError(f"the seeds' {table} rows differ: {[r[knob] for r in members]}")
            row = {knob: members[0][knob]}
            row.update({name: _mean_sd([m[name] for m in members]) for name in figures})
            rows.append(row)
        out[table] = rows
    return out


def _pm(figure: dict, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± sd``, or the value alone for one seed."""
    mean = f"{scale * figure['mean']:.{digits}f}"
    return mean if figure["sd"] is None else f"{mean} ± {scale * figure['sd']:.{digits}f}"


def markdown(summary: dict, seeds) -> str:
    """The tables of :func:`aggregate`: accuracies in %, MACCs in thousands, mean ± sd over
    seeds (one seed: its figures)."""
    over = (
        f"seed {seeds[0]}"
        if len(seeds) == 1
        else "mean ± sd over seeds " + " ".join(map(str, seeds))
    )
    lines = [f"{over}; dense {_pm(summary['dense_accuracy'])}%; no fine-tuning."]
    if summary["sweep"]:
        lines += ["", "| sparsity (every layer) | SIS acc % | magnitude acc % |", "|---|---|---|"]
        for row in summary["sweep"]:
            lines.append(
                f"| {100 * row['sparsity']:.0f}% | {_pm(row['sis_accuracy'])} "
                f"| {_pm(row['magnitude_accuracy'])} |"
            )
    if summary["units"]:
        lines += [
            "",
            "| input units removed | SIS acc % | SIS kMACCs | smallest units acc % "
            "| smallest units kMACCs |",
            "|---|---|---|---|---|",
        ]
        for row in summary["units"]:
            lines.append(
                f"| {100 * row['unit_fraction']:.0f}% | {_pm(row['sis_accuracy'])} "
                f"| {_pm(row['sis_effective_maccs'], 1e-3, 1)} "
                f"| {_pm(row['group_magnitude_accuracy'])} "
                f"| {_pm(row['group_magnitude_effective_maccs'], 1e-3, 1)} |"
            )
    if summary["l11"]:
        lines += [
            "",
            "| l1,1 radius / l1 norm | zeros % | SIS acc % | SIS kMACCs | magnitude acc % "
            "| smallest units acc % | smallest units kMACCs |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in summary["l11"]:
            lines.append(
                f"| {row['radius_fraction']:g} | {_pm(row['overall_sparsity'], 100, 1)} "
                f"| {_pm(row['sis_accuracy'])} | {_pm(row['sis_effective_maccs'], 1e-3, 1)} "
                f"| {_pm(row['magnitude_accuracy'])} | {_pm(row['group_magnitude_accuracy'])} "
                f"| {_pm(row['group_magnitude_effective_maccs'], 1e-3, 1)} |"
            )
    if summary["ablation"]:
        lines += ["", "| SIS variant | accuracy % |", "|---|---|"]
        for row in summary["ablation"]:
            lines.append(f"| {row['variant']} | {_pm(row['sis_accuracy'])} |")
    return "\n".join(lines)


def sweep(args) -> dict:
    """One seed's sweep: the dense model, then every SIS row beside its magnitude baseline."""
    started = time.perf_counter()
    train = data_lib.load_dataset("fashion_mnist", "train")
    test = data_lib.load_dataset("fashion_mnist", "test")
    train_images, test_images = data_lib.standardize(train.images, test.images)
    data = training.TrainData(
        train_images, train.labels, test_images, test.labels, args.batch, args.seed
    )
    model = models_lib.create_model(args.model, input_shape=(28, 28, 1), seed=args.seed)
    split = training.split_model(model)
    dense = train_dense(args, split, data)
    runner = Runner(args, split, data, dense)
    dense_accuracy = runner.accuracy(dense.params)
    dense_maccs = runner.maccs(dense.params)
    print(f"dense {args.model}: {100 * dense_accuracy:.2f}%  {dense_maccs} MACCs", flush=True)

    order = np.random.default_rng(args.seed).permutation(len(train_images))
    batches = [
        train_images[order[i * args.batch : (i + 1) * args.batch]] for i in range(args.sis_batches)
    ]
    rows = []
    for fraction in args.sparsity:
        params, records, seconds = sis_run(runner, batches, args.steps, sparsity=fraction)
        per_layer = kernel_sparsity(params)
        magnitude = magnitude_pruned(dense.params, per_layer)
        row = {
            "sparsity": fraction,
            "sis_accuracy": runner.accuracy(params),
            "magnitude_accuracy": runner.accuracy(magnitude),
            "sis_effective_maccs": runner.maccs(params),
            "layer_sparsity": per_layer,
            "sis_seconds": round(seconds, 1),
            "records": record_dicts(records),
        }
        rows.append(row)
        print(
            f"sparsity {100 * fraction:5.1f}%  SIS {100 * row['sis_accuracy']:.2f}%  "
            f"magnitude {100 * row['magnitude_accuracy']:.2f}%  ({seconds:.0f} s)",
            flush=True,
        )

    layer_paths = [
        path for path, _, _ in sparsejax.sis_layers(runner.model(dense.params), batches[0])
    ]
    unit_rows = []
    for fraction in args.units:
        # Every layer but the last loses input units; the last is refitted (fraction 0).
        fractions = {f"^{path}/kernel$": fraction for path in layer_paths[:-1]}
        fractions[f"^{layer_paths[-1]}/kernel$"] = 0.0
        params, records, seconds = sis_run(
            runner, batches, args.steps, sparsity=fractions, units="inputs"
        )
        zero_units = {r.path: r.zero_input_units for r in records}
        units_pruned = group_magnitude_pruned(dense.params, zero_units)
        row = {
            "unit_fraction": fraction,
            "zero_input_units": zero_units,
            "sis_accuracy": runner.accuracy(params),
            "sis_effective_maccs": runner.maccs(params),
            "group_magnitude_accuracy": runner.accuracy(units_pruned),
            "group_magnitude_effective_maccs": runner.maccs(units_pruned),
            "sis_seconds": round(seconds, 1),
            "records": record_dicts(records),
        }
        unit_rows.append(row)
        print(
            f"input units removed {100 * fraction:.0f}%: SIS {100 * row['sis_accuracy']:.2f}% at "
            f"{row['sis_effective_maccs']} MACCs; smallest units "
            f"{100 * row['group_magnitude_accuracy']:.2f}% at "
            f"{row['group_magnitude_effective_maccs']} MACCs ({seconds:.0f} s)",
            flush=True,
        )

    ablation_rows = []
    if args.ablation is not None:
        for label, options in ABLATIONS.items():
            params, records, seconds = sis_run(
                runner, batches, args.steps, sparsity=args.ablation, **options
            )
            ablation_rows.append(
                {
                    "variant": label,
                    "options": options,
                    "sparsity": args.ablation,
                    "sis_accuracy": runner.accuracy(params),
                    "errors_after": {r.path: r.error_after for r in records},
                    "sis_seconds": round(seconds, 1),
                }
            )
            print(f"ablation {label}: {100 * ablation_rows[-1]['sis_accuracy']:.2f}%", flush=True)

    l11_rows = []
    for fraction in args.l11:
        radii = {}
        for path in layer_paths:
            norm = float(np.abs(np.asarray(dense.params[path]["kernel"])).sum())
            # A ball far larger than the kernel: the last layer is refitted, not constrained.
            last_only_refit = path == layer_paths[-1] and not args.l11_last
            radii[f"^{path}/kernel$"] = norm * (1e3 if last_only_refit else fraction)
        params, records, seconds = sis_run(runner, batches, args.steps, radius=radii, ball="l11")
        per_layer = kernel_sparsity(params)
        magnitude = magnitude_pruned(dense.params, per_layer)
        zero_units = {r.path: r.zero_input_units for r in records}
        units_pruned = group_magnitude_pruned(dense.params, zero_units)
        row = {
            "radius_fraction": fraction,
            "radii": radii,
            "sis_accuracy": runner.accuracy(params),
            "sis_effective_maccs": runner.maccs(params),
            "overall_sparsity": overall_sparsity(params),
            "layer_sparsity": per_layer,
            "zero_input_units": zero_units,
            "magnitude_accuracy": runner.accuracy(magnitude),
            "magnitude_effective_maccs": runner.maccs(magnitude),
            "group_magnitude_accuracy": runner.accuracy(units_pruned),
            "group_magnitude_effective_maccs": runner.maccs(units_pruned),
            "sis_seconds": round(seconds, 1),
            "records": record_dicts(records),
        }
        l11_rows.append(row)
        print(
            f"l1,1 radius {fraction:g} x l1 norm: SIS {100 * row['sis_accuracy']:.2f}% at "
            f"{row['sis_effective_maccs']} MACCs ({100 * row['overall_sparsity']:.1f}% zeros); "
            f"magnitude {100 * row['magnitude_accuracy']:.2f}% at "
            f"{row['magnitude_effective_maccs']} MACCs; smallest input units "
            f"{100 * row['group_magnitude_accuracy']:.2f}% at "
            f"{row['group_magnitude_effective_maccs']} MACCs ({seconds:.0f} s)",
            flush=True,
        )

    return {
        "seed": args.seed,
        "model": args.model,
        "dataset": "fashion_mnist",
        "settings": vars(args),
        "dense_accuracy": dense_accuracy,
        "dense_maccs": dense_maccs,
        "dense_history": dense.history,
        "sweep": rows,
        "units": unit_rows,
        "ablation": ablation_rows,
        "l11": l11_rows,
        "versions": {name: metadata.version(name) for name in ("jax", "flax", "optax", "numpy")},
        "platform": platform.platform(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    main()
