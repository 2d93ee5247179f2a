"""sparsejax: sparse and structurally sparse neural networks with JAX and Optax.

The package is layered; each layer depends only on the ones above it:

1. :mod:`sparsejax.projections`, :mod:`sparsejax.prox` -- pure, jittable array functions
   (projections onto convex balls, proximal operators). A new projection goes here.
2. :mod:`sparsejax.transforms` -- Optax ``GradientTransformation`` factories built on them
   (``project_*``, ``prox_*``, ``proximal_rmsprop``, ``xrda``, lottery masking, leaf selection
   by path). A new transformation goes here.
3. :mod:`sparsejax.nn` -- model-level helpers that read Flax models through one tracing
   mechanism: metrics, surgery, SIS, plots. A new metric goes here.

``experiments/`` (outside the package) uses only the public names re-exported below.
"""

import importlib as _importlib
from importlib import metadata as _metadata

from sparsejax import nn, projections, prox, transforms
from sparsejax.nn import (
    CoupledGroup,
    GroupMember,
    LayerReport,
    ModelReport,
    ShrunkenLinenModel,
    SISLayerRecord,
    compressed_bytes,
    coupled_groups,
    effective_maccs,
    entropy_bits,
    model_report,
    remove_dead_units,
    sis_layers,
    sis_sparsify,
    sparsity,
)
from sparsejax.transforms import (
    KeepPrunedState,
    ProjectionState,
    ProximalRMSPropState,
    ProxState,
    XRDAState,
    keep_pruned,
    magnitude_mask,
    path_string,
    project_bilevel_l1inf,
    project_l1,
    project_l1inf,
    project_l11,
    project_l21,
    project_l111,
    project_nuclear,
    project_once,
    prox_l0,
    prox_l1,
    proximal_rmsprop,
    prune_to_rate,
    rewind,
    selected_leaves,
    support_mask,
    xrda,
)

try:
    __version__ = _metadata.version("sparsejax")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"


def __getattr__(name):
    # ``sparsejax.plots`` needs matplotlib: load it only when asked for.
    if name == "plots":
        return _importlib.import_module("sparsejax.nn.plots")
    raise AttributeError(f"module 'sparsejax' has no attribute {name!r}")


__all__ = [
    "CoupledGroup",
    "GroupMember",
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
    "coupled_groups",
    "effective_maccs",
    "entropy_bits",
    "keep_pruned",
    "magnitude_mask",
    "model_report",
    "nn",
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
    "prox",
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
    "transforms",
    "xrda",
]
