"""SIS inclusion sets and the sparsity constraints on one kernel (Verma & Pesquet, 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsejax import projections, prox
from sparsejax.prox import keep_largest, keep_largest_inputs

ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity", "softmax")
"""Activation names SIS understands; every name but ``relu`` and ``softmax`` is strictly
monotone, so its inclusion set is the single pre-activation."""

# --------------------------------------------------------------------------------------------
# Inclusion sets (pure array functions)
# --------------------------------------------------------------------------------------------


def _check_activation(activation: str, name: str = "activation") -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {activation!r}")


def project_inclusion_set(u: jax.Array, reference: jax.Array, activation: str) -> jax.Array:
    r"""Projects pre-activations onto the inclusion set :math:`D(y)` of the target outputs.

    The target outputs are given by their pre-activation ``reference`` (``y = R(reference)``),
    which is exact where ``y`` is not (a saturated sigmoid cannot be inverted in float32).

    .. math::

       \text{relu: } P_D(u)_i = \begin{cases} y_i & y_i > 0 \\ \min(u_i, 0) & y_i = 0
       \end{cases} \qquad
       \text{strictly monotone: } P_D(u) = R^{-1}(y) \qquad
       \text{softmax: } P_D(u) = \log y + \operatorname{mean}(u - \log y)\,\mathbf 1

    (the softmax set is invariant to the constant in :math:`\log y`, so ``reference`` serves).

    Args:
      u: pre-activations, ``(..., units)``.
      reference: pre-activations of the target outputs, same shape as ``u``.
      activation: one of :data:`ACTIVATIONS`; softmax acts over the last axis.

    Returns:
      :math:`P_{D(y)}(u)`, the shape of ``u``.

    Raises:
      ValueError: for an unknown activation.

    >>> import jax.numpy as jnp
    >>> u, ref = jnp.array([1.0, -2.0, 4.0]), jnp.array([0.5, -1.0, -1.0])
    >>> print(project_inclusion_set(u, ref, "relu"))
    [ 0.5 -2.   0. ]
    >>> print(project_inclusion_set(u, jnp.zeros(3), "softmax"))  # uniform target
    [1. 1. 1.]
    """
    _check_activation(activation)
    u = jnp.asarray(u)
    reference = jnp.asarray(reference, dtype=u.dtype)
    if activation == "relu":
        return jnp.where(reference > 0, reference, jnp.minimum(u, 0))
    if activation == "softmax":
        return reference + jnp.mean(u - reference, axis=-1, keepdims=True)
    return jnp.broadcast_to(reference, u.shape)


def inclusion_residual(u: jax.Array, reference: jax.Array, activation: str) -> jax.Array:
    r"""Returns :math:`r = P_{D(y)}(u) - u`, zero exactly when ``R(u) == R(reference)``.

    Args:
      u: pre-activations, ``(..., units)``.
      reference: pre-activations of the target outputs, same shape as ``u``.
      activation: one of :data:`ACTIVATIONS`.

    Returns:
      The residual, the shape of ``u``; :math:`\tfrac12\|r\|^2` is the squared distance whose
      gradient in ``u`` is :math:`-r`.

    >>> import jax.numpy as jnp
    >>> print(inclusion_residual(jnp.array([1.0, -2.0]), jnp.array([2.0, -1.0]), "relu"))
    [1. 0.]
    """
    return project_inclusion_set(u, reference, activation) - jnp.asarray(u)


# --------------------------------------------------------------------------------------------
# Sparsity constraints on one kernel
# --------------------------------------------------------------------------------------------


_CONSTRAINTS = {
    "top_k": lambda kernel, keep, rate: keep_largest(kernel, keep),
    "top_k_inputs": lambda kernel, keep, rate: keep_largest_inputs(kernel, keep),
    "soft": lambda kernel, lam, rate: prox.soft_threshold(kernel, rate * lam),
    "l1": lambda kernel, radius, rate: projections.l1_ball(kernel.reshape(-1), radius).reshape(
        kernel.shape
    ),
    # Group = everything attached to one input unit: axis -2 of a Dense or Conv kernel.
    "l11": lambda kernel, radius, rate: projections.l11_ball(
        kernel, radius, group_axis=kernel.ndim - 2
    ),
}
"""``(kernel, level, rate) -> constrained kernel`` for each way of controlling sparsity."""


def _constraint_name(control: str, ball: str, units: str) -> str:
    if control in ("sparsity", "max_error"):
        return "top_k" if units == "weights" else "top_k_inputs"
    return "soft" if control == "penalty" else ball
