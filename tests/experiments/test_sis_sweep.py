"""The SIS sweep's cached dense checkpoint is keyed by its data and initial weights."""

import numpy as np
import pytest

from experiments import models, sis_sweep, training


def _data(images):
    labels = np.arange(len(images)) % 10
    return training.TrainData(images, labels, images[:4], labels[:4], 8, 0)


def test_dense_checkpoint_name_covers_the_data_and_the_model():
    args = sis_sweep.parse_args(["--model", "lenet300_100", "--epochs", "1"])
    split = training.split_model(models.create_model("lenet300_100", input_shape=(28, 28, 1)))
    images = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype(np.float32)
    name = sis_sweep.dense_phase(args, split, _data(images)).key
    assert name == sis_sweep.dense_phase(args, split, _data(images.copy())).key
    # A subset or another dataset is another checkpoint, as is another initialisation.
    assert name != sis_sweep.dense_phase(args, split, _data(images[:12])).key
    other = training.split_model(
        models.create_model("lenet300_100", input_shape=(28, 28, 1), seed=1)
    )
    assert name != sis_sweep.dense_phase(args, split=other, data=_data(images)).key


def _run(seed, accuracies, knobs=(0.5, 0.9)):
    rows = [
        {"sparsity": knob, "sis_accuracy": acc, "magnitude_accuracy": acc - 0.1,
         "sis_effective_maccs": 1000 * (seed + 1)}
        for knob, acc in zip(knobs, accuracies)
    ]  # fmt: skip
    return {"dense_accuracy": 0.9 + seed / 100, "sweep": rows, "units": [], "l11": [],
            "ablation": []}  # fmt: skip


def test_seeds_are_aggregated_row_by_row_against_numpy():
    accuracies = {0: (0.88, 0.80), 1: (0.87, 0.70), 2: (0.86, 0.75)}
    runs = [_run(seed, acc) for seed, acc in accuracies.items()]
    summary = sis_sweep.aggregate(runs)
    for index, knob in enumerate((0.5, 0.9)):
        row = summary["sweep"][index]
        values = [acc[index] for acc in accuracies.values()]
        assert row["sparsity"] == knob
        np.testing.assert_allclose(row["sis_accuracy"]["mean"], np.mean(values))
        np.testing.assert_allclose(row["sis_accuracy"]["sd"], np.std(values, ddof=1))
        np.testing.assert_allclose(row["sis_effective_maccs"]["mean"], 2000.0)
    np.testing.assert_allclose(summary["dense_accuracy"]["mean"], 0.91)
    table = sis_sweep.markdown(summary, [0, 1, 2])
    mean, sd = 100 * np.mean([0.80, 0.70, 0.75]), 100 * np.std([0.80, 0.70, 0.75], ddof=1)
    assert f"| 90% | {mean:.2f} ± {sd:.2f} |" in table
    one = sis_sweep.markdown(sis_sweep.aggregate(runs[:1]), [0])  # one seed: its own figures
    assert one.startswith("seed 0; dense 90.00%") and "| 90% | 80.00 | 70.00 |" in one


def test_seeds_with_other_rows_are_refused():
    runs = [_run(0, (0.8, 0.7)), _run(1, (0.8, 0.7), knobs=(0.5, 0.95))]
    with pytest.raises(ValueError, match="sweep rows differ"):
        sis_sweep.aggregate(runs)
    with pytest.raises(SystemExit, match="repeats a seed"):
        sis_sweep.main(["--seeds", "0", "0"])
