"""The ``project_*`` factories: one constraint each over the shared projection mechanism."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optax

from sparsejax.transforms import _constraints as constraints
from sparsejax.transforms import _selection as selection
from sparsejax.transforms._coupled import project_coupled
from sparsejax.transforms._projection import _projection

# 64 triplets: enough for the low-rank layers the nuclear ball is used for, and a warm step of
# a 1024 x 1024 kernel is then a few thin products against a full SVD.
_DEFAULT_WARM_RANK = 64


def _on_groups_or_leaves(constraint, ball, eta, groups, **options) -> optax.GradientTransformation:
    """The projection over coupled ``groups`` when given, else the per-leaf one."""
    if groups is None:
        return _projection(constraint, eta, **options)
    defaults = {"where": None, "group_axis": None, "global_budget": False}
    for name, default in defaults.items():
        if options[name] is not default and options[name] != default:
            raise ValueError(
                f"groups= names the weights and forms one ball: leave {name} unset, got "
                f"{name}={options[name]!r}"
            )
    if isinstance(eta, Mapping):
        raise ValueError(f"groups= takes one radius eta (a number), got eta={eta!r}")
    selection.check_radius(eta, "eta")
    _check_groups(groups)
    return project_coupled(eta, groups, ball=ball, every_k_steps=options["every_k_steps"])


def _check_groups(groups: Any) -> None:
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(
            f"groups must be the list of sparsejax.coupled_groups(model, x), got groups={groups!r}"
        )
    strange = [g for g in groups if not (hasattr(g, "members") and hasattr(g, "removable"))]
    if strange:
        raise ValueError(
            "groups must hold the CoupledGroup entries of sparsejax.coupled_groups(model, x), "
            f"got {strange[0]!r}"
        )
    if not any(g.removable for g in groups):
        raise ValueError(
            f"groups holds no removable coupled group ({len(groups)} groups): nothing to project"
        )


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
      ValueError: an ``eta`` that is not one finite number ``>= 0`` (a list, a string, a
        negative value) nor a ``{path_pattern: number}`` dict, a malformed ``where`` or a bad
        ``every_k_steps`` (when the transformation is built); a ``where``/``eta`` pattern that
        matches no parameter, or a ``where`` that selects an int/bool leaf (when it is
        initialised); a missing ``params`` argument (when it is updated).

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, -1.0], [0.5, 0.5]])}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_l1(2.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()
    [[2.0, -0.0], [0.0, 0.0]]

    Reference: Guyard & Barlaud (2020), "PGL1"; Duchi et al. (2008); Condat (2016).
    """
    return _projection(
        constraints._L1(),
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
    groups: Sequence[Any] | None = None,
) -> optax.GradientTransformation:
    r"""Projects each selected leaf onto the l2,1 (group lasso) ball (PGL21, Alg. 2).

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
      groups: coupled unit groups (:func:`sparsejax.coupled_groups`): one ball over the
        groups, a group's measure taken over its weights in every layer it spans (residual
        channels, attention heads), so that a zero group is removable; ``where``,
        ``group_axis`` and ``global_budget`` then stay unset and ``eta`` is one number (as
        :func:`sparsejax.transforms.project_coupled`).

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l1`; also a bad ``group_axis`` or a selected leaf with
        fewer than two dimensions; ``groups`` that are not coupled groups, hold no removable
        one, or come with ``where``, ``group_axis``, ``global_budget`` or a mapping ``eta``.

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_l21(1.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].round(3).tolist()
    [[0.6, 0.8], [0.0, 0.0]]

    Reference: Guyard & Barlaud (2020), Alg. 2 (with l2 group norms, see DESIGN.md).
    """
    return _on_groups_or_leaves(
        constraints._L21(),
        "l21",
        eta,
        groups,
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
    groups: Sequence[Any] | None = None,
) -> optax.GradientTransformation:
    r"""Applies the bi-level l1,1 projection to each selected leaf (PGL11, Alg. 3).

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
      groups: coupled unit groups (:func:`sparsejax.coupled_groups`): one ball over the
        groups, a group's measure taken over its weights in every layer it spans (residual
        channels, attention heads), so that a zero group is removable; ``where``,
        ``group_axis`` and ``global_budget`` then stay unset and ``eta`` is one number (as
        :func:`sparsejax.transforms.project_coupled`).

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
    return _on_groups_or_leaves(
        constraints._L11(),
        "l11",
        eta,
        groups,
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
    groups: Sequence[Any] | None = None,
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
      groups: coupled unit groups (:func:`sparsejax.coupled_groups`): one ball over the
        groups, a group's measure taken over its weights in every layer it spans (residual
        channels, attention heads), so that a zero group is removable; ``where``,
        ``group_axis`` and ``global_budget`` then stay unset and ``eta`` is one number (as
        :func:`sparsejax.transforms.project_coupled`).

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
    return _on_groups_or_leaves(
        constraints._BiLevelL1Inf(),
        "bilevel_l1inf",
        eta,
        groups,
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
    groups: Sequence[Any] | None = None,
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
      groups: coupled unit groups (:func:`sparsejax.coupled_groups`): one ball over the
        groups, a group's measure taken over its weights in every layer it spans (residual
        channels, attention heads), so that a zero group is removable; ``where``,
        ``group_axis`` and ``global_budget`` then stay unset and ``eta`` is one number (as
        :func:`sparsejax.transforms.project_coupled`).

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
    return _on_groups_or_leaves(
        constraints._ExactL1Inf(),
        "l1inf",
        eta,
        groups,
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
    warm_rank: int | None = None,
) -> optax.GradientTransformation:
    r"""Projects each selected leaf onto the nuclear-norm ball (low rank).

    .. math::

       W' = U \operatorname{diag}\big(P_{\ell_1}(s, \eta)\big) V^\top
       \quad\text{for}\quad W = U \operatorname{diag}(s) V^\top .

    A conv kernel ``(kh, kw, in, out)`` is treated as the ``(kh*kw*in, out)`` matrix that maps
    an image patch to the output channels (the im2col view), so the rank counts filters.

    Warm start: where the projection is low rank and an optimizer step moves it little, the
    full SVD is not needed. The state keeps the ``warm_rank`` leading right singular vectors
    of each leaf's last projection; the next projection computes that many Ritz triplets from
    them (block subspace iteration, ``O(m n k)`` instead of the SVD's ``O(m n min(m, n))``)
    and uses them only when it can *prove* that they give the projection: the kept triplets'
    residuals are at rounding level and an upper bound on the spectral norm of the rest of the
    matrix (``min(||C||_F, sqrt(||C||_1 ||C||_inf))`` of the deflated matrix ``C``) lies below
    the threshold; the result is then within ``16 sqrt(k) eps ||W||_F`` of the exact
    projection in the Frobenius norm (the projection is 1-Lipschitz). Otherwise the full SVD
    runs (in a ``lax.cond``), and the warm path is tried again only once a step's exact
    spectrum shows that it would pass. Where the projection is not low rank, or an optimizer
    step adds a dense perturbation above the threshold, every step is a full SVD, as with
    ``warm_rank=0``. Adam's steps, about ``lr`` in every weight, usually are such a
    perturbation: with ``adam(1e-3)`` and ``eta=50`` on the 784-1024-1024-512-10 MLP of
    ``benchmarks/train_step.py`` the projections have rank 300-500 and no step is warm.
    Leaves with ``min(m, n) < 2 * warm_rank`` always take the full SVD.

    Args:
      eta: the radius (number, scalar array or ``{path_pattern: radius}``).
      where: which leaves (default: kernels).
      every_k_steps: project on every k-th update only (an SVD per leaf is not cheap).
      global_budget: one budget for the singular values of all selected leaves together.
      warm_rank: the number ``k`` of singular triplets kept as the warm start, a Python int
        ``>= 0`` (``0``: a full SVD at every projection), or ``None`` for the default
        ``64`` (a default that is not a number stays static under
        ``optax.inject_hyperparams``). It bounds the rank a projection can have on the warm
        path.

    Returns:
      An ``optax.GradientTransformation`` to place last in a chain.

    Raises:
      ValueError: as :func:`project_l1`; also a ``warm_rank`` that is not a Python int
        ``>= 0`` (under ``optax.inject_hyperparams``, list it in ``static_args``).

    >>> import jax.numpy as jnp, optax, sparsejax
    >>> params = {"kernel": jnp.diag(jnp.array([3.0, 1.0]))}
    >>> tx = optax.chain(optax.sgd(0.0), sparsejax.project_nuclear(2.0))
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["kernel"].round(4).tolist()
    [[2.0, 0.0], [0.0, 0.0]]

    Reference: Guyard & Barlaud (2020), HAL v2 abstract.
    """
    if warm_rank is None:
        warm_rank = _DEFAULT_WARM_RANK
    # A traced value cannot set the shapes of the state: it must be a Python int.
    if isinstance(warm_rank, bool) or not isinstance(warm_rank, (int, np.integer)) or warm_rank < 0:
        raise ValueError(
            f"warm_rank must be a Python int >= 0, got warm_rank={warm_rank!r} (under "
            "optax.inject_hyperparams, list it in static_args)"
        )
    return _projection(
        constraints._Nuclear(int(warm_rank)),
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
    r"""Applies the nested l1,1,1 operator of Guyard & Barlaud's Discussion to each selected leaf.

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
        constraints._NestedL111(),
        eta,
        where=where,
        group_axis=None,
        every_k_steps=every_k_steps,
        global_budget=False,
    )
