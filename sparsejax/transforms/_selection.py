"""Choosing which parameters a constraint acts on, and with which budget.

Every sparsifying transformation in sparsejax takes the same two arguments to say *where* it
acts:

* ``where`` selects leaves of the parameter pytree:

  - ``None`` (default): every leaf whose last key is ``kernel`` and whose ``ndim >= 2`` — the
    weights of Flax ``Dense``/``Conv`` layers (NNX ``Linear``/``Conv``). Biases, norm scales and
    embeddings are never touched by default.
  - a regular expression (``str`` or compiled pattern), searched (``re.search``) in the leaf's
    *path string*;
  - a callable ``(path_string, leaf) -> bool``.

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
>>> leaf_budgets(params, {"Dense_0": 2.0}, None, name="eta")
{'params': {'Dense_0': {'bias': None, 'kernel': 2.0}}}
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


def is_kernel(path: str, leaf: Any) -> bool:
    """The default selection: leaves named ``kernel`` with at least two dimensions."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) >= 2


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
      ValueError: if ``where`` is malformed or selects no leaf of ``params``.
    """
    predicate = _as_predicate(where)
    leaves, _ = _flatten(params)
    chosen = [(path, leaf) for path, leaf in leaves if predicate(path, leaf)]
    if not chosen:
        available = ", ".join(path for path, _ in leaves[:12]) or "(no leaves)"
        raise ValueError(
            f"where={where!r} selects no parameter; the parameter paths are: {available}"
        )
    return chosen


def check_radius(value: Any, name: str) -> None:
    """Raises ``ValueError`` if a concrete radius/penalty is negative or not finite.

    Traced values (under ``jit`` or ``inject_hyperparams``) cannot be checked and are accepted.
    """
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def check_budget(budget: Any, name: str) -> None:
    """Checks a budget given as one number or as a mapping ``{pattern: number}``.

    Raises:
      ValueError: a negative or non-finite (concrete) value, naming ``name`` and the pattern.
    """
    if isinstance(budget, Mapping):
        for pattern, value in budget.items():
            check_radius(value, f"{name}[{pattern!r}]")
    else:
        check_radius(budget, name)


def check_every_k_steps(every_k_steps: Any) -> None:
    """Raises ``ValueError`` unless ``every_k_steps`` is an integer >= 1 (traced: accepted)."""
    if isinstance(every_k_steps, jax.core.Tracer):
        return  # scheduled through inject_hyperparams; checked when it was concrete
    value = np.asarray(every_k_steps)
    if value.shape or value.dtype.kind not in "iu" or value < 1:
        raise ValueError(f"every_k_steps must be an integer >= 1, got {every_k_steps!r}")


def leaf_budgets(params: Any, budget: Budget, where: Where, *, name: str) -> Any:
    """Returns a pytree like ``params`` holding each selected leaf's budget, ``None`` elsewhere.

    Args:
      params: the parameter pytree.
      budget: one number (or scalar array, possibly traced) for every selected leaf, or a mapping
        ``{pattern: value}`` (first matching pattern wins; unmatched leaves are not selected).
      where: the selection (see the module docstring).
      name: the argument's name, used in error messages.

    Returns:
      A pytree with the structure of ``params`` whose leaves are the budgets (``None`` for leaves
      that are not selected). ``None`` is a pytree node, so map over it with ``is_leaf``.

    Raises:
      ValueError: a negative budget, a pattern that matches no selected parameter, or a ``where``
        that selects nothing.
    """
    chosen = dict(selected_leaves(params, where))
    leaves, treedef = _flatten(params)
    if isinstance(budget, Mapping):
        per_path = _budgets_from_mapping(budget, chosen, name)
    else:
        check_radius(budget, name)
        per_path = dict.fromkeys(chosen, budget)
    return jax.tree_util.tree_unflatten(treedef, [per_path.get(path) for path, _ in leaves])


def _budgets_from_mapping(
    budget: Mapping[str, Any], chosen: Mapping[str, Any], name: str
) -> dict[str, Any]:
    patterns = []
    for pattern, value in budget.items():
        check_radius(value, f"{name}[{pattern!r}]")
        try:
            patterns.append((pattern, re.compile(pattern), value))
        except re.error as err:
            raise ValueError(
                f"{name} key {pattern!r} is not a valid regular expression: {err}"
            ) from err
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
