"""Reading the Dense/Conv layers of an NNX model for SIS, through the shared tracer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import _optional
from sparsejax.nn import _calls, _tracing

# --------------------------------------------------------------------------------------------
# Reading layers out of an NNX model
# --------------------------------------------------------------------------------------------


def _nnx():
    return _optional.require_flax("sparsejax.sis_sparsify")


class _ReachedLayer(Exception):
    """Raised inside a forward pass to stop it once the layer of interest has been called."""


def _intercepted_calls(hook: Callable) -> contextlib.AbstractContextManager[None]:
    """Routes every ``nnx.Linear``/``nnx.Conv`` call through ``hook(layer, inputs, call)``,
    with the shared interception of :mod:`sparsejax.nn._calls`."""
    nnx = _nnx()
    classes = {nnx.Linear: "dense", nnx.Conv: "conv"}
    return _calls.intercept_nnx(classes, lambda _, layer, inputs, call: hook(layer, inputs, call))


class _Layer(NamedTuple):
    path: tuple
    name: str
    kind: str
    kernel_shape: tuple[int, ...]


def _layer_info(layer: Any, path: tuple) -> _Layer:
    nnx = _nnx()
    name = _calls.path_name(path)
    kind = "conv" if isinstance(layer, nnx.Conv) else "dense"
    if kind == "conv" and (layer.feature_group_count != 1 or layer.mask is not None):
        raise ValueError(
            f"layer {name!r}: SIS supports convolutions with feature_group_count=1 and no mask, "
            f"got feature_group_count={layer.feature_group_count!r}, "
            f"mask={'set' if layer.mask is not None else None}"
        )
    return _Layer(path, name, kind, tuple(layer.kernel.shape))


def _discover_layers(graphdef: Any, states: tuple, batch: Any) -> list[_Layer]:
    """Lists the model's Dense/Conv layers in the order the forward pass calls them, read by
    the tracer that the metrics and surgery use (:func:`sparsejax.nn._tracing.trace`)."""
    if np.ndim(batch) < 1 or np.shape(batch)[0] == 0:
        raise ValueError(f"batches must hold non-empty batches, got one of shape {np.shape(batch)}")
    model = _nnx().merge(graphdef, *states)
    try:
        network = _tracing.trace(model, batch)
    except ValueError as err:
        if err.__cause__ is None:  # the model ran; it has no layer SIS could sparsify
            raise ValueError(f"{err}; nothing to sparsify") from err
        raise ValueError(
            f"the model cannot run on a batch of shape {np.shape(batch)} from batches: "
            f"{err.__cause__}"
        ) from err
    found: list[_Layer] = []
    for layer in network.layers:
        if layer.call.module is None or layer.kind == "norm":
            continue
        info = _layer_info(layer.call.module, layer.call.path)
        if any(seen.path == info.path for seen in found):
            raise ValueError(
                f"layer {info.name!r} is called more than once per forward pass; SIS needs "
                "each Dense/Conv layer to be called exactly once"
            )
        found.append(info)
    return found


def _module_at(model: Any, path: tuple) -> Any:
    for node_path, node in _nnx().iter_graph(model):
        if node_path == path:
            return node
    raise ValueError(f"no module at path {_calls.path_name(path)!r}")


def _run_to_layer(graphdef, states, path, batch, *, with_output: bool):
    """Runs the model until layer ``path``; returns the layer, its inputs and its output."""
    nnx = _nnx()
    model = nnx.merge(graphdef, *states)
    target = _module_at(model, path)
    captured = {}

    def hook(layer, inputs, call):
        if layer is not target:
            return call(inputs)
        captured["inputs"] = inputs
        if with_output:
            captured["outputs"] = call(inputs)
        raise _ReachedLayer

    with _intercepted_calls(hook), contextlib.suppress(_ReachedLayer):
        model(batch)
    return target, captured["inputs"], captured.get("outputs")


def _layer_apply(layer: Any, params: Mapping[str, jax.Array], inputs: jax.Array) -> jax.Array:
    """Calls a copy of ``layer`` whose kernel (and bias) are ``params``: its own geometry."""
    nnx = _nnx()
    copy = nnx.merge(*nnx.split(layer))
    copy.kernel = nnx.Param(params["kernel"])
    if "bias" in params:
        copy.bias = nnx.Param(params["bias"])
    return copy(inputs)


def _sample_norms(layer: Any, params: Mapping[str, jax.Array], inputs: jax.Array) -> jax.Array:
    """``nu = ||x||^2 + 1`` per output position: the layer with an all-ones kernel on ``x**2``
    sums each receptive-field patch of squares, whatever the padding, stride or dilation."""
    kernel = params["kernel"]
    ones = {"kernel": jnp.ones((*kernel.shape[:-1], 1), kernel.dtype)}
    if "bias" in params:
        ones["bias"] = jnp.zeros((1,), kernel.dtype)
    return _layer_apply(layer, ones, inputs * inputs) + 1


def _tree_keys(key_path: tuple) -> tuple:
    keys = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            keys.append(key.key)
        elif isinstance(key, jax.tree_util.SequenceKey):
            keys.append(key.idx)
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            keys.append(key.name)
    return tuple(keys)


def _get_layer_params(params: Any, layer: _Layer) -> dict[str, jax.Array]:
    found = {}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = _tree_keys(key_path)
        if keys[:-1] == layer.path and keys[-1] in ("kernel", "bias"):
            found[keys[-1]] = leaf
    return found


def _set_layer_params(params: Any, layer: _Layer, values: Mapping[str, jax.Array]) -> Any:
    def replace(key_path, leaf):
        keys = _tree_keys(key_path)
        if keys[:-1] == layer.path and keys[-1] in values:
            return values[keys[-1]]
        return leaf

    return jax.tree_util.tree_map_with_path(replace, params)
