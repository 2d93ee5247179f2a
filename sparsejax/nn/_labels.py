"""Coupled unit groups from the jaxpr of a model's forward pass.

Every axis of every variable of the jaxpr carries a vector of *unit labels*, one per index
(or ``None`` when the axis carries no unit identity, e.g. after a reduction or on a
broadcast axis). Labels are nodes of a union-find structure. Parameters and the example input
get fresh labels on every axis; each primitive maps its operands' labels to its outputs'
labels and unites the labels that the computation ties together (a residual ``add`` unites
the channels it adds, a ``dot_general`` unites the contracted indices of its two operands, a
grouped ``conv`` unites the channels of one group, ...). At the end, the class of a label is a
*coupled group*: all (parameter, axis, index) triples in it must be removed together.

Only classes that reach an intermediate activation and touch a parameter are units; a class
tied to the example input or to the model output is kept (``removable=False``): those units
are fixed by the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.extend.core import Literal as _Literal

__all__ = ["UNDERSTOOD_PRIMITIVES", "LabelPropagator"]


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_vectors(self, a, b) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        for x, y in zip(a, b, strict=True):
            self.union(x, y)
        return a

    def union_all(self, labels) -> int:
        labels = [int(x) for x in labels]
        for x in labels[1:]:
            self.union(labels[0], x)
        return labels[0]


# Primitives that act elementwise on operands of equal shape (jaxprs make broadcasting
# explicit with broadcast_in_dim, so operands have the output's shape or are scalars).
_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type
    copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
    is_finite le log log1p logistic lt max min mul ne neg nextafter not or pow real
    reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan
    tanh xor""".split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_SUBJAXPR = frozenset("jit pjit closed_call core_call remat checkpoint custom_jvp_call".split())
UNDERSTOOD_PRIMITIVES = tuple(
    sorted(
        _ELEMENTWISE
        | _REDUCTIONS
        | _CUMULATIVE
        | _SUBJAXPR
        | set(
            """broadcast_in_dim reshape squeeze expand_dims transpose concatenate split slice
            dynamic_slice pad rev dot_general conv_general_dilated gather iota
            reduce_window_sum reduce_window_max reduce_window_min custom_vjp_call
            custom_vjp_call_jaxpr sort""".split()
        )
    )
)


class LabelPropagator:
    """Walks a jaxpr, uniting unit labels; records how activations consume their units.

    Besides the union-find of labels it records, for the removal of zero units:

    * ``read_nodes``: the first label of every parameter axis contracted with an activation;
    * ``consumptions``: ``(labels, operation)`` for every parameter-free consumption of a unit
      axis of an activation: a reduction over it (the statistics of LayerNorm/RMSNorm, a
      softmax over features), a contraction of two activations (``q . k^T``), a pooling window
      or a gather along it. Removing even a zero unit changes such a result (a mean over
      ``d`` features is not a mean over ``d - 1``), so its groups cannot simply be cut;
    * ``injections``: labels of an activation axis into which an elementwise operation mixes
      a value that carries no unit identity on that axis (``h - mean(h)``): a unit whose own
      weights are zero is then not a constant;
    * ``static``: labels of activation entries whose number is a static size of the model's
      code (the entries a ``pad`` along a unit axis adds): a unit tied to them cannot be
      removed, as the model would still add that many entries.
    """

    def __init__(self):
        self.uf = _UnionFind()
        self.activation_labels: list[np.ndarray] = []
        self.read_nodes: set[int] = set()  # labels of parameter axes contracted with data
        self.consumptions: list[tuple[np.ndarray, str]] = []
        self.injections: list[tuple[np.ndarray, str]] = []
        self.static: list[tuple[np.ndarray, str]] = []
        self.in_dep: list[bool] = []
        self.lookup_nodes: set[int] = set()  # labels of parameter axes indexed by data

    def mark_read(self, labels, operand: int) -> None:
        if labels is not None and not self.in_dep[operand] and len(labels):
            self.read_nodes.add(int(labels[0]))

    def consume(self, labels, operand: int, operation: str) -> None:
        """Records a parameter-free consumption of the units ``labels`` of an activation."""
        if labels is not None and self.in_dep[operand] and len(labels):
            self.consumptions.append((np.asarray(labels), operation))

    # --- helpers -------------------------------------------------------------------------
    def fresh_labels(self, shape) -> list:
        return [self.uf.fresh(n) for n in shape]

    def collapse(self, labels, n: int) -> np.ndarray:
        """Unites all labels of an axis and returns one label repeated ``n`` times."""
        root = self.uf.union_all(labels)
        return np.full(n, root)

    def elementwise(self, ins, shapes, out_shape, name="elementwise"):
        out = [None] * len(out_shape)
        for labels, shape in zip(ins, shapes, strict=True):
            if len(shape) != len(out_shape):
                continue  # a scalar operand
            for ax, lab in enumerate(labels):
                if lab is not None and shape[ax] == out_shape[ax]:
                    out[ax] = self.uf.union_vectors(out[ax], lab)
        # An activation without unit identity on a unit axis (a broadcast statistic) mixes
        # other units' values into these units.
        deps = self.in_dep if len(self.in_dep) == len(ins) else [False] * len(ins)
        for labels, shape, dep in zip(ins, shapes, deps, strict=True):
            if not dep or len(shape) != len(out_shape):
                continue
            for ax, lab in enumerate(labels):
                if lab is None and out[ax] is not None and out_shape[ax] > 1:
                    self.injections.append((np.asarray(out[ax]), name))
        return out

    # --- the walk ------------------------------------------------------------------------
    def run(self, jaxpr, in_labels: list, in_dep: list) -> tuple[list, list]:
        env: dict = {}
        dep: set = set()

        def read(v):
            if isinstance(v, _Literal):
                return [None] * np.ndim(v.val)
            return env.get(v, [None] * len(v.aval.shape))

        for v, lab, d in zip(jaxpr.invars, in_labels, in_dep, strict=True):
            env[v] = lab
            if d:
                dep.add(v)
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
            self.in_dep = [not isinstance(v, _Literal) and v in dep for v in eqn.invars]
            data = any(self.in_dep)
            outs = self.equation(eqn, ins, shapes)
            for v, lab in zip(eqn.outvars, outs, strict=True):
                env[v] = lab
                if data:  # an activation: its unit labels are units of the network
                    dep.add(v)
                    self.activation_labels.extend(x for x in lab if x is not None)
        outs = [read(v) for v in jaxpr.outvars]
        return outs, [not isinstance(v, _Literal) and v in dep for v in jaxpr.outvars]

    def equation(self, eqn, ins, shapes):
        name = eqn.primitive.name
        p = eqn.params
        out_shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        out_shape = out_shapes[0]
        if name in _ELEMENTWISE:
            return [self.elementwise(ins, shapes, out_shape, name)]
        if name in _SUBJAXPR or name.startswith("custom_vjp_call"):
            sub = p.get("jaxpr", p.get("call_jaxpr", p.get("fun_jaxpr")))
            if sub is None:
                raise ValueError(f"coupled_groups: cannot read the sub-jaxpr of {name!r}")
            sub = getattr(sub, "jaxpr", sub)
            n = len(sub.invars)
            return self.run(sub, ins[-n:], self.in_dep[-n:])[0]
        if name == "iota":
            return [[None] * len(out_shape)]
        if name in _REDUCTIONS:
            axes = set(p["axes"])
            for ax in axes:
                self.consume(ins[0][ax], 0, f"{name} over a unit axis")
            return [[lab for ax, lab in enumerate(ins[0]) if ax not in axes]]
        if name in _CUMULATIVE:
            self.consume(ins[0][p["axis"]], 0, f"{name} along a unit axis")
            return [list(ins[0])]
        if name == "rev":
            dims = set(p["dimensions"])
            return [
                [
                    lab[::-1] if ax in dims and lab is not None else lab
                    for ax, lab in enumerate(ins[0])
                ]
            ]
        if name == "sort":
            dim = p["dimension"]
            for k in range(len(ins)):
                self.consume(ins[k][dim], k, "sort along a unit axis")
            outs = self.elementwise(ins, shapes, out_shape, name)
            if outs[dim] is not None:
                outs[dim] = self.collapse(outs[dim], out_shape[dim])
            return [list(outs) for _ in out_shapes]
        if name == "broadcast_in_dim":
            out = [None] * len(out_shape)
            for ax, dim in enumerate(p["broadcast_dimensions"]):
                if shapes[0][ax] == out_shape[dim]:
                    out[dim] = ins[0][ax]
            return [out]
        if name == "transpose":
            return [[ins[0][ax] for ax in p["permutation"]]]
        if name == "squeeze":
            dims = {d % len(shapes[0]) for d in p["dimensions"]}
            return [[lab for ax, lab in enumerate(ins[0]) if ax not in dims]]
        if name == "expand_dims":
            return [self.reshape(ins[0], shapes[0], out_shape)]
        if name == "reshape":
            if p.get("dimensions") is not None:
                raise ValueError("coupled_groups: cannot follow a reshape with 'dimensions'")
            return [self.reshape(ins[0], shapes[0], out_shape)]
        if name == "concatenate":
            dim = p["dimension"]
            others = self.elementwise(
                [[lab if ax != dim else None for ax, lab in enumerate(x)] for x in ins],
                [
                    tuple(s if ax != dim else out_shape[dim] for ax, s in enumerate(sh))
                    for sh in shapes
                ],
                out_shape,
            )
            parts = [
                x[dim] if x[dim] is not None else self.uf.fresh(sh[dim])
                for x, sh in zip(ins, shapes, strict=True)
            ]
            others[dim] = np.concatenate(parts)
            return [others]
        if name == "split":
            axis = p["axis"]
            outs, start = [], 0
            for size in p["sizes"]:
                lab = list(ins[0])
                if lab[axis] is not None:
                    lab[axis] = lab[axis][start : start + size]
                outs.append(lab)
                start += size
            return outs
        if name == "slice":
            strides = p["strides"] or (1,) * len(shapes[0])
            out = []
            for ax, lab in enumerate(ins[0]):
                s = slice(p["start_indices"][ax], p["limit_indices"][ax], strides[ax])
                out.append(None if lab is None else lab[s])
            return [out]
        if name == "dynamic_slice":
            out = []
            for ax, lab in enumerate(ins[0]):
                if lab is None or shapes[0][ax] == out_shape[ax]:
                    out.append(lab)
                else:  # unknown offset: every index may be any unit of the axis
                    out.append(self.collapse(lab, out_shape[ax]))
            return [out]
        if name == "pad":
            return [self.pad(ins[0], out_shape, p["padding_config"])]
        if name.startswith("reduce_window"):
            out = []
            for ax, lab in enumerate(ins[0]):
                if lab is None or (
                    p["window_dimensions"][ax] == 1 and shapes[0][ax] == out_shape[ax]
                ):
                    out.append(lab)
                else:
                    self.consume(lab, 0, f"{name} over a unit axis")
                    out.append(None)  # a pooled (spatial) axis carries no unit identity
            return [out]
        if name == "dot_general":
            return [self.dot_general(ins, p)]
        if name == "conv_general_dilated":
            return [self.conv(ins, shapes, p)]
        if name == "gather":
            return [self.gather(ins, shapes, out_shape, p)]
        raise ValueError(
            f"coupled_groups: the primitive {name!r} is not understood; the coupled groups of "
            "this model cannot be computed"
        )

    def pad(self, labels, out_shape, config) -> list:
        """Maps labels through a ``pad``: the input indices keep their labels (they pass
        through, shifted by ``lo``); the padded entries are constants written by no parameter
        and get fresh labels. Their number is a static width of the model's code, so when the
        operand is an activation the padded entries' labels are recorded in ``static``:
        removing a unit tied to them would change a width that surgery cannot update."""
        out = []
        for ax, (lab, (lo, hi, interior)) in enumerate(zip(labels, config, strict=True)):
            if lab is None or (lo, hi, interior) == (0, 0, 0):
                out.append(lab)
                continue
            if interior == 0 and lo >= 0 and hi >= 0:
                low, high = self.uf.fresh(lo), self.uf.fresh(hi)
                padded = np.concatenate([low, high])
                out.append(np.concatenate([low, lab, high]))
            else:  # interior or negative (cropping) padding: every unit of the axis is tied
                padded = self.collapse(lab, out_shape[ax])
                out.append(padded)
            if self.in_dep[0] and len(padded):
                self.static.append((padded, "pad along a unit axis"))
        return out

    def reshape(self, labels, in_shape, out_shape) -> list:
        """Maps labels through a reshape, block by block of axes with equal products."""
        out: list = [None] * len(out_shape)
        if 0 in in_shape:  # an empty array (a layer cut down to no unit) carries no unit
            return out
        i = j = 0
        while i < len(in_shape) or j < len(out_shape):
            i0, j0, pi, pj = i, j, 1, 1
            if i < len(in_shape):
                pi, i = pi * in_shape[i], i + 1
            if j < len(out_shape):
                pj, j = pj * out_shape[j], j + 1
            while pi != pj:
                if pi < pj:
                    pi, i = pi * in_shape[i], i + 1
                else:
                    pj, j = pj * out_shape[j], j + 1
            block_in = range(i0, i)
            block_out = list(range(j0, j))
            tracked = [ax for ax in block_in if labels[ax] is not None and in_shape[ax] > 1]
            if not tracked or not block_out:
                continue
            if len(tracked) > 1:  # several unit axes merge: tie them all (conservative)
                root = self.uf.union_all(np.concatenate([labels[ax] for ax in tracked]))
                flat = np.full(pi, root)
            else:
                ax = tracked[0]
                shape = [in_shape[a] for a in block_in]
                idx = np.indices(shape)[block_in.index(ax)].reshape(-1)
                flat = labels[ax][idx]
            big = [b for b in block_out if out_shape[b] > 1]
            if len(big) <= 1:
                for b in block_out:
                    out[b] = flat if out_shape[b] == pi else None
                if big:
                    out[big[0]] = flat
                continue
            # A unit axis splits into several axes (e.g. heads x head_dim): the first axis keeps
            # the identity and every slice of it is tied together (a whole head is one unit).
            grid = flat.reshape([out_shape[b] for b in block_out])
            lead = next(k for k, b in enumerate(block_out) if out_shape[b] > 1)
            grid = np.moveaxis(grid, lead, 0).reshape(grid.shape[lead], -1)
            out[block_out[lead]] = np.array([self.uf.union_all(row) for row in grid])
        return out

    def dot_general(self, ins, p) -> list:
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs, rhs = ins
        both = all(self.in_dep[:2])
        for a, b in zip(lc, rc, strict=True):
            self.mark_read(lhs[a], 0)
            self.mark_read(rhs[b], 1)
            if both:  # a unit summed over in a product of two activations (q . k^T)
                self.consume(lhs[a], 0, "dot_general contracting two activations")
                self.consume(rhs[b], 1, "dot_general contracting two activations")
            self.uf.union_vectors(lhs[a], rhs[b])
        batch = [self.uf.union_vectors(lhs[a], rhs[b]) for a, b in zip(lb, rb, strict=True)]
        lfree = [lab for ax, lab in enumerate(lhs) if ax not in lc and ax not in lb]
        rfree = [lab for ax, lab in enumerate(rhs) if ax not in rc and ax not in rb]
        return batch + lfree + rfree

    def conv(self, ins, shapes, p) -> list:
        if p["batch_group_count"] != 1:
            raise ValueError("coupled_groups: conv_general_dilated with batch_group_count > 1")
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        lhs, rhs = ins
        groups = p["feature_group_count"]
        lf, ri, ro = lhs[lhs_spec[1]], rhs[rhs_spec[1]], rhs[rhs_spec[0]]
        self.mark_read(ri, 1)
        if all(self.in_dep[:2]):
            self.consume(lf, 0, "conv_general_dilated of two activations")
        for ax in lhs_spec[2:]:
            self.consume(lhs[ax], 0, "conv_general_dilated over a unit axis (as a spatial axis)")
        if groups == 1:
            self.uf.union_vectors(lf, ri)
        else:  # grouped / depthwise: the channels of one group live and die together
            n_in, n_out = shapes[0][lhs_spec[1]], shapes[1][rhs_spec[0]]
            ro = self.uf.fresh(n_out) if ro is None else ro
            roots = []
            for g in range(groups):
                labs = list(ro[g * n_out // groups : (g + 1) * n_out // groups])
                if lf is not None:
                    labs += list(lf[g * n_in // groups : (g + 1) * n_in // groups])
                roots += [self.uf.union_all(labs)] * (n_out // groups)
            ro = np.array(roots)
        out: list = [None] * len(lhs)
        out[out_spec[0]] = lhs[lhs_spec[0]]
        out[out_spec[1]] = ro
        return out

    def gather(self, ins, shapes, out_shape, p) -> list:
        dn = p["dimension_numbers"]
        if getattr(dn, "operand_batching_dims", ()):
            raise ValueError("coupled_groups: gather with operand_batching_dims")
        operand = ins[0]
        if not self.in_dep[0] and any(self.in_dep[1:]):  # an embedding table read by ids
            self.lookup_nodes.update(int(lab[0]) for lab in operand if lab is not None and len(lab))
        kept = [ax for ax in range(len(shapes[0])) if ax not in dn.collapsed_slice_dims]
        out: list = [None] * len(out_shape)
        for ax, dim in zip(kept, dn.offset_dims, strict=True):
            full = p["slice_sizes"][ax] == shapes[0][ax] and ax not in dn.start_index_map
            if operand[ax] is not None and full:
                out[dim] = operand[ax]
            elif operand[ax] is not None:
                self.uf.union_all(operand[ax])  # indexed axis: conservative
                self.consume(operand[ax], 0, "gather along a unit axis")
        for ax in dn.collapsed_slice_dims:
            self.consume(operand[ax], 0, "gather along a unit axis")
        return out
