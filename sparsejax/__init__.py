"""sparsejax: sparse and structurally sparse neural networks with JAX and Optax.

Layers, each depending only on the ones above it:

1. pure array functions: :mod:`sparsejax.projections`, :mod:`sparsejax.prox`;
2. Optax transformations: ``project_*``, ``prox_*``, ``proximal_rmsprop``, ``xrda``,
   and the lottery-ticket masking helpers;
3. model-level helpers: leaf selection by path, metrics, surgery, SIS.

This module only re-exports; see the submodules for the documentation.
"""

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
from sparsejax.lottery import (
    KeepPrunedState,
    keep_pruned,
    magnitude_mask,
    project_once,
    rewind,
    support_mask,
)
from sparsejax.selection import path_string, selected_leaves

__version__ = "0.1.0"

__all__ = [
    "KeepPrunedState",
    "ProjectionState",
    "__version__",
    "keep_pruned",
    "magnitude_mask",
    "path_string",
    "project_bilevel_l1inf",
    "project_l1",
    "project_l1inf",
    "project_l11",
    "project_l21",
    "project_l111",
    "project_nuclear",
    "project_once",
    "rewind",
    "selected_leaves",
    "support_mask",
]
