"""Data-parallel training steps on 1, 2, 4 ... devices: agreement with one device, and speed.

One jitted step of ``adam`` and of ``chain(adam, project_l11(400))`` on the LFC4-sized MLP of
``train_step.py`` (784-1024-1024-512-10) over Fashion-MNIST batches of 256: a 1-D mesh over
N devices, each batch split along its batch axis, parameters and optimizer state replicated —
what ``python -m experiments.train`` does. Each device count runs in its own interpreter (XLA
fixes the device count when it starts). The table gives, per count, the largest difference of
the parameters after ``--steps`` steps from the one-device run, the all-reduces XLA put in the
step, and the median time per step.

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``) and share the
same cores, so the time column says nothing about scaling there; only the agreement does.
With ``--real`` the devices are the machine's own (GPUs), and the time column is the scaling.

    python benchmarks/data_parallel.py [--devices 1 2 4] [--steps 30] [--real]
        [--json benchmarks/results/data_parallel.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCH = 256
WARMUP = 3


def _optimizers():
    import optax

    import sparsejax

    adam = optax.adam(1e-3)
    return {
        # Plain SGD shows the data-parallel sum itself (float order only); Adam divides by
        # sqrt(v), which turns float-order noise in near-zero gradients into steps of ~lr.
        "sgd(0.05)": optax.sgd(0.05),
        "adam": adam,
        "adam + project_l11(400)": optax.chain(adam, sparsejax.project_l11(400.0)),
    }


def worker(devices: int, steps: int, out: str) -> None:
    """Trains ``steps`` steps with each optimizer on the first ``devices`` devices; writes the
    final params and the timings."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from experiments import data as data_lib

    train = data_lib.load_dataset("fashion_mnist", "train", limit=BATCH * (steps + WARMUP))
    (images,) = data_lib.standardize(train.images)
    images = images.reshape(len(images), -1)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("batch",))
    split = NamedSharding(mesh, PartitionSpec("batch"))
    batches = [
        jax.device_put((images[i : i + BATCH], train.labels[i : i + BATCH]), split)
        for i in range(0, BATCH * (steps + WARMUP), BATCH)
    ]
    rows, leaves = [], {}
    for name, tx in _optimizers().items():
        row, params = _train(tx, batches, NamedSharding(mesh, PartitionSpec()))
        rows.append({"optimizer": name, "devices": devices, **row})
        leaves.update({f"{len(rows) - 1}_{i}": np.asarray(p) for i, p in enumerate(params)})
    np.savez(out, **leaves)
    with open(out + ".json", "w") as handle:
        json.dump(rows, handle)


def _train(tx, batches, replicated):
    import jax
    from train_step import init_params, jitted_step

    step = jitted_step(tx)
    params = jax.device_put(init_params(jax.random.key(0)), replicated)
    carry = (params, jax.device_put(tx.init(params), replicated))
    hlo = step.lower(*carry, *batches[0]).compile().as_text()
    times = []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        carry = jax.block_until_ready(step(*carry, *batch))
        if index >= WARMUP:
            times.append(1e3 * (time.perf_counter() - started))
    row = {
        "device_kind": jax.devices()[0].device_kind,
        "ms_per_step": statistics.median(times),
        "all_reduces": len(re.findall(r"\ball-reduce(?:-start)?\(", hlo)),
    }
    return row, jax.tree.leaves(carry[0])


def _run_worker(devices: int, steps: int, real: bool, out: str) -> dict:
    env = dict(os.environ)
    if not real:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), here, env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--worker", str(devices), "--steps", str(steps)]
    subprocess.run([*command, "--out", out], env=env, check=True)
    with open(out + ".json") as handle:
        return json.load(handle)  # one row per optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per device count")
    parser.add_argument("--real", action="store_true", help="the machine's own devices (GPUs)")
    parser.add_argument("--json", default=None, help="write the raw figures to this file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.out)
        return
    load_before = os.getloadavg()
    counts = sorted(set([1, *args.devices]))
    with tempfile.TemporaryDirectory() as scratch:
        rows, params = [], {}
        for devices in counts:
            path = os.path.join(scratch, f"params{devices}.npz")
            rows += _run_worker(devices, args.steps, args.real, path)
            with np.load(path) as stored:
                for name in stored.files:
                    params[(devices, *map(int, name.split("_")))] = stored[name]
    first = {row["optimizer"]: row for row in rows if row["devices"] == 1}
    for index, row in enumerate(rows):
        kept = [key for key in params if key[:2] == (row["devices"], index % len(first))]
        differences = [params[key] - params[(1, *key[1:])] for key in kept]
        row["max_abs_difference_from_1_device"] = max(float(np.max(np.abs(d))) for d in differences)
        row["relative_difference_from_1_device"] = float(
            np.sqrt(
                sum(np.sum(d**2) for d in differences) / sum(np.sum(params[k] ** 2) for k in kept)
            )
        )
        row["speedup_over_1_device"] = first[row["optimizer"]]["ms_per_step"] / row["ms_per_step"]
    load_after = os.getloadavg()
    kind = "simulated CPU devices (time says nothing about scaling)" if not args.real else "real"
    print(
        f"LFC4-sized MLP, Fashion-MNIST batches of {BATCH}, {args.steps} steps; "
        f"{rows[0]['device_kind']}, {kind}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        "| optimizer | devices | params vs 1 device: max abs, relative | all-reduces | ms / step |"
    )
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['optimizer']} | {row['devices']} | "
            f"{row['max_abs_difference_from_1_device']:.1e}, "
            f"{row['relative_difference_from_1_device']:.1e} | {row['all_reduces']} | "
            f"{row['ms_per_step']:.1f} |"
        )
    if args.json:
        meta = {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "real_devices": args.real,
            "steps": args.steps,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "command": " ".join(["python benchmarks/data_parallel.py", *sys.argv[1:]]),
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
