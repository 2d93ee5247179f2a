"""experiments.summarize: rows of several result files aggregated over seeds, beside Guyard &
Barlaud's table."""

import json

import numpy as np
import pytest

from experiments import summarize

ARGUMENTS = {"model": "lfc4", "dataset": "fashion_mnist", "epochs": 8, "val_size": 5000}


def _summary(label, accuracy, maccs, entropy_global):
    return {
        "method": label,
        "accuracy_%": accuracy,
        "val_accuracy_%": accuracy - 1.0,
        "effective_maccs": maccs,
        "maccs_%": round(100 * maccs / 2_362_816, 2),
        "entropy_layers_kB": entropy_global - 10.0,
        "entropy_global_kB": entropy_global,
        "zlib_%": 1.0,
    }


def _write(path, seed, entries, **arguments):
    """A result file for one seed: entries are (method, label, accuracy, MACCs, H/all kB)."""
    results = [
        {
            "seed": seed,
            "method": method,
            "label": label,
            "summary": _summary(label, accuracy, maccs, memory),
        }
        for method, label, accuracy, maccs, memory in entries
    ]
    result = {
        "command": f"python -m experiments.train --seed {seed}",
        "seed": seed,
        "arguments": {**ARGUMENTS, **arguments, "seed": seed, "out": str(path)},
        "results": results,
    }
    path.write_text(json.dumps(result))
    return str(path)


@pytest.fixture
def files(tmp_path):
    accuracies = {0: 88.0, 1: 88.5, 2: 87.1}
    paths = []
    for seed, accuracy in accuracies.items():
        adam = ("adam", "adam", 89.0 + seed, 2_362_816, 4000.0)
        pgl11 = ("pgl11", "pgl11 eta=400 alg4", accuracy, 100_000 + seed, 130.0 + seed)
        paths.append(_write(tmp_path / f"s{seed}.json", seed, [adam, pgl11]))
    # Seed 0's Adam again (a second command on the same workdir), with another method.
    pgl1 = ("pgl1", "pgl1 eta=400 alg4", 89.0, 2_000_000, 500.0)
    again = ("adam", "adam", 50.0, 2_362_816, 4000.0)  # counted once: the first seen stays
    paths.append(_write(tmp_path / "s0_pgl1.json", 0, [again, pgl1]))
    # Another configuration (more epochs): its own rows.
    longer = ("pgl11", "pgl11 eta=400 alg4", 70.0, 90_000, 120.0)
    paths.append(_write(tmp_path / "long.json", 0, [longer], epochs=24))
    return paths, accuracies


def test_rows_are_aggregated_over_seeds_per_configuration(files):
    paths, accuracies = files
    rows = summarize.aggregate([row for path in paths for row in summarize.result_rows(path)])
    labels = [(row["method"], len(row["seeds"])) for row in rows]
    assert labels == [
        ("adam", 3),
        ("pgl11 eta=400 alg4", 3),
        ("pgl1 eta=400 alg4", 1),
        ("pgl11 eta=400 alg4", 1),
    ]
    adam, pgl11, _, longer = rows
    values = list(accuracies.values())
    assert pgl11["accuracy_%"] == round(np.mean(values), 2)
    assert pgl11["accuracy_%_sd"] == round(np.std(values, ddof=1), 2)
    assert adam["accuracy_%"] == 90.0  # seeds 0, 1, 2 once each: 89, 90, 91
    assert longer["accuracy_%"] == 70.0 and longer["accuracy_%_sd"] is None


def test_markdown_puts_the_paper_beside_ours(files, capsys):
    paths, accuracies = files
    summarize.main([*paths, "--paper", "IV"])
    lines = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:6] == ["method", "seeds", "acc %", "val %", "kMACCs", "MACCs %"]
    paper = {line.split(" | ")[0]: line.split(" | ") for line in lines if "paper:" in line}
    pgl11 = paper["| paper: PGL11 eta=400"]
    # The paper's memory sits in the reading we compare it with, and only there.
    column = header.index({"entropy_global": "H/all kB", "entropy_layers": "H/layer kB"}[
        summarize.PAPER_MEMORY_READING
    ])  # fmt: skip
    assert pgl11[column] == "131" and pgl11[column + 1] == "3.3"
    assert pgl11[header.index("acc %")] == "87.5" and pgl11[header.index("MACCs %")] == "11.2"
    ours = [line for line in lines if line.startswith("| pgl11 eta=400 alg4 | 3 |")]
    mean, sd = (
        round(np.mean(list(accuracies.values())), 2),
        round(np.std([88, 88.5, 87.1], ddof=1), 2),
    )
    assert len(ours) == 1 and f"| {mean} ± {sd} |" in ours[0]
    assert "    python -m experiments.train --seed 2" in lines


def test_old_files_read_entropy_kb_as_the_per_layer_reading(tmp_path):
    old = {
        "command": "python -m experiments.train",
        "seed": 0,
        "arguments": {"seed": 0},
        "results": [
            {
                "method": "adam",
                "label": "adam",
                "summary": {"method": "adam", "accuracy_%": 88.86, "effective_maccs": 2_362_816,
                            "maccs_%": 100.0, "entropy_kB": 3980.4, "entropy_%": 100.0},
            }
        ],
    }  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    (row,) = summarize.aggregate(summarize.result_rows(str(path)))
    assert row["entropy_layers_kB"] == 3980.4 and row["seeds"] == [0]
    assert "entropy_global_kB" not in row or row["entropy_global_kB"] is None


def test_plot_has_error_bars(files, tmp_path):
    paths, _ = files
    plot = tmp_path / "plot.png"
    summarize.main([*paths, "--paper", "IV", "--plot", str(plot)])
    assert plot.read_bytes()[:4] == b"\x89PNG"


TWO_PROCESSES = {"coordinator": "h:1234", "num_processes": 2, "process_id": 0}


def test_where_and_how_a_run_went_is_not_its_configuration(tmp_path):
    # Seeds run on one host with other checkpoint settings, or as a two-process run, are
    # the same configuration; more epochs are not.
    entry = [("pgl11", "pgl11 eta=400 alg4", 88.0, 100_000, 130.0)]
    paths = [
        _write(tmp_path / "a.json", 0, entry, keep_checkpoints=2),
        _write(tmp_path / "b.json", 1, entry, keep_checkpoints=5, **TWO_PROCESSES),
        _write(tmp_path / "c.json", 2, entry, epochs=16),
    ]
    rows = summarize.aggregate([row for path in paths for row in summarize.result_rows(path)])
    assert [row["seeds"] for row in rows] == [[0, 1], [2]]


def test_matched_rows_name_the_projection_they_were_matched_to(tmp_path):
    # Two runs on the same configuration but other radii: their magnitude baselines, matched
    # to different sparsities, are two rows, not one mean over both.
    paths = []
    for eta, accuracy in ((24, 87.9), (500, 87.7)):
        entries = [
            ("pgl21", f"pgl21 coupled eta={eta} dense_alg1", 82.0, 100_000, 130.0),
            ("magnitude", "magnitude sparsity=57.2% cosine", accuracy, 2_362_816, 130.0),
        ]
        paths.append(_write(tmp_path / f"eta{eta}.json", 0, entries))
    rows = summarize.aggregate([row for path in paths for row in summarize.result_rows(path)])
    matched = {row["method"]: row["accuracy_%"] for row in rows if "magnitude" in row["method"]}
    assert matched == {
        "magnitude matched to pgl21 coupled eta=24 cosine": 87.9,
        "magnitude matched to pgl21 coupled eta=500 cosine": 87.7,
    }
