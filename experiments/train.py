"""Train sparse networks from the command line; compare methods in one table.

With no arguments it trains LeNet-300-100 on scikit-learn's bundled digits with Adam and with
PGL11 (l1,1 projection) and prints the comparison (about a minute on a laptop CPU)::

    python -m experiments.train
    python -m experiments.train --model lfc4 --dataset fashion_mnist --method pgl11 --eta 400
    python -m experiments.train --model lfc4 --dataset fashion_mnist \\
        --method adam pgl1 pgl11 magnitude --eta 200 400 800          # an eta sweep
    python -m experiments.train ... --resume                          # continue a killed run
    python -m experiments.train ... --seeds 0 1 2 3 4                 # mean ± sd over seeds

Every run writes a checkpoint per epoch under ``--workdir`` (default ``runs/<name>``, derived
from the arguments, so repeating a command with ``--resume`` finds it) and a ``result.json``
with every figure, the command, the seed, the package versions and the wall time. A validation
set (``--val-size``, 5,000 examples by default) is held out of the training split: epochs are
evaluated on it, the test set once per final model, and any choice among rows reads validation
accuracy only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from experiments import data as data_lib
from experiments import methods as methods_lib
from experiments import models as models_lib
from experiments import report as report_lib
from experiments import training

DEFAULT_MODEL = {
    "digits": "lenet300_100",
    "mnist": "lfc4",
    "fashion_mnist": "lfc4",
    "cifar10": "simplenet",
    "cifar100": "vgg19",
}
# Default radii: Guyard & Barlaud's operating points (Tables I-V); on the 8x8 digits, 60
# (calibrated:
# LeNet-300-100 keeps 96% accuracy at under 10% of the dense MACCs).
DEFAULT_ETA = {"lenet300_100": 400.0, "lfc4": 400.0, "net4": 40.0, "simplenet": 14000.0}
DIGITS_ETA = 60.0
DEFAULT_EPOCHS = {"digits": 20}
DEFAULT_BATCH = {"digits": 64}
# Options that change no figure: left out of the run's name so that --resume finds it.
_NOT_IN_NAME = ("resume", "workdir", "out", "progress", "quiet")


def _eta_value(text: str) -> Any:
    """``400`` or ``fc1=400,fc2=200`` (per-layer radii; keys are path regexes)."""
    try:
        if "=" not in text:
            value = float(text)
            if not math.isfinite(value) or value < 0:
                raise ValueError
            return value
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {key: float(value) for key, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--eta takes a non-negative number or 'pattern=radius,...', got {text!r}"
        ) from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _group_axis(text: str) -> str:
    """Accepts the library's spelling (input/output) and the CLI's (inputs/outputs)."""
    spellings = {"input": "inputs", "inputs": "inputs", "output": "outputs", "outputs": "outputs"}
    if text not in spellings:
        raise argparse.ArgumentTypeError(f"expected input|inputs|output|outputs, got {text!r}")
    return spellings[text]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only where there is a fixed default."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=_HelpFormatter,
    )
    what = parser.add_argument_group("model and data")
    what.add_argument(
        "--model",
        choices=models_lib.MODEL_NAMES,
        help="default by dataset: digits lenet300_100, (fashion_)mnist lfc4, cifar10 simplenet, "
        "cifar100 vgg19",
    )
    what.add_argument("--dataset", default="digits", choices=tuple(data_lib.DATASETS))
    what.add_argument("--data-dir", help="a directory of IDX files, or the TFDS data directory")
    what.add_argument(
        "--source", default="auto", choices=("auto", "sklearn", "idx", "tfds"), help="data source"
    )
    what.add_argument("--limit-train", type=_positive, help="keep the first N training examples")
    what.add_argument("--limit-test", type=_positive, help="keep the first N test examples")
    what.add_argument(
        "--val-size",
        type=_non_negative,
        help="training examples held out for validation, drawn once with a fixed seed (the "
        "same for every --seed) before --limit-train; every epoch is evaluated on them and the "
        "test set only on the final models; 0: no validation, epochs evaluated on the test set "
        "(default 5000, digits 143 = 10%%)",
    )

    how = parser.add_argument_group("methods")
    how.add_argument(
        "--method",
        nargs="+",
        default=["adam", "pgl11"],
        choices=methods_lib.METHODS,
        help="methods to compare (one table)",
    )
    how.add_argument(
        "--schedule",
        default="dense_alg1",
        choices=methods_lib.SCHEDULES,
        help="how the pgl* methods train: dense_alg1 = dense Adam, Adam + projection every step, "
        "masked retraining (our default); alg4 = Guyard & Barlaud's one projection + rewind + "
        "masked retraining; alg4_norewind; alg1 = projected training from the start",
    )
    how.add_argument(
        "--eta",
        nargs="+",
        type=_eta_value,
        help="radius per constrained layer, a number or 'regex=radius,...'; several values run "
        "a sweep (default: lfc4/lenet300_100 400, net4 40, simplenet 14000, digits 60)",
    )
    how.add_argument("--layers", help="regex of the constrained kernels (default: by model)")
    how.add_argument(
        "--group-axis",
        default="inputs",
        type=_group_axis,
        help="structured groups: input|inputs (input units/channels, Guyard & Barlaud) or "
        "output|outputs (output units/filters)",
    )
    how.add_argument(
        "--sparsity",
        type=_fraction,
        help="magnitude and sis: fraction of zeros in the constrained kernels (default: that of "
        "the first pgl* run of the same command)",
    )

    train = parser.add_argument_group("training")
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    train.add_argument("--batch-size", type=_positive, help="default 256 (digits 64)")
    train.add_argument(
        "--epochs",
        type=_non_negative,
        help="epochs of the dense and of the sparsifying phases (default 8, digits 20)",
    )
    train.add_argument(
        "--retrain-epochs", type=_non_negative, help="masked retraining epochs (default: --epochs)"
    )
    train.add_argument(
        "--retrain-lr",
        default="cosine",
        choices=("constant", "cosine"),
        help="learning rate of the masked retraining: constant, or cosine decay to 0",
    )
    train.add_argument(
        "--prune-dead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before retraining, also drop the weights of hidden units that cannot reach the "
        "output (fully connected models)",
    )
    seeds = train.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    seeds.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="run the configuration once per seed, sharing nothing (checkpoints in "
        "<workdir>/seed<k>); the table shows mean ± sd over them",
    )

    other = parser.add_argument_group(
        "prox_rmsprop (Formanek & Hadházi), xrda (Siegel et al.), sis (Verma & Pesquet)"
    )
    other.add_argument("--prox-lam", type=float, default=1e-4, help="L0 penalty weight")
    other.add_argument(
        "--prox-rate",
        type=_fraction,
        help="'L0 with compression rate': fraction of groups zeroed per layer (replaces lam)",
    )
    other.add_argument(
        "--prox-group",
        default="input",
        choices=("weight", "kernel", "input", "output"),
        help="the L0 groups",
    )
    other.add_argument(
        "--prox-every", type=_non_negative, default=0, help="steps between prox (0: every epoch)"
    )
    other.add_argument("--xrda-lr", type=float, default=1.0, help="xRDA initial step size s0")
    other.add_argument("--xrda-lam", type=float, default=1e-6, help="xRDA l1 weight lambda")
    other.add_argument("--sis-steps", type=_positive, default=300, help="SIS steps per layer")

    run = parser.add_argument_group("run")
    run.add_argument("--workdir", help="checkpoints (default: runs/<name from the arguments>)")
    run.add_argument("--resume", action="store_true", help="continue from --workdir's checkpoints")
    run.add_argument("--out", help="result JSON (default: <workdir>/result.json)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    return parser


def _complete(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the defaults that depend on other arguments."""
    args.model = args.model or DEFAULT_MODEL[args.dataset]
    if not args.eta:
        default = DIGITS_ETA if args.dataset == "digits" else DEFAULT_ETA.get(args.model, 400.0)
        args.eta = [default]
    args.layers = args.layers or models_lib.default_constrained_layers(args.model)
    args.batch_size = args.batch_size or DEFAULT_BATCH.get(args.dataset, 256)
    args.epochs = DEFAULT_EPOCHS.get(args.dataset, 8) if args.epochs is None else args.epochs
    args.retrain_epochs = args.epochs if args.retrain_epochs is None else args.retrain_epochs
    if args.val_size is None:
        args.val_size = data_lib.default_val_size(args.dataset)
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed")
    try:
        re.compile(args.layers)
    except re.error as err:
        raise SystemExit(
            f"--layers {args.layers!r} is not a valid regular expression: {err}"
        ) from None
    needs_sparsity = {"magnitude", "sis"} & set(args.method)
    has_projection = set(methods_lib.PROJECTIONS) & set(args.method)
    if needs_sparsity and args.sparsity is None and not has_projection:
        raise SystemExit(
            f"--method {' '.join(sorted(needs_sparsity))} needs --sparsity (or a projection "
            "method in the same run, whose sparsity it then matches)"
        )
    return args


def run_name(args: argparse.Namespace) -> str:
    options = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_IN_NAME}
    digest = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    return f"{args.model}_{args.dataset}_s{args.seed}_{digest[:8]}"


def package_versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "numpy", "sparsejax", "tensorflow-datasets")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _load_data(args) -> tuple[training.TrainData, dict]:
    options = {"data_dir": args.data_dir, "source": args.source}
    train = data_lib.load_dataset(args.dataset, "train", **options)
    test = data_lib.load_dataset(args.dataset, "test", limit=args.limit_test, **options)
    if args.val_size >= len(train.labels):
        raise SystemExit(
            f"--val-size {args.val_size} must be smaller than the {len(train.labels)} training "
            f"examples of {args.dataset}"
        )
    # Held out before --limit-train, so that the validation set does not depend on it.
    train, val = data_lib.split_validation(train, args.val_size)
    if args.limit_train is not None:
        keep = slice(0, args.limit_train)
        train = train._replace(images=train.images[keep], labels=train.labels[keep])
    train_images, val_images, test_images = data_lib.standardize(
        train.images, val.images, test.images
    )
    data = training.TrainData(
        train_images, train.labels, test_images, test.labels, args.batch_size, args.seed
    )
    if args.val_size:
        data.val_images, data.val_labels = val_images, val.labels
    info = {
        "name": args.dataset,
        "source": train.source,
        "train_examples": len(train.labels),
        "val_examples": len(val.labels),
        "test_examples": len(test.labels),
        "image_shape": list(train.images.shape[1:]),
        "num_classes": train.num_classes,
    }
    return data, info


def _run_methods(args, experiment: methods_lib.Experiment) -> list[methods_lib.MethodResult]:
    results = []
    matched_sparsity = args.sparsity
    for method in args.method:
        if method in methods_lib.PROJECTIONS:
            for eta in args.eta:
                result = experiment.projection(method, eta)
                results.append(result)
                if matched_sparsity is None:
                    matched_sparsity = methods_lib.selected_sparsity(result.params, args.layers)
        elif method in ("magnitude", "sis"):
            # Run after the projections so that the matched sparsity exists.
            continue
        else:
            results.append(getattr(experiment, method)())
    for method in args.method:
        if method in ("magnitude", "sis"):
            results.append(getattr(experiment, method)(matched_sparsity))
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _complete(build_parser().parse_args(argv))
    log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    workdir = args.workdir or os.path.join("runs", run_name(args))
    if args.seeds:
        summary = _run_seeds(args, argv, workdir, log)
    else:
        summary = _run(args, argv, workdir, log)
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    out = args.out or os.path.join(workdir, "result.json")
    _write(out, summary)
    log(f"wrote {out} ({summary['wall_time_s']:.0f} s)")
    return summary


def _write(path: str, summary: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=1, default=_json_default)


def _run(args, argv, workdir, log, show=print) -> dict:
    """One seed: trains every method and returns the result.json dict (``show`` prints the
    table)."""
    os.makedirs(workdir, exist_ok=True)
    data, data_info = _load_data(args)
    input_shape = tuple(data_info["image_shape"])
    model = models_lib.create_model(
        args.model, input_shape=input_shape, num_classes=data_info["num_classes"], seed=args.seed
    )
    dense_maccs = models_lib.count_maccs(model, input_shape)
    split = training.split_model(model)
    settings = methods_lib.Settings(
        layers=args.layers,
        lr=args.lr,
        epochs=args.epochs,
        retrain_epochs=args.retrain_epochs,
        schedule=args.schedule,
        group_axis=args.group_axis,
        prox_lam=args.prox_lam,
        prox_every=args.prox_every,
        xrda_lr=args.xrda_lr,
        xrda_lam=args.xrda_lam,
        sis_steps=args.sis_steps,
        prox_group=args.prox_group,
        retrain_lr=args.retrain_lr,
        prune_dead=args.prune_dead,
        prox_rate=args.prox_rate,
    )
    log(
        f"{args.model} on {args.dataset} ({data_info['train_examples']} train / "
        f"{data_info['val_examples']} validation / {data_info['test_examples']} test, "
        f"{data_info['source']}); seed {args.seed}; dense MACCs {dense_maccs:,}; "
        f"checkpoints in {workdir}"
    )
    experiment = methods_lib.Experiment(
        split, data, settings, workdir=workdir, resume=args.resume, progress=not args.quiet, log=log
    )
    results = _run_methods(args, experiment)
    return _summarise(args, argv, experiment, results, data, data_info, model, dense_maccs, show)


def _run_seeds(args, argv, workdir, log) -> dict:
    """``--seeds``: one independent run per seed (own model, checkpoints under
    ``workdir/seed<k>`` and result.json there), then mean ± sd per method."""
    runs = []
    for seed in args.seeds:
        one = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None})
        seed_dir = os.path.join(workdir, f"seed{seed}")
        log(f"=== seed {seed}")
        run = _run(one, argv, seed_dir, log, show=log)
        _write(os.path.join(seed_dir, "result.json"), run)
        runs.append(run)
    results = [entry for run in runs for entry in run["results"]]
    rows = [{**entry["summary"], "method": entry["group"]} for entry in results]
    aggregated = report_lib.aggregate(rows, [entry["seed"] for entry in results])
    selected = report_lib.select_on_validation(aggregated)
    print(f"mean ± sd over seeds {' '.join(map(str, args.seeds))}:", flush=True)
    _print_table(aggregated, selected)
    first = runs[0]
    return {
        **{key: first[key] for key in ("command", "argv", "dataset", "model", "versions")},
        "seed": None,
        "seeds": list(args.seeds),
        "arguments": dict(vars(args)),
        "memory_readings": report_lib.MEMORY_READINGS,
        "baselines": [{"seed": run["seed"], **run["baseline"]} for run in runs],
        "results": results,
        "aggregate": aggregated,
        "selected_on_validation": selected,
    }


def _print_table(rows: list[dict], selected: dict, show=print) -> None:
    show(report_lib.format_table(rows))
    show(report_lib.LEGEND)
    for kind, label in selected.items():
        show(f"selected on validation accuracy among the {kind} rows: {label}")


def _summarise(
    args, argv, experiment, results, data, data_info, model, dense_maccs, show=print
) -> dict:
    """Evaluates every result, prints the comparison table and returns the result.json dict.

    Each final model is evaluated once on the test set; the figures that need example inputs
    (MACCs, surgery) use training images, and selections use validation accuracy only."""
    split = experiment.split
    examples = data.train_images
    dense = experiment.finished_dense()
    if dense is None:
        baseline_name = "initial weights (no dense model was trained in this run)"
        dense = training.PhaseResult(split.params, split.rest, [])
    else:
        baseline_name = f"adam, {args.epochs} epochs"
    baseline = report_lib.measure(split, dense.params, dense.rest, examples)
    entries, rows = [], []
    for result in results:
        accuracy, loss = training.evaluate(
            split, result.params, result.rest, data.test_images, data.test_labels
        )
        val_accuracy = val_loss = None
        if data.val_labels is not None:
            val_accuracy, val_loss = training.evaluate(
                split, result.params, result.rest, data.val_images, data.val_labels
            )
        figures = report_lib.measure(split, result.params, result.rest, examples, baseline=baseline)
        row = report_lib.summary_row(
            result.label,
            accuracy,
            figures,
            baseline=baseline,
            val_accuracy=val_accuracy,
            kind=result.method,
        )
        rows.append(row)
        matched = args.sparsity is None
        entries.append(
            {
                "seed": args.seed,
                "method": result.method,
                "label": result.label,
                "group": report_lib.group_label(result.label, result.method, matched),
                "settings": result.settings,
                "test_accuracy": accuracy,
                "test_loss": loss,
                "val_accuracy": val_accuracy,
                "val_loss": val_loss,
                "constrained_sparsity": methods_lib.selected_sparsity(result.params, args.layers),
                "summary": row,
                "train_seconds": round(_seconds(result.phases), 1),
                "history": result.phases,
                "report": figures.report.to_dict(),
            }
        )
    selected = report_lib.select_on_validation(rows)
    _print_table(rows, selected, show)
    return {
        "command": "python -m experiments.train " + shlex.join(argv),
        "argv": argv,
        "seed": args.seed,
        "arguments": dict(vars(args)),
        "dataset": data_info,
        "model": {
            "name": args.model,
            "dense_maccs": dense_maccs,
            "params": models_lib.count_params(model),
            "constrained_layers": args.layers,
        },
        "memory_readings": report_lib.MEMORY_READINGS,
        "baseline": {
            "name": baseline_name,
            "totals": baseline.report.totals(),
            "entropy_global_bytes": baseline.entropy_global_bytes,
            "reduced_bytes": baseline.reduced_bytes,
        },
        "versions": package_versions(),
        "results": entries,
        "selected_on_validation": selected,
    }


def _seconds(phases: dict) -> float:
    return sum(epoch["seconds"] for history in phases.values() for epoch in history)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    main()
