"""Markdown rows and an accuracy-vs-MACCs plot from result.json files, mean ± sd over seeds,
beside Guyard & Barlaud's tables.

    python -m experiments.summarize experiments/results/lfc4_fmnist_*.json \\
        --paper IV --plot experiments/results/lfc4_fmnist.png

Rows of the same configuration are aggregated over seeds however the seeds were run (one
``--seeds`` file, or one file per ``--seed``): a configuration is a method label (a sparsity
matched per seed reads ``matched to`` the projection it was matched to, the first of its file,
so runs matched to different radii stay apart) and the run's arguments other than the seed, the
checkpoint and output paths and the method list; a (configuration, seed) seen in several files
(a shared Adam baseline) counts once. Each figure is the mean ± the sample standard deviation
(ddof=1) over seeds, normalised by each run's own dense Adam baseline as Guyard & Barlaud
normalises; the commands that produced the rows follow the table. ``--paper`` adds the paper's
rows, normalised by the paper's Adam row; its memory sits in the column of the reading we compare
it with (``PAPER_MEMORY_READING``: per-layer entropy), the other reading shows ``-``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from experiments import methods, report

# The memory reading the paper's figures are compared with. Their dense LFC4 3989 kB does not
# tell the readings apart (ours: 3980.2 kB per layer, 3995.9 kB globally); the per-layer one is
# that of the paper's text (experiments/RESULTS.md, "Figures").
PAPER_MEMORY_READING = "entropy_layers"
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
    """Guyard & Barlaud's rows of ``table`` with MACCs and memory as % of its Adam row (the
    memory under the key of :data:`PAPER_MEMORY_READING`)."""
    _, rows = PAPER_TABLES[table]
    _, memory0, maccs0, _ = rows[0]
    return [
        {
            "method": f"paper: {name}",
            "accuracy_%": accuracy,
            "maccs_k": maccs,
            "maccs_%": round(100 * maccs / maccs0, 1),
            f"{PAPER_MEMORY_READING}_kB": memory,
            f"{PAPER_MEMORY_READING}_%": round(100 * memory / memory0, 1),
        }
        for name, memory, maccs, accuracy in rows
    ]


# Arguments that do not change a configuration's figures, or that are the row's own label.
_NOT_CONFIGURATION = ("seed", "seeds", "workdir", "out", "resume", "quiet", "progress", "method",
                      "eta", "sparsity", "keep_checkpoints", "coordinator", "num_processes",
                      "process_id")  # fmt: skip


def _summary(entry: dict) -> dict:
    """An entry's summary with the memory readings named (old files: ``entropy_kB`` is the
    per-layer reading)."""
    summary = dict(entry["summary"])
    for unit in ("kB", "%"):
        if f"entropy_{unit}" in summary:
            summary.setdefault(f"entropy_layers_{unit}", summary.pop(f"entropy_{unit}"))
    return summary


def _matched_targets(entries: Sequence[dict], seed: int | None) -> dict:
    """Per seed, the projection a matched sparsity was taken from (experiments.train matches
    magnitude and SIS to the first projection of the run): its label up to its radius.
    ``seed``: that of entries without their own (one-seed files)."""
    targets = {}
    for entry in entries:
        if entry["method"] not in methods.PROJECTIONS or entry.get("seed", seed) in targets:
            continue
        words = entry["label"].split()
        end = next((i for i, word in enumerate(words) if word.startswith("eta=")), len(words) - 1)
        targets[entry.get("seed", seed)] = " ".join(words[: end + 1])
    return targets


def result_rows(path: str) -> list[dict]:
    """The rows of one result.json, each with its seed, configuration and source."""
    with open(path) as handle:
        result = json.load(handle)
    arguments = result.get("arguments", {})
    configuration = json.dumps(
        {k: v for k, v in arguments.items() if k not in _NOT_CONFIGURATION},
        sort_keys=True,
        default=str,
    )
    matched = arguments.get("sparsity") is None
    targets = _matched_targets(result["results"], result.get("seed"))
    rows = []
    for entry in result["results"]:
        summary = _summary(entry)
        label = entry.get("group") or report.group_label(entry["label"], entry["method"], matched)
        target = targets.get(entry.get("seed", result.get("seed")))
        if "sparsity=matched" in label and target:
            label = label.replace("sparsity=matched", f"matched to {target}")
        rows.append(
            {
                **summary,
                "method": label,
                "kind": entry["method"],
                "seed": entry.get("seed", result.get("seed")),
                "configuration": configuration,
                "command": result["command"],
                "file": path,
            }
        )
    return rows


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Mean ± sd over seeds per configuration (see the module docstring), first seen first."""
    configurations: dict[str, list[dict]] = {}
    for row in rows:
        configurations.setdefault(row["configuration"], []).append(row)
    out = []
    for members in configurations.values():
        for aggregated in report.aggregate(members, [row["seed"] for row in members]):
            group = [row for row in members if row["method"] == aggregated["method"]]
            aggregated["files"] = list(dict.fromkeys(row["file"] for row in group))
            aggregated["commands"] = list(dict.fromkeys(row["command"] for row in group))
            out.append(aggregated)
    return out


_COLUMNS = (
    ("accuracy_%", "acc %"),
    ("val_accuracy_%", "val %"),
    ("maccs_k", "kMACCs"),
    ("maccs_%", "MACCs %"),
    ("reduced_kB", "reduced kB"),
    ("entropy_layers_kB", "H/layer kB"),
    ("entropy_layers_%", "H/layer %"),
    ("entropy_global_kB", "H/all kB"),
    ("entropy_global_%", "H/all %"),
    ("zlib_%", "zlib %"),
)


def _cell(row: dict, column: str) -> str:
    if column == "maccs_k" and "effective_maccs" in row:
        value = round(row["effective_maccs"] / 1000, 1)
        sd = row.get("effective_maccs_sd")
        sd = None if sd is None else round(sd / 1000, 1)
    else:
        value, sd = row.get(column), row.get(f"{column}_sd")
    if value is None:
        return "-"
    return str(value) if sd is None else f"{value} ± {sd}"


def markdown(rows: Sequence[dict], reference: Sequence[dict] = ()) -> str:
    """The paper's rows (``reference``), then ours (:func:`aggregate` dicts)."""
    header = ["method", "seeds", *(name for _, name in _COLUMNS), "source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in reference:
        cells = [row["method"], "-", *(_cell(row, c) for c, _ in _COLUMNS), "Guyard & Barlaud"]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        source = ", ".join(f"`{path}`" for path in row["files"])
        cells = [row["method"], str(len(row["seeds"])), *(_cell(row, c) for c, _ in _COLUMNS)]
        lines.append("| " + " | ".join([*cells, source]) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], reference: Sequence[dict], path: str, title: str) -> None:
    """Accuracy (mean, ± sd bars) against MACCs (% of dense, log axis): one series per method
    and protocol, the paper's rows as labelled black crosses, the legend beside the axes."""
    from matplotlib.figure import Figure

    series: dict = {}
    for row in rows:
        # One series per method and protocol: the label without its radius or strength.
        words = [w for w in row["method"].split(" ") if "=" not in w or w.startswith("retrain=")]
        point = (row["maccs_%"], row["accuracy_%"], row.get("accuracy_%_sd") or 0.0)
        series.setdefault(" ".join(words), []).append(point)
    figure = Figure(figsize=(10, 5), layout="constrained")
    axis = figure.subplots()
    markers = "osD^v<>phP*X"
    for index, (name, points) in enumerate(series.items()):
        x, y, sd = zip(*sorted(points))
        axis.errorbar(x, y, yerr=sd, marker=markers[index % len(markers)], label=name, capsize=3)
    for row in reference:
        axis.scatter(row["maccs_%"], row["accuracy_%"], marker="x", s=70, color="black")
        axis.annotate(row["method"], (row["maccs_%"], row["accuracy_%"]), fontsize=8,
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
    rows = aggregate([row for path in args.results for row in result_rows(path)])
    reference = paper_rows(args.paper) if args.paper else []
    print(markdown(rows, reference))
    print()
    print(report.LEGEND)
    for kind, label in report.select_on_validation(rows).items():
        print(f"selected on validation accuracy among the {kind} rows: {label}")
    print()
    for command in dict.fromkeys(command for row in rows for command in row["commands"]):
        print(f"    {command}")
    if args.plot:
        title = PAPER_TABLES[args.paper][0] if args.paper else "accuracy against MACCs"
        plot(rows, reference, args.plot, title)


if __name__ == "__main__":
    main()
