"""Elementwise soft and hard thresholds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

ArrayLike = Any


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

    >>> import jax.numpy as jnp
    >>> print(soft_threshold(jnp.array([-3.0, 0.5, 2.0]), 1.0))
    [-2.  0.  1.]
    """
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

    >>> import jax.numpy as jnp
    >>> print(hard_threshold(jnp.array([-3.0, 0.5, 1.0, 2.0]), 1.0))
    [-3.  0.  0.  2.]
    """
    x = jnp.asarray(x)
    threshold = jnp.asarray(threshold, dtype=x.dtype)
    # Written as "not below" so that NaN is kept (propagated) rather than zeroed.
    return jnp.where(jnp.abs(x) <= threshold, jnp.zeros_like(x), x)
