"""sparsejax: sparse and structurally sparse neural networks with JAX and Optax.

Layers, each depending only on the ones above it:

1. pure array functions: :mod:`sparsejax.projections`, :mod:`sparsejax.prox`;
2. Optax transformations: ``project_*``, ``prox_*``, ``proximal_rmsprop``, ``xrda``,
   and the lottery-ticket masking helpers;
3. model-level helpers: leaf selection by path, metrics, surgery, SIS.

This module only re-exports; see the submodules for the documentation.
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
]
