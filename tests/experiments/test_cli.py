"""The training CLI end to end on a tiny subset, checkpoints, and resuming a killed run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train, training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--dataset", "digits", "--limit-train", "256", "--limit-test", "120", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    out = workdir / "result.json"
    argv = [*TINY, "--method", "adam", "pgl11", "magnitude", "--epochs", "2"]
    argv += ["--retrain-epochs", "1", "--batch-size", "32", "--eta", "30"]
    argv += ["--workdir", str(workdir), "--out", str(out)]
    train.main(argv)
    with open(out) as handle:
        return json.load(handle), workdir


def test_result_json_records_the_run(tiny_run):
    result, _ = tiny_run
    assert result["command"].startswith("python -m experiments.train --dataset digits")
    assert result["seed"] == 0 and result["wall_time_s"] > 0
    assert result["versions"]["jax"] == jax.__version__
    assert result["dataset"]["train_examples"] == 256 and result["dataset"]["test_examples"] == 120
    assert result["model"] == {
        "name": "lenet300_100",
        "dense_maccs": 64 * 300 + 300 * 100 + 100 * 10,
        "params": 64 * 300 + 300 * 100 + 100 * 10 + 410,
        "constrained_layers": "^fc[12]/kernel$",
    }
    assert [r["method"] for r in result["results"]] == ["adam", "pgl11", "magnitude"]
    assert result["baseline"]["name"].startswith("adam")


def test_every_method_has_its_figures(tiny_run):
    result, _ = tiny_run
    adam, pgl11, magnitude = result["results"]
    for entry in result["results"]:
        summary = entry["summary"]
        assert 0.0 <= entry["test_accuracy"] <= 1.0
        assert summary["accuracy_%"] == round(100 * entry["test_accuracy"], 2)
        assert summary["dense_maccs"] == result["model"]["dense_maccs"]
        assert 0 < summary["effective_maccs"] <= summary["dense_maccs"]
        assert summary["entropy_layers_kB"] > 0 and summary["zlib_kB"] > 0
        assert summary["entropy_global_kB"] >= summary["entropy_layers_kB"]
        assert summary["reduced_kB"] > 0
    assert adam["summary"]["maccs_%"] == 100.0 and adam["summary"]["sparsity_%"] == 0.0
    assert [len(h) for h in adam["history"].values()] == [2]
    assert [len(h) for h in pgl11["history"].values()] == [2, 2, 1]
    # The projection zeroes whole input units; magnitude pruning matches its sparsity.
    assert pgl11["summary"]["effective_maccs"] < adam["summary"]["effective_maccs"]
    assert pgl11["summary"]["sparsity_%"] > 20
    assert magnitude["settings"]["sparsity"] == pgl11["constrained_sparsity"]
    assert magnitude["constrained_sparsity"] == pytest.approx(
        pgl11["constrained_sparsity"], abs=2e-3
    )
    assert adam["constrained_sparsity"] == 0.0


def test_validation_is_held_out_and_read_per_epoch(tiny_run):
    result, _ = tiny_run
    assert result["arguments"]["val_size"] == 143  # 10% of the 1437 training digits
    assert result["dataset"]["val_examples"] == 143
    for entry in result["results"]:
        assert 0.0 <= entry["val_accuracy"] <= 1.0
        assert entry["summary"]["val_accuracy_%"] == round(100 * entry["val_accuracy"], 2)
        for history in entry["history"].values():
            for epoch in history:
                assert "val_accuracy" in epoch and "test_accuracy" not in epoch


def _datasets(argv):
    args = train._complete(train.build_parser().parse_args(argv))
    return train._load_data(args)[0]


def test_validation_split_does_not_depend_on_the_seed_or_the_limit():
    plain = _datasets(["--dataset", "digits"])
    other = _datasets(["--dataset", "digits", "--seed", "3", "--limit-train", "100"])
    assert len(plain.val_labels) == 143 and len(plain.train_labels) == 1437 - 143
    np.testing.assert_array_equal(plain.val_labels, other.val_labels)
    # --limit-train keeps the first of the examples left after the hold-out.
    np.testing.assert_array_equal(other.train_labels, plain.train_labels[:100])
    none = _datasets(["--dataset", "digits", "--val-size", "0"])
    assert none.val_labels is None and len(none.train_labels) == 1437


def test_val_size_zero_evaluates_epochs_on_the_test_set(tmp_path):
    argv = [*TINY, "--method", "adam", "--epochs", "1", "--batch-size", "32", "--val-size", "0"]
    result = train.main([*argv, "--workdir", str(tmp_path)])
    assert result["arguments"]["val_size"] == 0 and result["dataset"]["val_examples"] == 0
    (entry,) = result["results"]
    assert entry["val_accuracy"] is None and entry["summary"]["val_accuracy_%"] is None
    assert "test_accuracy" in entry["history"]["dense"][0]


def test_val_size_must_leave_training_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--val-size", "1437"])
    message = str(exit_info.value)
    assert message.startswith("--val-size 1437") and "1437 training examples" in message
    assert "\n" not in message


def test_seeds_run_independently_and_aggregate(tmp_path, capsys):
    argv = [*TINY, "--method", "adam", "pgl11", "--eta", "30", "--epochs", "1"]
    argv += ["--retrain-epochs", "1", "--batch-size", "32"]
    result = train.main([*argv, "--seeds", "0", "1", "--workdir", str(tmp_path / "both")])
    table = capsys.readouterr().out
    assert "mean ± sd over seeds 0 1" in table and " ± " in table
    assert result["seeds"] == [0, 1] and result["seed"] is None
    assert [entry["seed"] for entry in result["results"]] == [0, 0, 1, 1]
    alone = train.main([*argv, "--seed", "1", "--workdir", str(tmp_path / "alone")])
    strip = lambda h: {k: [{x: v for x, v in e.items() if x != "seconds"} for e in p]
                       for k, p in h.items()}  # fmt: skip
    for shared, single in zip(result["results"][2:], alone["results"]):
        assert shared["summary"] == single["summary"]
        assert strip(shared["history"]) == strip(single["history"])
    adam, pgl11 = result["aggregate"]
    assert adam["method"] == "adam" and adam["maccs_%"] == 100.0
    values = [entry["summary"]["accuracy_%"] for entry in result["results"][1::2]]
    assert pgl11["method"] == result["results"][1]["label"] and pgl11["seeds"] == [0, 1]
    assert pgl11["accuracy_%"] == pytest.approx(np.mean(values), abs=0.006)
    assert pgl11["accuracy_%_sd"] == pytest.approx(np.std(values, ddof=1), abs=0.006)
    assert os.path.exists(tmp_path / "both" / "seed1" / "result.json")


def test_seeds_must_differ_and_exclude_seed(capsys):
    with pytest.raises(SystemExit, match="--seeds 0 0 repeats a seed"):
        train.main([*TINY, "--seeds", "0", "0"])
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--seed", "1", "--seeds", "2"])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_checkpoints_hold_the_final_weights(tiny_run):
    _, workdir = tiny_run
    dense_dirs = [d for d in os.listdir(workdir) if d.startswith("dense-e2")]
    assert len(dense_dirs) == 1
    path = os.path.join(workdir, dense_dirs[0], "checkpoint.npz")
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
    assert [epoch["epoch"] for epoch in meta["history"]] == [1, 2]


def test_checkpoint_round_trip_with_prng_keys(tmp_path):
    state = {"w": jnp.arange(3.0), "key": jax.random.key(3), "n": jnp.int32(7)}
    training.save_checkpoint(str(tmp_path / "c.npz"), state, {"a": 1})
    template = jax.tree.map(jnp.zeros_like, {"w": state["w"], "n": state["n"]})
    template["key"] = jax.random.key(0)
    restored, meta = training.load_checkpoint(str(tmp_path / "c.npz"), template)
    assert meta == {"a": 1}
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert int(restored["n"]) == 7
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(state["key"])
    )
    with pytest.raises(ValueError, match="shape"):
        training.load_checkpoint(str(tmp_path / "c.npz"), {**template, "w": jnp.zeros(4)})


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        train.main(["--eta", "-3"])
    assert "--eta" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--sparsity"):
        train.main(["--method", "magnitude"])
    with pytest.raises(SystemExit, match="--layers"):
        train.main(["--layers", "fc[1"])


def _checkpointed_epochs(workdir):
    if not os.path.isdir(workdir):
        return 0
    for directory in os.listdir(workdir):
        path = os.path.join(workdir, directory, "checkpoint.npz")
        if directory.startswith("dense") and os.path.exists(path):
            try:
                with np.load(path) as stored:
                    return len(json.loads(str(stored["meta"]))["history"])
            except (OSError, ValueError, KeyError):
                return 0
    return 0


def test_resume_after_a_kill(tmp_path):
    epochs = 12
    args = [*TINY, "--method", "adam", "--epochs", str(epochs), "--batch-size", "8"]
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.train", *args, "--workdir", str(killed_dir)]
    env = {**os.environ, "PYTHONPATH": REPO}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _checkpointed_epochs(killed_dir) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = _checkpointed_epochs(killed_dir)
    assert 2 <= finished < epochs

    loud = [arg for arg in command if arg != "--quiet"]  # per-epoch lines and notices
    resumed = subprocess.run(
        [*loud, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert f"resumed after epoch {finished}/{epochs}" in resumed.stdout
    with open(killed_dir / "result.json") as handle:
        history = json.load(handle)["results"][0]["history"]["dense"]
    assert [epoch["epoch"] for epoch in history] == list(range(1, epochs + 1))

    reference_dir = tmp_path / "reference"
    train.main([*args, "--workdir", str(reference_dir)])
    with open(reference_dir / "result.json") as handle:
        reference = json.load(handle)["results"][0]["history"]["dense"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(history) == strip(reference)


def test_summarize_prints_the_rows_beside_the_paper(tiny_run, tmp_path, capsys):
    from experiments import summarize

    result, workdir = tiny_run
    plot = tmp_path / "plot.png"
    summarize.main([str(workdir / "result.json"), "--paper", "IV", "--plot", str(plot)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| method | seeds | acc % | val % | kMACCs")
    assert lines[2].startswith("| paper: Adam | - | 89.9 | - | 2379 | 100.0 |")
    adam = [line for line in lines if line.startswith("| adam |")]
    assert len(adam) == 1
    accuracy = result["results"][0]["summary"]["accuracy_%"]
    assert adam[0].startswith(f"| adam | 1 | {accuracy} |")
    assert any(
        line.startswith("    python -m experiments.train --dataset digits") for line in lines
    )
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "spelling, expected",
    [("input", "inputs"), ("inputs", "inputs"), ("output", "outputs"), ("outputs", "outputs")],
)
def test_group_axis_accepts_both_spellings(spelling, expected):
    args = train.build_parser().parse_args(["--group-axis", spelling])
    assert args.group_axis == expected


def test_group_axis_rejects_other_spellings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--group-axis", "rows"])
    assert exit_info.value.code == 2
    assert "--group-axis" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_bad_learning_rate_exits_with_status_2(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--lr", value])
    assert exit_info.value.code == 2
    assert "--lr" in capsys.readouterr().err
