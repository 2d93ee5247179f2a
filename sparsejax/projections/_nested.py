r"""The nested bi-level l1,1,...,1 operator for tensors."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.projections._common import (
    _as_floating,
    _check_method,
    _check_radius,
    _compute_dtype,
    _normalize_axis,
    _unless_empty,
)
from sparsejax.projections._groups import _nested_l1


def l111_ball(x, radius, *, group_axes=(-2, -1), method="active_set"):
    r"""Nested bi-level l1,1,...,1 projection for tensors (Guyard & Barlaud (2020), Discussion).

    ``group_axes = (g_1, ..., g_k)`` defines nested groups, outermost first: a level-1 group
    is the slice at one index of axis ``g_1``; a level-``l`` group is the slice at one index
    of each of ``g_1, ..., g_l``; the innermost level is the individual weights. The budget
    is split level by level with Guyard & Barlaud's (2020) first stage, then each innermost group is
    projected onto its share:

    .. math::

        t^{(1)} = P_{\ell_1}\big((\|v_{i_1}\|_1)_{i_1}, \eta\big), \quad
        t^{(l)}_{i_1 \dots i_{l-1} \cdot} =
            P_{\ell_1}\big((\|v_{i_1 \dots i_l}\|_1)_{i_l}, t^{(l-1)}_{i_1 \dots i_{l-1}}\big),
        \quad w_{i_1 \dots i_k} = P_{\ell_1}\big(v_{i_1 \dots i_k}, t^{(k)}_{i_1 \dots i_k}\big).

    The default ``(-2, -1)`` on a Conv kernel ``(kh, kw, in, out)`` nests input channel ->
    kernel (the ``kh x kw`` slice of one ``(in, out)`` pair) -> weight, so it zeroes whole
    input channels, then whole kernels, then single weights. On a Dense kernel
    ``(in, out)`` the kernels are single weights, the middle level changes nothing, and the
    result equals :func:`l11_ball` with ``group_axis=0``; ``group_axes=(g,)`` is always
    :func:`l11_ball` with ``group_axis=g``.

    Args:
      x: floating array with ``x.ndim >= len(group_axes)``.
      radius: nonnegative scalar :math:`\eta`.
      group_axes: distinct axes, outermost level first; negative values count from the end.
      method: the l1 method of the innermost stage (see :func:`l1_threshold`).

    Returns:
      The nested bi-level projection, shape and dtype of ``x``. An empty ``x`` (no group, or groups
      with no entry) is returned as is.

    Raises:
      ValueError: for a non-floating ``x``, empty, repeated or out-of-range ``group_axes``,
        an unknown ``method``, or a concrete negative, NaN or non-scalar ``radius``.

    Example:
      >>> import jax.numpy as jnp
      >>> from sparsejax.projections import l111_ball
      >>> kernel = jnp.arange(1.0, 17.0).reshape(2, 2, 2, 2)  # (kh, kw, in, out)
      >>> w = l111_ball(kernel, 10.0)
      >>> print(bool(jnp.abs(w).sum() <= 10.0 + 1e-5), bool(jnp.all(w[:, :, 0] == 0)))
      True True
    """
    x = _as_floating(x, "x")
    if not isinstance(group_axes, Sequence) or len(group_axes) == 0:
        raise ValueError(f"group_axes must be a non-empty sequence of ints, got {group_axes!r}.")
    axes = [_normalize_axis(axis, x.ndim, "group_axes") for axis in group_axes]
    if len(set(axes)) != len(axes):
        raise ValueError(f"group_axes must be distinct axes, got {tuple(group_axes)!r}.")
    _check_method(method)
    _check_radius(radius, scalar=True)
    radius = jnp.asarray(radius, _compute_dtype(x.dtype))
    return _unless_empty(_l111_core, x, radius, tuple(axes), method)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _l111_core(x, radius, axes, method):
    order = list(axes) + [axis for axis in range(x.ndim) if axis not in axes]
    moved = jnp.transpose(x, order)
    values = moved.reshape(*moved.shape[: len(axes)], -1).astype(radius.dtype)
    projected = _nested_l1(values, radius, len(axes), method).reshape(moved.shape)
    return jnp.transpose(projected, np.argsort(order)).astype(x.dtype)
