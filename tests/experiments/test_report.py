"""experiments.report: the memory readings (per-layer entropy, global entropy, surgery bytes),
mean ± sd over seeds and selection on validation accuracy."""

import numpy as np
import pytest

from experiments import models, report, training


def _entropy_bytes(values):
    """Reference: Shannon entropy of the float16 bit patterns (-0 as +0) times the count / 8."""
    halves = np.asarray(values, np.float32).astype(np.float16) + np.float16(0)
    _, counts = np.unique(halves.view(np.uint16), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) * halves.size / 8


@pytest.fixture(scope="module")
def lenet():
    """LeNet-300-100 on 8x8 inputs with 100 of fc1's 300 units cut off (zero fan-in)."""
    split = training.split_model(models.create_model("lenet300_100", input_shape=(8, 8, 1)))
    params = {
        name: {key: np.array(value) for key, value in layer.items()}
        for name, layer in split.params.items()
    }
    params["fc1"]["kernel"][:, :100] = 0.0
    images = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    return split, params, images


def test_both_entropy_readings_match_a_numpy_reference(lenet):
    split, params, images = lenet
    figures = report.measure(split, params, split.rest, images)
    layers = [np.concatenate([p["kernel"].ravel(), p["bias"].ravel()]) for p in params.values()]
    per_layer = sum(_entropy_bytes(values) for values in layers)
    overall = _entropy_bytes(np.concatenate(layers))
    assert figures.report.entropy_bytes == pytest.approx(per_layer, rel=1e-9)
    assert figures.entropy_global_bytes == pytest.approx(overall, rel=1e-9)
    # The entropy of a mixture is at least the mean entropy of its parts.
    assert figures.entropy_global_bytes > figures.report.entropy_bytes


def test_reduced_bytes_are_those_of_the_smaller_network(lenet):
    split, params, images = lenet
    figures = report.measure(split, params, split.rest, images)
    # fc1 keeps 200 outputs (the 100 constant units fold into fc2's bias).
    expected = 4 * ((64 * 200 + 200) + (200 * 100 + 100) + (100 * 10 + 10))
    assert figures.reduced_bytes == expected


def test_summary_row_names_each_reading_relative_to_the_baseline(lenet):
    split, params, images = lenet
    dense = report.measure(split, split.params, split.rest, images)
    sparse = report.measure(split, params, split.rest, images, baseline=dense)
    row = report.summary_row("x", 0.5, sparse, baseline=dense, val_accuracy=0.25, kind="pgl11")
    assert row["accuracy_%"] == 50.0 and row["val_accuracy_%"] == 25.0 and row["kind"] == "pgl11"
    dense_bytes = 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    assert row["reduced_%"] == round(100 * sparse.reduced_bytes / dense_bytes, 2)
    assert row["entropy_global_%"] == round(
        100 * sparse.entropy_global_bytes / dense.entropy_global_bytes, 2
    )
    assert row["entropy_layers_%"] == round(
        100 * sparse.report.entropy_bytes / dense.report.entropy_bytes, 2
    )
    assert "entropy_kB" not in row  # no unnamed reading


def test_aggregate_gives_mean_and_sample_sd_per_label():
    rows = [
        {"method": "a", "kind": "adam", "accuracy_%": 90.0, "maccs_%": None},
        {"method": "b", "kind": "pgl11", "accuracy_%": 80.0, "maccs_%": 5.0},
        {"method": "a", "kind": "adam", "accuracy_%": 92.0, "maccs_%": None},
        {"method": "b", "kind": "pgl11", "accuracy_%": 83.0, "maccs_%": 7.0},
        {"method": "b", "kind": "pgl11", "accuracy_%": 99.0, "maccs_%": 1.0},  # seed 1 again
    ]
    a, b = report.aggregate(rows, [0, 0, 1, 1, 1])
    assert (a["method"], a["seeds"], b["seeds"]) == ("a", [0, 1], [0, 1])
    assert a["accuracy_%"] == 91.0 and a["accuracy_%_sd"] == round(np.std([90, 92], ddof=1), 2)
    assert a["maccs_%"] is None and a["maccs_%_sd"] is None
    assert b["accuracy_%"] == 81.5 and b["maccs_%_sd"] == round(np.std([5, 7], ddof=1), 2)
    (single,) = report.aggregate(rows[:1], [3])
    assert single["accuracy_%"] == 90.0 and single["accuracy_%_sd"] is None
    table = report.format_table([a, b])
    assert "91.00 ± 1.41" in table and "seeds" in table.splitlines()[0]


def test_table_gives_every_float_two_decimals():
    rows = [
        {"method": "adam", "accuracy_%": 97.2, "val_accuracy_%": 96.667, "maccs_%": 100.0},
        {"method": "pgl11", "accuracy_%": 94.17, "val_accuracy_%": 93.0, "maccs_%": 9.38},
    ]
    lines = report.format_table(rows).splitlines()
    assert "97.20" in lines[2] and "96.67" in lines[2] and "100.00" in lines[2]
    assert "93.00" in lines[3] and "9.38" in lines[3]


def test_selection_reads_validation_accuracy_only():
    rows = [
        {"method": "pgl11 eta=100", "kind": "pgl11", "val_accuracy_%": 80.0, "accuracy_%": 90.0},
        {"method": "pgl11 eta=200", "kind": "pgl11", "val_accuracy_%": 85.0, "accuracy_%": 70.0},
        {"method": "pgl1 eta=9", "kind": "pgl1", "val_accuracy_%": 50.0, "accuracy_%": 99.0},
        {"method": "adam", "kind": "adam", "val_accuracy_%": None, "accuracy_%": 99.0},
        {"method": "adam 2", "kind": "adam", "val_accuracy_%": None, "accuracy_%": 98.0},
    ]
    assert report.select_on_validation(rows) == {"pgl11": "pgl11 eta=200"}


def test_group_label_names_a_matched_sparsity():
    assert report.group_label("magnitude sparsity=97.1% cosine", "magnitude", True) == (
        "magnitude sparsity=matched cosine"
    )
    assert report.group_label("magnitude sparsity=97.1%", "magnitude", False) == (
        "magnitude sparsity=97.1%"
    )
    assert report.group_label("pgl11 eta=4", "pgl11", True) == "pgl11 eta=4"
