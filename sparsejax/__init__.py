"""sparsejax: sparse and structurally sparse neural networks with JAX and Optax.

Layers, each depending only on the ones above it:

1. pure array functions: :mod:`sparsejax.projections`, :mod:`sparsejax.prox`;
2. Optax transformations: ``project_*``, ``prox_*``, ``proximal_rmsprop``, ``xrda``,
   and the lottery-ticket masking helpers;
3. model-level helpers: leaf selection by path, metrics, surgery, SIS.

This module only re-exports; see the submodules for the documentation.
"""

# --- exact and bi-level projections, pure array functions (issue 2) ---
from sparsejax import projections

# --- constraints, lottery, selection (lead) ---
from sparsejax.constraints import (
    ProjectionState,
    project_bilevel_l1inf,
    project_l1,
    project_l1inf,
    project_l11,
    project_l21,
    project_l111,
    project_nuclear,
)

# --- xRDA with adaptively weighted l1 (seed 002) ---
from sparsejax.dual_averaging import XRDAState, xrda
from sparsejax.lottery import (
    KeepPrunedState,
    keep_pruned,
    magnitude_mask,
    project_once,
    rewind,
    support_mask,
)

# --- metrics and surgery (issue 5) ---
from sparsejax.metrics import (
    LayerReport,
    ModelReport,
    compressed_bytes,
    effective_maccs,
    entropy_bits,
    model_report,
    sparsity,
)

# --- proximal operators and Proximal RMSProp (seed 003) ---
from sparsejax.proximal import (
    ProximalRMSPropState,
    ProxState,
    prox_l0,
    prox_l1,
    proximal_rmsprop,
    prune_to_rate,
)
from sparsejax.selection import path_string, selected_leaves

# --- SIS, post-training sparsification by subdifferential inclusion (seed 004, issue 7) ---
from sparsejax.sis import SISLayerRecord, sis_layers, sis_sparsify
from sparsejax.surgery import ShrunkenLinenModel, remove_dead_units  # issue 5

__version__ = "0.1.0"

__all__ = [
    "KeepPrunedState",
    "LayerReport",
    "ModelReport",
    "ProjectionState",
    "ProxState",
    "ProximalRMSPropState",
    "SISLayerRecord",
    "ShrunkenLinenModel",
    "XRDAState",
    "__version__",
    "compressed_bytes",
    "effective_maccs",
    "entropy_bits",
    "keep_pruned",
    "magnitude_mask",
    "model_report",
    "path_string",
    "project_bilevel_l1inf",
    "project_l1",
    "project_l1inf",
    "project_l11",
    "project_l21",
    "project_l111",
    "project_nuclear",
    "project_once",
    "projections",
    "prox_l0",
    "prox_l1",
    "proximal_rmsprop",
    "prune_to_rate",
    "remove_dead_units",
    "rewind",
    "selected_leaves",
    "sis_layers",
    "sis_sparsify",
    "sparsity",
    "support_mask",
    "xrda",
]
