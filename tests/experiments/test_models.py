"""Models of experiments/: dense MACCs and parameter counts against independent hand counts
(and the papers' figures), and one jitted training step of every model."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import models, training

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


def _dense_layers(widths):
    """(maccs, params) of a fully connected chain."""
    maccs = sum(a * b for a, b in itertools.pairwise(widths))
    return maccs, maccs + sum(widths[1:])


def _conv(size, cin, cout, out_hw, *, bias=True, bn=False):
    """(maccs, params) of one conv layer with its BN."""
    weights = size * size * cin * cout
    return weights * out_hw * out_hw, weights + bias * cout + 2 * bn * cout


def _add(*pairs):
    return tuple(sum(values) for values in zip(*pairs))


def _vgg(config, classes, hidden=()):
    total, cin, hw = (0, 0), 3, 32
    for entry in config:
        if entry == "M":
            hw //= 2
        else:
            total = _add(total, _conv(3, cin, entry, hw, bn=True))
            cin = entry
    return _add(total, _dense_layers((cin * hw * hw, *hidden, classes)))


def _resnet(widths, depths, projection, classes, image=CIFAR):
    total = _conv(3, image[-1], widths[0], image[0], bias=False, bn=True)
    cin, hw = widths[0], image[0]
    for stage, (cout, depth) in enumerate(zip(widths, depths)):
        for block in range(depth):
            if stage > 0 and block == 0:
                hw = (hw + 1) // 2  # stride 2, padding 1
            total = _add(total, _conv(3, cin, cout, hw, bias=False, bn=True))
            total = _add(total, _conv(3, cout, cout, hw, bias=False, bn=True))
            if projection and cin != cout:
                total = _add(total, _conv(1, cin, cout, hw, bias=False, bn=True))
            cin = cout
    return _add(total, _dense_layers((cin, classes)))


def _simplenet():
    blocks = [(64, 3, 32), (128, 3, 32), (128, 3, 32), (128, 3, 32), (128, 3, 16)]
    blocks += [(128, 3, 16), (256, 3, 16), (256, 3, 8), (256, 3, 8), (512, 3, 4)]
    blocks += [(2048, 1, 2), (256, 1, 2), (256, 3, 1)]
    total, cin = (0, 0), 3
    for cout, size, hw in blocks:
        total = _add(total, _conv(size, cin, cout, hw, bn=True))
        cin = cout
    return _add(total, _dense_layers((256, 10)))


def _vit(image, patch, width, depth, hidden, classes):
    """(maccs, params) of a ViT with mean-pooled tokens: per block the q, k, v and output
    projections, q.k^T and weights.v (over all heads: tokens^2 x width each), the MLP."""
    tokens, pixels = (image[0] // patch) * (image[1] // patch), patch * patch * image[2]
    stem = _dense_layers((pixels, width))
    attention = (4 * tokens * width * width + 2 * tokens * tokens * width, 4 * (width + 1) * width)
    mlp = _dense_layers((width, hidden, width))
    norms = (0, 2 * width)
    block = _add(attention, (tokens * mlp[0], mlp[1]), norms, norms)
    total = _add((tokens * stem[0], stem[1] + tokens * width), *[block] * depth, norms)
    return _add(total, _dense_layers((width, classes)))


VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M")
VGG19 += (512, 512, 512, 512, "M")
VGG_L0 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

EXPECTED = {
    "net4": (MNIST, _add(_conv(5, 1, 10, 24), _conv(5, 10, 20, 8), _dense_layers((320, 50, 10)))),
    "lenet300_100": (MNIST, _dense_layers((784, 300, 100, 10))),
    "lfc4": (MNIST, _dense_layers((784, 1000, 1000, 512, 128, 10))),
    "simplenet": (CIFAR, _simplenet()),
    "vgg16": (CIFAR, _vgg(VGG16, 10)),
    "vgg19": (CIFAR, _vgg(VGG19, 10)),
    "vgg_l0": (CIFAR, _vgg(VGG_L0, 10, hidden=(32,))),
    "resnet18": (CIFAR, _resnet((64, 128, 256, 512), (2, 2, 2, 2), True, 10)),
    "resnet56": (CIFAR, _resnet((16, 32, 64), (9, 9, 9), False, 10)),
    "resnet20": (MNIST, _resnet((16, 32, 64), (3, 3, 3), False, 10, image=MNIST)),
    "vit_tiny": (MNIST, _vit(MNIST, 7, 64, 2, 128, 10)),
}

# Figures the papers print: dense MACCs (Guyard & Barlaud) and parameter counts (Siegel et al.;
# Formanek & Hadházi).
PAPER_MACCS = {"net4": 480.5e3, "lenet300_100": 266.2e3, "simplenet": 631.51e6}
PAPER_PARAMS = {
    "vgg16": 14.73e6,
    "vgg19": 20.04e6,
    "resnet18": 11.17e6,
    "resnet56": 853e3,
    "vgg_l0": 9_242_730,
}


@pytest.fixture(scope="module")
def built():
    """Every model as abstract shapes (no weights are allocated: counting needs none)."""
    return {
        name: nnx.eval_shape(lambda n=name, s=shape: models.create_model(n, input_shape=s))
        for name, (shape, _) in EXPECTED.items()
    }


def test_every_model_is_covered():
    assert set(EXPECTED) == set(models.MODEL_NAMES)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_dense_maccs_and_params_match_hand_counts(built, name):
    shape, (maccs, params) = EXPECTED[name]
    assert models.count_maccs(built[name], shape) == maccs
    assert models.count_params(built[name]) == params


@pytest.mark.parametrize("name", sorted(PAPER_MACCS))
def test_dense_maccs_match_the_paper(built, name):
    shape, _ = EXPECTED[name]
    assert models.count_maccs(built[name], shape) == pytest.approx(PAPER_MACCS[name], rel=1e-3)


def test_lfc4_is_within_one_percent_of_the_paper(built):
    assert models.count_maccs(built["lfc4"], MNIST) == pytest.approx(2379e3, rel=0.01)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_params_match_the_papers(built, name):
    reported = PAPER_PARAMS[name]
    # The papers round to the digits they print.
    tolerance = 0.5 * 10 ** (math.floor(math.log10(reported)) - 3)
    assert abs(models.count_params(built[name]) - reported) <= max(tolerance, 0.5)


def test_init_matches_pytorch_scale():
    """Kernels and biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in PyTorch."""
    model = models.create_model("lenet300_100", input_shape=MNIST, seed=1)
    kernel, bias = np.asarray(model.fc1.kernel), np.asarray(model.fc1.bias)
    bound = 1 / math.sqrt(784)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.9 * bound
    assert abs(kernel.std() - bound / math.sqrt(3)) < 0.01 * bound


def test_default_constrained_layers_leave_first_and_last_dense(built):
    import sparsejax

    for name, model in built.items():
        params = training.split_model(model).params
        chosen = [
            p for p, _ in sparsejax.selected_leaves(params, models.default_constrained_layers(name))
        ]
        assert chosen and all(path.endswith("kernel") for path in chosen), name
        assert not any("classifier" in path for path in chosen), name
    net4 = [
        p
        for p, _ in sparsejax.selected_leaves(
            training.split_model(built["net4"]).params, models.default_constrained_layers("net4")
        )
    ]
    assert net4 == ["conv2/kernel", "fc1/kernel"]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="name"):
        models.create_model("alexnet")
    with pytest.raises(ValueError, match="input_shape"):
        models.create_model("net4", input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="num_classes"):
        models.create_model("lfc4", num_classes=1)


def _step_inputs(name, model):
    shape, _ = EXPECTED[name]
    split = training.split_model(model)
    tx = optax.adam(1e-3)
    step = training.make_train_step(split.train_graph, lambda _: tx)
    state = training.TrainState(
        split.params, split.rest, tx.init(split.params), jnp.zeros((), jnp.int32)
    )
    images = jax.random.normal(jax.random.key(0), (2, *shape))
    return split, step, state, images, jnp.array([1, 3])


@pytest.mark.parametrize("name", ["net4", "lenet300_100", "lfc4", "vit_tiny"])
def test_one_jitted_training_step_runs(name):
    model = models.create_model(name, input_shape=EXPECTED[name][0], seed=0)
    split, step, state, images, labels = _step_inputs(name, model)
    new_state, loss = step(jax.tree.map(lambda x: x.copy(), state), None, images, labels)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert int(new_state.step) == 1
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), split.params, new_state.params)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize(
    "name", ["simplenet", "vgg16", "vgg19", "vgg_l0", "resnet18", "resnet56", "resnet20"]
)
def test_jitted_training_step_of_conv_nets_lowers(built, name):
    """The conv nets' step is traced and lowered for XLA with abstract weights (compiling them
    takes over a minute of CPU; the MNIST models above run for real)."""
    _, step, state, images, labels = _step_inputs(name, built[name])
    lowered = step.lower(state, None, images, labels)
    new_state, loss = lowered.out_info
    assert loss.shape == () and loss.dtype == jnp.float32
    shapes = lambda tree: jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), tree)
    assert shapes(new_state.params) == shapes(state.params)
    assert shapes(new_state.rest) == shapes(state.rest)
