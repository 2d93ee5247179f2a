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

The workdir also keeps the run's arguments (``arguments.json``): the model, the data, the seeds
and the training settings shared by all methods, not which methods run with which knobs.
``--resume`` continues only the run they describe: with other such arguments, or with nothing
to resume, it stops with a message; other methods or radii may be added to a workdir with
``--resume`` (their phases have keys of their own and share the dense one). Without
``--resume`` the same arguments start the run afresh, and a workdir that holds a run
(a checkpoint or a result) with other arguments is refused. A lock (``.lock``, released when
the run ends) keeps a second run out of a workdir in use. Checkpoints and result files are
replaced atomically.

Errors (a bad argument, a missing data directory, an unwritable workdir) are one line on
stderr and exit status 2; Ctrl-C stops with one line saying how to continue (exit status 130).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import jax
import numpy as np

import sparsejax
from experiments import checkpoints as checkpoints_lib
from experiments import data as data_lib
from experiments import methods as methods_lib
from experiments import models as models_lib
from experiments import report as report_lib
from experiments import training

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

PROG = "python -m experiments.train"
ARGUMENTS_FILE = "arguments.json"
LOCK_FILE = ".lock"
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
_NOT_IN_NAME = ("resume", "workdir", "out", "progress", "quiet", "keep_checkpoints")
# Who joins a multi-process run and how: the same for every process, and no figure depends on it.
_NOT_IN_NAME += ("coordinator", "num_processes", "process_id")


def _eta_value(text: str) -> Any:
    """``400`` or ``fc1=400,fc2=200`` (per-layer radii; keys are path regexes)."""
    try:
        if "=" not in text:
            value = float(text)
            if not math.isfinite(value) or value < 0:
                raise ValueError
            return value
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        radii = {key: float(value) for key, value in pairs}
        for key in radii:
            re.compile(key)
        if not all(math.isfinite(value) and value >= 0 for value in radii.values()):
            raise ValueError
        return radii
    except (ValueError, re.error):
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
    spellings["coupled"] = "coupled"
    if text not in spellings:
        raise argparse.ArgumentTypeError(
            f"expected input|inputs|output|outputs|coupled, got {text!r}"
        )
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


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line (not the 20-line usage) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
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
        help="structured groups: input|inputs (input units/channels, Guyard & Barlaud), "
        "output|outputs (output units/filters), or coupled (sparsejax.coupled_groups: units "
        "tied by residual adds, concatenation, attention heads, one group each, its measure "
        "over all the layers that read it; one radius for the model)",
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
        type=_positive,
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
    run.add_argument(
        "--keep-checkpoints",
        type=_positive,
        default=2,
        help="epoch checkpoints kept per phase, the latest ones",
    )
    run.add_argument("--out", help="result JSON (default: <workdir>/result.json)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    run.add_argument(
        "--devices",
        type=_positive,
        help="data-parallel over the first N devices (default: all visible devices)",
    )
    hosts = parser.add_argument_group(
        "several hosts", "one process per host, the same command on each but --process-id"
    )
    hosts.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="join a multi-process run through jax.distributed.initialize at this address of "
        "process 0 ('auto': the cluster's own settings, e.g. SLURM, Open MPI, Cloud TPU)",
    )
    hosts.add_argument("--num-processes", type=_positive, help="processes in the run")
    hosts.add_argument("--process-id", type=_non_negative, help="this process, 0 to N-1")
    return parser


class UsageError(Exception):
    """A bad argument or an unusable file or directory: :func:`main` prints the message as one
    line on stderr and exits with status 2."""


_LOCKED: list = []  # (workdir, open lock file) held by the running main()


def _cli_errors(function):
    """Turns :class:`UsageError` into one line and exit status 2, and Ctrl-C into one line
    saying how to continue and exit status 130; releases the workdir lock either way."""

    @functools.wraps(function)
    def wrapper(argv: Sequence[str] | None = None):
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            return function(argv)
        except UsageError as err:
            print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            where = f" (checkpoints in {_LOCKED[-1][0]})" if _LOCKED else ""
            again = shlex.join([*argv, *([] if "--resume" in argv else ["--resume"])])
            print(
                f"{PROG}: stopped by Ctrl-C after the last finished epoch{where}; continue "
                f"with: {PROG} {again}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(130) from None
        finally:
            while _LOCKED:
                _LOCKED.pop()[1].close()  # closing the file releases its lock

    return wrapper


def _start_processes(args: argparse.Namespace) -> None:
    """Joins the processes of a multi-host run before any device is used (``--coordinator``);
    every process then sees all devices of all hosts (``jax.devices()``)."""
    explicit = args.num_processes is not None or args.process_id is not None
    if args.coordinator is None:
        if explicit:
            raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT")
        return
    if args.coordinator == "auto":
        jax.distributed.initialize()
        return
    if args.num_processes is None or args.process_id is None:
        raise UsageError(f"--coordinator {args.coordinator} needs --num-processes and --process-id")
    if args.process_id >= args.num_processes:
        raise UsageError(
            f"--process-id {args.process_id}: must be below --num-processes {args.num_processes}"
        )
    # CPU processes reach each other through gloo (GPUs and TPUs bring their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def _check_devices(args: argparse.Namespace) -> None:
    """Resolves ``--devices`` (all visible by default) and checks it divides the batch."""
    visible = jax.device_count()
    args.devices = visible if args.devices is None else args.devices
    if args.devices > visible:
        raise UsageError(
            f"--devices {args.devices}: only {visible} {jax.devices()[0].platform} device(s) "
            "visible"
        )
    if args.batch_size % args.devices:
        raise UsageError(
            f"--batch-size {args.batch_size} must be a multiple of --devices {args.devices} "
            "(each device takes an equal share of every batch)"
        )


def _mesh(devices: int) -> Any:
    """A 1-D mesh over the first ``devices`` devices, or None for one device."""
    if devices == 1:
        return None
    return jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("batch",))


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
    _check_devices(args)
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        raise UsageError(
            f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each seed once"
        )
    try:
        re.compile(args.layers)
    except re.error as err:
        raise UsageError(
            f"--layers {args.layers!r} is not a valid regular expression: {err}"
        ) from None
    needs_sparsity = {"magnitude", "sis"} & set(args.method)
    has_projection = set(methods_lib.PROJECTIONS) & set(args.method)
    if needs_sparsity and args.sparsity is None and not has_projection:
        raise UsageError(
            f"--method {' '.join(sorted(needs_sparsity))} needs --sparsity (or a projection "
            "method in the same run, whose sparsity it then matches)"
        )
    return args


# Which methods run, with which knobs: commands that differ only in these can share a workdir
# (each method's phases have keys of their own; the dense phase is shared).
_PER_METHOD = ("method", "eta", "sparsity", "schedule", "group_axis", "layers")
_PER_METHOD += ("retrain_epochs", "retrain_lr", "prune_dead", "sis_steps")
_PER_METHOD += ("prox_lam", "prox_rate", "prox_group", "prox_every", "xrda_lr", "xrda_lam")


def _workdir_arguments(args: argparse.Namespace) -> dict:
    """The arguments a workdir is bound to: the figure arguments but :data:`_PER_METHOD`."""
    return {k: v for k, v in _figure_arguments(args).items() if k not in _PER_METHOD}


def _figure_arguments(args: argparse.Namespace) -> dict:
    """The arguments that can change a figure (all but :data:`_NOT_IN_NAME`), as JSON types."""
    options = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_IN_NAME}
    return json.loads(json.dumps(options, default=str))


def run_name(args: argparse.Namespace) -> str:
    options = _figure_arguments(args)
    digest = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    return f"{args.model}_{args.dataset}_s{args.seed}_{digest[:8]}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _differences(stored: dict, current: dict) -> str:
    """``--limit-train 64 there, 96 here; ...`` for every argument whose value differs."""
    missing = "(not recorded)"
    names = sorted(set(stored) | set(current))
    return "; ".join(
        f"{_flag(name)} {json.dumps(stored.get(name, missing))} there, "
        f"{json.dumps(current.get(name, missing))} here"
        for name in names
        if stored.get(name, missing) != current.get(name, missing)
    )


def _lock(workdir: str) -> None:
    """Takes the workdir's exclusive lock (held until main() returns) or refuses."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        handle = open(path, "a")
    except OSError as err:
        raise UsageError(
            f"--workdir {workdir}: cannot write there ({err.strerror}); choose a writable directory"
        ) from None
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UsageError(
                f"--workdir {workdir} is in use by another run (it holds the lock {path}); "
                "wait for it to finish or choose another --workdir"
            ) from None
    _LOCKED.append((workdir, handle))


def _open_workdir(args: argparse.Namespace, workdir: str) -> None:
    """Creates and locks ``workdir``, and checks it against ``--resume`` and the stored
    arguments: resume only the run they describe, never overwrite another one."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"--workdir {workdir}: cannot create it ({err.strerror}); choose a writable directory"
        ) from None
    primary = jax.process_index() == 0  # the other processes of a multi-host run only check
    if primary:
        _lock(workdir)
    path = os.path.join(workdir, ARGUMENTS_FILE)
    current = _workdir_arguments(args)
    try:
        with open(path) as handle:
            stored = json.load(handle)
    except FileNotFoundError:
        stored = None
    except (OSError, ValueError) as err:
        raise UsageError(
            f"{path} is unreadable ({err}); remove it or choose another --workdir"
        ) from None
    if stored is not None:  # workdirs of earlier versions also stored per-method arguments
        stored = {k: v for k, v in stored.items() if k not in _PER_METHOD}
    if args.resume and any("checkpoint.npz" in names for _, _, names in os.walk(workdir)):
        raise UsageError(
            f"--resume: --workdir {workdir} holds .npz checkpoints of an earlier sparsejax, "
            "which this version does not read (it writes orbax checkpoints); rerun without "
            "--resume in another --workdir"
        )
    if stored is None and args.resume:
        named = "" if args.workdir else " (the default --workdir is named after the arguments)"
        raise UsageError(
            f"--resume: nothing to resume in --workdir {workdir}{named}: it has no "
            f"{ARGUMENTS_FILE}; give the arguments of the run to resume, or drop --resume"
        )
    if stored is not None and stored != current and (args.resume or _holds_a_run(workdir)):
        differences = _differences(stored, current)
        if args.resume:
            raise UsageError(
                f"--resume: --workdir {workdir} holds a run with other arguments ({differences});"
                " resume with its arguments, or drop --resume and choose another --workdir"
            )
        raise UsageError(
            f"--workdir {workdir} holds another run ({differences}); choose another --workdir, "
            "or delete that one"
        )
    if primary:
        with training.atomic_open(path) as handle:
            json.dump(current, handle, indent=1)


def _holds_a_run(workdir: str) -> bool:
    """Whether ``workdir`` has a checkpoint or a result (a run stopped by an error before its
    first epoch left nothing to protect)."""
    if os.path.exists(os.path.join(workdir, "result.json")):
        return True
    return checkpoints_lib.holds_checkpoints(workdir)


def _check_out(out: str) -> None:
    """Fails now, not after the training, when the result file cannot be written."""
    directory = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory; give the path of the result JSON file")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise UsageError(
            f"--out {out}: cannot write there ({err.strerror}); choose a writable path"
        ) from None


def _check_eta(args: argparse.Namespace, params: Any) -> None:
    """``--layers`` must select a parameter of the model, and every ``pattern=radius`` of
    ``--eta`` one of those (the first matching pattern wins, as in sparsejax)."""
    try:
        paths = [path for path, _ in sparsejax.selected_leaves(params, args.layers)]
    except ValueError:  # it selects nothing
        paths = []
    if not paths:
        kernels = [path for path, _ in sparsejax.selected_leaves(params, None)]
        raise UsageError(
            f"--layers {args.layers!r} selects no parameter of --model {args.model}; its "
            f"kernels are {', '.join(kernels)}"
        )
    for eta in args.eta:
        if not isinstance(eta, dict):
            continue
        if args.group_axis == "coupled":
            raise UsageError(
                f"--eta {','.join(f'{k}={v:g}' for k, v in eta.items())}: --group-axis coupled "
                "takes one radius for the whole model (its groups span layers)"
            )
        used = {next((p for p in eta if re.search(p, path)), None) for path in paths}
        unused = [pattern for pattern in eta if pattern not in used]
        if unused:
            raise UsageError(
                f"--eta {','.join(f'{k}={v:g}' for k, v in eta.items())}: {unused} "
                f"name(s) no constrained layer of --model {args.model}; the constrained layers "
                f"(--layers {args.layers!r}) are {', '.join(paths)}"
            )


def package_versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "numpy", "sparsejax", "tensorflow-datasets")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["sparsejax_commit"] = source_commit()
    return versions


def source_commit() -> str | None:
    """The git commit of the code that ran (``+dirty`` when tracked Python files or
    pyproject.toml differ from it), or None outside a git checkout: a figure is tied to the
    code that produced it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", repo, "diff", "--quiet", "HEAD", "--", "*.py", "pyproject.toml"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")


def _load_data(args) -> tuple[training.TrainData, dict]:
    options = {"data_dir": args.data_dir, "source": args.source}
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(
            f"--data-dir {args.data_dir}: no such directory; give the directory of the IDX "
            "files (or the TFDS data directory)"
        )
    try:
        train = data_lib.load_dataset(args.dataset, "train", **options)
        test = data_lib.load_dataset(args.dataset, "test", limit=args.limit_test, **options)
    except (ValueError, ImportError, OSError) as err:
        where = f"--data-dir {args.data_dir}" if args.data_dir else "no --data-dir"
        message = " ".join(str(err).split())  # one line
        raise UsageError(
            f"--dataset {args.dataset} ({where}, --source {args.source}): {message}"
        ) from None
    if args.val_size >= len(train.labels):
        raise UsageError(
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
    data.mesh = _mesh(args.devices)
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


@_cli_errors
def main(argv: Sequence[str] | None = None) -> dict:
    started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _start_processes(args)
    args = _complete(args)
    # In a multi-process run, process 0 speaks and writes for all.
    quiet = args.quiet or jax.process_index() > 0
    log = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    workdir = args.workdir or os.path.join("runs", run_name(args))
    out = args.out or os.path.join(workdir, "result.json")
    _open_workdir(args, workdir)
    _check_out(out)
    if args.seeds:
        summary = _run_seeds(args, argv, workdir, log)
    else:
        summary = _run(args, argv, workdir, log)
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    _write(out, summary)
    log(f"wrote {out} ({summary['wall_time_s']:.0f} s); checkpoints: {_size(workdir)} in {workdir}")
    return summary


def _write(path: str, summary: dict) -> None:
    if jax.process_index() > 0:  # process 0 writes for a multi-process run
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with training.atomic_open(path) as handle:
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
    _check_eta(args, split.params)
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
        split,
        data,
        settings,
        workdir=workdir,
        resume=args.resume,
        # Bars only on a terminal: in a log file they are junk (the epoch lines remain).
        progress=not args.quiet and sys.stderr.isatty(),
        log=log,
        identity={"model": args.model},
        keep_checkpoints=args.keep_checkpoints,
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
    if jax.process_index() > 0:  # process 0 prints for a multi-process run
        return
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
        "devices": {
            "count": args.devices,
            "kind": jax.devices()[0].device_kind,
            "platform": jax.devices()[0].platform,
            **({"processes": jax.process_count()} if jax.process_count() > 1 else {}),
        },
        "results": entries,
        "selected_on_validation": selected,
    }


def _size(directory: str) -> str:
    total = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(directory)
        for name in names
    )
    return f"{total / 2**20:.1f} MB"


def _seconds(phases: dict) -> float:
    return sum(epoch["seconds"] for history in phases.values() for epoch in history)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    main()
