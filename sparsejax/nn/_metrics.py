"""What sparsity buys: parameters, zeros, MACCs and memory of a Flax model, per layer.

Usage (NNX: the model holds its parameters; Linen: give the module or an apply function and
the variables)::

    report = sparsejax.model_report(model, x_batch)                  # nnx.Module
    report = sparsejax.model_report(module, x_batch, variables)      # linen.Module / apply_fn
    dense = sparsejax.model_report(dense_model, x_batch)
    report = sparsejax.model_report(model, x_batch, baseline=dense)  # or .with_baseline(dense)
    print(report)                   # the table; report.to_json() for result files
    report.effective_maccs, report.entropy_bytes, report.relative["effective_maccs"]

For each Dense/Conv layer (``nnx.Linear``, ``nnx.Conv``, ``linen.Dense``, ``linen.Conv``) in
call order, and in total, the report gives:

* ``params``, exact ``zeros`` and ``sparsity`` (zeros / params) of the layer's parameters
  (kernel, bias, and the scale/bias of the BatchNorm that normalises its output);
* zero groups: ``zero_inputs`` (input units/channels whose kernel slice ``kernel[..., i, :]``
  is all zero), ``zero_outputs`` (output units/filters with an all-zero ``kernel[..., j]``) and,
  for convs, ``zero_kernels`` (all-zero ``kh x kw`` slices);
* ``dense_maccs``: ``in * out`` for a Dense layer, ``kh * kw * Cin * Cout * Hout * Wout`` for
  a Conv, per example, biases not counted (Guyard & Barlaud's convention);
* ``live_inputs``/``live_outputs``, ``effective_maccs`` and ``effective_params``: the figures
  of the smaller network that :func:`sparsejax.surgery.remove_dead_units` builds (see below);
* memory three ways: ``float32_bytes = 4 * params``; ``entropy_bytes``, Guyard & Barlaud's estimate:
  the Shannon entropy (bits/weight, :func:`entropy_bits`) of the layer's parameters quantised
  to float16 (their bit patterns are the symbols, -0 counted as +0) times their number, in
  bytes; ``compressed_bytes``, the real size of a compressed encoding
  (:func:`compressed_bytes`: a bitmask of the nonzeros and their float16 values split into
  high- and low-byte planes, zlib level 9). The same quantisation is applied to every model.

With a ``baseline`` report (the dense model trained with Adam, as Guyard & Barlaud (2020)
do), ``relative`` gives every total divided by the baseline's same total.

Dead units are propagated along the network when its layers form a chain (the input of layer
``k + 1`` is computed from the output of layer ``k`` alone, through activations, BatchNorm,
pooling, dropout or a flatten; a flatten maps NHWC position ``i`` to channel ``i % C``):

* an input unit of a layer is removed when its weights to the layer's kept outputs are all
  zero, or when the unit that produces it was removed;
* an output unit is removed when no kept input of the next layer reads it, or when it is a
  constant (none of its weights touches a live input: its value is ``act(bias)`` or the like)
  whose value can be folded into the next layer's bias: the next layer is Dense, or a Conv
  whose padding keeps a constant channel constant (VALID, CIRCULAR, REFLECT), or the constant
  is zero. The constant is read from a run on the example input;
* the network's outputs are never removed; its input features may be (the smaller first layer
  gathers its live inputs, which costs no MACC).

This is repeated until nothing changes. A graph that is not a chain (residual blocks,
concatenations, a BatchNorm or LayerNorm on a stream) is read through its coupled unit groups
(:func:`sparsejax.coupled_groups`): a unit is a whole group, removed from every layer it
touches when it is dead (:func:`sparsejax.nn.dead_groups`: no kept weight reads it, or none
writes it and its constant is folded into the readers' biases; units consumed by a
LayerNorm/RMSNorm statistic, a softmax over features or a product of two activations are kept).
Each layer's ``live_inputs``/``live_outputs`` are then its kernel rows/columns outside dead
groups, its effective MACCs ``kh * kw * live_inputs * live_outputs * Hout * Wout``, and every
parameter's effective count (BatchNorms included, in the ``other`` row) the product of its
kept axes: exactly the network :func:`sparsejax.remove_dead_units` builds. An
``nnx.MultiHeadAttention`` there gets a row of kind ``attention``: with ``H`` heads of depth
``D`` (values ``Dv``), ``Sq`` queries, ``Sk`` keys, input widths ``Cq, Ck, Cv`` and ``F``
outputs, its MACCs per example are those of its four projections and of its two products of
activations, ``Sq*Cq*H*D + Sk*Ck*H*D + Sk*Cv*H*Dv + H*D*Sq*Sk (q.k^T) + H*Dv*Sq*Sk
(weights.v) + Sq*H*Dv*F`` (softmax, scaling and biases not counted); a head whose output rows
are zero is removed (``H`` drops by one). The network's own
input features and output units are never removed there. When the coupled analysis cannot read
the model (an unknown primitive, a Linen masked convolution, a layer called twice) the report
falls
back to the per-layer count,
``kh * kw * (Cin - zero_inputs) * (Cout - zero_outputs) * Hout * Wout``, and says why in
``note``; surgery then refuses the model.

Reference: Guyard & Barlaud, "Learning sparse deep neural networks using efficient structured
projections on convex constraints for green AI" (2020), sections IV-V (MACCs, entropy memory,
figures normalised by Adam).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from sparsejax import _optional
from sparsejax.nn import _calls, _dead, _tracing, _units
from sparsejax.nn._memory import _memory, compressed_bytes, entropy_bits, sparsity
from sparsejax.nn._table import _format_table

__all__ = [
    "LayerReport",
    "ModelReport",
    "compressed_bytes",
    "effective_maccs",
    "entropy_bits",
    "model_report",
    "sparsity",
]

_TOTALS = (
    "params",
    "zeros",
    "dense_maccs",
    "effective_maccs",
    "effective_params",
    "float32_bytes",
    "entropy_bytes",
    "compressed_bytes",
)


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Figures for one Dense/Conv layer (with its BatchNorm) or for the remaining parameters.

    Shapes are per example. ``kind`` is ``"dense"``, ``"conv"`` or ``"other"`` (parameters of
    no traced layer, counted in the memory and parameter totals only). See the module docstring
    for the definitions.
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    zeros: int
    inputs: int
    outputs: int
    zero_inputs: int
    zero_outputs: int
    zero_kernels: int | None
    live_inputs: int
    live_outputs: int
    dense_maccs: int
    effective_maccs: int
    effective_params: int
    float32_bytes: int
    entropy_bytes: float
    compressed_bytes: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sparsity": self.sparsity}


def _total(name: str) -> property:
    return property(
        lambda self: sum(getattr(row, name) for row in self.layers),
        doc=f"Sum of the rows' ``{name}``.",
    )


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """Per-layer rows and totals; see :func:`model_report`.

    Attributes:
      layers: one :class:`LayerReport` per Dense/Conv layer in call order (plus an ``other``
        row for parameters outside them).
      sequential: whether dead units were propagated along a chain of layers.
      note: how the effective figures were obtained.
      baseline: the baseline's totals (``totals()`` of another report), or None.
    """

    layers: tuple[LayerReport, ...]
    sequential: bool
    note: str
    baseline: dict[str, float] | None = None

    params = _total("params")
    zeros = _total("zeros")
    dense_maccs = _total("dense_maccs")
    effective_maccs = _total("effective_maccs")
    effective_params = _total("effective_params")
    float32_bytes = _total("float32_bytes")
    entropy_bytes = _total("entropy_bytes")
    compressed_bytes = _total("compressed_bytes")

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    @property
    def entropy_bits_per_weight(self) -> float:
        return 8.0 * self.entropy_bytes / self.params if self.params else 0.0

    def totals(self) -> dict[str, float]:
        """Every total: the sums of the rows, sparsity and bits per weight."""
        totals = {name: getattr(self, name) for name in _TOTALS}
        totals["sparsity"] = self.sparsity
        totals["entropy_bits_per_weight"] = self.entropy_bits_per_weight
        return totals

    @property
    def relative(self) -> dict[str, float] | None:
        """Each total divided by the baseline's (Guyard & Barlaud's normalisation), or None."""
        if self.baseline is None:
            return None
        return {
            name: value / self.baseline[name] if self.baseline[name] else float("nan")
            for name, value in self.totals().items()
            if name in _TOTALS and name != "zeros"
        }

    def with_baseline(self, baseline: ModelReport) -> ModelReport:
        """The same report, normalised by ``baseline``."""
        if not isinstance(baseline, ModelReport):
            raise ValueError(f"baseline must be a ModelReport, got {type(baseline).__name__}")
        return dataclasses.replace(self, baseline=baseline.totals())

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [row.to_dict() for row in self.layers],
            "totals": self.totals(),
            "relative_to_baseline": self.relative,
            "sequential": self.sequential,
            "note": self.note,
        }

    def to_json(self, **kwargs: Any) -> str:
        """JSON of :meth:`to_dict`; keyword arguments go to ``json.dumps``."""
        return json.dumps(self.to_dict(), **kwargs)

    def format_table(self) -> str:
        """A plain-text table for the terminal."""
        return _format_table(self)

    def __str__(self) -> str:
        return self.format_table()


def model_report(
    model: Any,
    example_input: Any,
    variables: Any = None,
    *,
    baseline: ModelReport | None = None,
) -> ModelReport:
    """Reports parameters, sparsity, dense and effective MACCs and memory of a Flax model.

    The model runs once (jitted, in evaluation mode for NNX: on a clone after ``.eval()``) on
    ``example_input`` with its layer calls intercepted; a model that is not a chain is counted
    through its coupled unit groups (module docstring), attention included (MACCs of the q, k,
    v and output projections plus ``H*D*Sq*Sk`` for ``q.k^T`` and ``H*Dv*Sq*Sk`` for the
    weights times ``v``). For Linen, ``model`` is the module or
    any ``apply_fn(variables, x)``; give it in inference mode (e.g. BatchNorm with
    ``use_running_average=True``). A batch of a few real examples is enough.

    Args:
      model: an ``nnx.Module``, a ``linen.Module``, or a callable ``apply_fn(variables, x)``.
      example_input: a batch of inputs (leading batch axis).
      variables: Linen variables (``{"params": ..., "batch_stats": ...}``); None for NNX.
      baseline: a report of the reference model; its totals normalise this one's.

    Returns:
      A :class:`ModelReport`: per-layer rows, totals as attributes (``params``,
      ``effective_maccs``, ``entropy_bytes``...), ``relative`` ratios to the baseline,
      ``format_table()``, ``to_json()``.

    Raises:
      ValueError: for an unsupported model, missing or superfluous ``variables``, an input
        without a batch axis, a model without Dense/Conv layers, or a bad ``baseline``.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    >>> model.layers[0].kernel[1] = 0.0  # input 1 is dead: 3 fewer MACCs
    >>> report = model_report(model, jnp.ones((2, 4)))
    >>> report.dense_maccs, report.effective_maccs
    (18, 15)
    """
    _optional.require_flax("sparsejax.model_report")
    if baseline is not None and not isinstance(baseline, ModelReport):
        raise ValueError(f"baseline must be a ModelReport, got {type(baseline).__name__}")
    network = _tracing.trace(model, example_input, variables)
    coupled, problem = None, None
    if not network.sequential:
        try:
            coupled = _dead._plan(network, _calls.wrap_model(model, variables), example_input)
        except ValueError as error:  # not analysable: per-layer counts, and the note says why
            problem = str(error)
    if coupled is None:
        plans = _units.plan_units(network)
    else:
        plans = [coupled.layer_plan(layer) for layer in network.layers]
    rows = [_layer_row(layer, plan) for layer, plan in zip(network.layers, plans)]
    other = network.unowned_params()
    if coupled is not None and coupled.attentions:
        rows += [_attention_row(call, coupled, other) for call in coupled.attentions]
        inside = tuple(call.path for call in coupled.attentions)
        other = [(path, leaf) for path, leaf in other if path[:-2] not in inside]
    if other:
        kept = None
        if coupled is not None:
            kept = sum(coupled.kept_size(coupled.param_name(path)) for path, _ in other)
        rows.append(_other_row([leaf for _, leaf in other], kept))
    note = _note(network, problem) if coupled is None else _coupled_note(network, coupled)
    report = ModelReport(tuple(rows), network.sequential, note)
    return report if baseline is None else report.with_baseline(baseline)


def effective_maccs(model: Any, example_input: Any, variables: Any = None) -> int:
    """MACCs per example once dead units are removed; see :func:`model_report`.

    Args:
      model: an ``nnx.Module``, a ``linen.Module`` or ``apply_fn(variables, x)``.
      example_input: a batch of inputs.
      variables: Linen variables, None for NNX.

    Returns:
      The total effective MACCs.

    Raises:
      ValueError: as :func:`model_report`.
    """
    _optional.require_flax("sparsejax.effective_maccs")
    return model_report(model, example_input, variables).effective_maccs


def _note(network: _tracing.Network, problem: str | None = None) -> str:
    if network.sequential:
        return "sequential: dead units propagated through consecutive layers"
    why = "" if problem is None else f"; coupled groups not analysable: {problem}"
    return (
        f"not sequential ({network.chain_problem}{why}): per-layer counts, no propagation "
        "(effective MACCs = kh*kw*(Cin - zero inputs)*(Cout - zero outputs)*Hout*Wout)"
    )


def _coupled_note(network: _tracing.Network, coupled: _dead.CoupledPlan) -> str:
    verdicts = coupled.verdicts
    dead = [v for v in verdicts if v.dead]
    unread = sum(v.reason == "unread" for v in dead)
    note = (
        f"coupled groups (not a chain: {network.chain_problem}): {len(dead)} of "
        f"{len(verdicts)} removable groups dead ({unread} unread, {len(dead) - unread} "
        "constant, folded into the readers' biases)"
    )
    kept = [v.reason for v in verdicts if v.reason.startswith("kept")]
    if kept:
        note += f"; {len(kept)} zero groups kept, e.g. {kept[0]}"
    return note


def _layer_row(layer: _tracing.Layer, plan: _units.UnitPlan) -> LayerReport:
    size, zeros, entropy, compressed = _memory(layer.param_arrays())
    connections = layer.connections
    nonzero_windows = np.any(layer.kernel != 0, axis=tuple(range(layer.kernel.ndim - 2)))
    live_in, live_out = int(plan.live_inputs.sum()), int(plan.kept_outputs.sum())
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        kernel_shape=tuple(layer.kernel.shape),
        input_shape=tuple(layer.call.input_shape[1:]),
        output_shape=tuple(layer.call.output_shape[1:]),
        params=size,
        zeros=zeros,
        inputs=layer.num_inputs,
        outputs=layer.num_outputs,
        zero_inputs=int((~connections.any(axis=1)).sum()),
        zero_outputs=int((~connections.any(axis=0)).sum()),
        zero_kernels=int((~nonzero_windows).sum()) if layer.kind == "conv" else None,
        live_inputs=live_in,
        live_outputs=live_out,
        dense_maccs=layer.maccs(layer.num_inputs, layer.num_outputs),
        effective_maccs=layer.maccs(live_in, live_out),
        effective_params=layer.param_count(live_in, live_out),
        float32_bytes=4 * size,
        entropy_bytes=entropy,
        compressed_bytes=compressed,
    )


def _attention_row(call: _dead.AttentionCall, coupled: _dead.CoupledPlan, params) -> LayerReport:
    """The row of one ``nnx.MultiHeadAttention`` (its four projections and two products)."""
    mine = [(path, leaf) for path, leaf in params if path[: len(call.path)] == call.path]
    size, zeros, entropy, compressed = _memory([leaf for _, leaf in mine])

    def width(name, axis):
        return len(coupled.kept[f"{coupled.prefix}{call.name}/{name}"][axis])

    def kept(name, axis):
        return int(coupled.kept[f"{coupled.prefix}{call.name}/{name}"][axis].sum())

    kernels = {path[len(call.path)]: leaf for path, leaf in mine if path[-1] == "kernel"}
    reads = [np.any(kernels[n] != 0, axis=(1, 2)) for n in ("query", "key", "value")]
    same_input = len({kernels[n].shape[0] for n in ("query", "key", "value")}) == 1
    zero_inputs = int((~(reads[0] | reads[1] | reads[2])).sum()) if same_input else 0
    return LayerReport(
        name=call.name,
        kind="attention",
        kernel_shape=tuple(kernels["query"].shape),
        input_shape=tuple(call.q_shape[1:]),
        output_shape=(*call.q_shape[1:-1], width("out/kernel", 2)),
        params=size,
        zeros=zeros,
        inputs=width("query/kernel", 0),
        outputs=width("out/kernel", 2),
        zero_inputs=zero_inputs,
        zero_outputs=int((~np.any(kernels["out"] != 0, axis=(0, 1))).sum()),
        zero_kernels=None,
        live_inputs=kept("query/kernel", 0),
        live_outputs=kept("out/kernel", 2),
        dense_maccs=_dead.attention_maccs(call, width),
        effective_maccs=_dead.attention_maccs(call, kept),
        effective_params=sum(coupled.kept_size(coupled.param_name(path)) for path, _ in mine),
        float32_bytes=4 * size,
        entropy_bytes=entropy,
        compressed_bytes=compressed,
    )


def _other_row(arrays: list[np.ndarray], kept: int | None = None) -> LayerReport:
    size, zeros, entropy, compressed = _memory(arrays)
    return LayerReport(
        name="(other parameters)",
        kind="other",
        kernel_shape=(),
        input_shape=(),
        output_shape=(),
        params=size,
        zeros=zeros,
        inputs=0,
        outputs=0,
        zero_inputs=0,
        zero_outputs=0,
        zero_kernels=None,
        live_inputs=0,
        live_outputs=0,
        dense_maccs=0,
        effective_maccs=0,
        effective_params=size if kept is None else kept,
        float32_bytes=4 * size,
        entropy_bytes=entropy,
        compressed_bytes=compressed,
    )
