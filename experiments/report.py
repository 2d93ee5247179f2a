"""Per-method figures (accuracy, MACCs, memory, sparsity) from ``sparsejax.model_report``, and
the comparison table the CLI prints.

Memory is given three ways: ``float32`` — 4 bytes per parameter of the network that surgery
leaves once dead units are removed (``effective_params``); ``entropy`` — Guyard & Barlaud's estimate
(entropy of the float16-quantised weights times their number); ``zlib`` — the real size of
sparsejax's compressed encoding. Ratios (``%``) are relative to the dense baseline, as Guyard &
Barlaud
normalises by Adam.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import sparsejax
from experiments import training

__all__ = ["format_table", "model_report", "summary_row"]

_EXAMPLES = 8


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


def summary_row(label: str, accuracy: float, report: sparsejax.ModelReport) -> dict:
    """The table's figures for one method (also stored in result.json)."""
    relative = report.relative or {}

    def percent(name: str) -> float | None:
        value = relative.get(name)
        return None if value is None else round(100 * value, 2)

    baseline_params = report.baseline["params"] if report.baseline else report.params
    return {
        "method": label,
        "accuracy_%": round(100 * accuracy, 2),
        "effective_maccs": int(report.effective_maccs),
        "dense_maccs": int(report.dense_maccs),
        "maccs_%": percent("effective_maccs"),
        "float32_kB": round(4 * report.effective_params / 1000, 1),
        "float32_%": round(100 * report.effective_params / baseline_params, 2),
        "entropy_kB": round(report.entropy_bytes / 1000, 1),
        "entropy_%": percent("entropy_bytes"),
        "zlib_kB": round(report.compressed_bytes / 1000, 1),
        "zlib_%": percent("compressed_bytes"),
        "sparsity_%": round(100 * report.sparsity, 2),
    }


_HEADERS = {
    "method": "method",
    "accuracy_%": "acc %",
    "effective_maccs": "MACCs",
    "dense_maccs": "dense MACCs",
    "maccs_%": "MACCs %",
    "float32_kB": "f32 kB",
    "float32_%": "f32 %",
    "entropy_kB": "entropy kB",
    "entropy_%": "entropy %",
    "zlib_kB": "zlib kB",
    "zlib_%": "zlib %",
    "sparsity_%": "zeros %",
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`summary_row` dicts (numbers right-aligned)."""
    if not rows:
        return "(no results)"
    columns = list(_HEADERS)
    cells = [[_cell(row[column]) for column in columns] for row in rows]
    widths = [
        max(len(_HEADERS[column]), *(len(line[index]) for line in cells))
        for index, column in enumerate(columns)
    ]

    def line(values):
        first = values[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(values[1:], widths[1:]))])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([_HEADERS[c] for c in columns]), rule, *map(line, cells)])
