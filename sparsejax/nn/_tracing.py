"""Finding the Dense/Conv layers of a Flax model, and the units that can be cut out of them.

Private helpers shared by :mod:`sparsejax.metrics` and :mod:`sparsejax.surgery`. Flax is
imported lazily so that ``import sparsejax`` works without it.

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

import contextlib
import dataclasses
import functools
import itertools
import operator
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[Any, ...]
Hook = Callable[[str, Any, jax.Array, Callable[[jax.Array], jax.Array]], jax.Array]

# Relative spread below which an input unit counts as constant over the example batch.
_CONSTANT_RTOL = 1e-6


def path_name(path: Path) -> str:
    """``('blocks', 0, 'conv')`` -> ``'blocks/0/conv'``."""
    return "/".join(str(key) for key in path)


def _is_nnx_module(model: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:
        return False
    return isinstance(model, nnx.Module)


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
class Call:
    """One intercepted layer call."""

    kind: str  # "dense", "conv" or "norm"
    path: Path
    module: Any
    input_shape: tuple[int, ...]  # before any gather of live inputs
    output_shape: tuple[int, ...]
    input_index: np.ndarray | None  # the layer reads x[..., input_index] (after a surgery)
    output_dtype: Any = None


class _NnxModel:
    """Runs an NNX model (an evaluation-mode clone) with its layer calls intercepted."""

    def __init__(self, model: Any):
        from flax import nnx

        self._nnx = nnx
        self.model = nnx.clone(model)
        self.model.eval()
        modules = [
            (tuple(path), node)
            for path, node in nnx.iter_graph(self.model)
            if isinstance(node, nnx.Module)
        ]
        self._paths = {id(node): path for path, node in modules}
        self.kinds = ((nnx.Linear, "dense"), (nnx.Conv, "conv"), (nnx.BatchNorm, "norm"))
        # Subclasses that define their own __call__ (a user's, or surgery's input-selecting
        # layers) are wrapped too, so that the hook sees the input before any gather.
        self._classes = {}
        for _, node in modules:
            kind = _kind_of(node, self.kinds)
            for cls in type(node).__mro__ if kind else ():
                if "__call__" in cls.__dict__ and issubclass(cls, nnx.Module):
                    self._classes.setdefault(cls, kind)
        self._classes.update({cls: kind for cls, kind in self.kinds})

    def __call__(self, x: jax.Array) -> Any:
        return self.model(x)

    def path(self, module: Any) -> Path:
        return self._paths[id(module)]

    def input_index(self, module: Any) -> np.ndarray | None:
        index = getattr(module, "input_index", None)
        return None if index is None else np.asarray(index, np.int64)

    @contextlib.contextmanager
    def intercept(self, hook: Hook) -> Iterator[None]:
        originals = [(cls, kind, cls.__dict__["__call__"]) for cls, kind in self._classes.items()]
        inside: set[int] = set()  # modules whose outermost __call__ is running

        def wrapped(kind: str, original: Callable) -> Callable:
            @functools.wraps(original)
            def __call__(module, inputs, *args, **kwargs):
                if id(module) in inside:
                    return original(module, inputs, *args, **kwargs)
                inside.add(id(module))
                try:
                    return hook(
                        kind, module, inputs, lambda x: original(module, x, *args, **kwargs)
                    )
                finally:
                    inside.discard(id(module))

            return __call__

        try:
            for cls, kind, original in originals:
                cls.__call__ = wrapped(kind, original)
            yield
        finally:
            for cls, _, original in originals:
                cls.__call__ = original

    def arrays(self, call: Call) -> dict[str, np.ndarray]:
        names = ("kernel", "bias", "scale", "mean", "var")
        found = {name: getattr(call.module, name, None) for name in names}
        return {name: np.asarray(var[...]) for name, var in found.items() if var is not None}

    def param_leaves(self) -> list[tuple[Path, np.ndarray]]:
        state = self._nnx.state(self.model, self._nnx.Param)
        leaves = jax.tree_util.tree_leaves_with_path(state)
        return [(_key_path(path), np.asarray(leaf)) for path, leaf in leaves]


class _LinenModel:
    """Runs ``apply_fn(variables, x)`` with Linen layer calls intercepted."""

    def __init__(self, apply_fn: Callable, variables: Any, input_indices: dict | None = None):
        import flax.linen as nn

        self._nn = nn
        self.apply_fn = apply_fn
        self.variables = variables
        self._input_indices = input_indices or {}
        self.kinds = ((nn.Dense, "dense"), (nn.Conv, "conv"), (nn.BatchNorm, "norm"))

    def __call__(self, x: jax.Array) -> Any:
        return self.apply_fn(self.variables, x)

    def path(self, module: Any) -> Path:
        return tuple(module.scope.path)

    def input_index(self, module: Any) -> np.ndarray | None:
        index = self._input_indices.get(self.path(module))
        return None if index is None else np.asarray(index, np.int64)

    @contextlib.contextmanager
    def intercept(self, hook: Hook) -> Iterator[None]:
        def interceptor(next_fun, args, kwargs, context):
            kind = _kind_of(context.module, self.kinds)
            if kind is None or context.method_name != "__call__" or not args:
                return next_fun(*args, **kwargs)
            inputs, *rest = args
            return hook(kind, context.module, inputs, lambda x: next_fun(x, *rest, **kwargs))

        with self._nn.intercept_methods(interceptor):
            yield

    def arrays(self, call: Call) -> dict[str, np.ndarray]:
        found = {}
        for collection in ("params", "batch_stats"):
            node = self.variables.get(collection, {})
            for key in call.path:
                node = node.get(key, {}) if hasattr(node, "get") else {}
            found.update({name: np.asarray(value) for name, value in dict(node).items()})
        return found

    def param_leaves(self) -> list[tuple[Path, np.ndarray]]:
        leaves = jax.tree_util.tree_leaves_with_path(self.variables.get("params", {}))
        return [(_key_path(path), np.asarray(leaf)) for path, leaf in leaves]


def _kind_of(module: Any, kinds: tuple[tuple[type, str], ...]) -> str | None:
    for cls, kind in kinds:
        if isinstance(module, cls):
            return kind
    return None


def _key_path(path: tuple[Any, ...]) -> Path:
    keys = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                keys.append(getattr(key, attr))
                break
    while keys and keys[-1] in ("value", "raw_value"):
        keys.pop()
    return tuple(keys)


def wrap_model(model: Any, variables: Any) -> _NnxModel | _LinenModel:
    """Validates the ``(model, variables)`` pair and returns the runner for it."""
    if _is_nnx_module(model):
        if variables is not None:
            raise ValueError(
                "variables must be None for an NNX model (its parameters live in the module), "
                f"got {type(variables).__name__}"
            )
        return _NnxModel(model)
    if hasattr(model, "input_indices") and hasattr(model, "variables"):
        # A ShrunkenLinenModel: its layers gather their live inputs inside our hook.
        variables = model.variables if variables is None else variables
        return _LinenModel(model.apply, variables, model.input_indices)
    if variables is None:
        raise ValueError(
            "variables is required for a Linen module or an apply function "
            f"(model={type(model).__name__}), got None"
        )
    apply_fn = getattr(model, "apply", model)
    if not callable(apply_fn):
        raise ValueError(
            "model must be an nnx.Module, a linen.Module or a callable apply_fn(variables, x), "
            f"got {type(model).__name__}"
        )
    return _LinenModel(apply_fn, variables)


def _check_example_input(example_input: Any) -> jax.Array:
    if not hasattr(example_input, "shape") or np.ndim(example_input) < 1:
        raise ValueError(
            "example_input must be an array with a leading batch axis, "
            f"got {type(example_input).__name__} of shape {np.shape(example_input)}"
        )
    return jnp.asarray(example_input)


@dataclasses.dataclass
class Layer:
    """A traced Dense or Conv layer, with the BatchNorm that normalises its output if any."""

    call: Call
    arrays: dict[str, np.ndarray]
    input_low: np.ndarray  # per source position, over the example batch and positions
    input_high: np.ndarray
    norm: Call | None = None
    norm_arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return path_name(self.call.path)

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
    def unsupported(self) -> str | None:
        """Why units cannot be cut out of this layer, or None."""
        module = self.call.module
        if self.kind == "conv" and getattr(module, "feature_group_count", 1) != 1:
            return "grouped convolution"
        if self.kind == "conv" and getattr(module, "mask", None) is not None:
            return "masked convolution"
        return None

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
    calls, lows, highs = _observe(runner, x)
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
    network.chain_problem = _chain_problem(runner, x, calls, network)
    return network


def _observe(runner: Any, x: jax.Array) -> tuple[list[Call], list, list]:
    """One jitted run recording the calls and the range of each layer's input units."""
    calls: list[Call] = []

    def run(x):
        calls.clear()
        ranges = []

        def hook(kind, module, inputs, call_next):
            outputs = call_next(inputs)
            index = runner.input_index(module)
            path = runner.path(module)
            call = Call(kind, path, module, inputs.shape, outputs.shape, index, outputs.dtype)
            calls.append(call)
            if kind != "norm":
                axes = tuple(range(inputs.ndim - 1))
                ranges.append((jnp.min(inputs, axis=axes), jnp.max(inputs, axis=axes)))
            return outputs

        with runner.intercept(hook):
            runner(x)
        return ranges

    ranges = jax.device_get(jax.jit(run)(x))
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
    for previous, layer in itertools.pairwise(layers):
        inputs, outputs = layer.source_width, previous.num_outputs
        if inputs % outputs or (inputs != outputs and len(layer.call.input_shape) != 2):
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


@dataclasses.dataclass
class UnitPlan:
    """Which units of one layer survive, and how the removed constant inputs are compensated.

    ``input_index`` gathers the live inputs from the smaller network's input to this layer
    (None when every input that reaches the layer is live).
    """

    live_inputs: np.ndarray
    kept_outputs: np.ndarray
    bias_shift: np.ndarray  # per output unit, from the folded constant inputs
    input_index: np.ndarray | None


def plan_units(network: Network) -> list[UnitPlan]:
    """Dead units of every layer: propagated along the chain, or per layer otherwise."""
    if not network.sequential:
        return [_per_layer_plan(layer) for layer in network.layers]
    return _chain_plan(network.layers)


def _per_layer_plan(layer: Layer) -> UnitPlan:
    connections = layer.connections
    zeros = np.zeros(layer.num_outputs)
    return UnitPlan(connections.any(axis=1), connections.any(axis=0), zeros, None)


def _producers(layers: list[Layer], index: int) -> np.ndarray:
    """For each kernel row of layer ``index``, the output unit of the previous layer feeding
    it; a flatten maps NHWC position ``i`` to channel ``i % channels``."""
    return layers[index].sources % layers[index - 1].num_outputs


def _foldable(producer: Layer, consumer: Layer, producers: np.ndarray) -> np.ndarray:
    """Per output unit of ``producer``: can it be removed when constant, its value folded into
    ``consumer``'s bias?"""
    low, high = consumer.input_low[consumer.sources], consumer.input_high[consumer.sources]
    constant = (high - low) <= _CONSTANT_RTOL * (1.0 + np.abs(low))
    zero = (low == 0) & (high == 0)
    absorbable = consumer.bias is not None and consumer.folds_constants
    ok = constant & (zero | absorbable)
    failures = np.bincount(producers, weights=~ok, minlength=producer.num_outputs)
    return failures == 0


def _chain_plan(layers: list[Layer]) -> list[UnitPlan]:
    count = len(layers)
    connections = [layer.connections for layer in layers]
    producers = [None] + [_producers(layers, k) for k in range(1, count)]
    foldable = [_foldable(layers[k], layers[k + 1], producers[k + 1]) for k in range(count - 1)]
    kept = [np.ones(layer.num_outputs, bool) for layer in layers]
    constant = [np.zeros(layer.num_outputs, bool) for layer in layers]
    while True:  # the kept sets only shrink, so this ends
        row_live = [(c & k[None, :]).any(axis=1) for c, k in zip(connections, kept)]
        live = [row_live[0]] + [row_live[k] & kept[k - 1][producers[k]] for k in range(1, count)]
        new_kept = []
        for k in range(count - 1):
            varying = (connections[k] & live[k][:, None]).any(axis=0)
            constant[k] = ~varying & foldable[k]
            consumed = np.bincount(
                producers[k + 1], weights=row_live[k + 1], minlength=len(kept[k])
            )
            new_kept.append(~constant[k] & (consumed > 0))
        new_kept.append(kept[-1])  # the network's outputs stay
        if all(np.array_equal(a, b) for a, b in zip(new_kept, kept)):
            break
        kept = new_kept
    return _assemble(layers, producers, live, kept, constant)


def _assemble(layers, producers, live, kept, constant) -> list[UnitPlan]:
    plans = []
    for k, layer in enumerate(layers):
        shift = np.zeros(layer.num_outputs)
        if k > 0:
            folded = constant[k - 1][producers[k]]
            weights = layer.kernel.astype(np.float64).sum(axis=tuple(range(layer.kernel.ndim - 2)))
            values = np.where(folded, layer.input_low[layer.sources], 0.0)
            shift = values @ np.where(folded[:, None], weights, 0.0)
        plans.append(
            UnitPlan(live[k], kept[k], shift, _input_index(layers, k, live, kept, producers))
        )
    return plans


def _input_index(layers, k, live, kept, producers) -> np.ndarray | None:
    """Positions of layer k's live rows in the smaller network's input to layer k, or None
    when they are that whole input in order (no gather needed)."""
    sources = layers[k].sources
    if k == 0:
        slim_width, slim_position = layers[0].source_width, sources
    else:
        channels, kept_channels = layers[k - 1].num_outputs, int(kept[k - 1].sum())
        slim_width = layers[k].source_width // channels * kept_channels
        rank = np.cumsum(kept[k - 1]) - 1
        slim_position = sources // channels * kept_channels + rank[producers[k]]
    index = slim_position[live[k]]
    return None if np.array_equal(index, np.arange(slim_width)) else index
