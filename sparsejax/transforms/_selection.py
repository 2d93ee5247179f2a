"""Choosing which parameters a constraint acts on, and with which budget.

Every sparsifying transformation in sparsejax takes the same two arguments to say *where* it
acts:

* ``where`` selects leaves of the parameter pytree:

  - ``None`` (default): every floating-point leaf whose last key is ``kernel`` and whose
    ``ndim >= 2`` — the weights of Flax ``Dense``/``Conv`` layers (NNX ``Linear``/``Conv``).
    Biases, norm scales, embeddings and integer/bool leaves are never touched by default.
  - a regular expression (``str`` or compiled pattern), searched (``re.search``) in the leaf's
    *path string*;
  - a callable ``(path_string, leaf) -> bool``.

  An explicit ``where`` that selects a leaf which is not a real floating-point array (an int
  step counter, a bool flag) is an error naming its path: a sparsity constraint on it would be
  truncated to its dtype. ``None`` nodes of the tree (Linen/Equinox placeholders, optax's
  ``MaskedNode``) are empty subtrees, not leaves: they are never selected.

* the budget (``eta`` for projections, ``lam`` for penalties) is either one number for every
  selected leaf, or a mapping ``{pattern: value}``: each selected leaf takes the value of the
  first pattern (in the mapping's order) that its path matches, and selected leaves matched by
  no pattern are left alone.

The path string joins the keys with ``/``, sequence indices as numbers, and drops the
``.value`` of NNX variables: ``layers/1/kernel`` for an NNX model held by ``nnx.Optimizer``,
``params/Dense_1/kernel`` for a Linen ``TrainState``.

>>> import jax.numpy as jnp
>>> params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}}
>>> [path for path, _ in selected_leaves(params, None)]
['params/Dense_0/kernel']
>>> flat_budgets(params, {"Dense_0": 2.0}, None, name="eta")
[None, 2.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Union

import jax
import numpy as np

# The same words as optax's own message, so users see one familiar error whichever
# transformation of the chain lacks `params`.
NO_PARAMS_MSG = (
    "You are using a transformation that requires the current value of parameters, but you "
    "are not passing `params` when calling `update`."
)


Where = Union[None, str, "re.Pattern[str]", Callable[[str, Any], bool]]
Budget = Any  # a number, a scalar array, or Mapping[str, number]

_VALUE_ATTRS = ("value", "raw_value")


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_string(path: tuple[Any, ...]) -> str:
    """Returns the ``/``-joined path string of a ``jax.tree_util`` key path.

    The trailing ``.value`` attribute of an NNX ``Variable`` is dropped, so the same parameter
    has the same name whether the tree holds variables (``nnx.state``) or plain arrays.

    Args:
      path: a key path as given by ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The path string, e.g. ``"layers/1/kernel"``.
    """
    keys = list(path)
    while keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in _VALUE_ATTRS:
        keys.pop()
    return "/".join(_key_name(k) for k in keys)


def is_floating(leaf: Any) -> bool:
    """Whether ``leaf`` is a real floating-point array or number (not int, bool, complex)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        try:
            dtype = np.result_type(leaf)
        except TypeError:  # not an array at all (e.g. a function left in an Equinox tree)
            return False
    return bool(jax.dtypes.issubdtype(dtype, np.floating))


def is_kernel(path: str, leaf: Any) -> bool:
    """The default selection: floating-point leaves named ``kernel`` with ``ndim >= 2``."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) >= 2 and is_floating(leaf)


def _as_predicate(where: Where) -> Callable[[str, Any], bool]:
    if where is None:
        return is_kernel
    if isinstance(where, str):
        try:
            where = re.compile(where)
        except re.error as err:
            raise ValueError(f"where={where!r} is not a valid regular expression: {err}") from err
    if isinstance(where, re.Pattern):
        pattern = where
        return lambda path, leaf: pattern.search(path) is not None
    if callable(where):
        return where
    raise ValueError(
        f"where must be None, a regular expression or a callable (path, leaf) -> bool; "
        f"got {where!r}"
    )


def check_where(where: Where) -> None:
    """Raises ``ValueError`` for a malformed ``where`` (when a transformation is built)."""
    _as_predicate(where)


def _flatten(params: Any) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [(path_string(p), leaf) for p, leaf in leaves], treedef


def selected_leaves(params: Any, where: Where) -> list[tuple[str, Any]]:
    """Returns ``(path_string, leaf)`` for every leaf of ``params`` that ``where`` selects.

    Args:
      params: a parameter pytree (Flax Linen ``params``, an ``nnx.State``, a dict of arrays...).
      where: the selection (see the module docstring).

    Returns:
      The selected leaves in tree-flattening order.

    Raises:
      ValueError: if ``where`` is malformed, selects no leaf of ``params``, or selects a leaf
        that is not a real floating-point array.
    """
    return [(path, leaf) for _, path, leaf in _selected_with_index(params, where)]


def _selected_with_index(params: Any, where: Where) -> list[tuple[int, str, Any]]:
    """``(index in tree_leaves(params), path, leaf)`` of every selected leaf."""
    predicate = _as_predicate(where)
    leaves, _ = _flatten(params)
    chosen = [(i, path, leaf) for i, (path, leaf) in enumerate(leaves) if predicate(path, leaf)]
    if not chosen:
        available = ", ".join(path for path, _ in leaves[:12]) or "(no leaves)"
        raise ValueError(
            f"where={where!r} selects no parameter; the parameter paths are: {available}"
        )
    for _, path, leaf in chosen:
        if not is_floating(leaf):
            dtype = getattr(leaf, "dtype", type(leaf).__name__)
            raise ValueError(
                f"where={where!r} selects parameter {path!r} of dtype {dtype}, which is not "
                f"floating point; narrow where= so that it selects floating-point leaves only"
            )
    return chosen


def check_radius(value: Any, name: str, *, what: str = "finite number >= 0") -> None:
    """Raises ``ValueError`` unless a concrete ``value`` is one real number, finite and >= 0.

    Lists, tuples, strings, bools, non-scalar arrays, NaN/inf and negative values are refused,
    naming ``name`` and the value. Traced values (under ``jit`` or ``inject_hyperparams``)
    cannot be checked and are accepted.
    """
    if isinstance(value, jax.core.Tracer):
        return
    array = None
    if isinstance(value, (int, float, np.number, np.ndarray, jax.Array)) and not isinstance(
        value, (bool, np.bool_)
    ):
        array = np.asarray(value)
    if array is None or array.shape != () or array.dtype.kind not in "fiu":
        raise ValueError(
            f"{name} must be one {what} (a Python number or a scalar array; per-layer values "
            f"go in a dict {{path_pattern: value}}), got {name}={value!r}"
        )
    if not np.isfinite(array) or array < 0:
        raise ValueError(f"{name} must be a {what}, got {name}={value!r}")


def check_budget(budget: Any, name: str) -> None:
    """Checks a budget given as one number or as a mapping ``{pattern: number}``.

    Raises:
      ValueError: a negative or non-finite (concrete) value, naming ``name`` and the pattern.
    """
    if isinstance(budget, Mapping):
        _compiled_patterns(budget, name)
    else:
        check_radius(budget, name)


def every_k(every_k_steps: Any, count: jax.Array, project, skip, *operands):
    """``project(*operands)`` on the updates with ``(count + 1) % every_k_steps == 0``, else
    ``skip(*operands)`` (both give the same structure and dtypes). No ``lax.cond`` when
    ``every_k_steps`` is a Python 1 (``inject_hyperparams`` may trace it): a cond would carry,
    and copy, every operand through both branches."""
    if isinstance(every_k_steps, (int, np.integer)) and every_k_steps == 1:
        return project(*operands)
    return jax.lax.cond((count + 1) % every_k_steps == 0, project, skip, *operands)


def check_every_k_steps(every_k_steps: Any) -> None:
    """Raises ``ValueError`` unless ``every_k_steps`` is an integer >= 1 (traced: accepted)."""
    if isinstance(every_k_steps, jax.core.Tracer):
        return  # scheduled through inject_hyperparams; checked when it was concrete
    value = np.asarray(every_k_steps)
    if value.shape or value.dtype.kind not in "iu" or value < 1:
        raise ValueError(f"every_k_steps must be an integer >= 1, got {every_k_steps!r}")


def flat_budgets(params: Any, budget: Budget, where: Where, *, name: str) -> list[Any]:
    """Returns each leaf's budget, as a list aligned with ``jax.tree_util.tree_leaves(params)``.

    A flat list, not a tree: ``None`` nodes of ``params`` (and ``optax.MaskedNode``) are not
    leaves, so they take no place in it and cannot shift the budgets onto other leaves.

    Args:
      params: the parameter pytree.
      budget: one number (or scalar array, possibly traced) for every selected leaf, or a mapping
        ``{pattern: value}`` (first matching pattern wins; unmatched leaves are not selected).
      where: the selection (see the module docstring).
      name: the argument's name, used in error messages.

    Returns:
      One entry per leaf of ``params``: its budget, or ``None`` where it is not selected.

    Raises:
      ValueError: a bad budget, a pattern that matches no selected parameter, or a ``where``
        that selects nothing or a non-floating leaf.
    """
    chosen = {path: index for index, path, _ in _selected_with_index(params, where)}
    if isinstance(budget, Mapping):
        per_path = _budgets_from_mapping(budget, chosen, name)
    else:
        check_radius(budget, name)
        per_path = dict.fromkeys(chosen, budget)
    flat: list[Any] = [None] * len(jax.tree_util.tree_leaves(params))
    for path, value in per_path.items():
        flat[chosen[path]] = value
    return flat


def _compiled_patterns(budget: Mapping[str, Any], name: str) -> list[tuple[str, Any, Any]]:
    """Checks a ``{pattern: value}`` budget; returns ``(pattern, regex, value)`` in order."""
    if not budget:
        raise ValueError(
            f"{name}={{}} names no layer; give one number or a dict {{path_pattern: value}}"
        )
    patterns = []
    for pattern, value in budget.items():
        if not isinstance(pattern, str):
            raise ValueError(
                f"{name} keys must be path patterns (str), got key {pattern!r} in {name}={budget!r}"
            )
        check_radius(value, f"{name}[{pattern!r}]")
        try:
            patterns.append((pattern, re.compile(pattern), value))
        except re.error as err:
            raise ValueError(
                f"{name} key {pattern!r} is not a valid regular expression: {err}"
            ) from err
    return patterns


def _budgets_from_mapping(
    budget: Mapping[str, Any], chosen: Mapping[str, Any], name: str
) -> dict[str, Any]:
    patterns = _compiled_patterns(budget, name)
    per_path = {}
    used = set()
    for path in chosen:
        for pattern, regex, value in patterns:
            if regex.search(path):
                per_path[path] = value
                used.add(pattern)
                break
    unused = [p for p, _, _ in patterns if p not in used]
    if unused:
        raise ValueError(
            f"{name} pattern(s) {unused} match no selected parameter; "
            f"selected paths: {sorted(chosen)}"
        )
    return per_path
