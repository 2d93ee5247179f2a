"""Tests of sparsejax.metrics: MACCs of the papers' models, dead-unit propagation against a
graph-reachability reference, entropy against scipy, the compressed encoding by decoding it,
the report's groups, totals, baseline, JSON and table, and input validation."""

import itertools
import json
import math
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

import sparsejax
from sparsejax.nn import _memory as memory
from sparsejax.nn import _metrics as metrics


def _relu_mlp(widths, seed=0):
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [nnx.Linear(a, b, rngs=nnx.Rngs(seed + len(layers))), nnx.relu]
    return nnx.Sequential(*layers[:-1])


class Net4(nnx.Module):
    """Guyard & Barlaud's Net4, written here independently of experiments/."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 10, (5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(10, 20, (5, 5), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(320, 50, rngs=rngs)
        self.fc2 = nnx.Linear(50, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(nnx.max_pool(self.conv1(x), (2, 2), (2, 2)))
        x = nnx.relu(nnx.max_pool(self.conv2(x), (2, 2), (2, 2)))
        x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)


class LinenNet4(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.max_pool(nn.Conv(10, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
        x = nn.relu(nn.max_pool(nn.Conv(20, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
        x = nn.relu(nn.Dense(50)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


class Residual(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(6, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 6, rngs=rngs)
        self.out = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(x + self.fc2(nnx.relu(self.fc1(x))))


def _set(module, name, array):
    getattr(module, name).set_value(jnp.asarray(array, jnp.float32))


def _images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


# ---------------------------------------------------------------- dense MACCs of the papers


@pytest.fixture(scope="module")
def net4():
    return Net4(nnx.Rngs(0))


@pytest.fixture(scope="module")
def net4_report(net4):
    return metrics.model_report(net4, _images((2, 28, 28, 1)))


def test_dense_maccs_match_the_papers_published_figures(net4_report):
    net4 = net4_report
    assert net4.dense_maccs == 480_500  # Guyard & Barlaud (2020): Net4 480.5k
    assert [row.dense_maccs for row in net4.layers] == [144_000, 320_000, 16_000, 500]
    lenet = metrics.model_report(_relu_mlp((784, 300, 100, 10)), jnp.ones((2, 784)))
    assert lenet.dense_maccs == 266_200  # Guyard & Barlaud (2020): LeNet-300-100 266.2k
    assert lenet.params == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_linen_and_nnx_reports_agree_on_the_same_weights(net4):
    nnx_model = nnx.clone(net4)
    module = LinenNet4()
    names = {"Conv_0": "conv1", "Conv_1": "conv2", "Dense_0": "fc1", "Dense_1": "fc2"}
    params = {}
    for linen_name, nnx_name in names.items():
        kernel = np.array(getattr(nnx_model, nnx_name).kernel[...])
        kernel[..., ::3, :] = 0.0  # dead input groups
        _set(getattr(nnx_model, nnx_name), "kernel", kernel)
        bias = getattr(nnx_model, nnx_name).bias[...]
        params[linen_name] = {"kernel": jnp.asarray(kernel), "bias": bias}
    x = _images((3, 28, 28, 1))
    ours = metrics.model_report(nnx_model, x)
    theirs = metrics.model_report(module, x, {"params": params})
    assert module.apply({"params": params}, x).shape == (3, 10)
    assert ours.sequential and theirs.sequential
    for name in ("params", "zeros", "dense_maccs", "effective_maccs", "effective_params"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.effective_maccs < ours.dense_maccs


# ------------------------------------------------- effective MACCs: hand-built known answers


def test_hand_built_mlp_dead_rows_and_columns_give_known_effective_maccs():
    model = _relu_mlp((6, 5, 4, 3))
    first, second, last = model.layers[0], model.layers[2], model.layers[4]
    k0 = np.ones((6, 5))
    k0[2] = 0.0  # input feature 2 feeds nothing
    k0[:, 1] = 0.0  # unit 1 of layer 0 is the constant relu(b_1): folded into layer 1
    k1 = np.ones((5, 4))
    k1[3] = 0.0  # unit 3 of layer 0 is read by nobody
    k1[:, 0] = 0.0  # unit 0 of layer 1 is constant
    k1[:, 2] = 0.0
    k1[1, 2] = 1.0  # unit 2 of layer 1 reads only the constant unit 1: constant too
    _set(first, "kernel", k0)
    _set(second, "kernel", k1)
    _set(last, "kernel", np.ones((4, 3)))
    report = metrics.model_report(model, jnp.ones((2, 6)))
    # layer 0: inputs {0,1,3,4,5} -> units {0,2,4}; layer 1: {0,2,4} -> {1,3}; layer 2: {1,3}->3.
    assert [(row.live_inputs, row.live_outputs) for row in report.layers] == [
        (5, 3),
        (3, 2),
        (2, 3),
    ]
    assert report.dense_maccs == 6 * 5 + 5 * 4 + 4 * 3
    assert report.effective_maccs == 5 * 3 + 3 * 2 + 2 * 3
    assert report.effective_params == (5 * 3 + 3) + (3 * 2 + 2) + (2 * 3 + 3)
    # Stored zero groups, before propagation: row 2 / column 1; row 3 / column 0 (column 2
    # still holds the weight from the constant unit 1).
    assert [(row.zero_inputs, row.zero_outputs) for row in report.layers] == [
        (1, 1),
        (1, 1),
        (0, 0),
    ]


def test_hand_built_conv_flatten_dense_maps_channels_to_nhwc_positions():
    class ConvDense(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 3, (3, 3), padding="VALID", rngs=rngs)
            self.fc = nnx.Linear(27, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))

    model = ConvDense(nnx.Rngs(0))
    kernel = np.ones((3, 3, 2, 3))
    kernel[:, :, 0, :] = 0.0  # input channel 0 is dead
    fc = np.ones((27, 2))
    fc[1::3] = 0.0  # every position of channel 1 (channel is the fastest NHWC axis)
    fc[0] = 0.0  # one position of the live channel 0
    _set(model.conv, "kernel", kernel)
    _set(model.fc, "kernel", fc)
    conv_row, fc_row = metrics.model_report(model, _images((2, 5, 5, 2))).layers
    assert conv_row.dense_maccs == 3 * 3 * 2 * 3 * 3 * 3
    assert (conv_row.live_inputs, conv_row.live_outputs) == (1, 2)
    assert conv_row.effective_maccs == 3 * 3 * 1 * 2 * 3 * 3
    assert (fc_row.live_inputs, fc_row.live_outputs) == (17, 2)
    assert fc_row.effective_maccs == 17 * 2
    assert conv_row.zero_kernels == 3 and conv_row.zero_inputs == 1


def _reachability_reference(kernels):
    """Independent reference for a ReLU MLP: a unit survives iff it lies on a path of nonzero
    weights from an input feature to an output (every constant is foldable into a Dense bias).
    Returns the per-layer (live inputs, kept outputs) counts."""
    edges = [np.asarray(k) != 0 for k in kernels]
    forward = [np.ones(edges[0].shape[0], bool)]
    for edge in edges:
        forward.append((forward[-1].astype(int) @ edge.astype(int)) > 0)
    backward = [np.ones(edges[-1].shape[1], bool)]
    for edge in reversed(edges):
        backward.insert(0, (edge.astype(int) @ backward[0].astype(int)) > 0)
    alive = [f & b for f, b in zip(forward, backward)]
    alive[-1] = np.ones_like(alive[-1])
    return [(int(alive[k].sum()), int(alive[k + 1].sum())) for k in range(len(edges))]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_effective_units_match_a_reachability_reference_on_random_sparse_mlps(seed):
    rng = np.random.default_rng(seed)
    widths = (12, 10, 9, 8, 4)
    model = _relu_mlp(widths, seed)
    kernels = []
    for index, (a, b) in enumerate(itertools.pairwise(widths)):
        kernel = rng.standard_normal((a, b)) * (rng.random((a, b)) < 0.25)
        kernel[rng.random(a) < 0.2] = 0.0
        kernels.append(kernel)
        _set(model.layers[2 * index], "kernel", kernel)
    report = metrics.model_report(model, jnp.asarray(rng.standard_normal((4, 12)), jnp.float32))
    expected = _reachability_reference(kernels)
    assert [(row.live_inputs, row.live_outputs) for row in report.layers] == expected
    assert report.effective_maccs == sum(i * o for i, o in expected)


def test_constant_channel_before_same_padded_conv_is_kept_unless_zero():
    def build(bias):
        model = nnx.Sequential(
            nnx.Conv(1, 2, (3, 3), padding="VALID", rngs=nnx.Rngs(0)),
            nnx.relu,
            nnx.Conv(2, 2, (3, 3), padding="SAME", rngs=nnx.Rngs(1)),
        )
        kernel = np.ones((3, 3, 1, 2))
        kernel[..., 1] = 0.0
        _set(model.layers[0], "kernel", kernel)
        _set(model.layers[0], "bias", [0.0, bias])
        return metrics.model_report(model, _images((2, 7, 7, 1)))

    # relu(0.5) = 0.5 padded with zeros is not constant at the borders: the channel stays.
    assert build(0.5).layers[0].live_outputs == 2
    # relu(-0.5) = 0 contributes nothing anywhere: the channel goes.
    assert build(-0.5).layers[0].live_outputs == 1


class OpaqueResidual(Residual):
    """The same residual network with an operation the coupled analysis does not read."""

    def __call__(self, x):
        return self.out(x + jnp.fft.ifft(jnp.fft.fft(self.fc2(nnx.relu(self.fc1(x))))).real)


def test_residual_network_falls_back_to_per_layer_counts():
    # Only when its coupled groups cannot be analysed (here: an fft); see test_coupled_surgery.
    model = OpaqueResidual(nnx.Rngs(0))
    kernel = np.ones((6, 6))
    kernel[[0, 1]] = 0.0
    kernel[:, 5] = 0.0
    _set(model.fc2, "kernel", kernel)
    report = metrics.model_report(model, jnp.ones((2, 6)))
    assert not report.sequential
    assert "not sequential" in report.note and "input of out" in report.note
    assert "'fft'" in report.note
    fc2 = report.layers[1]
    # Guyard & Barlaud's (in - zero_in)*(out - zero_out)
    assert fc2.effective_maccs == (6 - 2) * (6 - 1)
    assert report.layers[0].effective_maccs == 36
    # Readable, the same network counts its coupled groups: fc1's units 0, 1 are read by no
    # one; the stream (added to the input x) is fixed by the data, so fc2 keeps its 6 outputs.
    plain = Residual(nnx.Rngs(0))
    _set(plain.fc2, "kernel", kernel)
    report = metrics.model_report(plain, jnp.ones((2, 6)))
    assert [row.effective_maccs for row in report.layers] == [6 * 4, 4 * 6, 6 * 2]


# ------------------------------------------------------------------ entropy and compression


def test_entropy_is_zero_for_a_constant_layer_and_log2_k_for_k_equiprobable_values():
    assert metrics.entropy_bits(np.full((7, 5), 0.25)) == 0.0
    for k in (2, 3, 8, 1000):
        values = np.repeat(np.arange(k, dtype=np.float32) / 1024.0, 3)
        assert metrics.entropy_bits(values) == pytest.approx(math.log2(k), abs=1e-9)


def test_entropy_matches_scipy_on_float16_symbols_and_ignores_the_sign_of_zero():
    rng = np.random.default_rng(0)
    weights = rng.laplace(size=5000).astype(np.float32) * (rng.random(5000) < 0.3)
    halves = weights.astype(np.float16)
    _, counts = np.unique(halves.view(np.uint16), return_counts=True)
    minus_zeros = np.where(weights == 0, -0.0, weights)
    expected = scipy.stats.entropy(np.unique(halves + np.float16(0), return_counts=True)[1], base=2)
    assert metrics.entropy_bits(minus_zeros) == pytest.approx(expected, rel=1e-12)
    assert metrics.entropy_bits(weights) == pytest.approx(expected, rel=1e-12)
    assert len(counts) > 1


def test_compressed_encoding_decodes_back_to_the_float16_weights():
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal((40, 30)) * (rng.random((40, 30)) < 0.2)).astype(np.float32)
    payload = zlib.decompress(memory._encode(weights))
    assert metrics.compressed_bytes(weights) == len(memory._encode(weights))
    mask_bytes = (weights.size + 7) // 8
    support = np.unpackbits(np.frombuffer(payload[:mask_bytes], np.uint8))[: weights.size]
    planes = np.frombuffer(payload[mask_bytes:], np.uint8).reshape(2, -1)
    values = (planes[0].astype(np.uint16) << 8 | planes[1]).view(np.float16)
    decoded = np.zeros(weights.size, np.float16)
    decoded[support.astype(bool)] = values
    np.testing.assert_array_equal(decoded.reshape(weights.shape), weights.astype(np.float16))


def test_sparsity_counts_exact_zeros_over_the_pytree():
    rng = np.random.default_rng(2)
    tree = {"a": rng.standard_normal((5, 4)) * (rng.random((5, 4)) < 0.5), "b": np.zeros(7)}
    expected = (np.sum(tree["a"] == 0) + 7) / 27
    assert float(jax.jit(metrics.sparsity)(tree)) == pytest.approx(expected)


# ------------------------------------------------------------- report fields and formatting


def test_report_rows_count_zeros_groups_and_memory_of_the_layer_params():
    model = _relu_mlp((8, 6, 3))
    kernel = np.arange(48, dtype=np.float32).reshape(8, 6) + 1
    kernel[[1, 5]] = 0.0
    _set(model.layers[0], "kernel", kernel)
    _set(model.layers[0], "bias", np.zeros(6))
    row = metrics.model_report(model, jnp.ones((2, 8))).layers[0]
    assert (row.params, row.zeros) == (54, 12 + 6)
    assert row.sparsity == pytest.approx(18 / 54)
    assert row.float32_bytes == 4 * 54
    # 18 zeros and 36 distinct values: H = -(18/54) log2(18/54) - 36 (1/54) log2(1/54).
    entropy = -(18 / 54) * math.log2(18 / 54) + (36 / 54) * math.log2(54)
    assert row.entropy_bytes == pytest.approx(entropy * 54 / 8)
    assert row.zero_kernels is None and row.zero_inputs == 2


def test_baseline_normalisation_json_and_table(net4, net4_report):
    dense = net4_report
    model = nnx.clone(net4)
    kernel = np.array(model.fc1.kernel[...])
    kernel[:200] = 0.0
    _set(model.fc1, "kernel", kernel)
    sparse = metrics.model_report(model, _images((2, 28, 28, 1)), baseline=dense)
    relative = sparse.relative
    assert relative["dense_maccs"] == 1.0
    assert relative["effective_maccs"] == pytest.approx(sparse.effective_maccs / 480_500)
    assert relative["entropy_bytes"] < 1.0
    assert dense.relative is None and dense.with_baseline(dense).relative["params"] == 1.0
    decoded = json.loads(sparse.to_json())
    assert decoded["totals"]["effective_maccs"] == sparse.effective_maccs
    assert decoded["relative_to_baseline"]["effective_maccs"] == relative["effective_maccs"]
    assert [row["name"] for row in decoded["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    table = str(sparse)
    assert "fc1" in table and "vs baseline" in table and "480.5k" in table


# ------------------------------------------------------------------------------- validation


def test_bad_inputs_raise_value_errors_naming_the_argument():
    model = _relu_mlp((4, 3, 2))
    with pytest.raises(ValueError, match="variables"):
        metrics.model_report(model, jnp.ones((1, 4)), {"params": {}})
    with pytest.raises(ValueError, match="variables"):
        metrics.model_report(LinenNet4(), jnp.ones((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="example_input"):
        metrics.model_report(model, 3.0)
    with pytest.raises(ValueError, match="baseline"):
        metrics.model_report(model, jnp.ones((1, 4)), baseline={"params": 1})
    with pytest.raises(ValueError, match="no Dense/Conv"):
        metrics.model_report(nnx.Sequential(nnx.relu), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="model"):
        metrics.model_report(42, jnp.ones((1, 4)), {"params": {}})
    with pytest.raises(ValueError, match=r"example_input must hold at least one.*\(0, 4\)"):
        metrics.model_report(model, jnp.ones((0, 4)))
    with pytest.raises(ValueError, match=r"example_input of shape \(2, 7\)"):
        metrics.model_report(model, jnp.ones((2, 7)))


def test_public_names_are_exported():
    assert sparsejax.model_report is metrics.model_report
    assert sparsejax.effective_maccs(_relu_mlp((4, 3, 2)), jnp.ones((1, 4))) == 18
