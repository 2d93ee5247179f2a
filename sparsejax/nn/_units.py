"""Unit plans: which input/output units of each traced layer are dead and can be cut out.

A unit is dead when all its weights are zero, or (for an input) when it is constant over the
example batch and its contribution can be folded into the bias; deadness propagates along a
chain of layers. Used by the report (:mod:`sparsejax.nn._metrics`) and by surgery.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sparsejax.nn._tracing import Layer, Network

# Relative spread below which an input unit counts as constant over the example batch.
_CONSTANT_RTOL = 1e-6


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


def foldable_rows(consumer: Layer) -> np.ndarray:
    """Per kernel row of ``consumer``: is the input it reads constant over the example batch
    (and its positions) with a value that can be folded into ``consumer``'s bias (zero, or a
    bias exists and the layer maps a constant input to a constant per output unit)?"""
    low, high = consumer.input_low[consumer.sources], consumer.input_high[consumer.sources]
    constant = (high - low) <= _CONSTANT_RTOL * (1.0 + np.abs(low))
    zero = (low == 0) & (high == 0)
    absorbable = consumer.bias is not None and consumer.folds_constants
    return constant & (zero | absorbable)


def folded_shift(layer: Layer, folded: np.ndarray) -> np.ndarray:
    """The bias shift of ``layer`` when its kernel rows ``folded`` (bool per row) are removed
    and the constant each of them read is added to the bias:
    ``shift_o = sum_r c_r sum_window W[..., r, o]``."""
    weights = layer.kernel.astype(np.float64).sum(axis=tuple(range(layer.kernel.ndim - 2)))
    values = np.where(folded, layer.input_low[layer.sources], 0.0)
    return values @ np.where(folded[:, None], weights, 0.0)


def _foldable(producer: Layer, consumer: Layer, producers: np.ndarray) -> np.ndarray:
    """Per output unit of ``producer``: can it be removed when constant, its value folded into
    ``consumer``'s bias?"""
    ok = foldable_rows(consumer)
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
            shift = folded_shift(layer, constant[k - 1][producers[k]])
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
