"""Per-method figures (accuracy, MACCs, memory, sparsity) from ``sparsejax.model_report``, the
comparison table the CLI prints, and mean ± sd over seeds.

Memory is given four ways, each named in the result JSON and the table:

* ``reduced`` (``reduced_kB``): the real bytes of the model that
  ``sparsejax.remove_dead_units`` builds, the sum of its float32 parameter arrays (plus 4 bytes
  per int32 input index of the layers that gather their inputs); ``None`` for models surgery
  refuses;
* ``entropy_layers`` (``H/layer``): one reading of Guyard & Barlaud's entropy memory, the
  entropy (bits/weight) of each layer's float16-quantised parameters times that layer's number
  of parameters, summed over the layers (``sparsejax.model_report``'s ``entropy_bytes``);
* ``entropy_global`` (``H/all``): the other reading, one entropy over all the parameters of
  the model times their number; never smaller than ``entropy_layers`` (the entropy of a
  mixture is at least the mean entropy of its parts);
* ``zlib``: the real size of sparsejax's compressed encoding.

Ratios (``%``) are relative to the dense baseline, as Guyard & Barlaud normalises by Adam.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

import sparsejax
from experiments import training

__all__ = [
    "MEMORY_READINGS",
    "Figures",
    "aggregate",
    "format_table",
    "group_label",
    "measure",
    "model_report",
    "select_on_validation",
    "summary_row",
]

_EXAMPLES = 8

MEMORY_READINGS = {
    "reduced": "bytes of the float32 parameter arrays of the model remove_dead_units builds "
    "(int32 input indices included)",
    "entropy_layers": "sum over layers of the entropy (bits/weight) of the layer's float16 "
    "parameters times their number",
    "entropy_global": "one entropy (bits/weight) over all float16 parameters of the model times "
    "their number",
    "zlib": "size of sparsejax's zlib encoding (support bitmask + float16 byte planes)",
}


@dataclasses.dataclass(frozen=True)
class Figures:
    """What :func:`measure` gives for one model: the library's report and two memory readings
    it does not have (the global entropy, the bytes of the surgically reduced model)."""

    report: sparsejax.ModelReport
    entropy_global_bytes: float
    reduced_bytes: int | None


def model_report(
    split: training.SplitModel,
    params: Any,
    rest: Any,
    images: np.ndarray,
    *,
    baseline: sparsejax.ModelReport | None = None,
) -> sparsejax.ModelReport:
    """``sparsejax.model_report`` of the model with these weights, on a few example images."""
    model = training.merge_model(split.eval_graph, params, rest)
    return sparsejax.model_report(model, images[:_EXAMPLES], baseline=baseline)


def entropy_global_bytes(params: Any) -> float:
    """One entropy over every parameter (float16-quantised) times their number, in bytes."""
    leaves = [np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(params)]
    values = np.concatenate(leaves) if leaves else np.zeros(0, np.float32)
    return sparsejax.entropy_bits(values) * values.size / 8.0


def reduced_bytes(split: training.SplitModel, params: Any, rest: Any, images: np.ndarray):
    """Bytes of the parameters of the model ``remove_dead_units`` builds (None if refused)."""
    model = training.merge_model(split.eval_graph, params, rest)
    try:
        small = sparsejax.remove_dead_units(model, images[:_EXAMPLES])
    except ValueError:
        return None
    arrays = jax.tree.leaves(nnx.state(small, nnx.Param))
    indices = sum(
        len(getattr(node, "input_index", ()))
        for _, node in nnx.iter_graph(small)
        if isinstance(node, nnx.Module)
    )
    return int(sum(np.asarray(a).nbytes for a in arrays)) + 4 * indices


def measure(
    split: training.SplitModel,
    params: Any,
    rest: Any,
    images: np.ndarray,
    *,
    baseline: Figures | None = None,
) -> Figures:
    """The report and memory readings of one model (``images``: a few example inputs)."""
    report = model_report(
        split, params, rest, images, baseline=None if baseline is None else baseline.report
    )
    return Figures(report, entropy_global_bytes(params), reduced_bytes(split, params, rest, images))


def _percent(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(100 * value / reference, 2)


def _kilobytes(value: float | None) -> float | None:
    return None if value is None else round(value / 1000, 1)


def summary_row(
    label: str,
    accuracy: float,
    figures: Figures,
    *,
    baseline: Figures | None = None,
    val_accuracy: float | None = None,
    kind: str | None = None,
) -> dict:
    """The table's figures for one method (also stored in result.json); ``%`` columns are
    relative to ``baseline`` (``None`` without one)."""
    report = figures.report
    dense = baseline.report if baseline else None

    def relative(value, name):
        return _percent(value, dense.totals()[name] if dense else None)

    dense_reduced = baseline.reduced_bytes if baseline else None
    dense_global = baseline.entropy_global_bytes if baseline else None
    return {
        "method": label,
        "kind": kind,
        "accuracy_%": round(100 * accuracy, 2),
        "val_accuracy_%": None if val_accuracy is None else round(100 * val_accuracy, 2),
        "effective_maccs": int(report.effective_maccs),
        "dense_maccs": int(report.dense_maccs),
        "maccs_%": relative(report.effective_maccs, "effective_maccs"),
        "reduced_kB": _kilobytes(figures.reduced_bytes),
        "reduced_%": _percent(figures.reduced_bytes, dense_reduced),
        "entropy_layers_kB": _kilobytes(report.entropy_bytes),
        "entropy_layers_%": relative(report.entropy_bytes, "entropy_bytes"),
        "entropy_global_kB": _kilobytes(figures.entropy_global_bytes),
        "entropy_global_%": _percent(figures.entropy_global_bytes, dense_global),
        "zlib_kB": _kilobytes(report.compressed_bytes),
        "zlib_%": relative(report.compressed_bytes, "compressed_bytes"),
        "sparsity_%": round(100 * report.sparsity, 2),
    }


def group_label(label: str, method: str, matched: bool) -> str:
    """The label that identifies a configuration across seeds: a sparsity matched to the
    projection of the same seed (magnitude, sis) differs per seed and reads ``matched``."""
    if matched and method in ("magnitude", "sis"):
        return re.sub(r"sparsity=[0-9.]+%", "sparsity=matched", label)
    return label


def aggregate(rows: Sequence[dict], seeds: Sequence[int]) -> list[dict]:
    """Mean and sample standard deviation (ddof=1) over seeds of rows with the same
    ``method`` label, in order of first appearance.

    Args:
      rows: :func:`summary_row` dicts, ``method`` already a :func:`group_label`.
      seeds: the seed of each row. A (label, seed) pair seen twice counts once (a baseline
        shared by several files).

    Returns:
      One dict per label: ``method``, ``kind``, ``seeds`` (sorted), and for every numeric
      column its mean under the column's name and its standard deviation under
      ``<name>_sd`` (``None`` for a single seed or a column missing in some seed).
    """
    groups: dict[str, dict[int, dict]] = {}
    for row, seed in zip(rows, seeds):
        groups.setdefault(row["method"], {}).setdefault(seed, row)
    aggregated = []
    for label, by_seed in groups.items():
        members = list(by_seed.values())
        out = {"method": label, "kind": members[0].get("kind"), "seeds": sorted(by_seed)}
        for column, value in members[0].items():
            if column in ("method", "kind") or not isinstance(value, (int, float, type(None))):
                continue
            values = [member.get(column) for member in members]
            if any(v is None for v in values):
                out[column], out[f"{column}_sd"] = None, None
                continue
            mean = float(np.mean(values))
            out[column] = round(mean, 2)
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
            out[f"{column}_sd"] = None if sd is None else round(sd, 2)
        aggregated.append(out)
    return aggregated


def select_on_validation(rows: Sequence[dict]) -> dict[str, str]:
    """For every method kind with several rows (a sweep of radii or strengths), the label of
    the row with the highest validation accuracy (first on ties). Test accuracy is never
    read; kinds whose rows have no validation accuracy are left out."""
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("kind") is not None and row.get("val_accuracy_%") is not None:
            by_kind.setdefault(row["kind"], []).append(row)
    return {
        kind: max(members, key=lambda row: row["val_accuracy_%"])["method"]
        for kind, members in by_kind.items()
        if len(members) > 1
    }


_HEADERS = {
    "method": "method",
    "accuracy_%": "acc %",
    "val_accuracy_%": "val %",
    "effective_maccs": "MACCs",
    "maccs_%": "MACCs %",
    "reduced_kB": "reduced kB",
    "reduced_%": "reduced %",
    "entropy_layers_kB": "H/layer kB",
    "entropy_layers_%": "H/layer %",
    "entropy_global_kB": "H/all kB",
    "entropy_global_%": "H/all %",
    "zlib_%": "zlib %",
    "sparsity_%": "zeros %",
}
LEGEND = (
    "reduced: real bytes of the float32 parameters after remove_dead_units; H/layer: per-layer "
    "entropy x layer size; H/all: one entropy over all parameters x their number (both float16, "
    "Guyard & Barlaud's estimate); % of the dense baseline"
)


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif isinstance(value, float) and column == "effective_maccs":
        text = f"{round(value):,}"
    elif isinstance(value, float):
        text = f"{value:.2f}"  # the same two decimals in every row of a column
    else:
        text = str(value)
    sd = row.get(f"{column}_sd")
    if sd is None:
        return text
    return f"{text} ± {sd:.2f}" if isinstance(sd, float) else f"{text} ± {sd}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`summary_row` or :func:`aggregate` dicts (numbers
    right-aligned; an aggregate shows ``mean ± sd`` and its number of seeds)."""
    if not rows:
        return "(no results)"
    columns = list(_HEADERS)
    headers = dict(_HEADERS)
    if any("seeds" in row for row in rows):
        columns.insert(1, "n")
        headers["n"] = "seeds"
        rows = [{**row, "n": len(row.get("seeds", ()))} for row in rows]
    cells = [[_cell(row, column) for column in columns] for row in rows]
    widths = [
        max(len(headers[column]), *(len(line[index]) for line in cells))
        for index, column in enumerate(columns)
    ]

    def line(values):
        first = values[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(values[1:], widths[1:]))])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([headers[c] for c in columns]), rule, *map(line, cells)])
