"""Tests of sparsejax.surgery: the smaller model computes the same outputs (on inputs other
than the example batch), its shapes shrink to the live units, and its parameter count and
MACCs equal the report's effective figures; MLPs and conv/BatchNorm/pool/flatten stacks, NNX
and Linen; non-chain and channel-mixing models are refused."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsejax
from sparsejax.nn import _metrics as metrics
from sparsejax.nn import _surgery as surgery


def _set(module, name, array):
    getattr(module, name).set_value(jnp.asarray(array, jnp.float32))


def _jitted(model):
    return jax.jit(lambda x: model(x))  # one compilation instead of op-by-op dispatch


def _param_count(model):
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def _assert_counts_match_report(original, small, x):
    report = metrics.model_report(original, x)
    small_report = metrics.model_report(small, x)
    assert small_report.dense_maccs == report.effective_maccs
    assert small_report.params == report.effective_params
    assert small_report.effective_maccs == small_report.dense_maccs  # nothing left to cut
    return report


def test_mlp_surgery_removes_dead_rows_columns_and_folds_constants():
    model = nnx.Sequential(
        nnx.Linear(6, 5, rngs=nnx.Rngs(0)),
        nnx.relu,
        nnx.Linear(5, 4, rngs=nnx.Rngs(1)),
        nnx.relu,
        nnx.Linear(4, 3, rngs=nnx.Rngs(2)),
    )
    rng = np.random.default_rng(0)
    k0 = rng.standard_normal((6, 5))
    k0[2] = 0.0
    k0[:, 1] = 0.0  # constant relu(b) (the bias is made positive below): folded
    k1 = rng.standard_normal((5, 4))
    k1[3] = 0.0
    k1[:, 0] = 0.0
    _set(model.layers[0], "kernel", k0)
    _set(model.layers[0], "bias", np.abs(rng.standard_normal(5)) + 0.5)
    _set(model.layers[2], "kernel", k1)
    x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    small = sparsejax.remove_dead_units(model, x)
    assert [small.layers[i].kernel.shape for i in (0, 2, 4)] == [(5, 3), (3, 3), (3, 3)]
    assert small.layers[0].input_index == (0, 1, 3, 4, 5)
    assert isinstance(small.layers[0], nnx.Linear) and small.layers[0].in_features == 5
    assert model.layers[0].kernel.shape == (6, 5)  # the original is untouched
    fresh = jnp.asarray(rng.standard_normal((7, 6)) * 3, jnp.float32)
    np.testing.assert_allclose(small(fresh), model(fresh), rtol=1e-5, atol=1e-5)
    _assert_counts_match_report(model, small, x)
    again = sparsejax.remove_dead_units(small, x)  # nothing left to cut: the same model
    assert [again.layers[i].kernel.shape for i in (0, 2, 4)] == [(5, 3), (3, 3), (3, 3)]
    assert again.layers[0].input_index == small.layers[0].input_index
    np.testing.assert_allclose(again(fresh), small(fresh), rtol=1e-6, atol=1e-6)


class ConvStack(nnx.Module):
    """Conv/BatchNorm/ReLU/max-pool twice, flatten, two Dense layers."""

    def __init__(self, padding, rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), padding="VALID", rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.conv2 = nnx.Conv(6, 5, (3, 3), padding=padding, rngs=rngs)
        self.bn2 = nnx.BatchNorm(5, rngs=rngs)
        side = 3 if padding == "SAME" else 2
        self.fc1 = nnx.Linear(side * side * 5, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), (2, 2))
        x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)


@functools.cache
def _built_stack(padding):
    return ConvStack(padding, nnx.Rngs(0))  # eager initialisation is slow: build once


def _stack(padding, seed):
    return _sparsify_stack(nnx.clone(_built_stack(padding)), seed)


def _sparsify_stack(model, seed):
    rng = np.random.default_rng(seed)
    for bn in (model.bn1, model.bn2):
        width = bn.scale.shape[0]
        _set(bn, "scale", rng.uniform(0.5, 2.0, width))
        _set(bn, "var", rng.uniform(0.5, 2.0, width))
    # Filters 1 and 4 are constants relu(bn(bias)) = relu(bn.bias) = 3 through max pool.
    _set(model.bn1, "mean", np.where(np.isin(np.arange(6), [1, 4]), model.conv1.bias[...], 0.5))
    _set(model.bn1, "bias", np.where(np.isin(np.arange(6), [1, 4]), 3.0, 0.1))
    k1 = np.array(model.conv1.kernel[...])
    k1[..., [1, 4]] = 0.0
    k1[:, :, 2, :] = 0.0  # a dead input channel of the network
    k2 = np.array(model.conv2.kernel[...])
    k2[:, :, 3, :] = 0.0  # nobody reads channel 3 of conv1
    k2[..., 0] = 0.0
    fc1 = np.array(model.fc1.kernel[...])
    fc1[2::5] = 0.0  # every flattened position of conv2's channel 2
    fc1[1] = 0.0  # a single position of a live channel: needs a gather
    fc1[:, 5] = 0.0
    _set(model.conv1, "kernel", k1)
    _set(model.conv2, "kernel", k2)
    _set(model.fc1, "kernel", fc1)
    return model


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_conv_batchnorm_pool_flatten_dense_stack_keeps_its_outputs(padding):
    model = _stack(padding, seed=1)
    model.eval()
    x = jax.random.normal(jax.random.key(0), (3, 14, 14, 3))
    small = surgery.remove_dead_units(model, x)
    fresh = jax.random.normal(jax.random.key(1), (5, 14, 14, 3)) * 2
    np.testing.assert_allclose(_jitted(small)(fresh), _jitted(model)(fresh), rtol=1e-4, atol=1e-4)
    report = _assert_counts_match_report(model, small, x)
    # conv1: channel 2 of the input dead, filters 1, 4 constant (3 > 0, so kept before the
    # zero-padded SAME conv), 3 unread.
    assert small.conv1.kernel.shape == (3, 3, 2, 6 - 1 - (2 if padding == "VALID" else 0))
    assert small.bn1.scale.shape == (small.conv1.kernel.shape[-1],)
    assert small.bn1.mean.shape == small.bn1.scale.shape
    # conv2: filter 0 is constant and folds into the Dense fc1 either way; channel 2 unread.
    assert small.conv2.kernel.shape[-1] == 3
    assert small.fc1.kernel.shape[1] == 7
    assert small.fc1.kernel.shape[0] == report.layers[2].live_inputs
    assert _param_count(small) == report.effective_params


def test_surgery_keeps_the_training_mode_and_the_smaller_model_trains():
    model = _stack("VALID", seed=2)
    x = jax.random.normal(jax.random.key(0), (3, 14, 14, 3))
    model.eval()
    small = surgery.remove_dead_units(model, x)
    model.train()
    small_train = surgery.remove_dead_units(model, x)
    assert small.bn1.use_running_average and not small_train.bn1.use_running_average

    def loss(m):
        return jnp.mean(m(x) ** 2)

    grads = nnx.jit(nnx.grad(loss))(small_train)
    assert grads["fc1"]["kernel"].shape == small_train.fc1.kernel.shape


class LinenStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), padding="VALID")(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(5, (3, 3), padding="VALID")(x))
        x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(4)(x)


def test_linen_stack_surgery_keeps_outputs_and_matches_the_report():
    module = LinenStack()
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 3))
    variables = jax.tree_util.tree_map(np.array, module.init(jax.random.key(1), x))
    params = variables["params"]
    params["Conv_0"]["kernel"][..., [0, 3]] = 0.0
    params["Conv_0"]["bias"][:] = 0.4
    variables["batch_stats"]["BatchNorm_0"]["mean"][:] = 0.1
    params["Conv_1"]["kernel"][:, :, 1, :] = 0.0
    params["Dense_0"]["kernel"][::4] = 0.0
    params["Dense_0"]["kernel"][:, 2] = 0.0
    small = sparsejax.remove_dead_units(module, x, variables)
    assert isinstance(small, surgery.ShrunkenLinenModel)
    fresh = jax.random.normal(jax.random.key(2), (4, 12, 12, 3))
    expected = jax.jit(module.apply)(variables, fresh)
    np.testing.assert_allclose(_jitted(small)(fresh), expected, rtol=1e-4, atol=1e-5)
    shapes = jax.tree_util.tree_map(np.shape, small.variables)
    assert shapes["params"]["Conv_0"]["kernel"] == (3, 3, 3, 3)
    assert shapes["batch_stats"]["BatchNorm_0"]["var"] == (3,)
    assert shapes["params"]["Dense_0"]["kernel"][1] == 7
    again = sparsejax.remove_dead_units(small, x)  # cutting again changes nothing
    assert jax.tree_util.tree_map(np.shape, again.variables) == shapes
    assert again.input_indices.keys() == small.input_indices.keys()
    report = metrics.model_report(module, x, variables)
    small_report = metrics.model_report(small, x)
    assert small_report.dense_maccs == report.effective_maccs
    assert small_report.params == report.effective_params


class Residual(nnx.Module):
    """A residual network with an operation (fft) that the coupled analysis does not read."""

    def __init__(self, rngs):
        self.fc1 = nnx.Linear(4, 4, rngs=rngs)
        self.fc2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc2(x + jnp.fft.ifft(jnp.fft.fft(nnx.relu(self.fc1(x)))).real)


class CentredMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(4, 5, rngs=rngs)
        self.fc2 = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
        hidden = self.fc1(x)
        return self.fc2(hidden - hidden.mean(axis=-1, keepdims=True))  # mixes the units


def test_non_chain_and_unit_mixing_models_are_refused():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match=r"cannot be cut.*'fft'"):
        surgery.remove_dead_units(Residual(nnx.Rngs(0)), x)
    model = CentredMLP(nnx.Rngs(0))
    kernel = np.array(model.fc2.kernel[...])
    kernel[1] = 0.0
    _set(model.fc2, "kernel", kernel)
    with pytest.raises(ValueError, match="mixes units"):
        surgery.remove_dead_units(model, x)
    small = surgery.remove_dead_units(model, x, check_outputs=False)
    assert small.fc1.kernel.shape == (4, 4)


def test_empty_or_misshapen_example_input_is_a_value_error():
    model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.relu)
    with pytest.raises(ValueError, match=r"example_input must hold at least one.*\(0, 4\)"):
        surgery.remove_dead_units(model, jnp.ones((0, 4)))
    with pytest.raises(ValueError, match=r"example_input of shape \(2, 7\)"):
        surgery.remove_dead_units(model, jnp.ones((2, 7)))
