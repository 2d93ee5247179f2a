r"""Proximal RMSProp (Formanek & Hadházi): RMSProp on the loss, then an L0/L1 prox.

The squared-gradient average never sees the penalty; the prox of :mod:`sparsejax.prox` is
taken with each weight's own RMSProp step as ``mu``, every ``every_k_steps`` updates, on the
leaves that ``where`` selects (the shared machinery is in ``_proximal.py``).

Reference: A. Formanek & D. Hadházi, "Compressing convolutional neural networks by L0
regularization", Sec. II.C, eq. (18).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import prox
from sparsejax.transforms import _selection as selection
from sparsejax.transforms._proximal import (
    StepSize,
    _apply_to_selected,
    _check_budget,
    _check_choice,
    _check_step_size,
    _selected_indices,
    _value_at,
)

_PENALTIES = ("l0", "l1")


class ProximalRMSPropState(NamedTuple):
    """State of :func:`proximal_rmsprop`.

    Attributes:
      count: number of updates seen so far (``int32``); the learning-rate schedule is evaluated
        at ``count`` and the prox runs when ``(count + 1) % every_k_steps == 0``.
      nu: running average of the squared loss gradient, one per parameter (never sees the
        penalty); ``optax.MaskedNode()`` for integer/bool leaves, which are not trained.
    """

    count: jax.Array
    nu: Any


def proximal_rmsprop(
    learning_rate: StepSize,
    lam: selection.Budget | None = None,
    *,
    penalty: str = "l0",
    group: str = "weight",
    rate: selection.Budget | None = None,
    every_k_steps: int = 1,
    decay: float = 0.9,
    eps: float = 1e-8,
    where: selection.Where = None,
) -> optax.GradientTransformation:
    r"""Proximal RMSProp (Formanek & Hadházi): RMSProp, then an L0/L1 prox every k steps.

    .. math::

       \nu &\leftarrow \rho\, \nu + (1 - \rho)\, g^2, \qquad
       \mu = \frac{\eta}{\sqrt{\nu} + \epsilon}, \qquad
       z = w - \mu \odot g, \\
       w &\leftarrow \operatorname{prox}_{\lambda H}^{\mu}(z)
       \quad\text{on updates } k, 2k, \dots \quad (\text{else } w \leftarrow z),

    where ``g`` is the gradient of the loss only (the squared-gradient average ``nu`` never sees
    the penalty, as the paper prescribes) and the prox is taken with each weight's current
    RMSProp step ``mu`` (:func:`sparsejax.prox.l0` / :func:`sparsejax.prox.l1`: keep a weight iff
    ``z^2 > 2 lam mu``, keep a group iff ``sum z^2 / mu > 2 lam``; soft/group shrinkage in the
    metric ``diag(1/mu)``). With ``rate=p`` instead of ``lam`` the prox is the paper's "L0 with
    compression rate": the fraction ``p`` of groups with the smallest Frobenius norm is zeroed in
    every selected leaf (:func:`sparsejax.prox.prune_smallest`). RMSProp acts on every leaf; the
    prox only on the selected ones. The prox's ``lam`` weighs the penalty once per application,
    so with ``every_k_steps=k`` its effective weight per gradient step is ``lam / k``.

    A weight whose loss gradient has always been exactly zero has ``mu = lr / eps``, so any
    positive ``lam`` removes it: the loss does not depend on it, and the penalty does.

    Integer and bool leaves (step counters, flags) are not trained: their update passes through
    unchanged and they carry no state. A non-finite gradient makes ``nu`` non-finite for good,
    as in ``optax.rmsprop``; to skip such steps, wrap the transformation:
    ``optax.apply_if_finite(sparsejax.proximal_rmsprop(...), max_consecutive_errors)`` drops
    the update and keeps the previous state whenever an update is not finite, and training
    continues from finite state.

    Args:
      learning_rate: ``eta``, a number or an optax schedule of the step count.
      lam: the penalty weight (number or ``{path_pattern: lam}``); give it or ``rate``.
      penalty: ``"l0"`` (the paper's choice) or ``"l1"``.
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"`` (the paper's channel-wise
        regularization prunes output filters: ``"output"``).
      rate: the compression rate in ``[0, 1]`` (number or ``{path_pattern: rate}``); selects
        the "L0 with compression rate" mode. Give it or ``lam``, and only with ``penalty="l0"``.
      every_k_steps: apply the prox on every k-th update only; the paper applies it once per
        epoch (``k`` = number of batches per epoch).
      decay: ``rho``, the decay of the squared-gradient average (the paper's ``nu = 0.9``).
      eps: ``epsilon``, added to ``sqrt(nu)``.
      where: which leaves the prox acts on (default: ``kernel`` leaves with ``ndim >= 2``).

    Returns:
      An ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Raises:
      ValueError: both or neither of ``lam``/``rate``, ``rate`` with ``penalty="l1"``, a bad
        ``penalty``, ``group``, ``decay``, ``eps``, learning rate, ``lam``, ``rate`` or
        ``every_k_steps`` (when built); a ``where``/pattern that matches nothing or a group
        that does not fit a selected leaf (when initialised); missing ``params`` (when updated).

    >>> import jax, jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[2.0, 0.01], [-1.0, 0.02]])}
    >>> tx = sparsejax.proximal_rmsprop(1e-2, lam=1e-2)
    >>> grads = {"kernel": jnp.full((2, 2), 0.1)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].round(3).tolist()
    [[1.968, 0.0], [-1.032, 0.0]]

    Reference: Formanek & Hadhazi, Sec. II.C, eq. (18).
    """
    operator, budget, budget_name = _rmsprop_prox(lam, penalty, group, rate)
    _check_step_size(learning_rate, "learning_rate")
    selection.check_every_k_steps(every_k_steps)
    _check_decay(decay)
    selection.check_radius(eps, "eps")
    selection.check_where(where)

    def init_fn(params):
        _selected_indices(params, budget, where, budget_name, group)
        # Integer/bool leaves (step counters, flags) are not trained: no average for them.
        # An explicit dtype makes the state strongly typed even for weakly typed params, so the
        # state's type does not change after the first step (no recompilation under jit).
        nu = jax.tree_util.tree_map(
            lambda p: (
                jnp.zeros(np.shape(p), jnp.result_type(p))
                if selection.is_floating(p)
                else optax.MaskedNode()
            ),
            params,
        )
        return ProximalRMSPropState(count=jnp.zeros((), jnp.int32), nu=nu)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(selection.NO_PARAMS_MSG)
        chosen = _selected_indices(params, budget, where, budget_name, group)
        flat_params, treedef = jax.tree_util.tree_flatten(params)
        lr = _value_at(learning_rate, state.count)
        nu, steps, rms_updates = [], [], []
        for p, g, n in zip(
            flat_params, treedef.flatten_up_to(updates), treedef.flatten_up_to(state.nu)
        ):
            if not selection.is_floating(p):  # int/bool leaves pass through untouched
                nu.append(n)
                steps.append(None)
                rms_updates.append(g)
                continue
            # in the state's dtype: a gradient of another precision must not retype the state
            n = (decay * n + (1 - decay) * jnp.square(g)).astype(n.dtype)
            mu = lr / (jnp.sqrt(n) + eps)
            nu.append(n)
            steps.append(mu)
            rms_updates.append((-mu * g).astype(g.dtype))
        due = (state.count + 1) % every_k_steps == 0
        new_updates = _apply_to_selected(
            operator,
            params,
            treedef.unflatten(rms_updates),
            chosen,
            steps,
            due,
            every_k_steps,
        )
        nu = treedef.unflatten(nu)
        return new_updates, ProximalRMSPropState(count=optax.safe_increment(state.count), nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _check_decay(decay: Any) -> None:
    selection.check_radius(decay, "decay")
    if not isinstance(decay, jax.core.Tracer) and not np.asarray(decay) < 1:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")


def _rmsprop_prox(lam, penalty, group, rate) -> tuple[Callable, Any, str]:
    """Validates the penalty arguments of :func:`proximal_rmsprop`; returns its operator."""
    _check_choice(penalty, _PENALTIES, "penalty")
    prox.check_group(group)
    if (lam is None) == (rate is None):
        raise ValueError(
            f"proximal_rmsprop needs exactly one of lam (penalty weight) and rate "
            f"(compression rate); got lam={lam!r}, rate={rate!r}"
        )
    if rate is not None:
        if penalty != "l0":
            raise ValueError(
                f"rate (L0 with compression rate) needs penalty='l0', got penalty={penalty!r}"
            )
        _check_budget(rate, "rate", upper=1.0)
        return (lambda x, r, mu: prox.prune_smallest(x, r, group=group)), rate, "rate"
    _check_budget(lam, "lam")
    penalty_prox = prox.l0 if penalty == "l0" else prox.l1
    return (lambda x, lam_of_leaf, mu: penalty_prox(x, lam_of_leaf, mu, group=group)), lam, "lam"
