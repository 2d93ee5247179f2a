"""The training CLI end to end on a tiny subset, checkpoints, and resuming a killed run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import checkpoints, train, training
from tests._devices import run_processes, run_with_devices

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
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the figures name the code that made them
        assert result["versions"]["sparsejax_commit"].split("+")[0] == head.stdout.strip()
    else:
        assert result["versions"]["sparsejax_commit"] is None
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
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and message.count("\n") == 1
    assert "error: --val-size 1437" in message and "1437 training examples" in message


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
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--seeds", "0", "0"])
    assert exit_info.value.code == 2 and "--seeds 0 0 repeats a seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--seed", "1", "--seeds", "2"])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err


def _phase_checkpoints(workdir):
    """``{phase directory name: PhaseCheckpoints}`` of every phase under ``workdir``."""
    found = {}
    for root, names, _ in os.walk(workdir):
        if "checkpoints" in names:
            found[os.path.relpath(root, workdir)] = checkpoints.PhaseCheckpoints(root)
    return found


def test_checkpoints_hold_the_final_weights(tiny_run):
    _, workdir = tiny_run
    phases = _phase_checkpoints(workdir)
    dense = [name for name in phases if name.startswith("dense-e2")]
    assert len(dense) == 1
    assert phases[dense[0]].latest_epoch == 2
    assert [epoch["epoch"] for epoch in phases[dense[0]].latest_meta()["history"]] == [1, 2]


def test_finished_phases_keep_no_optimizer_state(tiny_run):
    from experiments import models

    _, workdir = tiny_run
    split = training.split_model(models.create_model("lenet300_100", input_shape=(8, 8, 1)))
    phases = _phase_checkpoints(workdir)
    assert len(phases) == 4  # dense, pgl11's project and retrain, magnitude's retrain
    params = jax.tree.map(jnp.zeros_like, split.params)
    kept = training.TrainState(params, split.rest, None, jnp.zeros((), jnp.int32))
    with_adam = kept._replace(opt_state=optax.adam(1e-3).init(params))
    for phase in phases.values():
        restored, meta = phase.restore(kept)
        assert meta["finished"] is True
        assert restored.opt_state is None and int(restored.step) > 0
        with pytest.raises(ValueError, match="does not match"):
            phase.restore(with_adam)


def test_checkpoints_round_trip_prng_keys_and_keep_the_last_k(tmp_path):
    state = {"w": jnp.arange(3.0), "key": jax.random.key(3), "n": jnp.int32(7)}
    with checkpoints.PhaseCheckpoints(str(tmp_path), keep=2) as written:
        for epoch in (1, 2, 3):
            written.save(epoch, {**state, "n": jnp.int32(epoch)}, {"epoch": epoch})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    template = jax.tree.map(jnp.zeros_like, {"w": state["w"], "n": state["n"]})
    template["key"] = jax.random.key(0)
    restored, meta = checkpoints.PhaseCheckpoints(str(tmp_path)).restore(template)
    assert meta == {"epoch": 3}
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert int(restored["n"]) == 3
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(state["key"])
    )
    with pytest.raises(ValueError, match="shape"):
        checkpoints.PhaseCheckpoints(str(tmp_path)).restore({**template, "w": jnp.zeros(4)})
    with pytest.raises(ValueError, match="keep"):
        checkpoints.PhaseCheckpoints(str(tmp_path), keep=0)


def test_a_checkpoint_outlives_the_donating_step_that_follows_it(tmp_path):
    # The write runs in the background while the next (buffer-donating) step overwrites the
    # state: what lands on disk must be the state at the save, not a later one.
    step = jax.jit(lambda w: w + 1.0, donate_argnums=0)
    w = jnp.zeros((512, 512))
    with checkpoints.PhaseCheckpoints(str(tmp_path)) as written:
        written.save(1, {"w": w}, {})
        for _ in range(20):
            w = step(w)
    restored, _ = checkpoints.PhaseCheckpoints(str(tmp_path)).restore({"w": jnp.ones((512, 512))})
    np.testing.assert_array_equal(restored["w"], np.zeros((512, 512)))


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--eta", "-3"], "--eta"),
        (["--eta", "fc1=-3"], "--eta"),
        (["--eta", "fc[1=3"], "--eta"),
        (["--epochs", "0"], "--epochs"),
        (["--method", "magnitude"], "--sparsity"),
        (["--layers", "fc[1"], "--layers"),
        (["--group-axis", "coupled", "--eta", "fc1=3"], "--group-axis coupled takes one"),
    ],
)
def test_bad_arguments_exit_with_one_line_and_status_2(argv, named, capsys):
    assert named in _error_line(argv, capsys)


def _checkpointed_epochs(workdir):
    # Read while the run writes: complete orbax steps are the directories named by a number
    # (a step being written has a temporary name until it is renamed).
    if not os.path.isdir(workdir):
        return 0
    for directory in os.listdir(workdir):
        steps = os.path.join(workdir, directory, "checkpoints")
        if directory.startswith("dense") and os.path.isdir(steps):
            return max((int(name) for name in os.listdir(steps) if name.isdigit()), default=0)
    return 0


@pytest.mark.parametrize("devices", [1, 4])
def test_resume_after_a_kill(tmp_path, devices):
    epochs = 12
    args = [*TINY, "--method", "adam", "--epochs", str(epochs), "--batch-size", "8"]
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.train", *args, "--workdir", str(killed_dir)]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    # Simulated devices: the resumed data-parallel run must reproduce the uninterrupted one.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _checkpointed_epochs(killed_dir) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = _checkpointed_epochs(killed_dir)
    assert 2 <= finished < epochs
    left = {root: sorted(names) for root, names, _ in os.walk(killed_dir)}

    loud = [arg for arg in command if arg != "--quiet"]  # per-epoch lines and notices
    resumed = subprocess.run(
        [*loud, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    # Everything the resumed run printed, and what the killed one left, if this ever fails.
    found = re.findall(r"resumed after epoch \d+/\d+", resumed.stdout)
    assert found == [f"resumed after epoch {finished}/{epochs}"], (resumed.stdout, left)
    with open(killed_dir / "result.json") as handle:
        history = json.load(handle)["results"][0]["history"]["dense"]
    assert [epoch["epoch"] for epoch in history] == list(range(1, epochs + 1))

    reference_dir = tmp_path / "reference"
    reference_command = [*command[:-1], str(reference_dir)]
    subprocess.run(reference_command, cwd=REPO, env=env, capture_output=True, check=True)
    with open(reference_dir / "result.json") as handle:
        result = json.load(handle)
    assert result["devices"]["count"] == devices
    reference = result["results"][0]["history"]["dense"]
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


# ----------------------------------------------------------------------------- errors and runs

SMALL = [*TINY[:2], "--limit-train", "64", "--limit-test", "32", "--epochs", "1"]
SMALL += ["--method", "adam", "--batch-size", "32", "--quiet"]


def _error_line(argv, capsys, status=2):
    """Runs the CLI expecting an error: returns its message, checked to be one stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.fixture
def small_run(tmp_path):
    workdir = tmp_path / "run"
    train.main([*SMALL, "--workdir", str(workdir)])
    return workdir


def test_resume_with_other_arguments_refuses_and_names_them(small_run, capsys):
    changed = [*SMALL, "--workdir", str(small_run), "--resume"]
    changed[changed.index("64")] = "96"
    changed[changed.index("--batch-size") + 1] = "16"
    line = _error_line(changed, capsys)
    assert "--resume" in line and str(small_run) in line
    assert "--limit-train 64 there, 96 here" in line
    assert "--batch-size 32 there, 16 here" in line and "--epochs" not in line


def test_resume_with_the_same_arguments_continues(small_run, capsys):
    # Notices are on: --quiet changes no figure, so it may differ from the stored run.
    loud = [arg for arg in SMALL if arg != "--quiet"]
    train.main([*loud, "--workdir", str(small_run), "--resume"])
    assert "resumed after epoch 1/1" in capsys.readouterr().out


def test_other_methods_join_a_workdir_with_resume_and_share_its_dense_phase(small_run, capsys):
    loud = [arg for arg in SMALL if arg != "--quiet"]
    other = [*loud, "--workdir", str(small_run), "--resume", "--method", "adam", "pgl1"]
    train.main([*other, "--eta", "30"])
    out = capsys.readouterr().out
    assert "[dense-e1-" in out and "resumed after epoch 1/1" in out  # the stored dense phase
    assert "pgl1" in out and "epoch 1/1" in out.split("resumed after epoch 1/1", 1)[1]
    # The workdir stays bound to its data and training settings.
    line = _error_line([*other, "--lr", "0.01"], capsys)
    assert "--lr 0.001 there, 0.01 here" in line


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    line = _error_line([*SMALL, "--workdir", str(tmp_path / "new"), "--resume"], capsys)
    assert "nothing to resume" in line and str(tmp_path / "new") in line


def test_a_workdir_holding_another_run_is_refused(small_run, capsys):
    line = _error_line([*SMALL, "--workdir", str(small_run), "--seed", "1"], capsys)
    assert str(small_run) in line and "--seed 0 there, 1 here" in line
    # The same arguments without --resume start the run afresh.
    train.main([*SMALL, "--workdir", str(small_run)])


def test_a_run_stopped_before_its_first_epoch_does_not_block_the_workdir(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    _error_line([*SMALL, "--data-dir", str(tmp_path / "typo"), "--workdir", workdir], capsys)
    train.main([*SMALL, "--workdir", workdir])


def test_a_workdir_in_use_is_refused(tmp_path, capsys):
    import fcntl

    workdir = tmp_path / "busy"
    workdir.mkdir()
    with open(workdir / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _error_line([*SMALL, "--workdir", str(workdir)], capsys)
    assert "in use" in line and str(workdir) in line
    assert not (workdir / "result.json").exists()


def test_result_json_is_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    out.write_text('{"old": 1}')
    summary = {"fine": 1, "not json": object()}
    monkeypatch.setattr(train, "_summarise", lambda *args: dict(summary))
    with pytest.raises(TypeError):
        train.main([*SMALL, "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert out.read_text() == '{"old": 1}'
    assert sorted(os.listdir(tmp_path)) == ["result.json", "w"]


def test_atomic_writes_use_their_own_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    other = tmp_path / "result.json.tmp"  # another writer's temporary file
    other.write_text("someone else's")
    with training.atomic_open(str(path)) as handle:
        handle.write("{}")
    assert other.read_text() == "someone else's"
    assert sorted(os.listdir(tmp_path)) == ["result.json", "result.json.tmp"]
    assert path.read_text() == "{}"


@pytest.mark.parametrize("where", ["/proc/x", "file/x"])
def test_an_unwritable_workdir_is_one_line(where, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    workdir = where if where.startswith("/") else str(tmp_path / where)
    line = _error_line([*SMALL, "--workdir", workdir], capsys)
    assert f"--workdir {workdir}" in line


def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file" / "result.json")
    line = _error_line([*SMALL, "--workdir", str(tmp_path / "w"), "--out", out], capsys)
    assert f"--out {out}" in line
    assert not [d for d in os.listdir(tmp_path / "w") if d.startswith("dense")]


def test_a_missing_data_dir_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "no-such-dir")
    argv = ["--dataset", "mnist", "--data-dir", missing, "--workdir", str(tmp_path / "w")]
    line = _error_line(argv, capsys)
    assert f"--data-dir {missing}" in line and "directory" in line


def test_mnist_without_data_says_what_to_do(tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    def unavailable(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.setattr(tfds, "data_source", unavailable)
    line = _error_line(["--dataset", "mnist", "--workdir", str(tmp_path / "w")], capsys)
    assert "--dataset mnist" in line and "--data-dir" in line
    assert "train-images-idx3-ubyte" in line and "tensorflow-datasets" in line


def test_an_eta_naming_no_layer_is_one_line(tmp_path, capsys):
    argv = [*SMALL, "--method", "pgl11", "--eta", "fc1=30,fc9=20"]
    line = _error_line([*argv, "--workdir", str(tmp_path / "w")], capsys)
    assert "--eta" in line and "'fc9'" in line and "'fc1'" not in line
    assert "fc1/kernel, fc2/kernel" in line
    assert not [d for d in os.listdir(tmp_path / "w") if d.startswith("dense")]


def test_layers_selecting_nothing_is_one_line(tmp_path, capsys):
    argv = [*SMALL, "--method", "pgl11", "--layers", "^conv", "--workdir", str(tmp_path / "w")]
    line = _error_line(argv, capsys)
    assert "--layers '^conv'" in line and "fc1/kernel, fc2/kernel, fc3/kernel" in line


def test_ctrl_c_says_how_to_continue(tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "w")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training, "run_phase", interrupted)
        try:
            line = _error_line([*SMALL, "--workdir", workdir], capsys, status=130)
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C escaped main() as a traceback")
    assert "Ctrl-C" in line and workdir in line
    assert line.rstrip().endswith(f"--workdir {workdir} --resume")
    # The lock went with the interrupted run: the suggested command continues it.
    train.main([*SMALL, "--workdir", workdir, "--resume"])


def test_no_progress_bars_off_a_terminal(tmp_path, capsys):
    loud = [arg for arg in SMALL if arg != "--quiet"]
    train.main([*loud, "--workdir", str(tmp_path / "w")])
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err
    assert "epoch 1/1" in captured.out
    assert f"MB in {tmp_path / 'w'}" in captured.out.splitlines()[-1]


# Arguments that say where and how a run goes, not what it computes.
RUN_ONLY = ("workdir", "out", "coordinator", "num_processes", "process_id")


def _train_in_subprocess(devices_visible, argv, tmp_path):
    """Runs the CLI in a fresh interpreter that sees ``devices_visible`` simulated CPU
    devices; returns its result.json."""
    out = tmp_path / f"result_{devices_visible}_{len(argv)}.json"
    run_with_devices(devices_visible, ["-m", "experiments.train", *argv, "--out", str(out)])
    return json.loads(out.read_text())


def test_data_parallel_on_four_devices_matches_one_device(tmp_path):
    argv = [*TINY, "--method", "adam", "pgl11", "--eta", "30", "--epochs", "2"]
    argv += ["--retrain-epochs", "1", "--batch-size", "32"]
    four = _train_in_subprocess(4, [*argv, "--workdir", str(tmp_path / "four")], tmp_path)
    one = _train_in_subprocess(
        4, [*argv, "--devices", "1", "--workdir", str(tmp_path / "one")], tmp_path
    )
    # Two hosts with two devices each, as one process per host would run them.
    hosts = tmp_path / "hosts"
    stdout = run_processes(2, 2, ["-m", "experiments.train", *argv, "--workdir", str(hosts)])
    assert stdout.count("acc %") == 1  # process 0 prints the table
    two_hosts = json.loads((hosts / "result.json").read_text())
    assert two_hosts["devices"] == {**four["devices"], "processes": 2}
    figures = lambda result: {k: v for k, v in result["arguments"].items() if k not in RUN_ONLY}
    assert figures(two_hosts) == figures(four)
    _assert_same_training(two_hosts, four)  # gloo sums across processes in another order
    assert four["devices"]["count"] == 4 and four["arguments"]["devices"] == 4
    assert one["devices"]["count"] == 1 and four["devices"]["platform"] == "cpu"
    _assert_same_training(four, one)


def _assert_same_training(result, other):
    for a, b in zip(result["results"], other["results"], strict=True):
        # The same global batches: equal up to the order of float reductions.
        np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], atol=1.5 / 120)
        for phase in a["history"]:
            losses = [[e["train_loss"] for e in r["history"][phase]] for r in (a, b)]
            np.testing.assert_allclose(*losses, rtol=2e-3)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--num-processes", "2"], "--num-processes and --process-id need --coordinator"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "needs --num-processes and"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2"),
    ],
)
def test_incomplete_multi_process_arguments_are_one_line(argv, named, capsys):
    assert named in _error_line([*TINY, *argv], capsys)


def test_resuming_an_npz_workdir_of_an_earlier_version_is_one_line(tmp_path, capsys):
    (tmp_path / "dense-e1-0000").mkdir()
    (tmp_path / "dense-e1-0000" / "checkpoint.npz").write_bytes(b"")
    line = _error_line([*SMALL, "--workdir", str(tmp_path), "--resume"], capsys)
    assert ".npz checkpoints of an earlier sparsejax" in line


def test_devices_must_exist(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--devices", str(jax.device_count() + 1)])
    assert exit_info.value.code == 2 and "device(s) visible" in capsys.readouterr().err


def test_batch_not_divisible_by_devices_is_one_line(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", *TINY, "--batch-size", "30"],
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=os.getcwd(),
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--batch-size 30 must be a multiple of --devices 4" in done.stderr
