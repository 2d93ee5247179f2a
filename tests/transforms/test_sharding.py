"""Transformations on parameters sharded over 4 and 8 simulated CPU devices.

Each transformation runs two steps on kernels laid out by rows, by columns and on a 2-D grid
of devices, and is compared with the single-device result; the compiled step's all-gathers
show whether it gathers whole kernels. The devices are simulated by XLA's host-platform flag,
which must be set before jax starts: the probe runs in a fresh interpreter.
"""

from __future__ import annotations

import functools
import json
import pathlib

import pytest

from tests._devices import run_with_devices

PROBE = pathlib.Path(__file__).with_name("_sharded_probe.py")
TRANSFORMS = (
    "project_l1",
    "project_l1_global",
    "project_l21",
    "project_l11",
    "project_l1inf",
    "project_bilevel_l1inf",
    "project_nuclear",
    "project_l111",
    "prox_l1",
    "prox_l0",
    "prune_to_rate",
    "proximal_rmsprop",
    "xrda",
)
# An SVD needs the whole matrix on one device, and a weight-level compression rate is an order
# statistic over the whole kernel: they gather it. Every other transformation is per-group
# measures, reductions and an elementwise shrink: on sharded kernels it may exchange per-group
# statistics (at most rows x devices numbers), never the kernels themselves.
GATHER_BY_DESIGN = ("project_nuclear", "prune_to_rate")
LOCAL = tuple(name for name in TRANSFORMS if name not in GATHER_BY_DESIGN)


@functools.cache
def probe(devices: int) -> dict:
    stdout = run_with_devices(devices, [str(PROBE), str(devices)])
    return {(r["transform"], r["layout"]): r for r in json.loads(stdout)}


@pytest.mark.parametrize("devices", [4, 8])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_sharded_matches_single_device(devices, transform):
    records = [probe(devices)[(transform, layout)] for layout in ("rows", "columns", "grid")]
    for record in records:
        assert record["max_diff"] <= 3e-5, record
        assert record["keeps_sharding"], record


@pytest.mark.parametrize("devices", [4, 8])
@pytest.mark.parametrize("transform", LOCAL)
def test_local_transforms_gather_no_kernel(devices, transform):
    for layout in ("rows", "columns", "grid"):
        record = probe(devices)[(transform, layout)]
        # Per-row statistics are at most 256 rows x 8 devices = 2048 numbers; a kernel is 16384.
        assert max(record["all_gathers"], default=0) < min(record["kernel_sizes"]) // 4, record


@pytest.mark.parametrize("transform", GATHER_BY_DESIGN)
def test_probe_sees_the_gathers_of_whole_kernels(transform):
    # The check above must be able to fail: these need whole kernels on one device.
    record = probe(8)[(transform, "columns")]
    assert max(record["all_gathers"]) >= min(record["kernel_sizes"])
