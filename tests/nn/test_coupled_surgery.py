"""Dead coupled groups, the report and surgery on non-chain models (residual, concatenation).

Every expected figure is a hand count written in the test; the expected biases after constant
folding are computed here with NumPy from the original weights; the reference outputs are the
original model's.
"""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsejax
from sparsejax.nn import dead_groups, model_report, remove_dead_units
from tests._models import Concat, ConvResidual, Residual


def _set(module, name, array):
    getattr(module, name).set_value(jnp.asarray(array, jnp.float32))


def _zero(module, name, index):
    array = np.array(getattr(module, name)[...])
    array[index] = 0.0
    _set(module, name, array)


def _verdict(verdicts, path, axis, index):
    """The verdict of the group holding unit ``index`` of axis ``axis`` of ``path``."""
    (found,) = [
        v
        for v in verdicts
        if any(m.path == path and m.axis == axis and index in m.indices for m in v.group.members)
    ]
    return found


def _params(model):
    return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def _assert_same_outputs(small, model, *inputs):
    small, model = nnx.clone(small), nnx.clone(model)
    small.eval()
    model.eval()
    for x in inputs:
        np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


# ------------------------------------------------------------------ a dense residual network


@pytest.fixture
def residual():
    """Residual: stream s (width 4, written by a and b2, read by b and c), inner units u (5)."""
    model = Residual(nnx.Rngs(0))
    _zero(model.a, "kernel", (slice(None), 0))  # s0: a no longer writes it, b2 still does
    _zero(model.a, "kernel", (slice(None), 1))  # s1: no layer writes it -> a constant
    _zero(model.b2, "kernel", (slice(None), 1))
    _zero(model.b, "kernel", (2, slice(None)))  # s2: no layer reads it
    _zero(model.c, "kernel", (2, slice(None)))
    _zero(model.b, "kernel", (slice(None), 3))  # u3: constant relu(b.bias[3])
    # u4 is read only towards s2 (and s1, whose column is zero): unread once s2 goes
    _zero(model.b2, "kernel", (4, [0, 3]))
    return model


def test_dead_groups_of_a_residual_stream_and_its_block(residual):
    verdicts = dead_groups(residual, jnp.ones((4, 3)))
    stream = [_verdict(verdicts, "a/kernel", 1, i).reason for i in range(4)]
    inner = [_verdict(verdicts, "b/kernel", 1, j).reason for j in range(5)]
    assert stream == ["live", "constant", "unread", "live"]
    assert inner == ["live", "live", "live", "constant", "unread"]
    assert len(verdicts) == 4 + 5 and all(v.group.removable for v in verdicts)
    assert [v.dead for v in verdicts] == [v.reason in ("unread", "constant") for v in verdicts]


def test_report_counts_the_residual_network_that_surgery_leaves(residual):
    report = model_report(residual, jax.random.normal(jax.random.key(0), (8, 3)))
    # Kept: stream units {0, 3}, inner units {0, 1, 2}.
    # a: 3 -> 2, b: 2 -> 3, b2: 3 -> 2, c: 2 -> 2
    assert [row.effective_maccs for row in report.layers] == [3 * 2, 2 * 3, 3 * 2, 2 * 2]
    assert report.effective_maccs == 22 and report.dense_maccs == 12 + 20 + 20 + 8
    assert report.effective_params == (3 * 2 + 2) + (2 * 3 + 3) + (3 * 2 + 2) + (2 * 2 + 2)
    assert [(row.live_inputs, row.live_outputs) for row in report.layers] == [
        (3, 2),
        (2, 3),
        (3, 2),
        (2, 2),
    ]
    assert not report.sequential and "2 unread, 2 constant" in report.note


def test_surgery_cuts_the_residual_network_and_folds_its_constants(residual):
    x = jax.random.normal(jax.random.key(0), (8, 3))
    small = remove_dead_units(residual, x)
    shapes = {n: tuple(getattr(small, n).kernel.shape) for n in "a b b2 c".split()}
    assert shapes == {"a": (3, 2), "b": (2, 3), "b2": (3, 2), "c": (2, 2)}
    assert (small.b.in_features, small.b.out_features) == (2, 3)
    assert _params(residual) - _params(small) == 75 - 31
    # The constants, by hand: s1 is a.bias[1] at b's input and a.bias[1] + b2.bias[1] at c's;
    # u3 is relu(b.bias[3]) at b2's input.
    w = {n: np.asarray(getattr(residual, n).kernel[...], np.float64) for n in "a b b2 c".split()}
    bias = {n: np.asarray(getattr(residual, n).bias[...], np.float64) for n in "a b b2 c".split()}
    expected_b = (bias["b"] + bias["a"][1] * w["b"][1])[[0, 1, 2]]
    expected_b2 = (bias["b2"] + max(bias["b"][3], 0.0) * w["b2"][3])[[0, 3]]
    expected_c = bias["c"] + (bias["a"][1] + bias["b2"][1]) * w["c"][1]
    np.testing.assert_allclose(small.b.bias[...], expected_b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(small.b2.bias[...], expected_b2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(small.c.bias[...], expected_c, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(small.c.kernel[...], w["c"][np.ix_([0, 3], [0, 1])])
    # The same outputs on the example and on other inputs (the constants are structural).
    _assert_same_outputs(small, residual, x, 3.0 * jax.random.normal(jax.random.key(1), (5, 3)))
    assert small.a.kernel.dtype == jnp.float32
    # The smaller network is reported dense at the original's effective figures.
    small_report = model_report(small, x)
    assert small_report.dense_maccs == 22 and small_report.params == 31
    assert model_report(small, x).effective_maccs == 22  # nothing left to remove


def test_the_smaller_model_runs_jitted_without_recompiling(residual):
    x = jax.random.normal(jax.random.key(0), (8, 3))
    small = remove_dead_units(residual, x)
    traces = []

    @nnx.jit
    def forward(model, x):
        traces.append(1)
        return model(x)

    forward(small, x)
    forward(small, x + 1.0)
    assert len(traces) == 1


# ------------------------------------------------------- a conv residual block with BatchNorm


@pytest.fixture
def conv_residual():
    """ConvResidual: stream channels (4: stem, c2 write; c1, fc read), block channels (6)."""
    model = ConvResidual(nnx.Rngs(0))
    model.eval()
    _zero(model.c1, "kernel", (..., 1, slice(None)))  # stream channel 1: nobody reads it
    _zero(model.fc, "kernel", (1, slice(None)))
    _zero(model.c2, "kernel", (..., 2, slice(None)))  # block channel 2: nobody reads it
    # Stream channel 3: nobody writes it, and both writers' constants are negative, so after
    # BatchNorm (running mean 0, variance 1) and relu the channel is 0 everywhere: folded even
    # into the SAME-padded c1.
    for conv in (model.stem, model.c2):
        _zero(conv, "kernel", (..., 3))
        bias = np.array(conv.bias[...])
        bias[3] = -1.0
        _set(conv, "bias", bias)
    # Block channel 4: nobody writes it, its constant relu(bn1(1)) > 0 cannot go through the
    # zero padding of c2: kept.
    _zero(model.c1, "kernel", (..., 4))
    bias = np.array(model.c1.bias[...])
    bias[4] = 1.0
    _set(model.c1, "bias", bias)
    return model


def test_conv_residual_dead_groups(conv_residual):
    verdicts = dead_groups(conv_residual, jnp.ones((2, 6, 6, 1)))
    stream = [_verdict(verdicts, "stem/kernel", 3, i).reason for i in range(4)]
    assert stream == ["live", "unread", "live", "constant"]
    block = [_verdict(verdicts, "c1/kernel", 3, j) for j in range(6)]
    assert [v.dead for v in block] == [False, False, True, False, False, False]
    assert block[2].reason == "unread"
    assert block[4].reason.startswith("kept:") and "folded into c2" in block[4].reason
    # the group of a stream channel holds both BatchNorms' statistics
    members = {(m.path, m.axis) for m in _verdict(verdicts, "stem/kernel", 3, 1).group.members}
    assert {("bn0/mean", 0), ("bn0/var", 0), ("bn2/scale", 0), ("bn2/bias", 0)} <= members


def test_conv_residual_report_and_surgery(conv_residual):
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 1))
    report = model_report(conv_residual, x)
    # Kept: stream channels {0, 2}, block channels {0, 1, 3, 4, 5}; 6 x 6 positions (SAME).
    stem, c1, c2, fc = 9 * 1 * 2 * 36, 9 * 2 * 5 * 36, 9 * 5 * 2 * 36, 2 * 3
    assert [row.effective_maccs for row in report.layers] == [stem, c1, c2, fc, 0]
    assert report.layers[-1].kind == "other"  # the BatchNorms' scale and bias
    assert report.effective_maccs == stem + c1 + c2 + fc
    batchnorm = (2 + 2) + (5 + 5) + (2 + 2)  # scale and bias of bn0, bn1, bn2
    kept = (9 * 2 + 2) + (9 * 2 * 5 + 5) + (9 * 5 * 2 + 2) + (2 * 3 + 3) + batchnorm
    assert report.effective_params == kept
    small = remove_dead_units(conv_residual, x)
    assert _params(small) == kept
    assert small.c1.kernel.shape == (3, 3, 2, 5) and small.c2.kernel.shape == (3, 3, 5, 2)
    assert (small.c1.in_features, small.c1.out_features) == (2, 5)
    assert small.bn1.mean.shape == (5,) and small.bn1.num_features == 5
    assert small.bn2.var.shape == (2,) and small.fc.kernel.shape == (2, 3)
    np.testing.assert_array_equal(
        small.bn1.mean[...], np.asarray(conv_residual.bn1.mean[...])[[0, 1, 3, 4, 5]]
    )
    _assert_same_outputs(
        small, conv_residual, x, jax.random.normal(jax.random.key(3), (3, 6, 6, 1))
    )
    small.train()  # the smaller model still trains (BatchNorm in training mode)
    grads = nnx.grad(lambda m: (m(x) ** 2).mean())(small)
    assert grads["c2"]["kernel"].shape == (3, 3, 5, 2)


# ---------------------------------------------------------------------------- concatenation


def test_concatenation_report_and_surgery():
    model = Concat(nnx.Rngs(0))
    _zero(model.a, "kernel", (slice(None), 0))  # relu(a.bias[0]): a constant, folded into c
    _zero(model.c, "kernel", (3, slice(None)))  # b's unit 1 (row 2 + 1 of c) is read by nobody
    x = jax.random.normal(jax.random.key(0), (6, 3))
    verdicts = dead_groups(model, x)
    assert _verdict(verdicts, "a/kernel", 1, 0).reason == "constant"
    assert _verdict(verdicts, "b/kernel", 1, 1).reason == "unread"
    assert sum(v.dead for v in verdicts) == 2
    report = model_report(model, x)
    assert [row.effective_maccs for row in report.layers] == [3 * 1, 3 * 2, 3 * 1]
    small = remove_dead_units(model, x)
    c = np.asarray(model.c.kernel[...], np.float64)
    np.testing.assert_array_equal(small.c.kernel[...], c[[1, 2, 4]])
    relu_bias = max(float(model.a.bias[0]), 0.0)
    np.testing.assert_allclose(small.c.bias[...], model.c.bias[...] + relu_bias * c[0], rtol=1e-6)
    assert small.a.kernel.shape == (3, 1) and small.b.kernel.shape == (3, 2)
    assert _params(model) - _params(small) == (3 + 1) + (3 + 1) + 2
    _assert_same_outputs(small, model, x)


# -------------------------------------------------- an MLP block on a LayerNorm'ed stream


class MlpBlock(nnx.Module):
    """A transformer MLP block: ``h + fc2(gelu(fc1(norm(h))))`` on the stream ``h``."""

    def __init__(self, rngs):
        self.embed = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.fc1 = nnx.Linear(4, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        return self.head(h + self.fc2(jax.nn.gelu(self.fc1(self.norm(h)))))


def test_mlp_block_hidden_units_go_and_a_layernormed_stream_unit_stays():
    model = MlpBlock(nnx.Rngs(0))
    _zero(model.fc2, "kernel", (2, slice(None)))  # hidden unit 2: read by nobody
    _zero(model.fc1, "kernel", (slice(None), 5))  # hidden unit 5: gelu(fc1.bias[5])
    _zero(model.fc1, "kernel", (1, slice(None)))  # stream unit 1: read by nobody, but the
    _zero(model.head, "kernel", (1, slice(None)))  # LayerNorm's mean and variance include it
    x = jax.random.normal(jax.random.key(0), (5, 3))
    verdicts = dead_groups(model, x)
    hidden = [_verdict(verdicts, "fc1/kernel", 1, j).reason for j in range(6)]
    assert hidden == ["live", "live", "unread", "live", "live", "constant"]
    stream = _verdict(verdicts, "embed/kernel", 1, 1)
    assert not stream.dead and stream.reason.startswith("kept:")
    assert "reduce_sum over a unit axis" in stream.reason and "LayerNorm" in stream.reason
    report = model_report(model, x)
    # embed 3 -> 4, fc1 4 -> 4, fc2 4 -> 4, head 4 -> 2; the LayerNorm (8 params) stays
    assert [row.effective_maccs for row in report.layers] == [12, 16, 16, 8, 0]
    assert report.layers[-1].effective_params == 8
    assert report.effective_params == 16 + (16 + 4) + (16 + 4) + 10 + 8
    assert "1 zero groups kept" in report.note and "reduce_sum" in report.note
    small = remove_dead_units(model, x)
    assert small.fc1.kernel.shape == (4, 4) and small.fc2.kernel.shape == (4, 4)
    assert small.head.kernel.shape == (4, 2) and small.norm.scale.shape == (4,)
    expected = np.asarray(model.fc2.bias[...]) + np.asarray(
        jax.nn.gelu(model.fc1.bias[5])
    ) * np.asarray(model.fc2.kernel[5])
    np.testing.assert_allclose(small.fc2.bias[...], expected, rtol=1e-6, atol=1e-7)
    _assert_same_outputs(small, model, x, jax.random.normal(jax.random.key(1), (7, 3)))


# ----------------------------------------------- parameter-free consumptions keep a group


def test_softmax_over_features_and_attention_products_keep_zero_units():
    class Softmax(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 4, rngs=rngs)
            self.b = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.b(jax.nn.softmax(self.a(x), axis=-1))

    model = Softmax(nnx.Rngs(0))
    _zero(model.b, "kernel", (0, slice(None)))  # unread, but the softmax sums over it
    verdict = _verdict(dead_groups(model, jnp.ones((2, 3))), "a/kernel", 1, 0)
    assert not verdict.dead and "reduce_max over a unit axis" in verdict.reason

    class Attention(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(3, 8, rngs=rngs)
            self.mha = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
            self.out = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(self.mha(self.inp(x)))

    model = Attention(nnx.Rngs(0))
    for name in ("query", "key"):  # depth 0 of q and k (in every head, one unit): all zero
        _zero(getattr(model.mha, name), "kernel", (slice(None), slice(None), 0))
        _zero(getattr(model.mha, name), "bias", (slice(None), 0))
    verdict = _verdict(dead_groups(model, jnp.ones((1, 5, 3))), "mha/query/kernel", 2, 0)
    assert not verdict.dead and "dot_general contracting two activations" in verdict.reason


# ------------------------------------------------------------------------------- refusals


class DepthwiseResidual(nnx.Module):
    def __init__(self, rngs, mask=None):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.dw = nnx.Conv(4, 4, (3, 3), feature_group_count=4, mask=mask, rngs=rngs)
        self.fc = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.stem(x)
        return self.fc((h + jax.nn.relu(self.dw(h))).mean(axis=(1, 2)))


class LinenMaskedResidual(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = linen.Conv(4, (3, 3), name="stem")(x)
        mask = jnp.ones((3, 3, 4, 4)).at[0, 0].set(0)
        h = h + jax.nn.relu(linen.Conv(4, (3, 3), mask=mask, name="masked")(h))
        return linen.Dense(2, name="fc")(h.mean(axis=(1, 2)))


def test_models_that_cannot_be_cut_are_refused_naming_the_operation():
    x = jnp.ones((1, 5, 5, 1))
    linen_model = LinenMaskedResidual()
    variables = linen_model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"cannot be cut.*masked is a masked convolution"):
        remove_dead_units(linen_model, x, variables)
    with pytest.raises(ValueError, match="masked convolution"):
        dead_groups(linen_model, x, variables)
    report = model_report(linen_model, x, variables)  # per-layer counts, and it says why
    assert "not sequential" in report.note and "masked convolution" in report.note

    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            return self.a(x + self.a(x))

    with pytest.raises(ValueError, match="called more than once"):
        remove_dead_units(Shared(nnx.Rngs(0)), jnp.ones((2, 3)))


# ---------------------------------------------------------------------------- masked conv


class MaskedBlock(nnx.Module):
    """A residual block whose first conv is masked (``nnx.Conv(mask=...)``)."""

    def __init__(self, rngs, mask):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.a = nnx.Conv(4, 6, (3, 3), mask=mask, rngs=rngs)
        self.b = nnx.Conv(6, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.stem(x)
        return self.fc((h + self.b(jax.nn.relu(self.a(h)))).mean(axis=(1, 2)))


def test_masked_conv_is_cut_with_its_mask():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    mask = np.ones((3, 3, 4, 6), np.float32)
    mask[1, 1] = 0.0  # the centre tap of every channel pair
    mask[..., 4] = 0.0  # output 4 reads nothing but its bias
    model = MaskedBlock(nnx.Rngs(0), jnp.asarray(mask))
    model.b.kernel[:, :, 2, :] = 0.0  # a's output 2: read by no one
    report = model_report(model, x)
    positions = 6 * 6  # SAME padding
    stem, fc = 9 * 1 * 4 * positions, 4 * 2
    # Every kernel weight counts, masked or not (the dense conv runs); a's output 2 goes.
    assert report.dense_maccs == stem + 2 * 9 * 4 * 6 * positions + fc
    assert report.effective_maccs == stem + 2 * 9 * 4 * 5 * positions + fc
    assert "a is a masked convolution" in report.note
    small = remove_dead_units(model, x)
    kept = np.array([0, 1, 3, 4, 5])
    assert small.a.kernel.shape == (3, 3, 4, 5) and small.b.kernel.shape == (3, 3, 5, 4)
    np.testing.assert_array_equal(small.a.mask, mask[..., kept])
    np.testing.assert_array_equal(small.a.kernel[...], model.a.kernel[...][..., kept])
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)
    assert model_report(small, x).effective_maccs == report.effective_maccs


def test_masked_depthwise_conv_loses_whole_conv_groups_and_their_mask():
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 1))
    mask = np.ones((3, 3, 1, 4), np.float32)
    mask[0, 0] = 0.0
    model = DepthwiseResidual(nnx.Rngs(0), mask=jnp.asarray(mask))
    model.fc.kernel[...] = model.fc.kernel[...].at[2].set(0.0)  # residual channel 2: unread
    small = remove_dead_units(model, x)
    assert small.dw.feature_group_count == 3 and small.dw.mask.shape == (3, 3, 1, 3)
    np.testing.assert_array_equal(small.dw.mask, mask[..., [0, 1, 3]])
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)


# ------------------------------------------------------------------ grouped / depthwise conv


def test_depthwise_residual_channel_is_cut_in_every_layer():
    # The residual add ties stem channel c, depthwise channel c and fc input c: one group.
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 1))
    model = DepthwiseResidual(nnx.Rngs(0))
    model.fc.kernel[...] = model.fc.kernel[...].at[2].set(0.0)
    verdicts = dead_groups(model, x)
    assert [v.reason for v in verdicts if v.dead] == ["unread"]
    report = model_report(model, x)
    rows = {layer.name: layer for layer in report.layers}
    positions = 5 * 5  # SAME padding
    assert rows["stem"].effective_maccs == 9 * 1 * 3 * positions
    assert rows["dw"].dense_maccs == 9 * 1 * 4 * positions  # kh*kw*(Cin/groups)*Cout*H*W
    assert rows["dw"].effective_maccs == 9 * 1 * 3 * positions
    assert rows["fc"].effective_maccs == 3 * 2
    small = remove_dead_units(model, x)
    assert small.dw.feature_group_count == 3 and small.dw.in_features == 3
    assert small.stem.kernel.shape == (3, 3, 1, 3) and small.dw.kernel.shape == (3, 3, 1, 3)
    assert small.fc.kernel.shape == (3, 2)
    kept = np.array([0, 1, 3])
    np.testing.assert_array_equal(small.dw.kernel[...], model.dw.kernel[...][..., kept])
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)
    assert model_report(small, x).effective_maccs == report.effective_maccs


def test_depthwise_channel_with_no_writer_is_a_folded_constant():
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 1))
    model = DepthwiseResidual(nnx.Rngs(0))
    model.stem.kernel[...] = model.stem.kernel[...].at[..., 1].set(0.0)
    model.dw.kernel[...] = model.dw.kernel[...].at[..., 1].set(0.0)
    model.dw.bias[...] = model.dw.bias[...].at[1].set(0.3)  # a nonzero constant to fold
    assert [v.reason for v in dead_groups(model, x) if v.dead] == ["constant"]
    small = remove_dead_units(model, x)
    assert small.dw.feature_group_count == 3
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)


class GroupedConvNet(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.b = nnx.Conv(4, 6, (3, 3), feature_group_count=2, rngs=rngs)  # 2 in, 3 out a group
        self.c = nnx.Conv(6, 2, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.b(jax.nn.relu(self.a(x))))
        return self.fc(jax.nn.relu(self.c(h)).mean(axis=(1, 2)))


class LinenGroupedConvNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = jax.nn.relu(linen.Conv(4, (3, 3), name="a")(x))
        h = jax.nn.relu(linen.Conv(6, (3, 3), feature_group_count=2, name="b")(h))
        h = jax.nn.relu(linen.Conv(2, (1, 1), name="c")(h))
        return linen.Dense(2, name="fc")(h.mean(axis=(1, 2)))


def test_a_group_of_a_grouped_conv_goes_whole():
    # Conv group 1 of b joins a's channels 2-3 and b's channels 3-5: one coupled group.
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 1))
    model = GroupedConvNet(nnx.Rngs(0))
    groups = sparsejax.coupled_groups(model, x)
    spans = {
        (m.path, m.indices) for g in groups for m in g.members if m.path in ("a/kernel", "b/kernel")
    }
    assert ("a/kernel", (2, 3)) in spans and ("b/kernel", (3, 4, 5)) in spans
    model.c.kernel[...] = model.c.kernel[...].at[:, :, 3:].set(0.0)
    report = model_report(model, x)
    rows = {layer.name: layer.effective_maccs for layer in report.layers}
    positions = 6 * 6
    assert rows == {
        "a": 9 * 1 * 2 * positions,
        "b": 9 * 2 * 3 * positions,
        "c": 1 * 3 * 2 * positions,
        "fc": 2 * 2,
    }
    small = remove_dead_units(model, x)
    assert small.b.feature_group_count == 1 and small.b.kernel.shape == (3, 3, 2, 3)
    assert small.a.kernel.shape == (3, 3, 1, 2) and small.c.kernel.shape == (1, 1, 3, 2)
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)

    linen_model = LinenGroupedConvNet()
    variables = linen_model.init(jax.random.key(0), x)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["c"]["kernel"] = params["c"]["kernel"].copy()
    params["c"]["kernel"][:, :, 3:] = 0.0
    variables = {"params": params}
    small = remove_dead_units(linen_model, x, variables)
    assert small.variables["params"]["b"]["kernel"].shape == (3, 3, 2, 3)
    np.testing.assert_allclose(small(x), linen_model.apply(variables, x), atol=1e-5)


# ----------------------------------------------------------------------------------- Linen


class LinenResidual(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = linen.Dense(4, name="a")(x)
        u = jax.nn.relu(linen.Dense(5, name="b")(h))
        return linen.Dense(2, name="c")(h + linen.Dense(4, name="b2")(u))


def test_linen_residual_surgery_matches_the_nnx_one(residual):
    model = LinenResidual()
    params = {
        n: {"kernel": getattr(residual, n).kernel[...], "bias": getattr(residual, n).bias[...]}
        for n in "a b b2 c".split()
    }
    variables = {"params": params}
    x = jax.random.normal(jax.random.key(0), (8, 3))
    assert model_report(model, x, variables).effective_maccs == 22
    small = remove_dead_units(model, x, variables)
    assert isinstance(small, sparsejax.ShrunkenLinenModel)
    shapes = {n: small.variables["params"][n]["kernel"].shape for n in "a b b2 c".split()}
    assert shapes == {"a": (3, 2), "b": (2, 3), "b2": (3, 2), "c": (2, 2)}
    x2 = jax.random.normal(jax.random.key(1), (4, 3))
    np.testing.assert_allclose(small(x2), model.apply(variables, x2), atol=1e-5)
    np.testing.assert_allclose(small(x2), residual(x2), atol=1e-5)


# ------------------------------------------------------------------------ attention heads


class Transformer(nnx.Module):
    """A pre-norm transformer block on 5 tokens: attention (2 heads of depth 4), then an MLP."""

    def __init__(self, rngs):
        self.embed = nnx.Linear(3, 8, rngs=rngs)
        self.ln1, self.ln2 = nnx.LayerNorm(8, rngs=rngs), nnx.LayerNorm(8, rngs=rngs)
        self.mha = nnx.MultiHeadAttention(2, 8, qkv_features=8, decode=False, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 8, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        h = h + self.mha(self.ln1(h))
        h = h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))
        return self.head(h.mean(axis=1))


def test_attention_head_with_zero_output_is_cut_and_counted():
    model = Transformer(nnx.Rngs(0))
    _zero(model.mha.out, "kernel", (1, ...))  # head 1's output rows: the head is read by nobody
    _zero(model.fc2, "kernel", (slice(0, 4), slice(None)))  # MLP hidden units 0-3: unread
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    verdicts = dead_groups(model, x)
    heads = [_verdict(verdicts, "mha/query/kernel", 1, h) for h in range(2)]
    assert [v.reason for v in heads] == ["live", "unread"]
    assert {(m.path, m.axis) for m in heads[1].group.members} == {
        *((f"mha/{n}/kernel", 1) for n in ("query", "key", "value")),
        *((f"mha/{n}/bias", 0) for n in ("query", "key", "value")),
        ("mha/out/kernel", 0),
    }
    report = model_report(model, x)
    rows = {row.name: row for row in report.layers}
    # MACCs per example, S = 5 tokens, C = 8, H heads of depth D = 4, F = 8 outputs:
    # q, k, v: 3 * S * C * H * D; q.k^T and weights.v: 2 * H * D * S * S; out: S * H * D * F
    dense_mha = 3 * 5 * 8 * 2 * 4 + 2 * 2 * 4 * 5 * 5 + 5 * 2 * 4 * 8
    cut_mha = 3 * 5 * 8 * 1 * 4 + 2 * 1 * 4 * 5 * 5 + 5 * 1 * 4 * 8
    assert (rows["mha"].dense_maccs, rows["mha"].effective_maccs) == (dense_mha, cut_mha)
    assert rows["mha"].kind == "attention" and rows["mha"].params == 4 * (8 * 8 + 8)
    assert (rows["fc1"].effective_maccs, rows["fc2"].effective_maccs) == (5 * 8 * 12, 5 * 12 * 8)
    assert report.effective_maccs == 5 * 3 * 8 + cut_mha + 2 * 5 * 8 * 12 + 8 * 2
    assert report.dense_maccs == 5 * 3 * 8 + dense_mha + 2 * 5 * 8 * 16 + 8 * 2
    small = remove_dead_units(model, x)
    assert (small.mha.num_heads, small.mha.head_dim, small.mha.qkv_features) == (1, 4, 4)
    assert small.mha.query.kernel.shape == (8, 1, 4) and small.mha.out.kernel.shape == (1, 4, 8)
    np.testing.assert_array_equal(small.mha.value.kernel[...], model.mha.value.kernel[:, :1])
    removed = 3 * (8 * 4 + 4) + 4 * 8 + (8 * 4 + 4) + 4 * 8  # head 1; hidden units 0-3
    assert _params(model) - _params(small) == removed
    assert report.effective_params == _params(small)
    _assert_same_outputs(small, model, x, jax.random.normal(jax.random.key(1), (3, 5, 3)))
    assert model_report(small, x).dense_maccs == report.effective_maccs


class DropoutResidual(nnx.Module):
    def __init__(self, rngs):
        self.a, self.b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.c = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.a(x)
        return self.c(h + self.drop(jax.nn.relu(self.b(h))))


def test_a_model_holding_prng_keys_is_cut_and_keeps_them():
    model = DropoutResidual(nnx.Rngs(0))
    _zero(model.b, "kernel", (1, slice(None)))  # stream unit 1: read by nobody
    _zero(model.c, "kernel", (1, slice(None)))
    x = jax.random.normal(jax.random.key(0), (4, 3))
    assert model_report(model, x).effective_maccs == 3 * 3 + 3 * 3 + 3 * 2
    small = remove_dead_units(model, x)
    assert small.b.kernel.shape == (3, 3)
    assert small(x).shape == (4, 2)  # training mode: the dropout draws from its kept key
    _assert_same_outputs(small, model, x)


class LinenConvResidual(linen.Module):
    @linen.compact
    def __call__(self, x):
        norm = lambda name: linen.BatchNorm(use_running_average=True, name=name)
        h = jax.nn.relu(norm("bn0")(linen.Conv(4, (3, 3), name="stem")(x)))
        y = norm("bn1")(linen.Conv(4, (3, 3), name="c1")(h))
        return linen.Dense(2, name="fc")(jax.nn.relu(h + y).mean(axis=(1, 2)))


def test_linen_conv_residual_with_batchnorm():
    model = LinenConvResidual()
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    variables = jax.tree_util.tree_map(np.array, model.init(jax.random.key(1), x))
    variables["params"]["fc"]["kernel"][2] = 0.0  # stream channel 2: read by neither fc
    variables["params"]["c1"]["kernel"][:, :, 2, :] = 0.0  # nor c1
    report = model_report(model, x, variables)
    # stem 9*1*3*36, c1 9*3*3*36, fc 3*2 (6 x 6 positions, SAME)
    assert report.effective_maccs == 9 * 1 * 3 * 36 + 9 * 3 * 3 * 36 + 3 * 2
    small = remove_dead_units(model, x, variables)
    assert small.variables["batch_stats"]["bn1"]["mean"].shape == (3,)
    assert small.variables["params"]["c1"]["kernel"].shape == (3, 3, 3, 3)
    np.testing.assert_allclose(small(x), model.apply(variables, x), atol=1e-5)


class LinenTransformer(linen.Module):
    """The Linen twin of :class:`Transformer` (one LayerNorm before the MLP omitted)."""

    @linen.compact
    def __call__(self, x):
        h = linen.Dense(8, name="embed")(x)
        attention = linen.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="mha")
        h = h + attention(linen.LayerNorm(name="ln")(h))
        h = h + linen.Dense(8, name="fc2")(jax.nn.gelu(linen.Dense(16, name="fc1")(h)))
        return linen.Dense(2, name="head")(h.mean(axis=1))


def test_linen_attention_head_is_cut_with_num_heads_set():
    model = LinenTransformer()
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    variables = jax.tree_util.tree_map(np.array, model.init(jax.random.key(1), x))
    variables["params"]["mha"]["out"]["kernel"][1] = 0.0  # head 1: output rows zero
    variables["params"]["fc2"]["kernel"][:4] = 0.0  # hidden units 0-3: read by nobody
    report = model_report(model, x, variables)
    cut_mha = 3 * 5 * 8 * 1 * 4 + 2 * 1 * 4 * 5 * 5 + 5 * 1 * 4 * 8  # as for the NNX twin
    assert report.effective_maccs == 5 * 3 * 8 + cut_mha + 2 * 5 * 8 * 12 + 8 * 2
    small = remove_dead_units(model, x, variables)
    assert small.attention_sizes == {
        ("mha",): {"num_heads": 1, "qkv_features": 4, "out_features": 8}
    }
    assert small.variables["params"]["mha"]["value"]["kernel"].shape == (8, 1, 4)
    x2 = jax.random.normal(jax.random.key(1), (3, 5, 3))
    np.testing.assert_allclose(small(x2), model.apply(variables, x2), atol=1e-5)
    again = model_report(small, x)
    assert again.dense_maccs == report.effective_maccs
    assert again.params == report.effective_params


@pytest.mark.parametrize("seed", range(6))
def test_random_sparse_residual_nets_leave_no_dead_unit_and_keep_their_outputs(seed):
    """Invariants on random zero patterns: the outputs are kept, the report counts the smaller
    network, and in it every unit is still written and read by some nonzero weight (checked
    here with NumPy on the known structure: stream units s are written by a and b2 and read by
    b and c, inner units u are written by b and read by b2)."""
    rng = np.random.default_rng(seed)
    model = Residual(nnx.Rngs(seed))
    for layer in (model.a, model.b, model.b2, model.c):
        kernel = np.array(layer.kernel[...])
        kernel[rng.random(kernel.shape[0]) < 0.3] = 0.0  # dead input rows
        kernel[:, rng.random(kernel.shape[1]) < 0.3] = 0.0  # dead output columns
        kernel[rng.random(kernel.shape) < 0.3] = 0.0  # scattered zeros
        _set(layer, "kernel", kernel)
    x = jax.random.normal(jax.random.key(seed), (16, 3))
    report = model_report(model, x)
    small = remove_dead_units(model, x)
    _assert_same_outputs(small, model, x, jax.random.normal(jax.random.key(seed + 100), (4, 3)))
    assert model_report(small, x).dense_maccs == report.effective_maccs
    assert _params(small) == report.effective_params
    w = {n: np.asarray(getattr(small, n).kernel[...]) for n in "a b b2 c".split()}
    for i in range(w["c"].shape[0]):
        assert w["a"][:, i].any() or w["b2"][:, i].any(), f"stream unit {i} is unwritten"
        assert w["b"][i].any() or w["c"][i].any(), f"stream unit {i} is unread"
    for j in range(w["b"].shape[1]):
        assert w["b"][:, j].any() and w["b2"][j].any(), f"inner unit {j} is dead"
    assert model_report(small, x).effective_maccs == report.effective_maccs  # a fixpoint


# ------------------------------------------------------------------- zero-pad ("option A")


class PadShortcut(nnx.Module):
    """stem (1 -> 2 channels: stream A), a block c1 (2 -> 3, stride 2: internal channels) and
    c2 (3 -> 4: stream B) whose shortcut subsamples stream A and zero-pads it by one channel
    on each side (stream B channels 0 and 3 are padding, 1 and 2 are stream A's 0 and 1)."""

    def __init__(self, rngs):
        self.stem = nnx.Conv(1, 2, (3, 3), rngs=rngs)
        self.c1 = nnx.Conv(2, 3, (3, 3), strides=2, rngs=rngs)
        self.c2 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        self.extra = 2  # a static width of the model's code, as in BasicBlock

    def __call__(self, x):
        h = jax.nn.relu(self.stem(x))
        shortcut = h[:, ::2, ::2, :]
        half = self.extra // 2
        shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (half, self.extra - half)))
        y = jax.nn.relu(self.c2(jax.nn.relu(self.c1(h))) + shortcut)
        return self.fc(y.mean(axis=(1, 2)))


@pytest.fixture
def pad_shortcut():
    model = PadShortcut(nnx.Rngs(0))
    _zero(model.fc, "kernel", (0, slice(None)))  # stream B channel 0 (padding): unread
    _zero(model.c2, "kernel", (..., 0))  # ... and unwritten
    _zero(model.c1, "kernel", (..., 1, slice(None)))  # stream A channel 1 (= B channel 2)
    _zero(model.fc, "kernel", (2, slice(None)))
    _zero(model.c2, "kernel", (..., 2, slice(None)))  # internal channel 2: unread
    return model


def test_zero_pad_channels_are_kept_naming_pad(pad_shortcut):
    verdicts = dead_groups(pad_shortcut, jnp.ones((2, 6, 6, 1)))
    padded = _verdict(verdicts, "c2/kernel", 3, 0)
    assert not padded.dead and padded.reason.startswith("kept:") and "pad" in padded.reason
    assert {(m.path, m.axis, m.indices) for m in padded.group.members} >= {
        ("c2/kernel", 3, (0,)),
        ("fc/kernel", 0, (0,)),
    }
    # A passed-through channel keeps its identity: stream A channel 1 is stream B channel 2.
    through = _verdict(verdicts, "stem/kernel", 3, 1)
    assert ("c2/kernel", 3, (2,)) in {(m.path, m.axis, m.indices) for m in through.group.members}
    assert through.dead and through.reason == "unread"
    assert _verdict(verdicts, "c1/kernel", 3, 2).reason == "unread"
    assert [_verdict(verdicts, "c1/kernel", 3, j).dead for j in range(3)] == [False, False, True]
    # the other padding channel (3) is live; stream A channel 0 too
    assert _verdict(verdicts, "c2/kernel", 3, 3).reason == "live"
    assert _verdict(verdicts, "stem/kernel", 3, 0).reason == "live"


def test_zero_pad_shortcut_report_and_surgery(pad_shortcut):
    x = jax.random.normal(jax.random.key(4), (2, 6, 6, 1))
    report = model_report(pad_shortcut, x)
    # Kept: stream A {0} (6 x 6), internal {0, 1} (3 x 3, stride 2), stream B {0, 1, 3}.
    stem, c1, c2, fc = 9 * 1 * 1 * 36, 9 * 1 * 2 * 9, 9 * 2 * 3 * 9, 3 * 3
    assert [row.effective_maccs for row in report.layers] == [stem, c1, c2, fc]
    assert report.effective_maccs == stem + c1 + c2 + fc
    kept = (9 * 1 + 1) + (9 * 1 * 2 + 2) + (9 * 2 * 3 + 3) + (3 * 3 + 3)
    assert report.effective_params == kept
    small = remove_dead_units(pad_shortcut, x)
    assert small.stem.kernel.shape == (3, 3, 1, 1) and small.c1.kernel.shape == (3, 3, 1, 2)
    assert small.c2.kernel.shape == (3, 3, 2, 3) and small.fc.kernel.shape == (3, 3)
    np.testing.assert_array_equal(
        small.fc.kernel[...], np.asarray(pad_shortcut.fc.kernel[...])[[0, 1, 3]]
    )
    assert _params(small) == kept
    _assert_same_outputs(small, pad_shortcut, x, jax.random.normal(jax.random.key(5), (3, 6, 6, 1)))
    again = model_report(small, x)
    assert again.dense_maccs == report.effective_maccs == again.effective_maccs


def test_a_static_size_surgery_cannot_update_is_refused_not_crashed():
    class StaticOffset(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 4, rngs=rngs)
            self.b = nnx.Linear(4, 2, rngs=rngs)
            self.offset = np.arange(4.0, dtype=np.float32)  # a constant of the model's code

        def __call__(self, x):
            return self.b(jax.nn.relu(self.a(x) + self.offset))

    model = StaticOffset(nnx.Rngs(0))
    _zero(model.b, "kernel", (1, slice(None)))
    with pytest.raises(ValueError, match=r"cannot be cut.*forward pass fails.*broadcasting"):
        remove_dead_units(model, jnp.ones((2, 3)))


def test_resnet20_with_zero_pad_shortcuts_is_cut_exactly():
    from experiments import methods, training
    from experiments.models import create_model, default_constrained_layers

    x = jax.random.normal(jax.random.key(6), (2, 8, 8, 1))
    split = training.split_model(create_model("resnet20", input_shape=(8, 8, 1), seed=0))
    groups = methods.removable_coupled_groups(split, x, default_constrained_layers("resnet20"))

    def holds(group, path, index):
        return any(m.path == path and m.axis == 3 and index in m.indices for m in group.members)

    # Stage 2 pads 16 channels to 32 (8 on each side), stage 3 pads 32 to 64 (16 each side):
    # those stream channels are padding in a shortcut and cannot be removed, nor the stage 3
    # channels that stage 2's padding passes into (16 + [0, 8) and 16 + [24, 32)); the
    # stage 1 channels passed through (stage 2's [8, 24), stage 3's [24, 40)) and every conv1
    # output can.
    stage2, stage3 = "stages/1/0/conv2/kernel", "stages/2/0/conv2/kernel"
    for path, width, lo in ((stage2, 32, 8), (stage3, 64, 24)):
        for channel in range(width):
            padding = channel < lo or channel >= width - lo
            assert any(holds(g, path, channel) for g in groups) != padding, (path, channel)
    for stage, width in enumerate((16, 32, 64)):
        for j in range(width):
            assert any(holds(g, f"stages/{stage}/1/conv1/kernel", j) for g in groups)
    # Zero every other removable group, and every weight of a padded stream channel too.
    model = training.merge_model(split.eval_graph, split.params, split.rest)
    (padding,) = [g for g in sparsejax.coupled_groups(model, x) if holds(g, stage2, 0)]
    chosen = [*groups[::2], padding]
    zeroed = sparsejax.transforms.project_coupled_tree(split.params, 0.0, chosen)
    model = training.merge_model(split.eval_graph, zeroed, split.rest)
    verdicts = dead_groups(model, x)
    padded = _verdict(verdicts, stage2, 3, 0)
    assert not padded.dead and "pad" in padded.reason
    report = model_report(model, x)
    small = remove_dead_units(model, x)
    _assert_same_outputs(small, model, x, jax.random.normal(jax.random.key(7), (3, 8, 8, 1)))
    assert model_report(small, x).dense_maccs == report.effective_maccs < report.dense_maccs
    assert _params(small) == report.effective_params


def test_zero_kernels_are_not_compiled_as_constants():
    # XLA:CPU (jax 0.10) reads uninitialised memory for a 7x7x64 conv by an all-zero constant
    # kernel followed by a reduction (ResNet-20's last stage and its global pool): closing over
    # the weights, the output check saw garbage and refused a correct cut. Weights are now
    # arguments of every program that sparsejax.nn compiles.
    from experiments.models import create_model

    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    model = create_model("resnet20", input_shape=(28, 28, 1), seed=0)
    model.eval()
    for block in model.stages[2]:
        _set(block.conv2, "kernel", np.zeros(block.conv2.kernel.shape))
    report = model_report(model, x)
    small = remove_dead_units(model, x)
    _assert_same_outputs(small, model, x)
    # Each last-stage block's conv1 and bn1 (its 64 internal channels) go, conv2 reads none.
    assert all(block.conv1.kernel.shape[-1] == 0 for block in small.stages[2])
    assert model_report(small, x).dense_maccs == report.effective_maccs
