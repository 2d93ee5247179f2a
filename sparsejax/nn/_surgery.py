"""Model surgery: cut the dead units out of a sparsified Flax model.

Zeros inside a dense matrix save nothing on ordinary hardware; removing whole input units,
channels, output units and filters does. :func:`remove_dead_units` builds the smaller dense
network that :func:`sparsejax.model_report` counts as *effective*: same outputs, its parameter
count and MACCs equal to the report's ``effective_params`` and ``effective_maccs``.

Usage::

    small = sparsejax.remove_dead_units(model, x_batch)            # NNX: a smaller nnx.Module
    small(x)                                                       # same outputs as model(x)

    small = sparsejax.remove_dead_units(module, x_batch, variables)  # Linen
    small(x); small.apply(small.variables, x)                       # same outputs

Supported: chains of ``Dense``/``Conv`` layers, each optionally followed by a per-channel
``BatchNorm``, with activations, pooling, dropout and flattening between them (MLPs and conv
stacks such as Net4, LeNet, LFC4, VGG, SimpleNet); and other graphs of such layers (residual
networks, concatenations, norms on a stream) through their coupled unit groups: every dead
group (:func:`sparsejax.nn.dead_groups`) is sliced out of every parameter it touches (kernel
rows and columns, biases, BatchNorm scale, bias and statistics; the query/key/value/output
slices of a dead ``nnx.MultiHeadAttention`` head), the constants of zero-written groups are
folded into the biases of the layers that read them, and ``in_features``, ``out_features``,
``kernel_shape``, ``num_features``, ``num_heads`` and a grouped conv's ``feature_group_count``
(its groups go whole: a conv group's channels are one coupled group) follow the smaller arrays;
an ``nnx.Conv``'s ``mask`` is sliced with its kernel. Models whose coupled groups cannot be
analysed (a primitive the analysis does not know, a Linen masked convolution, whose mask is a
constant of the module's code, a layer called twice) are refused with a ``ValueError`` naming
it; so is a cut model whose forward pass no longer runs (an operation of its code uses a static
size that surgery cannot update). Units tied to the entries a ``pad`` adds along a unit axis (a
zero-pad ResNet shortcut) are kept for that reason; the channels it passes through can go.

What happens to a layer ``k`` (see :mod:`sparsejax.metrics` for when a unit is dead):

* its kernel keeps the live input rows/channels and the kept output columns/filters; its bias
  and the following BatchNorm (scale, bias, running mean and variance) keep the kept outputs;
* a removed output unit whose value is a constant ``c`` (no live fan-in: ``act(bias)``,
  possibly through BatchNorm and pooling) is folded into the next layer:
  ``b_{k+1} += sum_i c_i W_{k+1}[..., i, :]`` over the positions ``i`` it fed;
* when the live inputs are not exactly what the smaller previous layer produces (the network's
  own input features, or some flattened positions of a live conv channel), the layer gathers
  them first, ``x[..., index]``, which costs no MACC. For NNX the layer's class is then
  swapped for a subclass of it (``InputSelecting<Class>``) that stores ``input_index``; the
  model's attribute paths (``fc1/kernel``...) are unchanged.

NNX models come back as a new module of the same structure (the original is untouched, in the
same train/eval mode), to be used and trained as usual. Linen models come back as a
:class:`ShrunkenLinenModel` holding the smaller ``variables`` and applying the original module
with its Dense/Conv/BatchNorm calls redirected to the smaller arrays.

Reference: Guyard & Barlaud (2020), "vanishing columns" reduce memory and MACCs (section III).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import _optional
from sparsejax.nn import _calls, _dead, _tracing, _units

__all__ = ["ShrunkenLinenModel", "remove_dead_units"]

# Outputs of the smaller model must match the original's within this (relative to max |y|).
_OUTPUT_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class _Cut:
    """How one traced layer (and its BatchNorm) is cut down."""

    layer: _tracing.Layer
    plan: _units.UnitPlan

    def kernel(self) -> np.ndarray:
        kernel = self.layer.kernel[..., self.plan.live_inputs, :]
        return kernel[..., self.plan.kept_outputs]

    def bias(self) -> np.ndarray | None:
        if self.layer.bias is None:
            return None
        shifted = self.layer.bias + self.plan.bias_shift.astype(self.layer.bias.dtype)
        return shifted[self.plan.kept_outputs]

    def norm_arrays(self) -> dict[str, np.ndarray]:
        return {name: a[self.plan.kept_outputs] for name, a in self.layer.norm_arrays.items()}

    @property
    def num_inputs(self) -> int:
        return int(self.plan.live_inputs.sum())

    @property
    def num_outputs(self) -> int:
        return int(self.plan.kept_outputs.sum())


def remove_dead_units(
    model: Any, example_input: Any, variables: Any = None, *, check_outputs: bool = True
) -> Any:
    """Builds the smaller dense model without the dead units of a sparsified model.

    Args:
      model: an ``nnx.Module``, a ``linen.Module``, or ``apply_fn(variables, x)``: a chain of
        Dense/Conv layers (with BatchNorm, activations, pooling, flatten between them), or a
        graph of them that :func:`sparsejax.nn.dead_groups` reads (residual, concatenation).
      example_input: a batch of inputs; used to trace the layers and read the constant values
        that removed units leave behind.
      variables: Linen variables; None for NNX.
      check_outputs: compare the smaller model's outputs with the original's on
        ``example_input`` (evaluation mode) and raise if they differ.

    Returns:
      For NNX, a new ``nnx.Module`` of the same structure with smaller arrays. For Linen, a
      :class:`ShrunkenLinenModel`.

    Raises:
      ValueError: for an unsupported model or input (see :func:`sparsejax.model_report`), a
        non-chain model whose coupled groups cannot be cut (naming the operation; also when
        the cut model's forward pass fails, an operation of its code using a static size), or,
        with ``check_outputs``, outputs that changed by more than 1e-4 of their largest magnitude
        (an operation between layers mixes units).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    >>> model.layers[0].kernel[:, 1] = 0.0  # output unit 1 of the first layer is now constant
    >>> small = remove_dead_units(model, jnp.ones((2, 4)))
    >>> small.layers[0].kernel.shape, small.layers[2].kernel.shape
    ((4, 2), (2, 2))
    >>> x = jnp.arange(8.0).reshape(2, 4)
    >>> bool(jnp.allclose(small(x), model(x), atol=1e-5))
    True
    """
    _optional.require_flax("sparsejax.remove_dead_units")
    network = _tracing.trace(model, example_input, variables)
    if not network.sequential:
        small, reference, candidate = _cut_coupled(model, example_input, variables, network)
        _check_runs(model, candidate, jnp.asarray(example_input))
        if check_outputs:
            _check_same_outputs(reference, candidate, jnp.asarray(example_input))
        return small
    cuts = [_Cut(layer, plan) for layer, plan in zip(network.layers, _units.plan_units(network))]
    if _calls._is_nnx_module(model):
        small = _shrink_nnx(model, cuts)
        reference, candidate = _nnx_eval(model), _nnx_eval(small)
    else:
        runner = _calls.wrap_model(model, variables)
        # Cutting a ShrunkenLinenModel again starts from its original apply_fn: the new
        # input indices are positions in the original layers' inputs.
        apply_fn = getattr(model, "apply_fn", runner.apply_fn)
        small = ShrunkenLinenModel(apply_fn, _shrink_variables(runner.variables, cuts), cuts)
        reference, candidate = runner, small
    _check_runs(model, candidate, jnp.asarray(example_input))
    if check_outputs:
        _check_same_outputs(reference, candidate, jnp.asarray(example_input))
    return small


def _cut_coupled(model, example_input, variables, network):
    """Surgery on a non-chain model: every dead coupled group is sliced out of every parameter
    it touches; returns the smaller model and the reference to check it against."""
    runner = _calls.wrap_model(model, variables)
    try:
        plan = _dead._plan(network, runner, example_input)
    except ValueError as error:
        raise ValueError(
            f"model {type(model).__name__} cannot be cut: it is not a chain "
            f"({network.chain_problem}) and its coupled groups cannot be cut: {error}"
        ) from error
    if _calls._is_nnx_module(model):
        small = _shrink_nnx_coupled(model, plan)
        return small, _nnx_eval(model), _nnx_eval(small)
    cuts = [_Cut(layer, plan.layer_plan(layer)) for layer in network.layers]
    apply_fn = getattr(model, "apply_fn", runner.apply_fn)
    variables = _slice_tree(runner.variables, plan)
    sizes = {}
    for call in plan.attentions:  # heads, q/k/v features and outputs from the smaller kernels
        _, heads, depth = _lookup(variables, ("params", *call.path, "query", "kernel")).shape
        features = _lookup(variables, ("params", *call.path, "out", "kernel")).shape[-1]
        sizes[call.path] = {
            "num_heads": heads,
            "qkv_features": heads * depth,
            "out_features": features,
        }
    small = ShrunkenLinenModel(apply_fn, variables, cuts, sizes)
    return small, runner, small


def _slice_tree(tree: Any, plan: _dead.CoupledPlan) -> Any:
    """``tree`` (NNX state or Linen variables) with the plan's bias shifts added and every
    leaf sliced to its kept indices."""
    from sparsejax.transforms import path_string

    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    new = []
    for path, leaf in leaves:
        name = path_string(path)
        if _dead.is_key(leaf):
            new.append(leaf)
            continue
        array = np.asarray(leaf)
        if name in plan.shifts:
            array = array + plan.shifts[name].astype(array.dtype)
        masks = plan.kept.get(name)
        if masks is not None and array.ndim and not all(m.all() for m in masks):
            array = array[np.ix_(*[np.flatnonzero(m) for m in masks])]
        new.append(jnp.asarray(array, dtype=jnp.result_type(leaf)))
    return jax.tree_util.tree_unflatten(treedef, new)


def _shrink_nnx_coupled(model: Any, plan: _dead.CoupledPlan) -> Any:
    from flax import nnx

    small = nnx.clone(model)
    graphdef, state = nnx.split(small)
    small = nnx.merge(graphdef, _slice_tree(state, plan))
    for _, node in nnx.iter_graph(small):
        # The layers' size attributes follow their (smaller) arrays.
        if isinstance(node, nnx.Linear):
            node.in_features, node.out_features = node.kernel.shape
        elif isinstance(node, nnx.Conv):
            _resize_conv(node)
        elif isinstance(node, nnx.BatchNorm):
            node.num_features = int(node.mean.shape[0])
        elif isinstance(node, nnx.MultiHeadAttention):
            _resize_attention(node)
    return small


def _kept_groups(groups: int, outputs: int, kept_outputs: int) -> int:
    """A grouped conv's group count after a cut: surgery removes whole groups (a conv group's
    channels are one coupled group), so each kept group has its former number of outputs."""
    return groups if groups == 1 else kept_outputs // (outputs // groups)


def _resize_conv(node: Any) -> None:
    """A conv's sizes from its (smaller) kernel."""
    per_group_inputs, outputs = node.kernel.shape[-2:]
    groups = _kept_groups(node.feature_group_count, node.out_features, outputs)
    node.feature_group_count = groups
    node.in_features, node.out_features = per_group_inputs * groups, outputs
    node.kernel_shape = tuple(node.kernel.shape)


def _resize_attention(node: Any) -> None:
    """Sets the sizes of a cut ``nnx.MultiHeadAttention`` and of its projections from their
    (smaller) kernels: q/k/v ``(in, heads, depth)``, out ``(heads, v_depth, features)``."""
    for projection in (node.query, node.key, node.value):
        inputs, heads, depth = projection.kernel.shape
        projection.in_features, projection.out_features = (inputs,), (heads, depth)
    heads, v_depth, features = node.out.kernel.shape
    node.out.in_features, node.out.out_features = (heads, v_depth), (features,)
    node.num_heads, node.head_dim = heads, node.query.kernel.shape[2]
    node.qkv_features = heads * node.head_dim
    node.in_features, node.out_features = node.query.kernel.shape[0], features


def _nnx_eval(model: Any) -> Any:
    from flax import nnx

    clone = nnx.clone(model)
    clone.eval()
    return clone


def _check_runs(model: Any, candidate: Callable, x: jax.Array) -> None:
    """Refuses a cut model whose forward pass no longer traces: an operation of the model's
    code uses a static size (a reshape, a constant array) that surgery cannot update."""
    try:
        jax.eval_shape(lambda x: candidate(x), x)
    except (TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"model {type(model).__name__} cannot be cut: after removing its dead units "
            f"its forward pass fails ({first}): an operation of the model's code "
            "depends on a static size that surgery cannot update"
        ) from error


def _compiled_outputs(model: Any, x: jax.Array) -> list[jax.Array]:
    """``model(x)``'s leaves from one compiled program (much cheaper than op-by-op dispatch of
    a conv net) that takes the weights as arguments: see ``_calls._NnxModel.pure``."""
    runner = model
    if not isinstance(model, (_calls._NnxModel, _calls._LinenModel)):
        runner = _calls.wrap_model(model, None)
    fn, tree = runner.pure()
    return jax.tree_util.tree_leaves(jax.jit(fn)(tree, x))


def _check_same_outputs(reference: Any, candidate: Any, x: jax.Array) -> None:
    expected = _compiled_outputs(reference, x)
    found = _compiled_outputs(candidate, x)
    scale = max((float(jnp.max(jnp.abs(y))) for y in expected), default=0.0)
    error = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(expected, found))
    if not error <= _OUTPUT_RTOL * max(scale, 1.0):
        raise ValueError(
            f"removing dead units changed the outputs on example_input by {error:.3g} "
            f"(largest output {scale:.3g}): something between the layers mixes units or "
            "channels (e.g. LayerNorm), which remove_dead_units does not support"
        )


_SELECTING_CLASSES: dict[type, type] = {}
_SELECTING_BASES: dict[type, type] = {}


def _input_selecting_class(cls: type) -> type:
    """A subclass of the NNX layer ``cls`` that first gathers ``x[..., input_index]``."""
    if cls not in _SELECTING_CLASSES:

        def __call__(self, inputs, *args, **kwargs):
            selected = inputs[..., jnp.asarray(self.input_index, jnp.int32)]
            return cls.__call__(self, selected, *args, **kwargs)

        selecting = type(
            f"InputSelecting{cls.__name__}",
            (cls,),
            {
                "__call__": __call__,
                "__module__": __name__,
                "__doc__": _input_selecting_class.__doc__,
            },
        )
        _SELECTING_CLASSES[cls], _SELECTING_BASES[selecting] = selecting, cls
    return _SELECTING_CLASSES[cls]


def _shrink_nnx(model: Any, cuts: list[_Cut]) -> Any:
    from flax import nnx

    small = nnx.clone(model)
    modules = {
        tuple(path): node for path, node in nnx.iter_graph(small) if isinstance(node, nnx.Module)
    }
    for cut in cuts:
        layer = modules[cut.layer.call.path]
        _set_array(layer, "kernel", cut.kernel())
        _set_array(layer, "bias", cut.bias())
        layer.in_features, layer.out_features = cut.num_inputs, cut.num_outputs
        if cut.layer.kind == "conv":
            layer.kernel_shape = tuple(cut.kernel().shape)
        base = _SELECTING_BASES.get(type(layer), type(layer))
        if cut.plan.input_index is None:
            layer.__class__ = base
            if hasattr(layer, "input_index"):
                delattr(layer, "input_index")
        else:
            layer.__class__ = _input_selecting_class(base)
            layer.input_index = tuple(int(i) for i in cut.plan.input_index)
        if cut.layer.norm is not None:
            norm = modules[cut.layer.norm.path]
            for name, array in cut.norm_arrays().items():
                _set_array(norm, name, array)
            norm.num_features = cut.num_outputs
    return small


def _set_array(module: Any, name: str, array: np.ndarray | None) -> None:
    variable = getattr(module, name, None)
    if variable is not None and array is not None:
        variable.set_value(jnp.asarray(array, dtype=variable.get_value().dtype))


def _shrink_variables(variables: Any, cuts: list[_Cut]) -> Any:
    """Linen variables with each cut layer's arrays replaced by the smaller ones."""
    small = _to_dict(variables)
    for cut in cuts:
        arrays = {"kernel": cut.kernel(), "bias": cut.bias()}
        _replace(small, "params", cut.layer.call.path, arrays)
        if cut.layer.norm is not None:
            norm = cut.norm_arrays()
            path = cut.layer.norm.path
            _replace(small, "params", path, {k: norm.get(k) for k in ("scale", "bias")})
            _replace(small, "batch_stats", path, {k: norm.get(k) for k in ("mean", "var")})
    return small


def _to_dict(tree: Any) -> Any:
    if hasattr(tree, "items"):
        return {key: _to_dict(value) for key, value in tree.items()}
    return tree


def _replace(tree: dict, collection: str, path: tuple, arrays: dict) -> None:
    node = tree.get(collection)
    for key in path:
        if node is None:
            return
        node = node.get(key)
    for name, array in arrays.items():
        if node is not None and array is not None and name in node:
            node[name] = jnp.asarray(array, dtype=node[name].dtype)


class ShrunkenLinenModel:
    """A Linen model with its dead units removed.

    Calling it (or :meth:`apply`) runs the original ``apply_fn`` under
    :meth:`interceptor`: each cut Dense/Conv layer gathers its live inputs when needed and runs
    with its feature count set to the smaller one, so Flax's own layer code uses the smaller
    arrays found at its path in ``variables`` (BatchNorm takes its size from its input).
    ``variables`` has the original's structure with smaller arrays and can be trained further
    with :meth:`apply`. ``sparsejax.model_report(small, x)`` reports on it.

    Attributes:
      apply_fn: the original ``apply_fn(variables, x, ...)``.
      variables: the smaller variables.
      input_indices: ``{module path: index or None}``, the inputs each cut layer gathers.
      attention_sizes: ``{module path: {"num_heads": ..., ...}}``, the sizes a cut
        ``MultiHeadDotProductAttention`` runs with.
    """

    def __init__(
        self,
        apply_fn: Callable,
        variables: Any,
        cuts: list[_Cut],
        attention_sizes: dict | None = None,
    ):
        self.apply_fn = apply_fn
        self.variables = variables
        self.input_indices = {cut.layer.call.path: cut.plan.input_index for cut in cuts}
        self.attention_sizes = dict(attention_sizes or {})

    def interceptor(self, variables: Any) -> Callable:
        """The ``flax.linen.intercept_methods`` interceptor that runs the cut layers."""

        def interceptor(next_fun, args, kwargs, context):
            path = tuple(context.module.scope.path)
            if path in self.attention_sizes and context.method_name == "__call__":
                with _attributes_set_to(context.module, **self.attention_sizes[path]):
                    return next_fun(*args, **kwargs)
            if path not in self.input_indices or context.method_name != "__call__" or not args:
                return next_fun(*args, **kwargs)
            inputs, *rest = args
            index = self.input_indices[path]
            if index is not None:
                inputs = inputs[..., jnp.asarray(index, jnp.int32)]
            features = _lookup(variables, ("params", *path, "kernel")).shape[-1]
            sizes = {"features": features}
            groups = getattr(context.module, "feature_group_count", 1)
            if groups > 1:
                sizes["feature_group_count"] = _kept_groups(
                    groups, context.module.features, features
                )
            with _attributes_set_to(context.module, **sizes):
                return next_fun(inputs, *rest, **kwargs)

        return interceptor

    def apply(self, variables: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``apply_fn(variables, x, *args, **kwargs)`` with the cut layers."""
        import flax.linen as nn

        with nn.intercept_methods(self.interceptor(variables)):
            return self.apply_fn(variables, x, *args, **kwargs)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self.apply(self.variables, x, *args, **kwargs)


def _lookup(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


@contextlib.contextmanager
def _attributes_set_to(module: Any, **values: Any) -> Iterator[None]:
    """Temporarily changes attributes of a bound Linen module (``features`` of a layer so that
    its parameter shape check accepts the smaller kernel; ``num_heads`` of an attention), as
    Linen modules are frozen dataclasses, hence object.__setattr__."""
    originals = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        object.__setattr__(module, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            object.__setattr__(module, name, value)
