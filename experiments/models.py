"""Flax NNX models used in the sparsejax papers.

Every model takes NHWC float images and returns logits. Kernels follow Flax's layout
(``Dense``: ``(in, out)``, ``Conv``: ``(kh, kw, in, out)``), so a zero *row* of a dense kernel
or a zero ``[:, :, c, :]`` slice of a conv kernel removes an input unit (DESIGN.md).

Weights are initialised as PyTorch does (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for kernels and
biases of dense/conv layers) because the papers trained in PyTorch and the projection radii
``eta`` they report are only meaningful at that weight scale.

=================  ======================================================  ===========  =========
name               layers                                                  dense MACCs  params
=================  ======================================================  ===========  =========
``net4``           conv 1->10 5x5, pool, conv 10->20 5x5, pool, 320-50-10  480.5k       21.8k
``lenet300_100``   784-300-100-10                                          266.2k       266.6k
``lfc4``           784-1000-1000-512-128-10 (paper: 2379k MACCs, -0.7%)    2362.8k      2.37M
``simplenet``      13 conv/BN/ReLU blocks (SimpleNet v1, Guyard & Barlaud) 631.5M       5.50M
``vgg16``          VGG-16 with BN, one linear classifier (Siegel et al.)   313.2M       14.73M
``vgg19``          VGG-19 with BN, one linear classifier (Siegel et al.)   398.1M       20.04M
``resnet18``       wide ResNet-18, 64-128-256-512 (Siegel et al.)          555.4M       11.17M
``resnet56``       ResNet-56, 16-32-64, zero-pad shortcuts (Siegel et al.) 125.5M       853.0k
``resnet20``       ResNet-20, 16-32-64, zero-pad shortcuts (He et al.)     30.8M        269.4k
``vit_tiny``       ViT: 7x7 patches, width 64, 2 blocks of 4-head          1.16M        71.9k
                   attention + 128-unit MLP, mean-pooled tokens
``vgg_l0``         C64 M C128 M C256 C256 M C512 C512 M C512 C512 M        152.8M       9.24M
                   FC32 FC10 (Formanek & Hadházi's VGG variant)
=================  ======================================================  ===========  =========

MACCs and parameter counts are for 28x28x1 inputs (first three and the last two) and 32x32x3
inputs with 10 classes (the rest); the fully connected models adapt their input width to the
images, ``vit_tiny`` its patches (7x7 when the image sides are multiples of 7, else 4x4, 2x2,
1x1). Attention MACCs count the q, k, v and output projections and the two activation products
(q.k^T and weights.v), as the traced program has them.

Example:
  >>> model = create_model("lenet300_100", input_shape=(28, 28, 1), num_classes=10, seed=0)
  >>> import jax.numpy as jnp
  >>> model(jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
  >>> count_maccs(model, (28, 28, 1)), count_params(model)
  (266200, 266610)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "LFC4_WIDTHS",
    "MLP",
    "MODEL_NAMES",
    "VGG",
    "Net4",
    "ResNet",
    "SimpleNet",
    "VisionTransformer",
    "count_maccs",
    "count_params",
    "create_model",
    "default_constrained_layers",
]

LFC4_WIDTHS = (1000, 1000, 512, 128)
"""Hidden widths of LFC4: 784-1000-1000-512-128-10 has 2,362,816 dense MACCs, 0.7% under the
2379k that Guyard & Barlaud (2020) reports (the paper does not give the widths)."""

MODEL_NAMES = (
    "net4",
    "lenet300_100",
    "lfc4",
    "simplenet",
    "vgg16",
    "vgg19",
    "resnet18",
    "resnet56",
    "vgg_l0",
    "resnet20",
    "vit_tiny",
)


def _torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default initialiser for biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# PyTorch's kaiming_uniform(a=sqrt(5)) is exactly this variance scaling.
_TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dense(fan_in: int, fan_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        fan_in,
        fan_out,
        kernel_init=_TORCH_KERNEL_INIT,
        bias_init=_torch_uniform(fan_in),
        rngs=rngs,
    )


def _conv(
    cin: int,
    cout: int,
    size: int,
    rngs: nnx.Rngs,
    *,
    stride: int = 1,
    padding: str | int = "SAME",
    use_bias: bool = True,
) -> nnx.Conv:
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(size, size),
        strides=(stride, stride),
        padding=padding,
        use_bias=use_bias,
        kernel_init=_TORCH_KERNEL_INIT,
        bias_init=_torch_uniform(cin * size * size),
        rngs=rngs,
    )


def _batch_norm(channels: int, rngs: nnx.Rngs, *, momentum: float = 0.9) -> nnx.BatchNorm:
    # Flax momentum m is PyTorch's 1 - m.
    return nnx.BatchNorm(channels, momentum=momentum, epsilon=1e-5, rngs=rngs)


def _max_pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


class MLP(nnx.Module):
    """Fully connected ReLU network; layers are named ``fc1 ... fcN`` (paths ``fcK/kernel``).

    Args:
      widths: ``(in, hidden..., out)``.
      rngs: parameter initialisation keys.
    """

    def __init__(self, widths: Sequence[int], *, rngs: nnx.Rngs):
        self.num_layers = len(widths) - 1
        for index in range(self.num_layers):
            setattr(self, f"fc{index + 1}", _dense(widths[index], widths[index + 1], rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for index in range(1, self.num_layers + 1):
            x = getattr(self, f"fc{index}")(x)
            if index < self.num_layers:
                x = nnx.relu(x)
        return x


class Net4(nnx.Module):
    """Guyard & Barlaud's Net4 (PyTorch's classic MNIST net): 2 valid 5x5 convs with 2x2 max pools,
    then ``320 -> 50 -> classes`` (for 28x28 inputs). Layers ``conv1, conv2, fc1, fc2``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, rngs: nnx.Rngs):
        height, width, channels = input_shape
        after_convs = [((size - 4) // 2 - 4) // 2 for size in (height, width)]
        if min(after_convs) < 1:
            raise ValueError(f"input_shape={tuple(input_shape)} is too small for net4 (>= 16x16)")
        self.conv1 = _conv(channels, 10, 5, rngs, padding="VALID")
        self.conv2 = _conv(10, 20, 5, rngs, padding="VALID")
        self.fc1 = _dense(20 * after_convs[0] * after_convs[1], 50, rngs)
        self.fc2 = _dense(50, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(_max_pool(self.conv1(x)))
        x = nnx.relu(_max_pool(self.conv2(x)))
        x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)


class ConvBlock(nnx.Module):
    """Conv -> BatchNorm -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        size: int,
        rngs: nnx.Rngs,
        *,
        stride: int = 1,
        use_bias: bool = True,
        momentum: float = 0.9,
    ):
        self.conv = _conv(cin, cout, size, rngs, stride=stride, use_bias=use_bias)
        self.bn = _batch_norm(cout, rngs, momentum=momentum)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


# (out channels, kernel size, pool+dropout after the block); the last pool is global.
_SIMPLENET_BLOCKS = (
    (64, 3, False),
    (128, 3, False),
    (128, 3, False),
    (128, 3, True),
    (128, 3, False),
    (128, 3, False),
    (256, 3, True),
    (256, 3, False),
    (256, 3, True),
    (512, 3, True),
    (2048, 1, False),
    (256, 1, True),
    (256, 3, True),
)


class SimpleNet(nnx.Module):
    """SimpleNet v1 (Hasanpour et al.; github.com/Coderx7/SimpleNet_Pytorch) as Guyard & Barlaud
    uses it:
    13 conv/BN/ReLU blocks, max pool + channel dropout (0.1) after blocks 4, 7, 9, 10, 12 and a
    global max pool after block 13, then one linear classifier. Paths ``blocks/i/conv/kernel``,
    ``classifier/kernel``."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, *, dropout: float, rngs: nnx.Rngs
    ):
        cin = input_shape[-1]
        blocks = []
        for cout, size, _ in _SIMPLENET_BLOCKS:
            blocks.append(ConvBlock(cin, cout, size, rngs, momentum=0.95))
            cin = cout
        self.blocks = nnx.List(blocks)
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)
        self.classifier = _dense(cin, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        last = len(_SIMPLENET_BLOCKS) - 1
        for index, (block, (_, _, pool)) in enumerate(zip(self.blocks, _SIMPLENET_BLOCKS)):
            x = block(x)
            if index == last:
                x = jnp.max(x, axis=(1, 2), keepdims=True)
            elif pool:
                x = _max_pool(x)
            if pool:
                x = self.dropout(x)
        return self.classifier(x.reshape(x.shape[0], -1))


_VGG_CONFIGS = {
    "vgg16": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ),
    "vgg19": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
    "vgg_l0": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


class VGG(nnx.Module):
    """VGG with BatchNorm for small images: conv3x3/BN/ReLU blocks (``features/i``) and 2x2 max
    pools as in ``config``, then fully connected ``hidden`` layers (``head/j``) and a linear
    ``classifier``."""

    def __init__(
        self,
        config: Sequence[int | str],
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden: Sequence[int] = (),
        rngs: nnx.Rngs,
    ):
        height, width, cin = input_shape
        self.config = tuple(config)
        features = []
        for entry in self.config:
            if entry == "M":
                height, width = height // 2, width // 2
            else:
                features.append(ConvBlock(cin, int(entry), 3, rngs))
                cin = int(entry)
        self.features = nnx.List(features)
        widths = (cin * height * width, *hidden)
        self.head = nnx.List([_dense(a, b, rngs) for a, b in itertools.pairwise(widths)])
        self.classifier = _dense(widths[-1], num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        blocks = iter(self.features)
        for entry in self.config:
            x = _max_pool(x) if entry == "M" else next(blocks)(x)
        x = x.reshape(x.shape[0], -1)
        for layer in self.head:
            x = nnx.relu(layer(x))
        return self.classifier(x)


class BasicBlock(nnx.Module):
    """Two 3x3 conv/BN layers with a residual connection. ``shortcut='conv'`` projects with a
    1x1 conv + BN when the shape changes (ResNet-18); ``'pad'`` subsamples and zero-pads the
    channels (option A of He et al., ResNet-56)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, rngs, stride=stride, padding=1, use_bias=False)
        self.bn1 = _batch_norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, rngs, padding=1, use_bias=False)
        self.bn2 = _batch_norm(cout, rngs)
        self.stride = stride
        self.extra_channels = cout - cin
        needs_projection = shortcut == "conv" and (stride != 1 or cin != cout)
        self.projection = (
            ConvBlock(cin, cout, 1, rngs, stride=stride, use_bias=False)
            if needs_projection
            else None
        )

    def _shortcut(self, x: jax.Array) -> jax.Array:
        if self.projection is not None:
            # ConvBlock ends in a ReLU; the projection shortcut must not.
            return self.projection.bn(self.projection.conv(x))
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :: self.stride, :: self.stride, :]
        half = self.extra_channels // 2
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (half, self.extra_channels - half)))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + self._shortcut(x))


class ResNet(nnx.Module):
    """CIFAR ResNet: 3x3 stem, stages of :class:`BasicBlock`, global average pool, linear
    ``classifier``. Paths ``stem/conv/kernel``, ``stages/s/b/conv1/kernel``..."""

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        shortcut: str,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.stem = ConvBlock(input_shape[-1], widths[0], 3, rngs, use_bias=False)
        cin = widths[0]
        stages = []
        for index, (cout, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, shortcut, rngs))
                cin = cout
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.classifier = _dense(cin, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.classifier(jnp.mean(x, axis=(1, 2)))


class EncoderBlock(nnx.Module):
    """A pre-norm transformer block: ``x + attention(norm1(x))``, then ``x + fc2(gelu(fc1(
    norm2(x))))``."""

    def __init__(self, width: int, heads: int, hidden: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            heads, width, kernel_init=_TORCH_KERNEL_INIT, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc1 = _dense(width, hidden, rngs)
        self.fc2 = _dense(hidden, width, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class VisionTransformer(nnx.Module):
    """A small ViT: non-overlapping ``patch`` x ``patch`` patches embedded by a linear
    ``stem``, a learned position embedding, :class:`EncoderBlock` s, a final LayerNorm, the
    mean over tokens and a linear ``classifier``."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        patch: int,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        hidden: int = 128,
        rngs: nnx.Rngs,
    ):
        height, breadth, channels = input_shape
        if height % patch or breadth % patch:
            raise ValueError(f"patch {patch} must divide the image sides, got {input_shape!r}")
        self.patch = patch
        tokens = (height // patch) * (breadth // patch)
        self.stem = _dense(patch * patch * channels, width, rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, width)))
        self.blocks = nnx.List([EncoderBlock(width, heads, hidden, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.classifier = _dense(width, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, height, breadth, channels = x.shape
        p = self.patch
        x = x.reshape(n, height // p, p, breadth // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
        x = self.stem(x.reshape(n, -1, p * p * channels)) + self.position[...]
        for block in self.blocks:
            x = block(x)
        return self.classifier(jnp.mean(self.norm(x), axis=1))


def _vit_patch(input_shape: Sequence[int]) -> int:
    height, breadth, _ = input_shape
    return next(p for p in (7, 4, 2, 1) if height % p == 0 and breadth % p == 0)


def create_model(
    name: str,
    *,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    seed: int = 0,
    dropout: float = 0.1,
) -> nnx.Module:
    """Builds one of :data:`MODEL_NAMES`.

    Args:
      name: the model name.
      input_shape: ``(height, width, channels)`` of one image.
      num_classes: number of outputs.
      seed: parameter initialisation seed (the dropout stream uses ``seed + 1``).
      dropout: channel dropout rate of ``simplenet`` (ignored by the other models).

    Returns:
      The NNX module, in training mode.

    Raises:
      ValueError: for an unknown name or an input shape the model cannot take.
    """
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    fan_in = math.prod(input_shape)
    if name == "lenet300_100":
        return MLP((fan_in, 300, 100, num_classes), rngs=rngs)
    if name == "lfc4":
        return MLP((fan_in, *LFC4_WIDTHS, num_classes), rngs=rngs)
    if name == "net4":
        return Net4(input_shape, num_classes, rngs=rngs)
    if name == "simplenet":
        return SimpleNet(input_shape, num_classes, dropout=dropout, rngs=rngs)
    if name in ("vgg16", "vgg19"):
        return VGG(_VGG_CONFIGS[name], input_shape, num_classes, rngs=rngs)
    if name == "vgg_l0":
        return VGG(_VGG_CONFIGS[name], input_shape, num_classes, hidden=(32,), rngs=rngs)
    if name == "resnet18":
        return ResNet(
            (64, 128, 256, 512), (2, 2, 2, 2), "conv", input_shape, num_classes, rngs=rngs
        )
    if name == "resnet56":
        return ResNet((16, 32, 64), (9, 9, 9), "pad", input_shape, num_classes, rngs=rngs)
    if name == "resnet20":
        return ResNet((16, 32, 64), (3, 3, 3), "pad", input_shape, num_classes, rngs=rngs)
    if name == "vit_tiny":
        return VisionTransformer(input_shape, num_classes, patch=_vit_patch(input_shape), rngs=rngs)
    raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")


def default_constrained_layers(name: str) -> str:
    """Regex (searched in ``'/'``-joined parameter paths) of the kernels a sparsity constraint
    acts on by default: Guyard & Barlaud's choice for Net4 (``conv2`` and ``fc1``: the first and
    last
    layers are the most sensitive), every kernel but the first and the classifier for the conv
    nets, every kernel but the last for the fully connected nets, and every block's for the
    transformer."""
    if name == "net4":
        return r"^(conv2|fc1)/kernel$"
    if name == "lenet300_100":
        return r"^fc[12]/kernel$"
    if name == "lfc4":
        return r"^fc[1-4]/kernel$"
    if name == "vit_tiny":  # every block's attention and MLP; not the patch embedding, the head
        return r"^blocks/.*kernel$"
    if name in MODEL_NAMES:
        first = r"blocks/0/|features/0/|stem/"
        return rf"^(?!.*({first}|classifier|head/)).*kernel$"
    raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` leaves)."""
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _eqn_maccs(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (contract_lhs, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        depth = math.prod(lhs_shape[axis] for axis in contract_lhs)
        return math.prod(eqn.outvars[0].aval.shape) * depth
    if name == "conv_general_dilated":
        kernel_shape = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec
        # rhs_spec lists (out, in, spatial...) axes; the kernel's output axis is not summed over.
        per_output = math.prod(kernel_shape[axis] for axis in spec[1:])
        return math.prod(eqn.outvars[0].aval.shape) * per_output
    return 0


def _jaxpr_maccs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_maccs(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_maccs(sub)
    return total


def count_maccs(model: nnx.Module, input_shape: Sequence[int]) -> int:
    """Dense multiply-accumulates of one forward pass on one image, counted from the traced
    program (every ``dot_general`` and convolution; BN, ReLU and pooling are not MACCs)."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    image = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed = jax.make_jaxpr(forward)(state, image)
    return _jaxpr_maccs(closed.jaxpr)
