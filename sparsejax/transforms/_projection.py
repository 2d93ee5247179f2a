"""Projection-gradient training as Optax transformations (Guyard & Barlaud (2020), Alg. 1).

Each factory here returns an :class:`optax.GradientTransformation` that maps the point
``params + updates`` reached by the optimizer before it onto a convex constraint set, and returns
the update that lands there:

.. math::

   u' = P_C(w + u) - w, \\qquad
   P_C(v) = \\operatorname*{argmin}_{x \\in C} \\tfrac12 \\|x - v\\|_2^2 .

It therefore goes **last** in a chain and needs ``params``::

    tx = optax.chain(optax.adam(1e-3), sparsejax.project_l11(eta=400.0))

Which neurons disappear
-----------------------
Structured constraints act on groups. With the default ``group_axis=None`` a group is everything
attached to one **input unit** of a layer:

* Dense kernel ``(in, out)``: group ``i`` is row ``kernel[i, :]`` — the fan-out of input
  neuron ``i``. A zero row means neuron ``i`` of the previous layer feeds nothing: it can be cut
  from both layers, so MACCs drop (the paper's "vanishing columns" of PyTorch ``(out, in)``).
* Conv kernel ``(kh, kw, in, out)``: group ``c`` is ``kernel[:, :, c, :]`` — every filter's
  weights on input channel ``c``; a zero group removes input channel ``c``.

``group_axis="output"`` (or ``"outputs"``) groups by output unit instead (column
``kernel[:, j]``, filter ``kernel[..., j]``): a zero group removes output neuron/filter ``j`` of
this layer.
An integer picks the axis explicitly for every selected leaf.

Budgets
-------
``eta`` is the radius of the ball of each selected leaf (one number for all, as in the paper,
or ``{path_pattern: radius}`` per layer; see :mod:`sparsejax.selection`), or with
``global_budget=True`` a single radius shared by all selected leaves (the constraint is then
posed on the concatenation of their groups). ``eta`` may be scheduled with
``optax.inject_hyperparams(sparsejax.project_l11)(eta=schedule)``.

Warm starts
-----------
The l1 thresholds that define the l1, l2,1, l1,1 and bi-level l1,inf projections move little
between training steps. The state keeps the previous ones and the active-set method starts from
them, which makes it converge in one or two passes (the result does not depend on the start).
The exact l1,inf projection keeps its Newton threshold and per-group caps (two or three Newton
steps instead of about eight), and the nuclear-norm projection the leading right singular
vectors of each leaf, from which a truncated SVD is computed and certified against the full one
(see :func:`sparsejax.project_nuclear`).

Reference: F. Guyard, M. Barlaud, "Learning sparse deep neural networks using efficient
structured projections on convex constraints for green AI", HAL hal-02556382v2, 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax.transforms import _constraints as constraints
from sparsejax.transforms import _selection as selection
from sparsejax.transforms._constraints import _Leaf

_GROUP_AXIS_NAMES = ("input", "output", "inputs", "outputs")


class ProjectionState(NamedTuple):
    """State of a projection transformation.

    Attributes:
      count: number of updates seen so far (``int32``); the projection runs when
        ``(count + 1) % every_k_steps == 0``.
      thresholds: the l1 thresholds found by the last projection, kept as warm starts for the
        next one: a dict from parameter path to the per-leaf thresholds (under the key
        ``"__global__"`` for the shared outer threshold of a global budget). For the exact
        l1,inf projection the inner part is the per-group caps; for the nuclear norm it is
        the warm start of the truncated SVD (its basis, and whether the next projection tries
        it and the last one was certified).
    """

    count: jax.Array
    thresholds: dict[str, Any]


# --------------------------------------------------------------------------- the factory


def _resolve_axis(group_axis, shape: tuple[int, ...], path: str, constraint) -> int:
    ndim = len(shape)
    if not constraint.needs_groups:
        if isinstance(constraint, constraints._Nuclear) and ndim < 2:
            raise ValueError(
                f"project_nuclear needs a matrix or a conv kernel; parameter {path!r} has shape "
                f"{shape}"
            )
        return 0
    if ndim < 2:
        raise ValueError(
            f"project_{constraint.name} groups the weights of a kernel with ndim >= 2; parameter "
            f"{path!r} has shape {shape} (select it out with where=)"
        )
    if group_axis is None or group_axis in ("input", "inputs"):
        return ndim - 2
    if group_axis in ("output", "outputs"):
        return ndim - 1
    if not -ndim <= group_axis < ndim:
        raise ValueError(
            f"group_axis={group_axis} is out of range for parameter {path!r} of shape {shape}"
        )
    return group_axis % ndim


def _check_group_axis(group_axis) -> None:
    if group_axis is None or group_axis in _GROUP_AXIS_NAMES:
        return
    if isinstance(group_axis, (int, np.integer)) and not isinstance(group_axis, bool):
        return
    raise ValueError(f"group_axis must be None, 'input', 'output' or an int; got {group_axis!r}")


def _selected(params, eta, where, group_axis, constraint, global_budget) -> list[_Leaf]:
    budget = 0.0 if global_budget else eta
    # Budgets come as a flat list aligned with the params' leaves: None nodes of params are not
    # leaves, so they cannot shift a budget onto the wrong leaf.
    flat_budgets = selection.flat_budgets(params, budget, where, name="eta")
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for index, ((path, leaf), radius) in enumerate(zip(flat, flat_budgets, strict=True)):
        if radius is None:
            continue
        name = selection.path_string(path)
        shape = tuple(np.shape(leaf))
        axis = _resolve_axis(group_axis, shape, name, constraint)
        dtype = _compute_dtype(jnp.result_type(leaf))
        leaves.append(_Leaf(index, name, shape, axis, None if global_budget else radius, dtype))
    return leaves


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for float16/bfloat16/float32 leaves, float64 for float64 leaves."""
    return jnp.promote_types(dtype, jnp.float32)


def _initial_thresholds(constraint, leaves, global_budget) -> dict[str, Any]:
    if global_budget:
        warm = {leaf.path: constraint.init_inner(leaf) for leaf in leaves}
        dtype = jnp.result_type(*(leaf.dtype for leaf in leaves)) if leaves else jnp.float32
        warm["__global__"] = jnp.zeros((), dtype)
        return warm
    return {leaf.path: (jnp.zeros((), leaf.dtype), constraint.init_inner(leaf)) for leaf in leaves}


def _projection(
    constraint,
    eta,
    *,
    where: selection.Where,
    group_axis,
    every_k_steps: int,
    global_budget: bool,
) -> optax.GradientTransformation:
    """Builds the transformation shared by every ``project_*`` factory."""
    if not isinstance(global_budget, (bool, np.bool_)):
        raise ValueError(
            f"global_budget must be True or False, got global_budget={global_budget!r}"
        )
    if isinstance(eta, Mapping) and global_budget:
        raise ValueError("global_budget=True takes one radius eta, not a mapping")
    selection.check_budget(eta, "eta")
    selection.check_where(where)
    _check_group_axis(group_axis)
    selection.check_every_k_steps(every_k_steps)
    if global_budget and isinstance(constraint, constraints._NestedL111):
        raise ValueError("project_l111 takes a per-leaf eta; global_budget=True is not supported")

    def leaves_of(params):
        return _selected(params, eta, where, group_axis, constraint, global_budget)

    def init_fn(params):
        leaves = leaves_of(params)
        return ProjectionState(
            count=jnp.zeros((), jnp.int32),
            thresholds=_initial_thresholds(constraint, leaves, global_budget),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(selection.NO_PARAMS_MSG)
        leaves = leaves_of(params)
        flat_params, treedef = jax.tree_util.tree_flatten(params)
        flat_updates = treedef.flatten_up_to(updates)
        global_radius = eta if global_budget else None

        def project(warm):
            # Only the selected leaves are touched; the others keep their updates bit for bit.
            # A leaf is projected in its compute dtype, and returned as the update that lands on
            # the projection once cast to the parameter's dtype (what apply_updates will add).
            stepped = [
                optax.apply_updates(flat_params[leaf.index], flat_updates[leaf.index])
                for leaf in leaves
            ]
            xs = [w.astype(leaf.dtype) for w, leaf in zip(stepped, leaves)]
            outs, warm = constraints._project(constraint, xs, leaves, warm, global_radius)
            new = []
            for leaf, y in zip(leaves, outs):
                p = flat_params[leaf.index]
                q = y.astype(p.dtype)
                new.append((q - p).astype(q.dtype))
            return new, warm

        def skip(warm):
            return [flat_updates[leaf.index] for leaf in leaves], warm

        selected, warm = selection.every_k(
            every_k_steps, state.count, project, skip, state.thresholds
        )
        flat_new = list(flat_updates)
        for leaf, u in zip(leaves, selected):
            flat_new[leaf.index] = u
        new_updates = jax.tree_util.tree_unflatten(treedef, flat_new)
        return new_updates, ProjectionState(count=state.count + 1, thresholds=warm)

    return optax.GradientTransformation(init_fn, update_fn)
