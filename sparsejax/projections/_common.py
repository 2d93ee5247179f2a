"""Argument validation, dtype and group-layout helpers shared by the projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_METHODS = ("active_set", "sort")


def _as_floating(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}.")
    return x


def _compute_dtype(dtype) -> jnp.dtype:
    # Low-precision inputs are accumulated in float32; float64 stays float64.
    return jnp.promote_types(dtype, jnp.float32)


def _normalize_axis(axis, ndim: int, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions.")
    return int(axis) % ndim


def _check_radius(radius, name: str = "radius", *, scalar: bool = False) -> None:
    """Rejects a concrete radius that is negative, NaN or not real; traced radii pass."""
    if scalar and np.ndim(radius) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(radius)}.")
    try:
        values = np.asarray(radius)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if values.dtype == object or not (
        np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a real number or array, got {radius!r}.")
    if np.any(np.isnan(values)) or np.any(values < 0):
        raise ValueError(f"{name} must be nonnegative, got {radius!r}.")


def _check_method(method) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")


def _broadcast_to_batch(value, batch_shape, dtype, name: str) -> jax.Array:
    value = jnp.asarray(value, dtype)
    try:
        return jnp.broadcast_to(value, batch_shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {value.shape} does not broadcast to the batch shape {batch_shape}."
        ) from None


def _validate_groups(x, group_axis, radius):
    """Checked ``x``, nonnegative-axis ``group_axis`` and scalar radius (compute dtype)."""
    x = _as_floating(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a scalar.")
    group_axis = _normalize_axis(group_axis, x.ndim, "group_axis")
    _check_radius(radius, scalar=True)
    return x, group_axis, jnp.asarray(radius, _compute_dtype(x.dtype))


@jax.custom_jvp
def _flush_denormals(values):
    """``values`` with subnormal entries replaced by a zero of the same sign.

    What the projections return unchanged ("inside the ball") must be what their arithmetic
    saw: XLA on CPU treats subnormal operands as zero, so a subnormal input measures as norm
    0 and would otherwise come back, bit for bit, outside a ball of subnormal radius. The
    derivative is the identity (this is a rounding, not a function of the input).
    """
    tiny = jnp.finfo(values.dtype).tiny
    return jnp.where(jnp.abs(values) < tiny, jnp.copysign(jnp.zeros_like(values), values), values)


_flush_denormals.defjvp(lambda primals, tangents: (_flush_denormals(*primals), tangents[0]))


def _unless_empty(core, x, *args):
    """``core(x, *args)``, or ``x`` itself when it has no entry (no group, or empty groups).

    An empty array lies in every ball; the cores' reductions (max, reshape by a zero
    group count) are not defined on it.
    """
    return x if x.size == 0 else core(x, *args)


def _group_rows(x, group_axis):
    """``x`` as a ``(groups, group size)`` matrix in the compute dtype."""
    rows = jnp.moveaxis(x, group_axis, 0)
    return rows.reshape(rows.shape[0], -1).astype(_compute_dtype(x.dtype))


def _ungroup_rows(rows, x, group_axis):
    moved_shape = (x.shape[group_axis], *x.shape[:group_axis], *x.shape[group_axis + 1 :])
    return jnp.moveaxis(rows.reshape(moved_shape), 0, group_axis).astype(x.dtype)
