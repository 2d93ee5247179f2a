"""Model-level helpers: the third layer of sparsejax.

They read Flax models (NNX modules, or Linen modules with their variables):

* metrics (Guyard & Barlaud, 2020): ``model_report``, ``effective_maccs``, ``sparsity``,
  ``entropy_bits``, ``compressed_bytes``, with ``LayerReport`` / ``ModelReport``;
* coupled unit groups read from the jaxpr (residual adds, heads, concatenation...):
  ``coupled_groups``, with ``CoupledGroup`` / ``GroupMember``; ``dead_groups`` (which of them
  the weights let surgery remove), with ``GroupVerdict``;
* surgery: ``remove_dead_units`` returns the physically smaller model;
* SIS, post-training sparsification by subdifferential inclusion (Verma & Pesquet, 2021):
  ``sis_sparsify``, ``sis_layers``;
* :mod:`sparsejax.nn.plots`: the papers' figures (needs matplotlib).

All three read the model through one tracing mechanism, ``sparsejax.nn._tracing``.
"""

from sparsejax.nn._dead import GroupVerdict, dead_groups
from sparsejax.nn._graph import CoupledGroup, GroupMember, coupled_groups
from sparsejax.nn._metrics import (
    LayerReport,
    ModelReport,
    compressed_bytes,
    effective_maccs,
    entropy_bits,
    model_report,
    sparsity,
)
from sparsejax.nn._sis import SISLayerRecord, sis_layers, sis_sparsify
from sparsejax.nn._surgery import ShrunkenLinenModel, remove_dead_units

__all__ = [
    "CoupledGroup",
    "GroupMember",
    "GroupVerdict",
    "LayerReport",
    "ModelReport",
    "SISLayerRecord",
    "ShrunkenLinenModel",
    "compressed_bytes",
    "coupled_groups",
    "dead_groups",
    "effective_maccs",
    "entropy_bits",
    "model_report",
    "remove_dead_units",
    "sis_layers",
    "sis_sparsify",
    "sparsity",
]
