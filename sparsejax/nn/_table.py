"""The text table of a :class:`~sparsejax.nn.ModelReport` (``str(report)``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsejax.nn._metrics import LayerReport, ModelReport


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def _kb(value: float) -> str:
    return f"{value / 1000:.1f}"


_MEMORY = ("float32_bytes", "entropy_bytes", "compressed_bytes")

_HEADER = (
    "layer",
    "kind",
    "kernel",
    "params",
    "zeros",
    "zero in",
    "zero out",
    "live in->out",
    "MACCs",
    "eff MACCs",
    "f32 kB",
    "H kB",
    "zip kB",
)


def _row_cells(row: LayerReport) -> tuple[str, ...]:
    return (
        row.name,
        row.kind,
        "x".join(map(str, row.kernel_shape)) or "-",
        _si(row.params),
        f"{100 * row.sparsity:.1f}%",
        f"{row.zero_inputs}/{row.inputs}" if row.kind != "other" else "-",
        f"{row.zero_outputs}/{row.outputs}" if row.kind != "other" else "-",
        f"{row.live_inputs}->{row.live_outputs}" if row.kind != "other" else "-",
        _si(row.dense_maccs),
        _si(row.effective_maccs),
        _kb(row.float32_bytes),
        _kb(row.entropy_bytes),
        _kb(row.compressed_bytes),
    )


def _format_table(report: ModelReport) -> str:
    total = report.totals()
    body = [_row_cells(row) for row in report.layers]
    summary = [
        (
            "total",
            "",
            "",
            _si(total["params"]),
            f"{100 * total['sparsity']:.1f}%",
            "",
            "",
            f"({_si(total['effective_params'])} params)",
            *(_si(total[name]) for name in ("dense_maccs", "effective_maccs")),
            *(_kb(total[name]) for name in _MEMORY),
        )
    ]
    relative = report.relative
    if relative is not None:
        percent = {name: f"{100 * value:.1f}%" for name, value in relative.items()}
        summary.append(
            (
                "vs baseline",
                "",
                "",
                percent["params"],
                "",
                "",
                "",
                f"({percent['effective_params']})",
                *(percent[name] for name in ("dense_maccs", "effective_maccs", *_MEMORY)),
            )
        )
    lines = [_HEADER, *body, *summary]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]

    def render(line):
        return "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        )

    rule = "-" * len(render(_HEADER))
    footer = (
        f"{report.note}; H = entropy of the float16 weights "
        f"({total['entropy_bits_per_weight']:.2f} bits/weight); zip = compressed_bytes"
    )
    return "\n".join(
        [render(_HEADER), rule, *map(render, body), rule, *map(render, summary), footer]
    )
