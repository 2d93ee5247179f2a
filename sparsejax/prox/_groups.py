"""Groups of a kernel (weight, kernel, input, output) and their Frobenius norms."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax.prox._thresholds import ArrayLike

GROUPS = ("weight", "kernel", "input", "output")


def group_axes(ndim: int, group: str) -> tuple[int, ...]:
    """Returns the axes a group reduces over for an array with ``ndim`` dimensions.

    Args:
      ndim: the number of dimensions of the kernel.
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"`` (see the module docstring).

    Returns:
      The tuple of axes summed over to form one group (empty for ``"weight"``).

    Raises:
      ValueError: an unknown ``group``, or ``"input"``/``"output"`` on fewer than 2 dimensions.

    >>> group_axes(4, "kernel"), group_axes(4, "input"), group_axes(2, "output")
    ((0, 1), (0, 1, 3), (0,))
    """
    check_group(group)
    if group == "weight":
        return ()
    if group == "kernel":
        return tuple(range(ndim - 2))
    if ndim < 2:
        raise ValueError(
            f"group={group!r} needs a kernel with ndim >= 2 (Dense (in, out) or Conv HWIO); "
            f"got ndim={ndim}"
        )
    kept = ndim - 2 if group == "input" else ndim - 1
    return tuple(axis for axis in range(ndim) if axis != kept)


def check_group(group: Any) -> None:
    """Raises ``ValueError`` naming ``group`` unless it is one of :data:`GROUPS`."""
    if not isinstance(group, str) or group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got group={group!r}")


def _compute_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    # Finite gradient at 0 (the plain sqrt has an infinite one, which turns into NaN).
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), x * 0)  # x * 0 keeps NaN


def _group_scale(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Per group, the peak magnitude where squaring would under- or overflow, else 1.

    Dividing by it brings the group's entries to at most 1 (the norms, and the prox, are
    homogeneous); it is capped so that XLA's reciprocal ``1 / scale`` stays a normal number.
    Groups at ordinary scales use 1, so their results do not change by a single rounding.
    """
    peak = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axes, keepdims=True, initial=0))
    extreme = ((peak > 2.0**32) | (peak < 2.0**-32)) & (peak > 0) & (peak < jnp.inf)
    return jnp.where(extreme, jnp.minimum(peak, 2.0 ** (jnp.finfo(x.dtype).maxexp - 8)), 1)


def _frobenius(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Group l2 norms (reduced axes kept), also at scales where ``x**2`` under- or overflows."""
    scale = _group_scale(x, axes)
    return scale * _safe_sqrt(jnp.sum(jnp.square(x / scale), axis=axes, keepdims=True))


def group_norms(x: ArrayLike, group: str = "weight") -> jax.Array:
    r"""Frobenius norm of every group, with the reduced axes kept (size 1).

    .. math::
        n_g = \Big(\sum_{i \in g} x_i^2\Big)^{1/2}

    Args:
      x: a kernel.
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"``.

    Returns:
      The norms, broadcastable against ``x`` (``|x|`` for ``"weight"``), in at least float32.

    Raises:
      ValueError: as :func:`group_axes`.

    >>> import jax.numpy as jnp
    >>> print(group_norms(jnp.array([[3.0, 0.0], [4.0, 1.0]]), "output"))
    [[5. 1.]]
    """
    x = jnp.asarray(x)
    axes = group_axes(x.ndim, group)
    x = x.astype(_compute_dtype(x.dtype))
    if not axes:
        return jnp.abs(x)
    return _frobenius(x, axes)
