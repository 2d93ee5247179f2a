"""Tests for sparsejax.sis against float64 NumPy references (inclusion sets, top-k, im2col)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import prox
from sparsejax.nn import _sis as sis
from sparsejax.nn._sis import _fitting as sis_fitting

# --------------------------------------------------------------------------- references


def ref_activation(reference, activation):
    """y = R(reference) in float64."""
    reference = np.asarray(reference, np.float64)
    if activation == "relu":
        return np.maximum(reference, 0)
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-reference))
    if activation == "tanh":
        return np.tanh(reference)
    if activation == "softmax":
        e = np.exp(reference - reference.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return reference


def ref_project(u, y, activation):
    """Projection onto D(y) = y + df(y), computed from the outputs y (not the pre-activation)."""
    u = np.asarray(u, np.float64)
    if activation == "relu":
        return np.where(y > 0, y, np.minimum(u, 0))
    if activation == "sigmoid":
        return np.broadcast_to(np.log(y / (1 - y)), u.shape)
    if activation == "tanh":
        return np.broadcast_to(np.arctanh(y), u.shape)
    if activation == "softmax":
        z = np.log(y)
        return z + (u - z).mean(-1, keepdims=True)
    return np.broadcast_to(y, u.shape)


def ref_keep_largest(w, keep):
    w = np.asarray(w)
    flat = np.abs(w).ravel()
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[: max(keep, 0)]] = True
    return np.where(mask.reshape(w.shape), w, 0)


def ref_keep_largest_inputs(w, keep):
    w = np.asarray(w)
    rows = np.moveaxis(w, -2, 0).reshape(w.shape[-2], -1)
    order = np.argsort(-np.sqrt((rows.astype(np.float64) ** 2).sum(1)), kind="stable")
    kept = np.zeros(len(rows), bool)
    kept[order[: max(keep, 0)]] = True
    shape = [1] * w.ndim
    shape[-2] = w.shape[-2]
    return np.where(kept.reshape(shape), w, 0)


def ref_im2col(x, kernel_size, stride, padding):
    """(N*Ho*Wo, kh*kw*C) patches of an NHWC batch, feature order (kh, kw, C)."""
    x = np.asarray(x, np.float64)
    kh, kw = kernel_size
    if padding == "SAME":
        height, width = x.shape[1:3]
        out_h, out_w = -(-height // stride), -(-width // stride)
        pad_h = max((out_h - 1) * stride + kh - height, 0)
        pad_w = max((out_w - 1) * stride + kw - width, 0)
        x = np.pad(
            x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        )
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    rows = [
        x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :].reshape(len(x), -1)
        for i in range(out_h)
        for j in range(out_w)
    ]
    return np.stack(rows, axis=1).reshape(-1, kh * kw * x.shape[-1])


def ref_sis_step(patches, kernel, bias, reference, activation, rate):
    """One forward-backward step from DESIGN.md, on the im2col matrix (no constraint)."""
    matrix = kernel.reshape(-1, kernel.shape[-1])
    u = patches @ matrix + bias
    residual = ref_project(u, ref_activation(reference, activation), activation) - u
    norms = (patches**2).sum(1, keepdims=True) + 1
    scaled = residual / (norms * len(patches))
    moved = matrix + rate * patches.T @ scaled
    return moved.reshape(kernel.shape), bias + rate * scaled.sum(0)


# --------------------------------------------------------------------------- models


class MLP(nnx.Module):
    def __init__(self, widths, seed=0):
        rngs = nnx.Rngs(seed)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class Backwards(nnx.Module):
    """Attributes declared in the opposite order to the calls."""

    def __init__(self):
        rngs = nnx.Rngs(1)
        self.head = nnx.Linear(6, 3, rngs=rngs)
        self.body = nnx.Linear(4, 6, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.body(x)))


class TinyConvNet(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(2)
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4 * 6 * 6, 3, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.conv(x))
        return self.fc(x.reshape(len(x), -1))


def normal_batches(shape, count, seed=0):
    keys = jax.random.split(jax.random.key(seed), count)
    return [jax.random.normal(key, shape) for key in keys]


def kernels(params):
    return {
        "/".join(str(k.key) for k in path[:-2]): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-2].key == "kernel"
    }


# Few steps, and no curvature estimate except where it is tested: each distinct layer problem
# compiles its own step, so tests share models and settings where they can.
FAST = {"steps": 60, "eval_batches": 1, "estimate_lipschitz": False}

# --------------------------------------------------------------------------- inclusion sets


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity", "softmax"])
def test_projection_matches_numpy_reference(activation):
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 2, (16, 7)).astype(np.float32)
    u = rng.normal(0, 2, (16, 7)).astype(np.float32)
    projected = sis.project_inclusion_set(jnp.asarray(u), jnp.asarray(reference), activation)
    y = ref_activation(reference, activation)
    np.testing.assert_allclose(projected, ref_project(u, y, activation), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
        sis.inclusion_residual(u, reference, activation), projected - u, atol=1e-6
    )


@pytest.mark.parametrize("activation", ["relu", "softmax", "tanh"])
def test_projection_is_nearest_point_and_idempotent(activation):
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, (32, 5))
    u = rng.normal(0, 2, (32, 5))
    p = np.asarray(sis.project_inclusion_set(u, reference, activation), np.float64)
    again = sis.project_inclusion_set(p, reference, activation)
    np.testing.assert_allclose(again, p, atol=1e-5)
    np.testing.assert_allclose(
        ref_activation(p, activation), ref_activation(reference, activation), atol=1e-5
    )
    # Variational inequality <u - p, d - p> <= 0 for points d of the convex set D(y).
    for _ in range(20):
        if activation == "relu":
            d = np.where(reference > 0, reference, -np.abs(rng.normal(0, 3, u.shape)))
        elif activation == "softmax":
            d = reference + rng.normal(0, 3, (len(u), 1))
        else:
            d = reference
        assert np.all(np.sum((u - p) * (d - p), axis=-1) <= 1e-4)


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match=r"activation.*'gelu'"):
        sis.project_inclusion_set(jnp.zeros(3), jnp.zeros(3), "gelu")


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("shape", [(7,), (5, 4), (3, 3, 2, 4)])
def test_keep_largest_matches_numpy(shape):
    rng = np.random.default_rng(2)
    w = rng.normal(size=shape).astype(np.float32)
    w.ravel()[::3] = w.ravel()[1]  # ties, broken by position
    w.ravel()[2] = 0.0
    jitted = jax.jit(prox.keep_largest)
    for keep in (0, 1, w.size // 2, w.size - 1, w.size, w.size + 3):
        np.testing.assert_array_equal(jitted(w, keep), ref_keep_largest(w, keep))


@pytest.mark.parametrize("shape", [(6, 3), (3, 3, 5, 2)])
def test_keep_largest_inputs_matches_numpy(shape):
    rng = np.random.default_rng(5)
    w = rng.normal(size=shape).astype(np.float32)
    jitted = jax.jit(prox.keep_largest_inputs)
    for keep in (0, 1, shape[-2] // 2, shape[-2], shape[-2] + 2):
        np.testing.assert_array_equal(jitted(w, keep), ref_keep_largest_inputs(w, keep))


# --------------------------------------------------------------------------- one layer


@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_pretrained_layer_has_zero_inclusion_error(activation):
    layer = nnx.Linear(12, 6, rngs=nnx.Rngs(0))
    batches = normal_batches((32, 12), 3)
    reference = layer(batches[0])
    residual = sis.inclusion_residual(reference, reference, activation)
    assert float(jnp.max(jnp.abs(residual))) == 0.0
    params, records = sis.sis_sparsify(layer, batches, sparsity=0.0, activations=activation, **FAST)
    (record,) = records
    assert record.error_before == 0.0 and record.error_after == 0.0 and record.phi_after == 0.0
    chex.assert_trees_all_equal(params, nnx.state(layer, nnx.Param))


@pytest.mark.parametrize(
    ("kind", "activation"),
    [("dense", "relu"), ("dense", "softmax"), ("conv_same", "relu"), ("conv_valid_s2", "tanh")],
)
def test_step_matches_im2col_reference(kind, activation):
    rng = np.random.default_rng(3)
    if kind == "dense":
        layer = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
        x = rng.normal(size=(8, 6)).astype(np.float32)
        patches = np.asarray(x, np.float64)
    else:
        stride, padding = (1, "SAME") if kind == "conv_same" else (2, "VALID")
        layer = nnx.Conv(3, 4, (3, 3), strides=stride, padding=padding, rngs=nnx.Rngs(0))
        x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
        patches = ref_im2col(x, (3, 3), stride, padding)
    w0 = np.asarray(layer.kernel[...], np.float64)
    b0 = np.asarray(layer.bias[...], np.float64)
    reference = patches @ w0.reshape(-1, w0.shape[-1]) + b0
    sparsity, rate = 0.6, 1.0
    keep = w0.size - round(sparsity * w0.size)
    # Step 1 starts at the pretrained point (zero residual): a pure projection.
    w1 = ref_keep_largest(w0, keep)
    w2, b2 = ref_sis_step(patches, w1, b0, reference, activation, rate)
    w2 = ref_keep_largest(w2, keep)
    params, _ = sis.sis_sparsify(
        layer,
        [x],
        sparsity=sparsity,
        activations=activation,
        steps=2,
        ramp=0.0,
        momentum=0.0,
        estimate_lipschitz=False,
        step_size=rate,
        eval_batches=1,
    )
    np.testing.assert_allclose(params["kernel"][...], w2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(params["bias"][...], b2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_planted_support_is_recovered(activation):
    """Outputs come from a sparse layer; the pretrained kernel adds a dense component that the
    inputs never see (their null space), so magnitude pruning picks the wrong support."""
    rng = np.random.default_rng(0)
    d_in, d_latent, d_out, per_column = 40, 34, 8, 4
    mixing = rng.normal(size=(d_latent, d_in)) / np.sqrt(d_latent)
    planted = np.zeros((d_in, d_out))
    for j in range(d_out):
        rows = rng.choice(d_in, per_column, replace=False)
        planted[rows, j] = rng.choice([-1, 1], per_column) * rng.uniform(1, 2, per_column)
    null_space = np.linalg.svd(mixing)[2][d_latent:].T
    pretrained = planted + null_space @ rng.normal(size=(d_in - d_latent, d_out))
    layer = nnx.Linear(d_in, d_out, rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(pretrained, jnp.float32)
    batches = [
        jnp.asarray(rng.normal(size=(128, d_latent)) @ mixing, jnp.float32) for _ in range(4)
    ]
    np.testing.assert_allclose(batches[0] @ pretrained, batches[0] @ planted, atol=1e-4)
    support = planted != 0
    sparsity = 1 - support.sum() / support.size
    magnitude = ref_keep_largest(pretrained, support.sum()) != 0
    assert not np.array_equal(magnitude, support)

    params, (record,) = sis.sis_sparsify(
        layer, batches, sparsity=sparsity, activations=activation, steps=400, eval_batches=4
    )
    kernel = np.asarray(params["kernel"][...])
    np.testing.assert_array_equal(kernel != 0, support)
    np.testing.assert_allclose(kernel, planted, atol=1e-3)
    assert record.error_after < 1e-8


# --------------------------------------------------------------------------- whole models


def test_layers_in_call_order_and_untouched_layers():
    assert [p for p, _, _ in sis.sis_layers(Backwards(), jnp.ones((1, 4)))] == ["body", "head"]
    model = MLP((8, 16, 12, 4))
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    batches = normal_batches((64, 8), 3)
    params, records = sis.sis_sparsify(
        model, batches, sparsity={"layers/0/": 0.5, "layers/2/": 0.0}, **FAST
    )
    assert [r.path for r in records] == ["layers/0", "layers/2"]
    assert [r.activation for r in records] == ["relu", "softmax"]
    chex.assert_trees_all_equal(nnx.state(model, nnx.Param), before)  # model not modified
    new, old = kernels(params), kernels(before)
    np.testing.assert_array_equal(new["layers/1"], old["layers/1"])
    assert np.mean(np.asarray(new["layers/0"]) == 0) == 0.5
    # Network targets: the last layer starts off with the upstream error of the first, and
    # refitting it (at sparsity 0) compensates part of that error.
    assert 0 < records[1].error_after < records[1].error_before


def test_layer_targets_make_every_pretrained_layer_exact():
    model = MLP((8, 16, 4))
    _, records = sis.sis_sparsify(
        model, normal_batches((64, 8), 2), sparsity=0.7, targets="layer", **FAST
    )
    assert [r.error_before for r in records] == [0.0, 0.0]
    assert all(r.error_after > 0 for r in records)


def test_conv_model_end_to_end_and_lipschitz_estimate():
    model = TinyConvNet()
    data = normal_batches((8, 6, 6, 2), 2)
    params, records = sis.sis_sparsify(
        model, lambda: iter(data), sparsity=0.5, steps=60, eval_batches=1
    )
    assert [(r.path, r.kind) for r in records] == [("conv", "conv"), ("fc", "dense")]
    assert [r.sparsity for r in records] == [0.5, 0.5]
    # The step is scaled by 1.1 times the largest eigenvalue of mean(x x^T / nu) over the
    # first batch (the power method's safety factor).
    patches = ref_im2col(data[0], (3, 3), 1, "SAME")
    augmented = np.concatenate([patches, np.ones((len(patches), 1))], axis=1)
    norms = (patches**2).sum(1) + 1
    largest = np.linalg.eigvalsh((augmented / norms[:, None]).T @ augmented / len(patches))[-1]
    assert largest <= 1.0
    np.testing.assert_allclose(records[0].lipschitz, 1.1 * largest, rtol=1e-2)
    nnx.update(model, params)
    assert model(data[0]).shape == (8, 3)


class Relu784(nnx.Module):
    def __init__(self):
        self.fc = nnx.Linear(784, 300, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return jax.nn.relu(self.fc(x))


def test_default_lipschitz_on_high_dimensional_inputs_stays_finite():
    """Issue 10: standard-normal 784-d inputs, batch 64, default arguments used to end with
    error_after = inf and NaN weights (the per-batch curvature is ~1/64, the stochastic
    momentum steps overshoot it)."""
    rng = np.random.default_rng(0)
    data = [jnp.asarray(rng.standard_normal((64, 784)), jnp.float32) for _ in range(8)]
    params, (record,) = sis.sis_sparsify(Relu784(), data, sparsity=0.5, steps=100)
    kernel = np.asarray(params["fc"]["kernel"][...])
    assert np.isfinite(kernel).all() and np.isfinite(np.asarray(params["fc"]["bias"][...])).all()
    assert np.mean(kernel == 0) == 0.5
    assert record.error_after < 0.1
    # Independent check of the estimate: 1.1 x the largest eigenvalue of mean(x x^T / nu).
    augmented = np.concatenate([np.asarray(b) for b in data], axis=0)
    augmented = np.concatenate([augmented, np.ones((len(augmented), 1))], axis=1)
    largest = 0.0
    for b in np.split(augmented, 8):
        norms = (b**2).sum(1)
        largest = max(largest, np.linalg.eigvalsh((b / norms[:, None]).T @ b / len(b))[-1])
    assert record.lipschitz >= largest


def test_non_finite_weights_raise_naming_the_layer(monkeypatch):
    """The last line of defence: a fit that ends non-finite (simulated) is an error."""
    rng = np.random.default_rng(0)
    data = [jnp.asarray(rng.standard_normal((16, 784)), jnp.float32) for _ in range(2)]
    fit = sis_fitting._fit_layer

    def poisoned(*args):
        weights = fit(*args)
        return {**weights, "kernel": weights["kernel"].at[0, 0].set(jnp.nan)}

    monkeypatch.setattr(sis_fitting, "_fit_layer", poisoned)
    with pytest.raises(ValueError, match="non-finite kernel in layer 'fc'"):
        sis.sis_sparsify(Relu784(), data, sparsity=0.5, steps=10, eval_batches=1)


def test_l1_and_l11_radius():
    model = MLP((10, 12, 4))
    batches = normal_batches((64, 10), 2)
    radius = 2.0
    for ball in ("l1", "l11"):
        params, (record,) = sis.sis_sparsify(
            model, batches, radius={"layers/1/": radius}, ball=ball, **FAST
        )
        kernel = np.asarray(kernels(params)["layers/1"])
        assert np.abs(kernel).sum() <= radius * (1 + 1e-5)
        assert record.sparsity == np.mean(kernel == 0) > 0
        zero_rows = int(np.all(kernel == 0, axis=1).sum())
        assert record.zero_input_units == zero_rows
        if ball == "l11":  # whole input units go
            assert zero_rows > 0


def test_input_units_are_removed():
    model = MLP((10, 12, 4))
    params, records = sis.sis_sparsify(
        model, normal_batches((64, 10), 2), sparsity=0.5, units="inputs", **FAST
    )
    for record, kernel in zip(records, kernels(params).values()):
        zero_rows = np.all(np.asarray(kernel) == 0, axis=1)
        assert record.zero_input_units == zero_rows.sum() == kernel.shape[0] // 2
        assert record.sparsity == np.mean(np.asarray(kernel) == 0)


def test_penalty_zero_is_identity_and_larger_penalty_is_sparser():
    model = MLP((10, 12, 4))
    batches = normal_batches((64, 10), 2)
    params, _ = sis.sis_sparsify(model, batches, penalty=0.0, **FAST)
    chex.assert_trees_all_equal(params, nnx.state(model, nnx.Param))
    sparsities = [
        [r.sparsity for r in sis.sis_sparsify(model, batches, penalty=lam, **FAST)[1]]
        for lam in (0.02, 0.2)
    ]
    assert all(0 < a < b for a, b in zip(*sparsities))


def test_max_error_bounds_the_inclusion_error():
    model = MLP((10, 12, 4))
    batches = normal_batches((64, 10), 2)
    results = [
        sis.sis_sparsify(model, batches, max_error=tol, search_steps=4, **FAST)[1]
        for tol in (0.02, 0.2)
    ]
    for tol, records in zip((0.02, 0.2), results):
        for record in records:
            assert record.error_after <= tol
            assert record.sparsity == pytest.approx(record.level, abs=1e-2)
    assert all(a.level <= b.level for a, b in zip(*results))
    assert any(a.level < b.level for a, b in zip(*results))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.5}, "sparsity must be in"),
        ({"sparsity": 0.5, "radius": 1.0}, "exactly one"),
        ({}, "exactly one"),
        ({"radius": -1.0}, "radius must be"),
        ({"sparsity": {"nope": 0.5}}, "pattern 'nope' matches no layer"),
        ({"sparsity": 0.5, "activations": "gelu"}, "'gelu'"),
        ({"sparsity": 0.5, "step_size": 2.0}, "step_size"),
        ({"sparsity": 0.5, "momentum": 1.0}, "momentum"),
        ({"sparsity": 0.5, "ball": "l2"}, "ball"),
        ({"sparsity": 0.5, "units": "rows"}, "units"),
        ({"sparsity": 0.5, "targets": "labels"}, "targets"),
        ({"sparsity": 0.5, "steps": 0}, "steps"),
        ({"sparsity": 0.5, "ramp": 2.0}, "ramp"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sis.sis_sparsify(MLP((4, 3)), [jnp.ones((2, 4))], **kwargs)


def test_bad_batches_and_models_raise():
    with pytest.raises(ValueError, match="re-iterable"):
        sis.sis_sparsify(MLP((4, 3)), iter([jnp.ones((2, 4))]), sparsity=0.5)
    with pytest.raises(ValueError, match="no batch"):
        sis.sis_sparsify(MLP((4, 3)), [], sparsity=0.5)
    with pytest.raises(ValueError, match=r"non-empty batches.*\(0, 4\)"):
        sis.sis_sparsify(MLP((4, 3)), [jnp.ones((0, 4))], sparsity=0.5)
    with pytest.raises(ValueError, match=r"batch of shape \(2, 7\) from batches"):
        sis.sis_sparsify(MLP((4, 3)), [jnp.ones((2, 7))], sparsity=0.5)
    with pytest.raises(ValueError, match=r"non-finite.*check that the batches are finite"):
        sis.sis_sparsify(MLP((4, 3)), [jnp.full((2, 4), jnp.nan)], sparsity=0.5, steps=5)
    grouped = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature_group_count"):
        sis.sis_sparsify(grouped, [jnp.ones((1, 5, 5, 4))], sparsity=0.5)

    class Twice(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(ValueError, match="more than once"):
        sis.sis_sparsify(Twice(), [jnp.ones((1, 3))], sparsity=0.5)
