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
  a Conv, per example, biases not counted (seed 000's convention);
* ``live_inputs``/``live_outputs``, ``effective_maccs`` and ``effective_params``: the figures
  of the smaller network that :func:`sparsejax.surgery.remove_dead_units` builds (see below);
* memory three ways: ``float32_bytes = 4 * params``; ``entropy_bytes``, seed 000's estimate:
  the Shannon entropy (bits/weight, :func:`entropy_bits`) of the layer's parameters quantised
  to float16 (their bit patterns are the symbols, -0 counted as +0) times their number, in
  bytes; ``compressed_bytes``, the real size of a compressed encoding
  (:func:`compressed_bytes`: a bitmask of the nonzeros and their float16 values split into
  high- and low-byte planes, zlib level 9). The same quantisation is applied to every model.

With a ``baseline`` report (the dense model trained with Adam, as seed 000 does), ``relative``
gives every total divided by the baseline's same total.

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

This is repeated until nothing changes. For a graph that is not a chain (residual blocks,
shared layers, parameters outside Dense/Conv/BatchNorm layers) the report falls back to seed
000's per-layer count, ``kh * kw * (Cin - zero_inputs) * (Cout - zero_outputs) * Hout * Wout``,
and says so in ``note``; surgery then refuses the model.

Reference: Guyard & Barlaud, "Learning sparse deep neural networks using efficient structured
projections on convex constraints for green AI" (2020), sections IV-V (MACCs, entropy memory,
figures normalised by Adam).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.nn import _tracing as _layers

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


def sparsity(tree: Any) -> jax.Array:
    """Fraction of exact zeros over every array leaf of a pytree.

    .. math:: s = \\frac{\\#\\{i : w_i = 0\\}}{\\#\\{i\\}}

    Jittable. Pass ``nnx.state(model, nnx.Param)`` or Linen ``variables["params"]``.

    Args:
      tree: a pytree of arrays (or a single array).

    Returns:
      A float32 scalar in ``[0, 1]`` (0 for a tree without elements).

    >>> import jax.numpy as jnp
    >>> float(sparsity({"w": jnp.array([0.0, 1.0, 0.0, 2.0]), "b": jnp.zeros(4)}))
    0.75
    """
    leaves = jax.tree_util.tree_leaves(tree)
    zeros = sum(jnp.sum(jnp.asarray(leaf) == 0) for leaf in leaves)
    size = sum(jnp.size(leaf) for leaf in leaves)
    return jnp.asarray(zeros, jnp.float32) / max(size, 1)


def _float16_symbols(values: Any) -> np.ndarray:
    # Adding +0.0 turns -0.0 into +0.0: a sign on zero carries no information.
    halves = np.asarray(values, np.float32).astype(np.float16).ravel() + np.float16(0.0)
    return halves.view(np.uint16)


def entropy_bits(x: Any) -> float:
    """Shannon entropy, in bits per weight, of weights quantised to float16.

    Each weight is rounded to float16 and its 16-bit pattern is a symbol (``-0`` is counted as
    ``+0``); with ``p_s`` the frequency of symbol ``s``:

    .. math:: H = -\\sum_s p_s \\log_2 p_s

    ``H * x.size / 8`` bytes is seed 000's memory estimate (an ideal entropy coder's output,
    without its table). Computed on the host with NumPy.

    Args:
      x: an array of any shape (or several arrays concatenated by the caller).

    Returns:
      Bits per weight: 0 for a constant array, ``log2(k)`` for ``k`` equiprobable values.

    >>> import numpy as np
    >>> entropy_bits(np.zeros(10)), entropy_bits(np.array([1.0, 2.0, 3.0, 4.0]))
    (0.0, 2.0)
    """
    symbols = _float16_symbols(x)
    if symbols.size == 0:
        return 0.0
    counts = np.bincount(symbols, minlength=1 << 16)
    frequencies = counts[counts > 0] / symbols.size
    return float(max(0.0, -np.sum(frequencies * np.log2(frequencies))))


def compressed_bytes(x: Any) -> int:
    """Size in bytes of a real compressed encoding of the weights ``x``.

    The encoding is ``numpy.packbits(x != 0)`` (the support, one bit per weight) followed by
    the nonzero weights in float16, high bytes first then low bytes (byte planes compress
    better than interleaved bytes), the whole compressed with ``zlib`` at level 9. It can be
    decoded exactly back to the float16 weights given the shape.

    Args:
      x: an array of any shape.

    Returns:
      The length of the compressed bytes.

    >>> import numpy as np
    >>> compressed_bytes(np.zeros(100_000)) < 200
    True
    """
    return len(_encode(x))


def _encode(x: Any) -> bytes:
    halves = np.asarray(x, np.float32).astype(np.float16).ravel()
    nonzero = halves != 0
    # Little-endian float16 -> (high byte, low byte) rows -> high-byte plane, low-byte plane.
    planes = halves[nonzero].view(np.uint8).reshape(-1, 2)[:, ::-1].T
    payload = np.packbits(nonzero).tobytes() + np.ascontiguousarray(planes).tobytes()
    return zlib.compress(payload, 9)


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
        """Each total divided by the baseline's (seed 000's normalisation), or None."""
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
    ``example_input`` with its layer calls intercepted. For Linen, ``model`` is the module or
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
    if baseline is not None and not isinstance(baseline, ModelReport):
        raise ValueError(f"baseline must be a ModelReport, got {type(baseline).__name__}")
    network = _layers.trace(model, example_input, variables)
    plans = _layers.plan_units(network)
    rows = [_layer_row(layer, plan) for layer, plan in zip(network.layers, plans)]
    other = network.unowned_params()
    if other:
        rows.append(_other_row([leaf for _, leaf in other]))
    report = ModelReport(tuple(rows), network.sequential, _note(network))
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
    return model_report(model, example_input, variables).effective_maccs


def _note(network: _layers.Network) -> str:
    if network.sequential:
        return "sequential: dead units propagated through consecutive layers"
    return (
        f"not sequential ({network.chain_problem}): per-layer counts, no propagation "
        "(effective MACCs = kh*kw*(Cin - zero inputs)*(Cout - zero outputs)*Hout*Wout)"
    )


def _memory(arrays: Sequence[np.ndarray]) -> tuple[int, int, float, int]:
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(0)
    size = int(values.size)
    entropy = entropy_bits(values) * size / 8.0
    return size, int(np.sum(values == 0)), entropy, compressed_bytes(values)


def _layer_row(layer: _layers.Layer, plan: _layers.UnitPlan) -> LayerReport:
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


def _other_row(arrays: list[np.ndarray]) -> LayerReport:
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
        effective_params=size,
        float32_bytes=4 * size,
        entropy_bytes=entropy,
        compressed_bytes=compressed,
    )


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def _kb(value: float) -> str:
    return f"{value / 1000:.1f}"


_MEMORY = ("float32_bytes", "entropy_bytes", "compressed_bytes")

_HEADER = (
    "layer",
    "kind",
    "kernel",
    "params",
    "zeros",
    "zero in",
    "zero out",
    "live in->out",
    "MACCs",
    "eff MACCs",
    "f32 kB",
    "H kB",
    "zip kB",
)


def _row_cells(row: LayerReport) -> tuple[str, ...]:
    return (
        row.name,
        row.kind,
        "x".join(map(str, row.kernel_shape)) or "-",
        _si(row.params),
        f"{100 * row.sparsity:.1f}%",
        f"{row.zero_inputs}/{row.inputs}" if row.kind != "other" else "-",
        f"{row.zero_outputs}/{row.outputs}" if row.kind != "other" else "-",
        f"{row.live_inputs}->{row.live_outputs}" if row.kind != "other" else "-",
        _si(row.dense_maccs),
        _si(row.effective_maccs),
        _kb(row.float32_bytes),
        _kb(row.entropy_bytes),
        _kb(row.compressed_bytes),
    )


def _format_table(report: ModelReport) -> str:
    total = report.totals()
    body = [_row_cells(row) for row in report.layers]
    summary = [
        (
            "total",
            "",
            "",
            _si(total["params"]),
            f"{100 * total['sparsity']:.1f}%",
            "",
            "",
            f"({_si(total['effective_params'])} params)",
            *(_si(total[name]) for name in ("dense_maccs", "effective_maccs")),
            *(_kb(total[name]) for name in _MEMORY),
        )
    ]
    relative = report.relative
    if relative is not None:
        percent = {name: f"{100 * value:.1f}%" for name, value in relative.items()}
        summary.append(
            (
                "vs baseline",
                "",
                "",
                percent["params"],
                "",
                "",
                "",
                f"({percent['effective_params']})",
                *(percent[name] for name in ("dense_maccs", "effective_maccs", *_MEMORY)),
            )
        )
    lines = [_HEADER, *body, *summary]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]

    def render(line):
        return "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        )

    rule = "-" * len(render(_HEADER))
    footer = (
        f"{report.note}; H = entropy of the float16 weights "
        f"({total['entropy_bits_per_weight']:.2f} bits/weight); zip = compressed_bytes"
    )
    return "\n".join(
        [render(_HEADER), rule, *map(render, body), rule, *map(render, summary), footer]
    )
