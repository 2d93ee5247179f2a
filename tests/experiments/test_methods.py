"""experiments.methods: the schedules' semantics and the dead-unit mask, on tiny data."""

import dataclasses
import os

import jax
import numpy as np
import pytest
from flax import nnx

import sparsejax
from experiments import data as data_lib
from experiments import methods, models, training

LAYERS = r"^fc[12]/kernel$"


def _reference_alive(kernels):
    """Hidden units reachable from the inputs and reaching the outputs (graph search)."""
    forward = [np.ones(kernels[0].shape[0], bool)]
    for kernel in kernels:
        forward.append((forward[-1][:, None] & (kernel != 0)).any(0))
    backward = [np.ones(kernels[-1].shape[1], bool)]
    for kernel in reversed(kernels):
        backward.insert(0, ((kernel != 0) & backward[0][None, :]).any(1))
    return [f & b for f, b in zip(forward[1:-1], backward[1:-1])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prune_dead_units_matches_a_graph_search(seed):
    rng = np.random.default_rng(seed)
    widths = (6, 7, 5, 4, 3)
    params, mask = {}, {}
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        kernel = rng.normal(size=(fan_in, fan_out)) * (rng.uniform(size=(fan_in, fan_out)) < 0.25)
        params[f"fc{index}"] = {"kernel": kernel, "bias": rng.normal(size=fan_out)}
        mask[f"fc{index}"] = {
            "kernel": np.ones((fan_in, fan_out), bool),
            "bias": np.ones(fan_out, bool),
        }
    pruned = methods.prune_dead_units(params, mask)
    alive = _reference_alive([params[f"fc{i}"]["kernel"] for i in range(1, 5)])
    for index in range(1, 5):
        kernel_mask = np.asarray(pruned[f"fc{index}"]["kernel"])
        live_in = np.ones(widths[0], bool) if index == 1 else alive[index - 2]
        live_out = np.ones(widths[-1], bool) if index == 4 else alive[index - 1]
        expected = (params[f"fc{index}"]["kernel"] != 0) & live_in[:, None] & live_out[None, :]
        np.testing.assert_array_equal(kernel_mask, expected)
        bias_expected = live_out if index < 4 else np.ones(widths[-1], bool)
        np.testing.assert_array_equal(np.asarray(pruned[f"fc{index}"]["bias"]), bias_expected)


def test_prune_dead_units_leaves_other_models_alone():
    params = {"conv1": {"kernel": np.zeros((3, 3, 1, 2)), "bias": np.zeros(2)}}
    mask = {"conv1": {"kernel": np.ones((3, 3, 1, 2), bool), "bias": np.ones(2, bool)}}
    assert methods.prune_dead_units(params, mask) is mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    train = data_lib.load_dataset("digits", "train", limit=128)
    test = data_lib.load_dataset("digits", "test", limit=64)
    train_images, test_images = data_lib.standardize(train.images, test.images)
    data = training.TrainData(train_images, train.labels, test_images, test.labels, 32, 0)
    model = models.create_model("lenet300_100", input_shape=(8, 8, 1), seed=0)
    return training.split_model(model), data, str(tmp_path_factory.mktemp("phases"))


def _experiment(tiny, **changes):
    """Experiments share one workdir: the dense phase is trained once and then resumed."""
    split, data, workdir = tiny
    settings = dataclasses.replace(
        methods.Settings(layers=LAYERS, epochs=1, retrain_epochs=1), **changes
    )
    return _quiet_experiment(split, data, settings, workdir)


def _quiet_experiment(split, data, settings, workdir, identity=None):
    """An Experiment resuming from ``workdir``, without progress bars or log lines."""
    return methods.Experiment(
        split,
        data,
        settings,
        workdir=str(workdir),
        resume=True,
        progress=False,
        log=lambda _: None,
        identity=identity,
    )


def test_alg4_rewinds_to_the_initial_weights(tiny):
    split = tiny[0]
    experiment = _experiment(tiny, schedule="alg4", retrain_epochs=0)
    result = experiment.projection("pgl11", 20.0)
    dense = experiment.finished_dense()
    projected = sparsejax.project_once(sparsejax.project_l11(20.0, where=LAYERS), dense.params)
    mask = sparsejax.support_mask(projected, where=LAYERS)
    expected = sparsejax.rewind(split.params, mask)
    jax.tree.map(np.testing.assert_array_equal, result.params, expected)
    norewind = _experiment(tiny, schedule="alg4_norewind", retrain_epochs=0)
    jax.tree.map(
        np.testing.assert_array_equal, norewind.projection("pgl11", 20.0).params, projected
    )


@pytest.mark.parametrize(
    ("method", "axis", "prefix"),
    [("pgl11", "inputs", "pgl11 eta=20 "), ("pgl11", "outputs", "pgl11 outputs eta=20 "),
     ("pgl1", "outputs", "pgl1 eta=20 ")],
)  # fmt: skip
def test_a_row_label_names_its_group_axis_unless_the_default(tiny, method, axis, prefix):
    experiment = _experiment(tiny, group_axis=axis, retrain_epochs=0)
    assert experiment.projection(method, 20.0).label.startswith(prefix)


@pytest.mark.parametrize("schedule", ["alg1", "dense_alg1", "alg4"])
def test_retraining_keeps_the_projected_zeros(tiny, schedule):
    experiment = _experiment(tiny, schedule=schedule, retrain_epochs=2)
    result = experiment.projection("pgl11", 20.0)
    kernels = [np.asarray(leaf) for _, leaf in sparsejax.selected_leaves(result.params, LAYERS)]
    zeros = sum(int((kernel == 0).sum()) for kernel in kernels)
    assert zeros > 0
    # whole input units (rows) vanish, not only single weights
    assert any((kernel == 0).all(axis=1).any() for kernel in kernels)
    assert set(result.phases) >= {"retrain"} and len(result.phases["retrain"]) == 2
    total = sum(kernel.size for kernel in kernels)
    assert methods.selected_sparsity(result.params, LAYERS) == pytest.approx(zeros / total)


def test_magnitude_prunes_the_requested_fraction(tiny):
    result = _experiment(tiny).magnitude(0.9)
    assert methods.selected_sparsity(result.params, LAYERS) == pytest.approx(0.9, abs=1e-3)


def test_checkpoint_keys_cover_the_data_and_the_model(tiny, tmp_path):
    """Other data (another subset, dataset or split) or another model never resumes a phase
    of this one, even in the same workdir."""
    split, data, _ = tiny
    settings = methods.Settings(layers=LAYERS, epochs=1, retrain_epochs=1)
    fewer = dataclasses.replace(data, train_images=data.train_images[:96])
    fewer = dataclasses.replace(fewer, train_labels=data.train_labels[:96])
    other_test = dataclasses.replace(data, test_images=data.test_images[::-1])
    other_init = training.split_model(
        models.create_model("lenet300_100", input_shape=(8, 8, 1), seed=1)
    )
    runs = [(split, data, None), (split, fewer, None), (split, other_test, None)]
    runs += [(other_init, data, None), (split, data, {"model": "another"})]
    for run_split, run_data, identity in runs:
        _quiet_experiment(run_split, run_data, settings, tmp_path, identity).dense()
    assert len([d for d in os.listdir(tmp_path) if d.startswith("dense-")]) == len(runs)


def test_checkpoint_keys_tell_close_radii_and_sparsities_apart(tiny, tmp_path):
    split, data, _ = tiny
    settings = methods.Settings(layers=LAYERS, epochs=1, retrain_epochs=1, schedule="alg1")
    experiment = _quiet_experiment(split, data, settings, tmp_path)
    for eta in (20.0, 20.00001):
        experiment.projection("pgl11", eta)
    for sparsity in (0.5, 0.50001):
        experiment.magnitude(sparsity)
    names = os.listdir(tmp_path)
    assert len([name for name in names if name.startswith("pgl11-")]) == 2
    assert len([name for name in names if name.startswith("magnitude-")]) == 2


class _ImageResidual(nnx.Module):
    """``c(h + b2(relu(b(h))))`` with ``h = a(flatten(x))``: a residual stream of width 8."""

    def __init__(self, rngs):
        self.a = nnx.Linear(64, 8, rngs=rngs)
        self.b = nnx.Linear(8, 6, rngs=rngs)
        self.b2 = nnx.Linear(6, 8, rngs=rngs)
        self.c = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        h = self.a(x.reshape(x.shape[0], -1))
        return self.c(h + self.b2(jax.nn.relu(self.b(h))))


def _read_rows(params, group):
    """The rows of every kernel its units are read by (NumPy), concatenated."""
    parts = []
    for m in group.members:
        if m.reads:
            leaf = params
            for key in m.path.split("/"):
                leaf = leaf[key]
            parts.append(np.take(np.asarray(leaf), list(m.indices), axis=m.axis).ravel())
    return np.concatenate(parts)


def test_coupled_projection_zeroes_whole_coupled_groups(tiny, tmp_path):
    _, data, _ = tiny
    split = training.split_model(_ImageResidual(nnx.Rngs(0)))
    settings = methods.Settings(layers=r"kernel$", epochs=1, retrain_epochs=0, group_axis="coupled")
    experiment = _quiet_experiment(split, data, settings, tmp_path)
    eta = 2.0
    result = experiment.projection("pgl21", eta)
    assert result.label.startswith("pgl21 coupled eta=2 ")
    params = result.params
    groups = experiment._coupled_groups()
    # Every removable group: the 8 units of the residual stream and the 6 of the block.
    assert len(groups) == 14
    rows = [_read_rows(params, group) for group in groups]
    norms = np.array([np.linalg.norm(r) for r in rows])
    assert norms.sum() <= eta * (1 + 1e-5)  # the l2,1 ball over the concatenated groups
    assert 0 < (norms == 0).sum() < len(groups)
    assert all(np.all(r == 0) or np.all(r != 0) for r in rows)  # whole groups, not entries


def test_non_overlapping_keeps_heads_over_head_dimensions():
    from sparsejax.nn import CoupledGroup, GroupMember

    params = {"out": {"kernel": np.zeros((4, 16, 64))}, "fc": {"kernel": np.zeros((64, 8))}}
    head = lambda h: CoupledGroup((GroupMember("out/kernel", 0, (h,), True),), True)
    depth = lambda d: CoupledGroup((GroupMember("out/kernel", 1, (d,), True),), True)
    unit = lambda u: CoupledGroup((GroupMember("fc/kernel", 1, (u,), True),), True)
    groups = [depth(0), head(0), unit(0), head(1), depth(1), unit(1)]
    assert methods.non_overlapping(groups, params) == [head(0), unit(0), head(1), unit(1)]
