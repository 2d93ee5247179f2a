"""Elementwise soft and hard thresholds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any


def _concrete(value: Any, name: str) -> np.ndarray | None:
    """``value`` as a NumPy array to check, or ``None`` when it cannot be checked for free.

    Traced values (under ``jit``, ``inject_hyperparams``) are not known yet; a non-scalar
    ``jax.Array`` is a per-weight quantity computed on the device (e.g. RMSProp steps), and
    reading it back would synchronise every call.
    """
    if isinstance(value, jax.core.Tracer) or (isinstance(value, jax.Array) and value.ndim > 0):
        return None
    values = np.asarray(value)
    if values.dtype == bool or not (
        np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}.")
    return values


def check_nonnegative(value: Any, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` for a concrete negative or NaN value."""
    values = _concrete(value, name)
    if values is not None and (np.any(np.isnan(values)) or np.any(values < 0)):
        raise ValueError(
            f"{name} must be nonnegative (a negative {name} makes weights grow), got "
            f"{name}={value!r}; pass {name} >= 0."
        )


def check_fraction(value: Any, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` for a concrete value outside ``[0, 1]``."""
    values = _concrete(value, name)
    if values is not None and not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {name}={value!r}.")


def check_count(value: Any, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` for a concrete value that is not an integer >= 0."""
    values = _concrete(value, name)
    if values is not None and not (values.ndim == 0 and values == np.floor(values) and values >= 0):
        raise ValueError(f"{name} must be an integer >= 0, got {name}={value!r}.")


def soft_threshold(x: ArrayLike, threshold: ArrayLike) -> jax.Array:
    r"""Soft threshold: the proximal operator of ``threshold * |x|`` (elementwise).

    .. math::
        S_t(x) = \operatorname{sign}(x) \max(|x| - t, 0)

    Args:
      x: an array.
      threshold: a non-negative scalar or an array broadcastable to ``x`` (per-weight
        thresholds, e.g. ``lam`` times an adaptive step size).

    Returns:
      The thresholded array, with the shape and dtype of ``x``.

    Raises:
      ValueError: a concrete negative or NaN ``threshold`` (a traced one is not checked).

    >>> import jax.numpy as jnp
    >>> print(soft_threshold(jnp.array([-3.0, 0.5, 2.0]), 1.0))
    [-2.  0.  1.]
    """
    check_nonnegative(threshold, "threshold")
    x = jnp.asarray(x)
    threshold = jnp.asarray(threshold, dtype=x.dtype)
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


def hard_threshold(x: ArrayLike, threshold: ArrayLike) -> jax.Array:
    r"""Hard threshold: keeps the entries with ``|x| > threshold``, zeroes the others.

    .. math::
        H_t(x) = x \, [\,|x| > t\,]

    The proximal operator of ``lam * mu * ||x||_0`` is ``H_t`` with ``t = sqrt(2 lam mu)``;
    :func:`l0` applies it as ``x**2 > 2 lam mu``, without the square root. ``NaN`` entries are
    kept, so that they propagate.

    Args:
      x: an array.
      threshold: a non-negative scalar or an array broadcastable to ``x``.

    Returns:
      The thresholded array, with the shape and dtype of ``x``.

    Raises:
      ValueError: a concrete negative or NaN ``threshold`` (a traced one is not checked).

    >>> import jax.numpy as jnp
    >>> print(hard_threshold(jnp.array([-3.0, 0.5, 1.0, 2.0]), 1.0))
    [-3.  0.  0.  2.]
    """
    check_nonnegative(threshold, "threshold")
    x = jnp.asarray(x)
    threshold = jnp.asarray(threshold, dtype=x.dtype)
    # Written as "not below" so that NaN is kept (propagated) rather than zeroed.
    return jnp.where(jnp.abs(x) <= threshold, jnp.zeros_like(x), x)
