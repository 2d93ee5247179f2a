"""Coupled unit groups: the public entry point over :mod:`sparsejax.nn._labels`."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from sparsejax._optional import require_flax
from sparsejax.nn._labels import UNDERSTOOD_PRIMITIVES, LabelPropagator
from sparsejax.transforms import path_string

__all__ = ["UNDERSTOOD_PRIMITIVES", "CoupledGroup", "GroupMember", "coupled_groups"]


class GroupMember(NamedTuple):
    """The indices of one parameter axis that belong to a coupled group.

    Attributes:
      path: the parameter path string (``"blocks/0/conv/kernel"``).
      axis: the axis of that parameter.
      indices: the sorted indices along ``axis``.
      reads: True when this axis is contracted with an activation (the unit's input rows of a
        Dense/Conv/attention-output kernel); a unit whose ``reads`` weights are all zero is
        unused and can be removed whatever its other weights are.
    """

    path: str
    axis: int
    indices: tuple[int, ...]
    reads: bool = False


class CoupledGroup(NamedTuple):
    """One coupled group of units.

    Attributes:
      members: every (parameter path, axis, indices) the group touches, sorted by path.
      removable: False when the group is tied to the model input or output (those units are
        fixed by the data and must not be removed).
    """

    members: tuple[GroupMember, ...]
    removable: bool


def _pure_forward(model, variables):
    """Returns ``(fn, tree)`` such that ``fn(tree, x)`` is the model's forward pass."""
    nnx = require_flax("sparsejax.coupled_groups")
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError("coupled_groups: variables must be None for an NNX model")
        graphdef, state = nnx.split(model)

        def fn(tree, x):
            return nnx.merge(graphdef, tree)(x)

        return fn, state
    if variables is None:
        raise ValueError("coupled_groups: a Linen model needs its variables, got variables=None")
    return (lambda tree, x: model.apply(tree, x)), variables


def coupled_groups(model, example_input, variables=None) -> tuple[CoupledGroup, ...]:
    r"""Returns the coupled unit groups of a model, read from the jaxpr of its forward pass.

    Units are indices of parameter axes that flow, through the dataflow, into an intermediate
    activation's feature axis. Two units are *coupled* when removing one without the other
    changes the computation: the channels joined by a residual ``add``, the two sides of a
    contraction (a layer's output unit and the next layer's input row), the channels of one
    group of a grouped/depthwise convolution, the slices of one attention head (its query,
    key and value columns and its output-projection rows), an embedding column and the tied
    output projection. Coupling is transitive; each group is one class:

    .. math:: G = \{(p, a, i) : \text{unit } i \text{ of axis } a \text{ of } p
       \text{ is tied to the others}\}

    A group is removable by construction when *all* its weights are zero. No per-layer rule is
    needed: the analysis follows standard JAX primitives (see ``UNDERSTOOD_PRIMITIVES``) and
    refuses, naming it, any other primitive. When an axis splits into several (``reshape`` of
    heads x head_dim), the leading axis keeps the identity: a whole head is one unit
    (conservative). Normalisations over the feature axis (LayerNorm, RMSNorm) reduce the axis,
    so they couple nothing (their scale/bias join the channel they multiply or shift).

    Args:
      model: an ``nnx.Module``, or a Linen module together with ``variables``.
      example_input: an input array of the model (its shape and dtype are used).
      variables: the Linen variables; None for an NNX model.

    Returns:
      A tuple of :class:`CoupledGroup`, sorted by their first member; groups tied to the model
      input or output have ``removable=False``.

    Raises:
      ValueError: an unknown primitive (named), or ``variables`` that do not fit the model.
      ImportError: flax is missing.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import sparsejax
      >>> class Res(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.a = nnx.Linear(3, 4, rngs=rngs)
      ...         self.b = nnx.Linear(4, 4, rngs=rngs)
      ...         self.c = nnx.Linear(4, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         h = self.a(x)
      ...         return self.c(h + jax.nn.relu(self.b(h)))
      >>> groups = sparsejax.coupled_groups(Res(nnx.Rngs(0)), jnp.ones((1, 3)))
      >>> [g for g in groups if g.removable][0].members[:3]  # doctest: +NORMALIZE_WHITESPACE
      (GroupMember(path='a/bias', axis=0, indices=(0,), reads=False),
       GroupMember(path='a/kernel', axis=1, indices=(0,), reads=False),
       GroupMember(path='b/bias', axis=0, indices=(0,), reads=False))
    """
    return analyse(*_pure_forward(model, variables), example_input).groups


class Analysis(NamedTuple):
    """Everything the propagation learnt about a model (internal to ``sparsejax.nn``).

    Attributes:
      groups: the coupled groups, sorted as :func:`coupled_groups` returns them.
      roots: the union-find root of each group, in the order of ``groups``.
      names: the path string of each leaf of the analysed tree, in leaf order.
      shapes: the shape of each leaf.
      reads: for each leaf, the axes contracted with an activation.
      lookups: for each leaf, the axes of a table that data indexes (an embedding).
      consumptions: ``{root: [operation, ...]}``, parameter-free consumptions of the units.
      injections: ``{root: [operation, ...]}``, other units' values mixed into the units.
      static: ``{root: [operation, ...]}``, operations that add entries tied to the units in a
        number fixed by the model's code (a ``pad`` along a unit axis).
    """

    groups: tuple[CoupledGroup, ...]
    roots: tuple[int, ...]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    reads: tuple[frozenset[int], ...]
    lookups: tuple[frozenset[int], ...]
    consumptions: dict[int, list[str]]
    injections: dict[int, list[str]]
    static: dict[int, list[str]]


def analyse(fn, tree, example_input) -> Analysis:
    """Propagates unit labels through ``fn(tree, x)``; see :func:`coupled_groups`."""
    x = jax.numpy.asarray(example_input)
    closed = jax.make_jaxpr(fn)(tree, x)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    prop = LabelPropagator()
    param_labels = [prop.fresh_labels(np.shape(leaf)) for _, leaf in leaves]
    x_labels = prop.fresh_labels(x.shape)
    jaxpr = closed.jaxpr
    in_dep = [False] * len(param_labels) + [True]
    outs, _ = prop.run(jaxpr, param_labels + [x_labels], in_dep)
    uf = prop.uf
    fixed = {uf.find(int(v)) for lab in x_labels for v in lab}
    fixed |= {
        uf.find(int(v)) for lab_list in outs for lab in lab_list if lab is not None for v in lab
    }
    active = {uf.find(int(v)) for lab in prop.activation_labels for v in lab}
    members: dict[int, dict[tuple[str, int, bool], set]] = {}
    names, reads, lookups = [], [], []
    for (path, _), labels in zip(leaves, param_labels, strict=True):
        name = path_string(path)
        names.append(name)
        read_axes = set()
        for axis, lab in enumerate(labels):
            if math.prod(np.shape(lab)) == 0:
                continue
            read = int(lab[0]) in prop.read_nodes
            if read:
                read_axes.add(axis)
            for i, v in enumerate(lab):
                root = uf.find(int(v))
                if root in active:
                    members.setdefault(root, {}).setdefault((name, axis, read), set()).add(i)
        reads.append(frozenset(read_axes))
        lookups.append(
            frozenset(
                a for a, lab in enumerate(labels) if len(lab) and int(lab[0]) in prop.lookup_nodes
            )
        )
    found = [
        (
            CoupledGroup(
                tuple(
                    GroupMember(n, a, tuple(sorted(ix)), r) for (n, a, r), ix in sorted(m.items())
                ),
                root not in fixed,
            ),
            root,
        )
        for root, m in members.items()
    ]
    found.sort(key=lambda f: (f[0].members[0].path, f[0].members[0].axis, f[0].members[0].indices))

    def by_root(records):
        table: dict[int, list[str]] = {}
        for labels, operation in records:
            for root in {uf.find(int(v)) for v in np.ravel(labels)}:
                if operation not in table.setdefault(root, []):
                    table[root].append(operation)
        return table

    return Analysis(
        groups=tuple(g for g, _ in found),
        roots=tuple(r for _, r in found),
        names=tuple(names),
        shapes=tuple(tuple(np.shape(leaf)) for _, leaf in leaves),
        reads=tuple(reads),
        lookups=tuple(lookups),
        consumptions=by_root(prop.consumptions),
        injections=by_root(prop.injections),
        static=by_root(prop.static),
    )
