"""Optional dependencies: one place that imports them and names the extra that installs them.

``import sparsejax`` needs only jax, optax and chex. The model-level helpers need flax (extra
``flax``) and :mod:`sparsejax.plots` needs matplotlib (extra ``plots``); they call
:func:`require` when used, so a missing package is an ImportError that says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Imports ``module`` for ``feature``, or raises an ImportError naming the extra.

    Args:
      module: the module to import, e.g. ``"flax.nnx"``.
      feature: what needs it, as the user calls it, e.g. ``"sparsejax.model_report"``.
      extra: the sparsejax extra that installs it, e.g. ``"flax"``.

    Returns:
      The imported module.

    Raises:
      ImportError: ``"<feature> needs <package>: pip install 'sparsejax[<extra>]'"`` when the
        module cannot be imported (the original error is chained).

    >>> require("math", "sparsejax.example", "none").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(f"{feature} needs {package}: pip install 'sparsejax[{extra}]'") from err


def require_flax(feature: str) -> ModuleType:
    """``flax.nnx`` for ``feature`` (a model-level helper); see :func:`require`."""
    return require("flax.nnx", feature, "flax")
