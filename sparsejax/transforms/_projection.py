"""Projection-gradient training as Optax transformations (seed 000, Alg. 1).

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

from sparsejax import projections
from sparsejax.transforms import _selection as selection

_GROUP_AXIS_NAMES = ("input", "output", "inputs", "outputs")


class ProjectionState(NamedTuple):
    """State of a projection transformation.

    Attributes:
      count: number of updates seen so far (``int32``); the projection runs when
        ``(count + 1) % every_k_steps == 0``.
      thresholds: the l1 thresholds found by the last projection, kept as warm starts for the
        next one: a dict from parameter path to the per-leaf thresholds (under the key
        ``"__global__"`` for the shared outer threshold of a global budget).
    """

    count: jax.Array
    thresholds: dict[str, Any]


class _Leaf(NamedTuple):
    """Static description of one selected leaf."""

    index: int  # position in the flattened params
    path: str
    shape: tuple[int, ...]
    axis: int  # resolved group axis (unused by element-wise constraints)
    radius: Any  # per-leaf radius (None with a global budget)


# --------------------------------------------------------------------------- constraints
# A bi-level constraint is: a vector of group measures m (one per group), an outer l1 projection
# t = P_l1(m, eta), and a per-group shrink that brings each group's measure down to t_i.
# l1, l2,1, l1,1, bi-level l1,inf and the nuclear norm all have this form, which is what makes
# the global budget (one outer projection over all leaves' groups) uniform.


def _rows(x: jax.Array, axis: int) -> jax.Array:
    return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _unrows(rows: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    return jnp.moveaxis(rows.reshape(moved), 0, axis)


class _BiLevel:
    """Group measure + outer l1 projection + group shrink."""

    name = "bilevel"
    needs_groups = True
    inner_warm = False

    def measure(self, x, axis):  # -> (measures (G,), aux)
        raise NotImplementedError

    def shrink(self, x, axis, t, aux, warm):  # -> (y, inner warm start)
        raise NotImplementedError

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        del leaf
        return jnp.zeros((), jnp.float32)


class _L1(_BiLevel):
    name = "l1"
    needs_groups = False

    def measure(self, x, axis):
        return jnp.abs(x).ravel(), None

    def shrink(self, x, axis, t, aux, warm):
        return jnp.sign(x) * t.reshape(x.shape), warm


class _L21(_BiLevel):
    name = "l21"

    def measure(self, x, axis):
        squares = jnp.sum(jnp.square(_rows(x, axis)), axis=1)
        # sqrt has an infinite slope at 0: keep it out of the gradient of zero groups.
        norms = jnp.where(squares > 0, jnp.sqrt(jnp.where(squares > 0, squares, 1.0)), 0.0)
        return norms, norms

    def shrink(self, x, axis, t, norms, warm):
        scale = jnp.where(norms > 0, t / jnp.where(norms > 0, norms, 1.0), 0.0)
        return _unrows(_rows(x, axis) * scale[:, None], x.shape, axis), warm


class _L11(_BiLevel):
    name = "l11"
    inner_warm = True

    def measure(self, x, axis):
        magnitudes = jnp.abs(_rows(x, axis))
        return jnp.sum(magnitudes, axis=1), magnitudes

    def shrink(self, x, axis, t, magnitudes, warm):
        theta = projections.l1_threshold(magnitudes, t, axis=-1, init=warm)
        rows = jnp.sign(_rows(x, axis)) * jnp.maximum(magnitudes - theta[:, None], 0.0)
        return _unrows(rows, x.shape, axis), theta

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        return jnp.zeros((leaf.shape[leaf.axis],), jnp.float32)


class _BiLevelL1Inf(_BiLevel):
    name = "bilevel_l1inf"

    def measure(self, x, axis):
        return jnp.max(jnp.abs(_rows(x, axis)), axis=1), None

    def shrink(self, x, axis, t, aux, warm):
        rows = _rows(x, axis)
        return _unrows(jnp.clip(rows, -t[:, None], t[:, None]), x.shape, axis), warm


class _Nuclear(_BiLevel):
    name = "nuclear"
    needs_groups = False

    def measure(self, x, axis):
        u, s, vt = jnp.linalg.svd(x.reshape(-1, x.shape[-1]), full_matrices=False)
        return s, (u, vt)

    def shrink(self, x, axis, t, aux, warm):
        u, vt = aux
        return ((u * t[None, :]) @ vt).reshape(x.shape), warm


class _ExactL1Inf:
    """Exact Euclidean projection onto sum_i max_j |w_ij| <= eta (not bi-level)."""

    name = "l1inf"
    needs_groups = True
    inner_warm = False

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        del leaf
        return jnp.zeros((), jnp.float32)


class _NestedL111:
    """The tensor generalisation l1,1,1 of seed 000's Discussion (per leaf only)."""

    name = "l111"
    needs_groups = True
    inner_warm = False

    def init_inner(self, leaf: _Leaf) -> jax.Array:
        del leaf
        return jnp.zeros((), jnp.float32)


# --------------------------------------------------------------------------- projection of leaves


def _project_bilevel_per_leaf(constraint, xs, leaves, warm):
    outs, new_warm = [], {}
    for x, leaf in zip(xs, leaves):
        m, aux = constraint.measure(x, leaf.axis)
        outer, inner = warm[leaf.path]
        theta = projections.l1_threshold(m, leaf.radius, init=outer)
        t = jnp.maximum(m - theta, 0.0)
        y, inner = constraint.shrink(x, leaf.axis, t, aux, inner)
        outs.append(y)
        new_warm[leaf.path] = (theta, inner)
    return outs, new_warm


def _project_bilevel_global(constraint, xs, leaves, warm, radius):
    measured = [constraint.measure(x, leaf.axis) for x, leaf in zip(xs, leaves)]
    m_all = jnp.concatenate([m for m, _ in measured])
    theta = projections.l1_threshold(m_all, radius, init=warm["__global__"])
    t_all = jnp.maximum(m_all - theta, 0.0)
    outs, new_warm, start = [], {"__global__": theta}, 0
    for x, leaf, (m, aux) in zip(xs, leaves, measured):
        t = t_all[start : start + m.shape[0]]
        start += m.shape[0]
        y, inner = constraint.shrink(x, leaf.axis, t, aux, warm[leaf.path])
        outs.append(y)
        new_warm[leaf.path] = inner
    return outs, new_warm


def _project_l1inf_global(xs, leaves, radius):
    rows = [_rows(x, leaf.axis) for x, leaf in zip(xs, leaves)]
    width = max(r.shape[1] for r in rows)
    # Zero padding leaves the l1,inf projection of the real entries unchanged: padded zeros
    # never set a group maximum and are mapped to zero.
    padded = jnp.concatenate([jnp.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
    projected = projections.l1inf_ball(padded, radius, group_axis=0)
    outs, start = [], 0
    for x, leaf, r in zip(xs, leaves, rows):
        block = projected[start : start + r.shape[0], : r.shape[1]]
        start += r.shape[0]
        outs.append(_unrows(block, x.shape, leaf.axis))
    return outs


def _project(constraint, xs, leaves, warm, global_radius):
    """Projects the selected leaves (float32) and returns them with the new warm starts."""
    if isinstance(constraint, _BiLevel):
        if global_radius is None:
            return _project_bilevel_per_leaf(constraint, xs, leaves, warm)
        return _project_bilevel_global(constraint, xs, leaves, warm, global_radius)
    if isinstance(constraint, _ExactL1Inf):
        if global_radius is None:
            outs = [
                projections.l1inf_ball(x, lf.radius, group_axis=lf.axis)
                for x, lf in zip(xs, leaves)
            ]
        else:
            outs = _project_l1inf_global(xs, leaves, global_radius)
        return outs, warm
    outs = [projections.l111_ball(x, leaf.radius) for x, leaf in zip(xs, leaves)]
    return outs, warm


# --------------------------------------------------------------------------- the factory


def _resolve_axis(group_axis, shape: tuple[int, ...], path: str, constraint) -> int:
    ndim = len(shape)
    if not constraint.needs_groups:
        if isinstance(constraint, _Nuclear) and ndim < 2:
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
    budgets = selection.leaf_budgets(params, budget, where, name="eta")
    flat_budgets = jax.tree_util.tree_leaves(budgets, is_leaf=lambda b: b is None)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for index, ((path, leaf), radius) in enumerate(zip(flat, flat_budgets)):
        if radius is None:
            continue
        name = selection.path_string(path)
        shape = tuple(np.shape(leaf))
        axis = _resolve_axis(group_axis, shape, name, constraint)
        leaves.append(_Leaf(index, name, shape, axis, None if global_budget else radius))
    return leaves


def _initial_thresholds(constraint, leaves, global_budget) -> dict[str, Any]:
    zero = jnp.zeros((), jnp.float32)
    if global_budget:
        warm = {leaf.path: constraint.init_inner(leaf) for leaf in leaves}
        warm["__global__"] = zero
        return warm
    return {leaf.path: (zero, constraint.init_inner(leaf)) for leaf in leaves}


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
    if isinstance(eta, Mapping) and global_budget:
        raise ValueError("global_budget=True takes one radius eta, not a mapping")
    selection.check_budget(eta, "eta")
    _check_group_axis(group_axis)
    selection.check_every_k_steps(every_k_steps)
    if global_budget and isinstance(constraint, _NestedL111):
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
        new_params = optax.apply_updates(params, updates)
        flat, treedef = jax.tree_util.tree_flatten(new_params)
        global_radius = eta if global_budget else None

        def project(flat_params, warm):
            xs = [flat_params[leaf.index].astype(jnp.float32) for leaf in leaves]
            outs, warm = _project(constraint, xs, leaves, warm, global_radius)
            flat_params = list(flat_params)
            for leaf, y in zip(leaves, outs):
                flat_params[leaf.index] = y.astype(flat_params[leaf.index].dtype)
            return flat_params, warm

        due = (state.count + 1) % every_k_steps == 0
        flat, warm = jax.lax.cond(due, project, lambda f, w: (list(f), w), flat, state.thresholds)
        projected = jax.tree_util.tree_unflatten(treedef, flat)
        new_updates = jax.tree_util.tree_map(
            lambda p, q: (q - p).astype(q.dtype), params, projected
        )
        return new_updates, ProjectionState(count=state.count + 1, thresholds=warm)

    return optax.GradientTransformation(init_fn, update_fn)


def project_l1(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    every_k_steps: int = 1,
    global_budget: bool = False,
) -> optax.GradientTransformation:
    r"""Projects each selected leaf onto the l1 ball of radius ``eta`` (PGL1).

    .. math::

       W' = \operatorname*{argmin}_{\sum_{ij} |x_{ij}| \le \eta} \|x - W\|_F^2 ,

    the exact Euclidean projection of the flattened kernel: unstructured sparsity.

    Args:
      eta: the radius, one number (or a scalar array) for every selected leaf, or a mapping
        ``{path_pattern: radius}``; with ``global_budget=True`` the radius of the one ball that
        holds all selected leaves together.
      where: which leaves (default: ``kernel`` leaves with ``ndim >= 2``); see
        :mod:`sparsejax.selection`.
      every_k_steps: project on every k-th update only (``1``: every step, as Alg. 1).
      global_budget: one l1 ball for the concatenation of all selected leaves.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: a negative ``eta`` or a bad ``every_k_steps`` (when the transformation is
        built); a ``where``/``eta`` pattern that matches no parameter (when it is initialised);
        a missing ``params`` argument (when it is updated).

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.5]])}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_l1(2.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()
    [[2.0, -0.0], [0.0, 0.0]]

    Reference: Guyard & Barlaud (2020), "PGL1"; Duchi et al. (2008); Condat (2016).
    """
    return _projection(
        _L1(),
        eta,
        where=where,
        group_axis=None,
        every_k_steps=every_k_steps,
        global_budget=global_budget,
    )


def project_l21(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    group_axis: int | str | None = None,
    every_k_steps: int = 1,
    global_budget: bool = False,
) -> optax.GradientTransformation:
    r"""Projects each selected leaf onto the l2,1 (group lasso) ball (PGL21, seed 000 Alg. 2).

    .. math::

       W' = \operatorname*{argmin}_{\sum_i \|x_i\|_2 \le \eta} \|x - W\|_F^2 ,

    with groups ``x_i`` as described in the module docstring: whole groups vanish.

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      group_axis: ``None``/``"input"`` (input units/channels), ``"output"`` (output
        units/filters) or an axis index (the same words as the prox ``group=``).
      every_k_steps: project on every k-th update only.
      global_budget: one ball for the groups of all selected leaves together.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l1`; also a bad ``group_axis`` or a selected leaf with
        fewer than two dimensions.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_l21(1.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].round(3).tolist()
    [[0.6, 0.8], [0.0, 0.0]]

    Reference: Guyard & Barlaud (2020), Alg. 2 (with l2 group norms, see DESIGN.md).
    """
    return _projection(
        _L21(),
        eta,
        where=where,
        group_axis=group_axis,
        every_k_steps=every_k_steps,
        global_budget=global_budget,
    )


def project_l11(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    group_axis: int | str | None = None,
    every_k_steps: int = 1,
    global_budget: bool = False,
) -> optax.GradientTransformation:
    r"""Applies the bi-level l1,1 projection to each selected leaf (PGL11, seed 000 Alg. 3).

    .. math::

       t = P_{\ell_1}\big((\|v_i\|_1)_i, \eta\big), \qquad
       w_i = \operatorname*{argmin}_{\|x\|_1 \le t_i} \|x - v_i\|_2^2 .

    The group l1 norms are projected onto the l1 ball, then each group onto the l1 ball of its
    share. Whole groups (input units by default) vanish, and the survivors are sparse inside.
    The result satisfies ``sum_ij |w_ij| <= eta``; it is the paper's bi-level operator, not the
    Euclidean projection onto that set (that is :func:`project_l1`).

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      group_axis: ``None``/``"input"``, ``"output"`` or an axis index.
      every_k_steps: project on every k-th update only.
      global_budget: one outer budget for the groups of all selected leaves together.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l21`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, 1.0], [0.5, 0.5]])}
    >>> tx = optax.chain(optax.adam(1e-3), sparsejax.project_l11(eta=2.0))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> new = optax.apply_updates(params, updates)["kernel"]
    >>> bool(jnp.abs(new).sum() <= 2.0 + 1e-5), new[1].tolist()
    (True, [0.0, 0.0])

    Reference: Guyard & Barlaud (2020), Alg. 3.
    """
    return _projection(
        _L11(),
        eta,
        where=where,
        group_axis=group_axis,
        every_k_steps=every_k_steps,
        global_budget=global_budget,
    )


def project_bilevel_l1inf(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    group_axis: int | str | None = None,
    every_k_steps: int = 1,
    global_budget: bool = False,
) -> optax.GradientTransformation:
    r"""Applies the bi-level l1,inf operator to each selected leaf.

    .. math::

       t = P_{\ell_1}\big((\max_j |v_{ij}|)_i, \eta\big), \qquad
       w_{ij} = \operatorname{clip}(v_{ij}, -t_i, t_i).

    A cheap alternative to the exact :func:`project_l1inf` with the same feasible set
    ``sum_i max_j |w_ij| <= eta``; groups whose maximum falls below the threshold vanish.

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      group_axis: ``None``/``"input"``, ``"output"`` or an axis index.
      every_k_steps: project on every k-th update only.
      global_budget: one outer budget for the groups of all selected leaves together.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l21`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.2]])}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_bilevel_l1inf(1.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()
    [[1.0, -1.0], [0.0, 0.0]]

    Reference: the bi-level l1,inf of the same authors' later work (see DESIGN.md).
    """
    return _projection(
        _BiLevelL1Inf(),
        eta,
        where=where,
        group_axis=group_axis,
        every_k_steps=every_k_steps,
        global_budget=global_budget,
    )


def project_l1inf(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    group_axis: int | str | None = None,
    every_k_steps: int = 1,
    global_budget: bool = False,
) -> optax.GradientTransformation:
    r"""Projects each selected leaf onto the l1,inf ball (exact Euclidean projection).

    .. math::

       W' = \operatorname*{argmin}_{\sum_i \max_j |x_{ij}| \le \eta} \|x - W\|_F^2 .

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      group_axis: ``None``/``"input"``, ``"output"`` or an axis index.
      every_k_steps: project on every k-th update only.
      global_budget: one ball for the groups of all selected leaves together (groups of
        different sizes are zero-padded, which does not change the projection).

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l21`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.2]])}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_l1inf(1.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> new = optax.apply_updates(params, updates)["kernel"]
    >>> round(float(jnp.abs(new).max(axis=1).sum()), 4)
    1.0

    Reference: the l1,inf projection of the same authors' later work (see DESIGN.md).
    """
    return _projection(
        _ExactL1Inf(),
        eta,
        where=where,
        group_axis=group_axis,
        every_k_steps=every_k_steps,
        global_budget=global_budget,
    )


def project_nuclear(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    every_k_steps: int = 1,
    global_budget: bool = False,
) -> optax.GradientTransformation:
    r"""Projects each selected leaf onto the nuclear-norm ball (low rank; seed 001).

    .. math::

       W' = U \operatorname{diag}\big(P_{\ell_1}(s, \eta)\big) V^\top
       \quad\text{for}\quad W = U \operatorname{diag}(s) V^\top .

    A conv kernel ``(kh, kw, in, out)`` is treated as the ``(kh*kw*in, out)`` matrix that maps
    an image patch to the output channels (the im2col view), so the rank counts filters.

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      every_k_steps: project on every k-th update only (an SVD per leaf is not cheap).
      global_budget: one budget for the singular values of all selected leaves together.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l1`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.diag(jnp.array([3.0, 1.0]))}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_nuclear(2.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].round(4).tolist()
    [[2.0, 0.0], [0.0, 0.0]]

    Reference: Guyard & Barlaud (2020), HAL v2 abstract (seed 001).
    """
    return _projection(
        _Nuclear(),
        eta,
        where=where,
        group_axis=None,
        every_k_steps=every_k_steps,
        global_budget=global_budget,
    )


def project_l111(
    eta: selection.Budget,
    *,
    where: selection.Where = None,
    every_k_steps: int = 1,
) -> optax.GradientTransformation:
    r"""Applies the nested l1,1,1 operator of seed 000's Discussion to each selected leaf.

    For a conv kernel the nesting is input channel -> kernel (the ``kh x kw`` slice of one
    input/output pair) -> weight: the bi-level step of :func:`project_l11` applied recursively
    (see :func:`sparsejax.projections.l111_ball`). On a Dense kernel it equals
    :func:`project_l11`.

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      every_k_steps: project on every k-th update only.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l21`.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.ones((3, 3, 2, 4))}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_l111(8.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> round(float(jnp.abs(optax.apply_updates(params, updates)["kernel"]).sum()), 4)
    8.0

    Reference: Guyard & Barlaud (2020), Discussion.
    """
    return _projection(
        _NestedL111(),
        eta,
        where=where,
        group_axis=None,
        every_k_steps=every_k_steps,
        global_budget=False,
    )
