r"""Proximal-gradient training as Optax transformations (Formanek & Hadházi).

A prox transformation maps the point ``params + updates`` reached by the optimizer before it
through a proximal operator of :mod:`sparsejax.prox` and returns the update that lands there:

.. math::

   u' = \operatorname{prox}_{\lambda \mu H}(w + u) - w .

It therefore goes **last** in a chain and needs ``params``; with ``optax.sgd(lr)`` before it
and ``step_size=lr`` it is proximal SGD (ISTA with minibatches)::

    tx = optax.chain(optax.sgd(1e-2), sparsejax.prox_l1(lam=1e-4, step_size=1e-2))

The threshold is ``lam * step_size``: pass the step of the optimizer before it (the same
number, or the same schedule: it is evaluated at the same step count) so that ``lam`` is the
weight of the penalty in the objective ``loss + lam * H``.

:func:`sparsejax.proximal_rmsprop` (``_rmsprop.py``) is the paper's optimizer as one
transformation, built on the machinery here.

Which leaves, which groups, how often
-------------------------------------
``where`` and per-layer budgets (``lam={"pattern": value}``) work as for the projections
(:mod:`sparsejax.transforms`): by default every ``kernel`` with ``ndim >= 2``. ``group`` is
``"weight"``, ``"kernel"``, ``"input"`` or ``"output"`` (:mod:`sparsejax.prox`).
``every_k_steps=k`` applies the prox on updates ``k, 2k, 3k, ...`` only (the others pass the
updates through unchanged); the paper applies it once per epoch (``k`` = batches per epoch).
Numeric hyperparameters may be traced, so every factory here works under
``optax.inject_hyperparams``.

Reference: A. Formanek & D. Hadházi, "Compressing convolutional neural networks by L0
regularization", Sec. II.C, eqs. (16)-(18).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import prox
from sparsejax.transforms import _selection as selection

StepSize = Any  # a non-negative number, a scalar array, or an optax schedule


class ProxState(NamedTuple):
    """State of a prox transformation.

    Attributes:
      count: number of updates seen so far (``int32``). The step-size schedule is evaluated at
        ``count`` and the prox runs when ``(count + 1) % every_k_steps == 0``.
    """

    count: jax.Array


# --------------------------------------------------------------------------- validation


def _check_budget(budget: Any, name: str, *, upper: float | None = None) -> None:
    selection.check_budget(budget, name)
    if upper is None:
        return
    values = budget.items() if isinstance(budget, Mapping) else [(None, budget)]
    for pattern, value in values:
        label = name if pattern is None else f"{name}[{pattern!r}]"
        if not isinstance(value, jax.core.Tracer):
            if np.any(np.asarray(value) > upper):
                raise ValueError(f"{label} must be in [0, {upper}], got {value!r}")


def _check_step_size(step_size: Any, name: str) -> None:
    if not callable(step_size):
        selection.check_radius(step_size, name)


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")


def _value_at(step_size: StepSize, count: jax.Array) -> Any:
    return step_size(count) if callable(step_size) else step_size


# --------------------------------------------------------------------------- shared machinery


def _selected_indices(params: Any, budget: Any, where: Any, name: str, group: str) -> list:
    """Returns ``(index, path, budget)`` of every selected leaf; checks the group fits it."""
    # A flat list aligned with the params' leaves (None nodes of params are not leaves).
    flat_budgets = selection.flat_budgets(params, budget, where, name=name)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    chosen = []
    for index, ((path, leaf), value) in enumerate(zip(flat, flat_budgets, strict=True)):
        if value is None:
            continue
        name_of_leaf = selection.path_string(path)
        try:
            prox.group_axes(np.ndim(leaf), group)
        except ValueError as err:
            raise ValueError(
                f"parameter {name_of_leaf!r} of shape {np.shape(leaf)}: {err}"
            ) from err
        chosen.append((index, name_of_leaf, value))
    return chosen


def _apply_to_selected(operator, params, updates, chosen, steps, due, every_k_steps):
    """``operator(params + updates) - params`` on the selected leaves when ``due``.

    ``steps`` is a list (flat, like ``params``) of per-leaf step sizes. Leaves that are not
    selected, and every leaf on steps that are not due, keep their update bit for bit.
    """
    flat_params, treedef = jax.tree_util.tree_flatten(params)
    flat_updates = treedef.flatten_up_to(updates)

    def proximal(selected_updates):
        out = []
        for (index, _, budget), update in zip(chosen, selected_updates):
            param = flat_params[index]
            dtype = jnp.promote_types(jnp.result_type(param, update), jnp.float32)
            moved = param.astype(dtype) + update.astype(dtype)
            landed = operator(moved, budget, steps[index])
            out.append((landed - param.astype(dtype)).astype(update.dtype))
        return out

    selected = [flat_updates[index] for index, _, _ in chosen]
    if isinstance(every_k_steps, int) and every_k_steps == 1:
        selected = proximal(selected)
    else:
        selected = jax.lax.cond(due, proximal, list, selected)
    new_updates = list(flat_updates)
    for (index, _, _), update in zip(chosen, selected):
        new_updates[index] = update
    return jax.tree_util.tree_unflatten(treedef, new_updates)


def _prox_transformation(operator, budget, budget_name, step_size, group, where, every_k_steps):
    """Builds the transformation shared by :func:`prox_l1`, :func:`prox_l0`,
    :func:`prune_to_rate`: ``operator(x, budget, step)`` applied to the selected leaves.

    Validates the arguments every such transformation shares; the budget is checked by the
    caller (its bounds differ)."""
    _check_step_size(step_size, "step_size")
    prox.check_group(group)
    selection.check_every_k_steps(every_k_steps)
    selection.check_where(where)

    def init_fn(params):
        _selected_indices(params, budget, where, budget_name, group)
        return ProxState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(selection.NO_PARAMS_MSG)
        chosen = _selected_indices(params, budget, where, budget_name, group)
        step = _value_at(step_size, state.count)
        steps = [step] * len(jax.tree_util.tree_leaves(params))
        due = (state.count + 1) % every_k_steps == 0
        new_updates = _apply_to_selected(
            operator, params, updates, chosen, steps, due, every_k_steps
        )
        return new_updates, ProxState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- public factories


def prox_l1(
    lam: selection.Budget,
    step_size: StepSize = 1.0,
    *,
    group: str = "weight",
    where: selection.Where = None,
    every_k_steps: int = 1,
) -> optax.GradientTransformation:
    r"""Proximal step of the (group) L1 penalty: soft thresholding / group shrinkage.

    .. math::

       u' = \operatorname{prox}_{\lambda s \|\cdot\|}(w + u) - w, \qquad
       \operatorname{prox}_{t\|\cdot\|}(z)_g = z_g \max\big(1 - t / \|z_g\|_F, 0\big),

    with ``s`` the step size and groups as in :mod:`sparsejax.prox` (``"weight"`` gives
    ``sign(z) max(|z| - lam s, 0)``). Chained after ``optax.sgd(s)`` it is proximal SGD for
    ``loss + lam * sum_g ||w_g||_F``.

    Args:
      lam: the penalty weight, one number for every selected leaf or ``{path_pattern: lam}``.
      step_size: the step ``s`` of the optimizer before this one: a number or an optax schedule
        (evaluated at this transformation's step count). The threshold is ``lam * s``.
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"``.
      where: which leaves (default: ``kernel`` leaves with ``ndim >= 2``).
      every_k_steps: apply the prox on every k-th update only (``1``: every step).

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: a ``lam``/``step_size`` that is not one finite number ``>= 0`` (``lam`` may
        also be a ``{path_pattern: number}`` dict), a bad ``group``, ``where`` or
        ``every_k_steps`` (when built); a ``where``/``lam`` pattern that matches nothing, a
        ``where`` selecting an int/bool leaf, or a group that does not fit a selected leaf
        (when initialised); missing ``params`` (when updated).

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.2]])}
    >>> tx = optax.chain(optax.sgd(0.5), sparsejax.prox_l1(lam=2.0, step_size=0.5))
    >>> grads = {"kernel": jnp.zeros((2, 2))}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()
    [[2.0, 0.0], [0.0, 0.0]]

    Reference: Formanek & Hadhazi, eqs. (9), (12)-(14), (16)-(17).
    """
    _check_budget(lam, "lam")

    def operator(x, lam_of_leaf, step):
        return prox.l1(x, lam_of_leaf, step, group=group)

    return _prox_transformation(operator, lam, "lam", step_size, group, where, every_k_steps)


def prox_l0(
    lam: selection.Budget,
    step_size: StepSize = 1.0,
    *,
    group: str = "weight",
    where: selection.Where = None,
    every_k_steps: int = 1,
) -> optax.GradientTransformation:
    r"""Proximal step of the (group) L0 penalty: hard thresholding of weights or groups.

    .. math::

       u' = \operatorname{prox}_{\lambda s \|\cdot\|_0}(w + u) - w, \qquad
       \operatorname{prox}(z)_g = z_g \big[\|z_g\|_F^2 > 2 \lambda s\big],

    i.e. a weight (or group) survives iff its squared (Frobenius) norm exceeds ``2 lam s``.
    Chained after ``optax.sgd(s)`` it is proximal SGD for ``loss + lam * #nonzero groups``.

    Args:
      lam: the penalty weight, one number for every selected leaf or ``{path_pattern: lam}``.
      step_size: the step ``s`` of the optimizer before this one (number or schedule).
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"``.
      where: which leaves (default: ``kernel`` leaves with ``ndim >= 2``).
      every_k_steps: apply the prox on every k-th update only.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`prox_l1`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.2]])}
    >>> tx = optax.chain(optax.sgd(0.5), sparsejax.prox_l0(lam=1.0, step_size=0.5))
    >>> grads = {"kernel": jnp.zeros((2, 2))}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()
    [[3.0, 0.0], [0.0, 0.0]]

    Reference: Formanek & Hadhazi, eqs. (10)-(14), (16)-(17).
    """
    _check_budget(lam, "lam")

    def operator(x, lam_of_leaf, step):
        return prox.l0(x, lam_of_leaf, step, group=group)

    return _prox_transformation(operator, lam, "lam", step_size, group, where, every_k_steps)


def prune_to_rate(
    rate: selection.Budget,
    *,
    group: str = "weight",
    where: selection.Where = None,
    every_k_steps: int = 1,
) -> optax.GradientTransformation:
    r"""Zeroes, in each selected leaf, the fraction ``rate`` of groups with the smallest norm.

    The paper's "L0 with compression rate": the L0 prox whose threshold is chosen per layer as
    the ``rate``-quantile of the group Frobenius norms, i.e. exactly ``round(rate * G)`` of the
    ``G`` groups of each leaf become zero (ties: see :func:`sparsejax.prox.prune_smallest`).
    This fixes the final size of every layer, whatever the scale of its weights.

    Args:
      rate: the fraction in ``[0, 1]``, one for every selected leaf or ``{path_pattern: rate}``.
      group: ``"weight"``, ``"kernel"``, ``"input"`` or ``"output"``.
      where: which leaves (default: ``kernel`` leaves with ``ndim >= 2``).
      every_k_steps: prune on every k-th update only (the paper: once per epoch).

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: a ``rate`` outside ``[0, 1]``, otherwise as :func:`prox_l1`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.2], [1.0, 1.0]])}
    >>> tx = optax.chain(optax.sgd(0.1), sparsejax.prune_to_rate(1 / 3, group="input"))
    >>> grads = {"kernel": jnp.zeros((3, 2))}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()
    [[3.0, -1.0], [0.0, 0.0], [1.0, 1.0]]

    Reference: Formanek & Hadhazi, Sec. II.C ("L0 with compression rate").
    """
    _check_budget(rate, "rate", upper=1.0)

    def operator(x, rate_of_leaf, step):
        del step
        return prox.prune_smallest(x, rate_of_leaf, group=group)

    return _prox_transformation(operator, rate, "rate", 1.0, group, where, every_k_steps)
