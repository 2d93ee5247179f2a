"""Tracing a Flax model into a Network record: its Dense/Conv layers in call order.

The one model-tracing record shared by metrics, surgery and SIS (the layer calls are
intercepted by :mod:`sparsejax.nn._calls`). :class:`Network` holds the layers in call order;
the ``graph`` attributes of :class:`Network` and :class:`Layer` are the place for a dependency
graph (coupled unit groups derived from the jaxpr).

Tracing runs the model on an example input while intercepting every call of
``nnx.Linear`` / ``nnx.Conv`` / ``nnx.BatchNorm`` (a context manager that temporarily wraps
their ``__call__``) or of ``linen.Dense`` / ``linen.Conv`` / ``linen.BatchNorm``
(``flax.linen.intercept_methods``). It records each layer's module path, input and output
shapes, arrays, and the range of every input unit over the example batch.

The network is *sequential* (a chain) when the input of each layer is a function of the
previous layer's output alone, the first layer's of the model input alone and the model output
of the last layer's alone. This is checked on the jaxpr of the model in which every layer's
output is replaced by a free variable, by following data dependencies (so a residual block is
detected). Every parameter must also belong to a traced layer or to a BatchNorm that normalises
a layer's output. Units are assumed to be kept separate by whatever runs between two layers
(activations, BatchNorm, pooling, dropout, flatten): channel-mixing operations such as
LayerNorm between layers are not detected; surgery checks its outputs for that reason.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.nn._calls import (
    Call,
    Path,
    _check_example_input,
    _is_nnx_module,
    path_name,
    wrap_model,
)


def _padding_keeps_constants(padding: Any, input_dilation: Any) -> bool:
    """Whether a spatially constant input channel reaches every output of a conv unchanged,
    so that removing it can be compensated by a bias (zero padding breaks this at borders)."""
    dilations = np.atleast_1d(np.asarray(1 if input_dilation is None else input_dilation))
    if np.any(dilations != 1):
        return False
    if isinstance(padding, str):
        return padding.upper() in ("VALID", "CIRCULAR", "REFLECT")
    return not np.any(np.asarray(padding) != 0)


@dataclasses.dataclass
class Layer:
    """A traced Dense or Conv layer, with the BatchNorm that normalises its output if any."""

    call: Call
    arrays: dict[str, np.ndarray]
    input_low: np.ndarray  # per source position, over the example batch and positions
    input_high: np.ndarray
    norm: Call | None = None
    norm_arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Free slot for a per-layer dependency record (coupled unit groups from the jaxpr).
    graph: Any = None

    @property
    def name(self) -> str:
        return path_name(self.call.path)

    @property
    def kernel_path(self) -> Path:
        """The parameter path of the kernel, e.g. ``('blocks', 0, 'conv', 'kernel')``."""
        return (*self.call.path, "kernel")

    @property
    def kind(self) -> str:
        return self.call.kind

    @property
    def kernel(self) -> np.ndarray:
        return self.arrays["kernel"]

    @property
    def bias(self) -> np.ndarray | None:
        return self.arrays.get("bias")

    @property
    def num_inputs(self) -> int:
        return self.kernel.shape[-2]

    @property
    def sources(self) -> np.ndarray:
        """For each kernel row, the position it reads in the layer's (ungathered) input."""
        index = self.call.input_index
        return np.arange(self.num_inputs) if index is None else index

    @property
    def source_width(self) -> int:
        return self.call.input_shape[-1]

    @property
    def num_outputs(self) -> int:
        return self.kernel.shape[-1]

    @property
    def window(self) -> int:
        """Weights per (input, output) pair: ``kh * kw`` for a conv, 1 for a dense layer."""
        return int(np.prod(self.kernel.shape[:-2], dtype=np.int64))

    @property
    def positions(self) -> int:
        """Output positions per example (``Hout * Wout`` for a 2-D conv)."""
        return int(np.prod(self.call.output_shape[1:-1], dtype=np.int64))

    @property
    def connections(self) -> np.ndarray:
        """``[inputs, outputs]`` bool: whether any weight joins the input unit to the output."""
        axes = tuple(range(self.kernel.ndim - 2))
        return np.any(self.kernel != 0, axis=axes)

    @property
    def masked(self) -> bool:
        """A masked conv (``mask=``): cut by the coupled analysis, which slices an NNX mask
        (a state leaf, multiplied into the kernel in the jaxpr) with its kernel; not by the
        chain analysis. Its MACCs count every kernel weight, masked or not (the dense conv
        that runs)."""
        return self.kind == "conv" and getattr(self.call.module, "mask", None) is not None

    @property
    def unsupported(self) -> str | None:
        """Why units cannot be cut out of this layer by any analysis, or None."""
        if self.masked and not _is_nnx_module(self.call.module):
            # A Linen mask is a constant of the module's code, which surgery cannot resize.
            return "masked convolution (a Linen mask is a module attribute, not a variable)"
        return None

    @property
    def grouped(self) -> bool:
        """A grouped/depthwise conv: cut by the coupled analysis (a conv group's channels
        are one coupled group), not by the chain analysis."""
        return self.kind == "conv" and getattr(self.call.module, "feature_group_count", 1) != 1

    @property
    def folds_constants(self) -> bool:
        """Whether a constant input unit's contribution is a constant per output unit."""
        if self.kind == "dense":
            return True
        module = self.call.module
        return _padding_keeps_constants(
            getattr(module, "padding", "SAME"), getattr(module, "input_dilation", 1)
        )

    def maccs(self, inputs: int, outputs: int) -> int:
        return self.window * inputs * outputs * self.positions

    def param_count(self, inputs: int, outputs: int) -> int:
        count = self.window * inputs * outputs
        count += outputs * (self.bias is not None)
        count += outputs * sum(name in self.norm_arrays for name in ("scale", "bias"))
        return count

    def param_arrays(self) -> list[np.ndarray]:
        arrays = [self.kernel] + ([self.bias] if self.bias is not None else [])
        return arrays + [self.norm_arrays[n] for n in ("scale", "bias") if n in self.norm_arrays]


@dataclasses.dataclass
class Network:
    """The traced layers in call order, every parameter, and whether the layers form a chain."""

    layers: list[Layer]
    params: list[tuple[Path, np.ndarray]]
    chain_problem: str | None  # None when the layers form a chain
    # Every BatchNorm call, in call order (attached to a layer or not).
    norms: list[Call] = dataclasses.field(default_factory=list)
    # Free slot for a whole-model dependency graph (coupled unit groups from the jaxpr).
    graph: Any = None

    @property
    def sequential(self) -> bool:
        return self.chain_problem is None

    def unowned_params(self) -> list[tuple[Path, np.ndarray]]:
        """Parameters that belong to no traced layer (nor to its attached BatchNorm)."""
        owners = {layer.call.path for layer in self.layers}
        owners |= {layer.norm.path for layer in self.layers if layer.norm is not None}
        return [(path, leaf) for path, leaf in self.params if path[:-1] not in owners]


def trace(model: Any, example_input: Any, variables: Any = None) -> Network:
    """Traces the Dense/Conv/BatchNorm calls of a Flax model on an example batch."""
    x = _check_example_input(example_input)
    runner = wrap_model(model, variables)
    try:
        calls, lows, highs = _observe(runner, x)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"the model cannot run on example_input of shape {x.shape} and dtype {x.dtype}: {err}"
        ) from err
    layer_calls = [call for call in calls if call.kind != "norm"]
    if not layer_calls:
        raise ValueError(
            f"model {type(model).__name__} calls no Dense/Conv layer (nnx.Linear, nnx.Conv, "
            "linen.Dense, linen.Conv) on example_input"
        )
    layers = [
        Layer(call, runner.arrays(call), low, high)
        for call, low, high in zip(layer_calls, lows, highs)
    ]
    network = Network(layers, runner.param_leaves(), None)
    network.norms = [call for call in calls if call.kind == "norm"]
    network.chain_problem = _chain_problem(runner, x, calls, network)
    return network


def _observe(runner: Any, x: jax.Array) -> tuple[list[Call], list, list]:
    """One jitted run recording the calls and the range of each layer's input units."""
    calls: list[Call] = []
    forward, tree = runner.pure()

    def run(tree, x):
        calls.clear()
        ranges = []

        def hook(kind, module, inputs, call_next):
            outputs = call_next(inputs)
            module = runner.own(module)
            index = runner.input_index(module)
            path = runner.path(module)
            call = Call(kind, path, module, inputs.shape, outputs.shape, index, outputs.dtype)
            calls.append(call)
            if kind != "norm":
                axes = tuple(range(inputs.ndim - 1))
                ranges.append((jnp.min(inputs, axis=axes), jnp.max(inputs, axis=axes)))
            return outputs

        with runner.intercept(hook):
            forward(tree, x)
        return ranges

    ranges = jax.device_get(jax.jit(run)(tree, x))
    lows = [np.asarray(low, np.float64) for low, _ in ranges]
    highs = [np.asarray(high, np.float64) for _, high in ranges]
    return calls, lows, highs


def _chain_problem(runner: Any, x: jax.Array, calls: list[Call], network: Network) -> str | None:
    """Returns why the traced layers do not form a chain, or None when they do."""
    layers = network.layers
    paths = [layer.call.path for layer in layers]
    if len(set(paths)) != len(paths):
        return "a layer is called more than once (shared weights)"
    for layer in layers:
        if layer.unsupported:
            return f"{layer.name} is a {layer.unsupported}"
        if layer.grouped:
            return f"{layer.name} is a grouped convolution"
        if layer.masked:
            return f"{layer.name} is a masked convolution"
    for previous, layer in itertools.pairwise(layers):
        inputs, outputs = layer.source_width, previous.num_outputs
        # (a layer cut down to no output unit feeds one without inputs: 0 maps onto 0)
        mismatch = inputs % outputs if outputs else inputs
        if mismatch or (inputs != outputs and len(layer.call.input_shape) != 2):
            return (
                f"the input of {layer.name} ({inputs} units) does not map onto the "
                f"{outputs} output units of {previous.name}"
            )
    norm_calls = [call for call in calls if call.kind == "norm"]
    try:
        feeds = _dependencies(runner, x, [layer.call for layer in layers], norm_calls)
    except Exception as error:  # any tracing failure means "not analysable"
        return f"the data flow between layers could not be traced ({type(error).__name__})"
    layer_inputs, norm_inputs, model_outputs = feeds
    for index, (layer, source) in enumerate(zip(layers, layer_inputs)):
        if source != index:
            return f"the input of {layer.name} is not computed from the previous layer alone"
    if any(source != len(layers) for source in model_outputs):
        return "the model output is not computed from the last layer alone"
    problem = _attach_norms(network, norm_calls, norm_inputs, runner)
    if problem is None and network.unowned_params():
        names = ", ".join(path_name(path) for path, _ in network.unowned_params()[:3])
        problem = f"parameters outside Dense/Conv/BatchNorm layers ({names})"
    return problem


def _attach_norms(network: Network, norms: list[Call], sources: list[int], runner: Any):
    for norm, source in zip(norms, sources):
        if not 1 <= source <= len(network.layers):
            return f"BatchNorm {path_name(norm.path)} does not follow a layer"
        layer = network.layers[source - 1]
        axis = getattr(norm.module, "axis", -1)
        arrays = runner.arrays(norm)
        width = np.shape(arrays.get("mean", arrays.get("scale", ())))
        if layer.norm is not None or axis not in (-1, len(norm.input_shape) - 1):
            return f"BatchNorm {path_name(norm.path)} is not a per-channel norm of {layer.name}"
        if width != (layer.num_outputs,):
            return f"BatchNorm {path_name(norm.path)} does not match {layer.name}'s outputs"
        layer.norm, layer.norm_arrays = norm, arrays
    return None


def _dependencies(runner: Any, x: jax.Array, layers: list[Call], norms: list[Call]):
    """Which single source (0: the model input, k: layer k's output) each layer input, each
    BatchNorm input and each model output depends on; -1 for none or several."""
    num_layers = len(layers)
    output_shapes = [jax.ShapeDtypeStruct(c.output_shape, c.output_dtype) for c in layers]

    def cut_run(x, replacements):
        layer_inputs, norm_inputs = [], []
        pending = iter(replacements)

        def hook(kind, module, inputs, call_next):
            if kind == "norm":
                norm_inputs.append(inputs)
                return call_next(inputs)
            layer_inputs.append(inputs)
            return next(pending)

        with runner.intercept(hook):
            outputs = runner(x)
        return layer_inputs, norm_inputs, outputs

    closed = jax.make_jaxpr(cut_run)(x, output_shapes)
    sources = [1] + [1 << (k + 1) for k in range(num_layers)]
    masks = _dependency_masks(closed.jaxpr, sources)
    single = {mask: k for k, mask in enumerate(sources)}
    found = [single.get(mask, -1) for mask in masks]
    num_norms = len(norms)
    return (
        found[:num_layers],
        found[num_layers : num_layers + num_norms],
        found[num_layers + num_norms :],
    )


def _dependency_masks(jaxpr: Any, input_masks: list[int]) -> list[int]:
    """Bitmask of the inputs each output of ``jaxpr`` depends on (conservatively)."""
    from jax.extend.core import Literal

    env: dict[Any, int] = dict(zip(jaxpr.invars, input_masks))

    def mask_of(var):
        return 0 if isinstance(var, Literal) else env.get(var, 0)

    for eqn in jaxpr.eqns:
        masks = [mask_of(var) for var in eqn.invars]
        inner = _inner_jaxpr(eqn)
        if inner is not None:
            out_masks = _dependency_masks(inner, masks)
        else:
            out_masks = [functools.reduce(operator.or_, masks, 0)] * len(eqn.outvars)
        env.update(zip(eqn.outvars, out_masks))
    return [mask_of(var) for var in jaxpr.outvars]


def _inner_jaxpr(eqn: Any) -> Any:
    """The sub-jaxpr of a call-like equation (jit, custom_jvp...), when it maps 1:1."""
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = getattr(eqn.params.get(name), "jaxpr", eqn.params.get(name))
        if (
            hasattr(inner, "eqns")
            and len(inner.invars) == len(eqn.invars)
            and len(inner.outvars) == len(eqn.outvars)
        ):
            return inner
    return None
