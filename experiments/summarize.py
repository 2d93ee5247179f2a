"""Markdown rows and an accuracy-vs-MACCs plot from result.json files, beside Guyard & Barlaud's
tables.

    python -m experiments.summarize experiments/results/lfc4_fmnist_*.json \\
        --paper IV --plot experiments/results/lfc4_fmnist.png

Each result's rows are printed as a Markdown table (figures normalised by the run's dense Adam
baseline, as Guyard & Barlaud normalises) with the command that produced them; ``--paper`` adds the
paper's rows, normalised by the paper's own Adam row.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

# Guyard & Barlaud's tables: (method, memory kB, kMACCs, accuracy %); the first row is Adam.
PAPER_TABLES = {
    "I": ("Net4 / MNIST", [
        ("Adam", 33.64, 480, 99.0),
        ("PGL1 eta=80", 10.9, 477, 99.01),
        ("PGL11 eta=40", 3.7, 336, 98.03),
        ("PGL11 eta=25", 2.1, 122, 97.4),
    ]),
    "II": ("LFC4 / MNIST", [
        ("Adam", 3989, 2379, 98.3),
        ("PGL1 eta=200", 438, 1960, 98.29),
        ("PGL11 eta=200", 72, 150, 97.7),
        ("PGL11 eta=400", 215, 480, 98.07),
        ("PGL21 eta=50", 1810, 1408, 98.05),
    ]),
    "III": ("LeNet-300-100 / MNIST", [
        ("Adam", 477, 266.2, 98.21),
        ("PGL1 eta=200", 61, 189, 98.03),
        ("PGL11 eta=200", 32, 62, 96.4),
        ("PGL11 eta=400", 83, 150, 97.8),
        ("PGL21 eta=50", 164, 257, 98.1),
    ]),
    "IV": ("LFC4 / Fashion-MNIST", [
        ("Adam", 3989, 2379, 89.9),
        ("PGL1 eta=400", 567, 2114, 89.2),
        ("PGL11 eta=400", 131, 267, 87.5),
    ]),
}  # fmt: skip


def paper_rows(table: str) -> list[dict]:
    """Guyard & Barlaud's rows of ``table`` with MACCs and memory as % of its Adam row."""
    _, rows = PAPER_TABLES[table]
    _, memory0, maccs0, _ = rows[0]
    return [
        {
            "method": f"paper: {name}",
            "accuracy": accuracy,
            "maccs_k": maccs,
            "maccs_%": round(100 * maccs / maccs0, 1),
            "memory_kB": memory,
            "memory_%": round(100 * memory / memory0, 1),
        }
        for name, memory, maccs, accuracy in rows
    ]


def result_rows(path: str) -> list[dict]:
    """The rows of one result.json."""
    with open(path) as handle:
        result = json.load(handle)
    rows = []
    for entry in result["results"]:
        summary = entry["summary"]
        rows.append(
            {
                "method": summary["method"],
                "accuracy": summary["accuracy_%"],
                "maccs_k": round(summary["effective_maccs"] / 1000, 1),
                "maccs_%": summary["maccs_%"],
                "memory_kB": summary["entropy_kB"],
                "memory_%": summary["entropy_%"],
                "zlib_%": summary["zlib_%"],
                "command": result["command"],
                "file": path,
            }
        )
    return rows


def markdown(rows: Sequence[dict]) -> str:
    header = "| method | acc % | kMACCs | MACCs % | entropy kB | memory % | zlib % | source |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        source = f"`{row['file']}`" if "file" in row else "Guyard & Barlaud"
        cells = [
            row["method"],
            row["accuracy"],
            row["maccs_k"],
            row["maccs_%"],
            row["memory_kB"],
            row["memory_%"],
            row.get("zlib_%", "-"),
            source,
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], reference: Sequence[dict], path: str, title: str) -> None:
    """Accuracy against MACCs (% of dense, log axis): one series per method and protocol, the
    paper's rows as labelled black crosses, the legend beside the axes."""
    from matplotlib.figure import Figure

    series: dict = {}
    for row in rows:
        # One series per method and protocol: the label without its radius or strength.
        words = [w for w in row["method"].split(" ") if "=" not in w or w.startswith("retrain=")]
        series.setdefault(" ".join(words), []).append((row["maccs_%"], row["accuracy"]))
    figure = Figure(figsize=(10, 5), layout="constrained")
    axis = figure.subplots()
    markers = "osD^v<>phP*X"
    for index, (name, points) in enumerate(series.items()):
        x, y = zip(*sorted(points))
        axis.plot(x, y, marker=markers[index % len(markers)], label=name)
    for row in reference:
        axis.scatter(row["maccs_%"], row["accuracy"], marker="x", s=70, color="black")
        axis.annotate(row["method"], (row["maccs_%"], row["accuracy"]), fontsize=8,
                      xytext=(4, 4), textcoords="offset points")  # fmt: skip
    axis.set(xscale="log", xlabel="effective MACCs, % of the dense model", ylabel="accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="result.json files")
    parser.add_argument("--paper", choices=tuple(PAPER_TABLES), help="add Guyard & Barlaud's table")
    parser.add_argument("--plot", help="write the accuracy-vs-MACCs plot (MACCs in %% of dense)")
    args = parser.parse_args(argv)
    rows, seen = [], set()
    for path in args.results:
        for row in result_rows(path):
            # The same result in several files (the shared Adam baseline) is listed once.
            identity = (row["method"], row["accuracy"], row["maccs_k"])
            if identity not in seen:
                seen.add(identity)
                rows.append(row)
    reference = paper_rows(args.paper) if args.paper else []
    print(markdown([*reference, *rows]))
    print()
    for command in dict.fromkeys(row["command"] for row in rows):
        print(f"    {command}")
    if args.plot:
        title = PAPER_TABLES[args.paper][0] if args.paper else "accuracy against MACCs"
        plot(rows, reference, args.plot, title)


if __name__ == "__main__":
    main()
