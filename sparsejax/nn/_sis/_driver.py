"""``sis_sparsify`` and ``sis_layers``: options, batch streams, the layer-by-layer loop."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import _optional
from sparsejax.nn._sis._fitting import SISLayerRecord, _Settings, _sparsify_layer
from sparsejax.nn._sis._inclusion import _check_activation
from sparsejax.nn._sis._model import _discover_layers, _Layer, _nnx, _set_layer_params

_TARGETS = ("network", "layer")
_BALLS = ("l1", "l11")
_UNITS = ("weights", "inputs")


def _batch_source(batches: Any) -> Callable[[], Iterator[Any]]:
    if callable(batches):
        return lambda: iter(batches())
    if not isinstance(batches, Iterable):
        raise ValueError(f"batches must be an iterable of model inputs, got {type(batches)!r}")
    if iter(batches) is batches:
        raise ValueError(
            "batches must be re-iterable (a list, or a callable returning a fresh iterator): SIS "
            f"passes over it once per layer; got the one-shot iterator {batches!r}"
        )
    return lambda: iter(batches)


def _cycled(source: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in source():
            empty = False
            yield jax.tree.map(jnp.asarray, batch)
        if empty:
            raise ValueError("batches yielded no batch")


def _per_layer(value: Any, layer: _Layer, name: str) -> Any:
    """A scalar applies to every layer; ``{pattern: value}`` to the layers whose kernel path
    (``"fc1/kernel"``) the first matching pattern finds (others get ``None``)."""
    if not isinstance(value, Mapping):
        return value
    for pattern, entry in value.items():
        if re.search(pattern, f"{layer.name}/kernel"):
            return entry
    return None


def _check_mapping_keys(value: Any, layers: list[_Layer], name: str) -> None:
    if not isinstance(value, Mapping):
        return
    names = [f"{layer.name}/kernel" for layer in layers]
    for pattern in value:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"{name} pattern {pattern!r} matches no layer; the layers are {names}")


def _check_level(value: Any, name: str, *, upper: float | None = None) -> None:
    entries = value.values() if isinstance(value, Mapping) else [value]
    for entry in entries:
        number = float(entry) if np.ndim(entry) == 0 else math.nan
        bad = not math.isfinite(number) or number < 0 or (upper is not None and number > upper)
        if bad:
            bound = f"in [0, {upper}]" if upper is not None else "finite and >= 0"
            raise ValueError(f"{name} must be {bound}, got {entry!r}")


def _control(sparsity, radius, penalty, max_error) -> tuple[str, Any]:
    given = {
        name: value
        for name, value in (
            ("sparsity", sparsity),
            ("radius", radius),
            ("penalty", penalty),
            ("max_error", max_error),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError(
            "give exactly one of sparsity, radius, penalty, max_error; got "
            f"{sorted(given) or 'none'}"
        )
    ((name, value),) = given.items()
    _check_level(value, name, upper=1.0 if name == "sparsity" else None)
    return name, value


def _check_options(
    ball, steps, step_size, momentum, ramp, targets, eval_batches, search_steps
) -> None:
    if ball not in _BALLS:
        raise ValueError(f"ball must be one of {_BALLS}, got {ball!r}")
    if targets not in _TARGETS:
        raise ValueError(f"targets must be one of {_TARGETS}, got {targets!r}")
    for name, value in (
        ("steps", steps),
        ("eval_batches", eval_batches),
        ("search_steps", search_steps),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 < step_size < 2:
        raise ValueError(f"step_size must be in (0, 2), got {step_size!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not 0 <= ramp <= 1:
        raise ValueError(f"ramp must be in [0, 1], got {ramp!r}")


def _activations_for(layers: list[_Layer], activations: Any) -> list[str]:
    """ReLU for hidden layers and softmax for the last, unless ``activations`` says otherwise."""
    chosen = []
    for index, layer in enumerate(layers):
        default = "softmax" if index == len(layers) - 1 else "relu"
        if isinstance(activations, str):
            name = activations
        elif activations is None:
            name = default
        else:
            name = _per_layer(activations, layer, "activations") or default
        _check_activation(name, f"activation of layer {layer.name!r}")
        chosen.append(name)
    return chosen


def sis_layers(model: Any, batch: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """Lists the layers :func:`sis_sparsify` acts on, in the order the model calls them.

    Args:
      model: a Flax NNX module; ``model(batch)`` must run.
      batch: one input batch (only its shape and dtype are used).

    Returns:
      ``(path, kind, kernel_shape)`` per ``nnx.Linear``/``nnx.Conv`` layer; ``path`` is what
      per-layer mappings match (as ``path + "/kernel"``).

    Raises:
      ValueError: if a layer is called twice, or the model calls no Dense/Conv layer.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> sis_layers(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 3)))
    [('', 'dense', (3, 2))]
    """
    _optional.require_flax("sparsejax.sis_layers")
    nnx = _nnx()
    graphdef, state = nnx.split(model)
    layers = _discover_layers(graphdef, (state,), batch)
    return [(layer.name, layer.kind, layer.kernel_shape) for layer in layers]


def sis_sparsify(
    model: Any,
    batches: Any,
    *,
    sparsity: Any = None,
    radius: Any = None,
    penalty: Any = None,
    max_error: Any = None,
    ball: str = "l1",
    units: str = "weights",
    activations: Any = None,
    steps: int = 600,
    step_size: float = 1.0,
    momentum: float = 0.9,
    estimate_lipschitz: bool = True,
    ramp: float = 0.5,
    targets: str = "network",
    eval_batches: int = 8,
    search_steps: int = 6,
) -> tuple[Any, list[SISLayerRecord]]:
    r"""Sparsifies a trained NNX model layer by layer with SIS (reconstructed, see the module).

    Each ``nnx.Linear``/``nnx.Conv`` layer, in call order, is fitted from its pretrained
    weights by ``steps`` minibatch steps of projected (or proximal) gradient on

    .. math::

       \varphi(W, b) = \frac1K \sum_k \frac{\|P_{D(y_k)}(u_k) - u_k\|^2}{2(\|x_k\|^2 + 1)},
       \qquad u_k = W^\top x_k + b,

    with ``x_k`` the layer's inputs in the already-sparsified network and ``y_k`` its target
    outputs. Memory is that of one batch: batches are streamed, never stored.

    Exactly one of the four controls is given (a number for every layer, or
    ``{pattern: value}`` matched with ``re.search`` against ``"<layer path>/kernel"``; layers
    no pattern matches are left as they are):

    * ``sparsity`` — fraction of zeros per kernel (projection onto "keep the largest"), or
      with ``units="inputs"`` the fraction of input units removed (keep the input units of
      largest l2 norm: a structured constraint that cuts MACCs).
    * ``radius`` — the kernel is projected onto the ball of that radius: ``ball="l1"``
      (the flattened kernel) or ``ball="l11"`` (the bi-level l1,1 ball, group = input unit,
      which removes whole input neurons/channels).
    * ``penalty`` — :math:`\lambda` of the penalised form (soft threshold at
      :math:`\gamma\lambda/L`).
    * ``max_error`` — the inclusion accuracy: the largest fraction of zeros (bisection over
      ``search_steps`` halvings) whose relative inclusion error stays within ``max_error``.

    The *relative inclusion error* of a layer is
    :math:`\sum_k \|r_k\|^2 / \sum_k \operatorname{dist}(0, D(y_k))^2`: 0 when the layer
    reproduces its targets, 1 for the all-zero layer. Records report it on the first
    ``eval_batches`` batches.

    Args:
      model: a trained Flax NNX module in evaluation mode (``model.eval()``: dropout off,
        batch statistics frozen); ``model(batch)`` must call each Dense/Conv layer once.
        It is not modified.
      batches: model inputs (no labels), re-iterable: a list of arrays, or a callable
        returning a fresh iterator. Steps cycle through it.
      sparsity: fraction of zeros, in [0, 1].
      radius: l1 or l1,1 radius (>= 0).
      penalty: soft-threshold weight :math:`\lambda` (>= 0).
      max_error: largest relative inclusion error allowed (>= 0).
      ball: ``"l1"`` or ``"l11"``, the ball of ``radius``.
      units: what ``sparsity`` and ``max_error`` count: ``"weights"`` or ``"inputs"`` (whole
        input units: kernel rows, conv input channels).
      activations: activation after each layer, from :data:`ACTIVATIONS`: one name for
        every layer, or ``{pattern: name}``; default ReLU for every layer but the last, which
        is softmax. A layer followed by a normalisation should say ``"identity"``.
      steps: minibatch steps per layer (per trial for ``max_error``).
      step_size: :math:`\gamma \in (0, 2)`, in units of :math:`1/L`.
      momentum: inertia :math:`\beta \in [0, 1)` of the step (0: plain forward-backward).
      estimate_lipschitz: divide the step by the estimated curvature :math:`L \le 1` of
        :math:`\varphi` (power iteration on the first ``eval_batches`` batches, see above);
        ``False`` takes :math:`L = 1`.
      ramp: fraction of the steps over which the control moves linearly from its no-op value
        (no zeros; the pretrained kernel's l1 norm; no penalty) to its target (0: at once).
      targets: ``"network"`` — ``y_k`` are the pretrained network's outputs of this layer, so
        the layer also corrects the errors made upstream; ``"layer"`` — ``y_k`` are the
        pretrained layer applied to the sparsified inputs, so :math:`\varphi = 0` at the
        pretrained weights for every layer (DESIGN.md's literal reading).
      eval_batches: batches used to measure the errors in the records.
      search_steps: halvings of the ``max_error`` search.

    Returns:
      ``(params, records)``: the model's ``nnx.Param`` state with sparsified kernels and
      refitted biases (apply it with ``nnx.update(model, params)``), and one
      :class:`SISLayerRecord` per sparsified layer.

    Raises:
      ValueError: for a bad control, option, activation or pattern, a one-shot iterator or
        empty ``batches``, or a model SIS cannot read (a layer called twice, grouped or masked
        convolutions).
    """
    _optional.require_flax("sparsejax.sis_sparsify")
    nnx = _nnx()
    control, spec = _control(sparsity, radius, penalty, max_error)
    _check_options(ball, steps, step_size, momentum, ramp, targets, eval_batches, search_steps)
    if units not in _UNITS:
        raise ValueError(f"units must be one of {_UNITS}, got {units!r}")
    source = _batch_source(batches)
    stream = _cycled(source)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    layers = _discover_layers(graphdef, (params, rest), next(_cycled(source)))
    _check_mapping_keys(spec, layers, control)
    if not isinstance(activations, (str, type(None))):
        _check_mapping_keys(activations, layers, "activations")
    layer_activations = _activations_for(layers, activations)
    settings = _Settings(
        graphdef,
        control,
        ball,
        units,
        targets,
        step_size,
        momentum,
        estimate_lipschitz,
        steps,
        ramp,
        eval_batches,
        search_steps,
        source,
        stream,
    )
    pretrained_params = params
    records = []
    for layer, activation in zip(layers, layer_activations):
        level = _per_layer(spec, layer, control)
        if level is None:
            continue
        weights, record = _sparsify_layer(
            settings, layer, activation, float(level), (params, pretrained_params, rest)
        )
        params = _set_layer_params(params, layer, weights)
        records.append(record)
    return params, records
