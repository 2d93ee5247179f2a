"""Optax transformations: the second layer of sparsejax.

Each factory returns an :class:`optax.GradientTransformation` built on the pure functions of
:mod:`sparsejax.projections` and :mod:`sparsejax.prox`:

* projection-gradient training (Guyard & Barlaud, 2020): ``project_l1``, ``project_l21``,
  ``project_l11``, ``project_l1inf``, ``project_bilevel_l1inf``, ``project_nuclear``,
  ``project_l111``; on coupled unit groups across layers: ``project_coupled``,
  ``project_coupled_tree``, ``prox_coupled_tree``, ``coupled_rows``;
* the lottery optimizer with one projection (Guyard & Barlaud, 2020): ``support_mask``,
  ``rewind``, ``project_once``, ``keep_pruned``, and the ``magnitude_mask`` baseline;
* proximal sparsifiers and Proximal RMSProp (Formanek & Hadházi): ``prox_l1``, ``prox_l0``,
  ``prune_to_rate``, ``proximal_rmsprop``;
* extended regularized dual averaging with adaptively weighted l1 (Siegel et al.): ``xrda``;
* leaf selection by parameter path, shared by all of them: ``path_string``, ``selected_leaves``.
"""

from sparsejax.transforms._coupled import (
    CoupledProjectionState,
    coupled_rows,
    project_coupled,
    project_coupled_tree,
    prox_coupled_tree,
)
from sparsejax.transforms._lottery import (
    KeepPrunedState,
    keep_pruned,
    magnitude_mask,
    project_once,
    rewind,
    support_mask,
)
from sparsejax.transforms._projection import ProjectionState
from sparsejax.transforms._projection_factories import (
    project_bilevel_l1inf,
    project_l1,
    project_l1inf,
    project_l11,
    project_l21,
    project_l111,
    project_nuclear,
)
from sparsejax.transforms._proximal import ProxState, prox_l0, prox_l1, prune_to_rate
from sparsejax.transforms._rmsprop import ProximalRMSPropState, proximal_rmsprop
from sparsejax.transforms._selection import path_string, selected_leaves
from sparsejax.transforms._xrda import XRDAState, adaptive_l1_weight, xrda

__all__ = [
    "CoupledProjectionState",
    "KeepPrunedState",
    "ProjectionState",
    "ProxState",
    "ProximalRMSPropState",
    "XRDAState",
    "adaptive_l1_weight",
    "coupled_rows",
    "keep_pruned",
    "magnitude_mask",
    "path_string",
    "project_bilevel_l1inf",
    "project_coupled",
    "project_coupled_tree",
    "project_l1",
    "project_l1inf",
    "project_l11",
    "project_l21",
    "project_l111",
    "project_nuclear",
    "project_once",
    "prox_coupled_tree",
    "prox_l0",
    "prox_l1",
    "proximal_rmsprop",
    "prune_to_rate",
    "rewind",
    "selected_leaves",
    "support_mask",
    "xrda",
]
