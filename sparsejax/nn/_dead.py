"""Dead coupled groups: which coupled unit groups a model's weights let surgery remove.

Beyond chains, a unit is a whole coupled group (:func:`sparsejax.coupled_groups`): the residual
channel written by every layer of a stream and read by every layer that reads the stream, a
concatenated slice, an MLP hidden unit. A removable group is *dead*, and surgery cuts it out
of every parameter it touches, when one of two things holds, with the other dead groups
already removed (the kept sets only shrink, so this is repeated until nothing changes, as the
chain analysis of :mod:`sparsejax.nn._units` does):

* **unread**: every weight that reads the unit (its input rows in each Dense/Conv kernel,
  ``GroupMember.reads``) is zero towards the kept outputs: the unit is used by nobody;
* **constant**: every weight that writes the unit (its output columns, towards the kept
  inputs) is zero, so the unit carries a constant (``act(bias)``, a BatchNorm shift, the sum
  of such constants on a residual stream). The constant is read from a run on the example
  input at the input of every layer that reads the unit and folded into that layer's bias,
  ``b_o += sum_r c_r sum_window W[..., r, o]``, exactly as along a chain; it must be constant
  over the batch, and zero unless the reader has a bias and keeps constants constant (Dense,
  or a Conv with VALID/CIRCULAR/REFLECT padding).

A dead-looking group is *kept*, and its verdict says why naming the operation, when the
model consumes its units in a way that removal would change: a reduction over the unit axis
(LayerNorm/RMSNorm statistics, a softmax or mean over features: a mean over ``d`` features is
not a mean over ``d - 1``, even when the removed one is zero), a product of two activations
contracting it (``q . k^T``), a pooling window or gather along it, or (for a constant) an
operation that mixes other units' values into it (``h - mean(h)``); when its units are tied
to the entries a ``pad`` adds along a unit axis (the zero channels of a zero-pad, "option A",
ResNet shortcut: their number is a width fixed in the model's code, which surgery cannot
change; the channels the pad passes through keep their identity and stay removable); or when
it touches a parameter that belongs to no ``Linear``/``Conv``/``BatchNorm`` layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from sparsejax import _optional
from sparsejax.nn import _calls, _tracing, _units
from sparsejax.nn._graph import Analysis, CoupledGroup, analyse

__all__ = ["GroupVerdict", "dead_groups"]


class GroupVerdict(NamedTuple):
    """Whether one removable coupled group is dead, and why.

    Attributes:
      group: the :class:`sparsejax.nn.CoupledGroup`.
      dead: True when surgery removes it.
      reason: ``"unread"`` or ``"constant"`` for a dead group; ``"live"`` for a group with a
        nonzero weight that reads and one that writes it; otherwise ``"kept: ..."``, why a
        group whose weights are zero cannot be removed (naming the operation).
    """

    group: CoupledGroup
    dead: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """One call of a multi-head attention: its path and the shapes of its q, k, v inputs."""

    path: tuple
    module: Any
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    v_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return _calls.path_name(self.path)


def _attention_calls(runner: Any, x: Any) -> list[AttentionCall]:
    """The ``nnx.MultiHeadAttention`` (or ``linen.MultiHeadDotProductAttention``) calls of a
    model (shapes only, no computation)."""
    if not isinstance(runner, _calls._NnxModel):
        found = _linen_attention_calls(runner, x)
        _check_attention_calls(found)
        return found
    from flax import nnx

    cls = nnx.MultiHeadAttention
    if not any(isinstance(n, cls) for _, n in nnx.iter_graph(runner.model)):
        return []
    found: list[AttentionCall] = []
    original = cls.__dict__["__call__"]

    def recording(module, inputs_q, inputs_k=None, inputs_v=None, *args, **kwargs):
        k = inputs_q if inputs_k is None else inputs_k
        v = k if inputs_v is None else inputs_v
        call = AttentionCall(runner.path(module), module, inputs_q.shape, k.shape, v.shape)
        found.append(call)
        return original(module, inputs_q, inputs_k, inputs_v, *args, **kwargs)

    cls.__call__ = recording
    try:
        jax.eval_shape(lambda x: runner(x), x)
    finally:
        cls.__call__ = original
    _check_attention_calls(found)
    return found


def _linen_attention_calls(runner: Any, x: Any) -> list[AttentionCall]:
    import flax.linen as nn

    found: list[AttentionCall] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            isinstance(module, nn.MultiHeadDotProductAttention)
            and context.method_name == "__call__"
        ):
            q = args[0]
            k = args[1] if len(args) > 1 else kwargs.get("inputs_k")
            k = kwargs.get("inputs_kv") if k is None else k
            k = q if k is None else k
            v = args[2] if len(args) > 2 else kwargs.get("inputs_v")
            v = k if v is None else v
            path = tuple(module.scope.path)
            found.append(AttentionCall(path, module, q.shape, k.shape, v.shape))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda x: runner(x), x)
    return found


def _check_attention_calls(found: list[AttentionCall]) -> None:
    names = [call.name for call in found]
    for call in found:
        if names.count(call.name) > 1:
            raise ValueError(f"the attention {call.name} is called more than once")
        if call.module.decode or getattr(call.module, "cached_key", None) is not None:
            raise ValueError(f"{call.name} is a multi-head attention with a decoding cache")


def attention_maccs(call: AttentionCall, count: Any) -> int:
    r"""MACCs per example of one multi-head attention call.

    With ``H`` heads of query/key depth ``D`` and value depth ``Dv``, ``Sq`` queries and
    ``Sk`` keys, input widths ``Cq, Ck, Cv`` and ``F`` output features, every product of the
    four projections and of the two activation products is counted (softmax, scaling and
    biases are not):

    .. math:: 	ext{MACCs} = S_q C_q H D + S_k C_k H D + S_k C_v H D_v
       + H D S_q S_k \;(q k^T) + H D_v S_q S_k \;(	ext{weights} \cdot v) + S_q H D_v F

    times the product of any further batch axes (``[batch, ..., length, features]``).
    ``count(param, axis)`` gives the width of an axis (all of it, or its kept indices).
    """
    cq, heads, depth = (count("query/kernel", a) for a in range(3))
    ck, cv, v_depth = count("key/kernel", 0), count("value/kernel", 0), count("value/kernel", 2)
    features = count("out/kernel", 2)
    extra = int(np.prod(call.q_shape[1:-2], dtype=np.int64))
    sq, sk = call.q_shape[-2], call.k_shape[-2]
    maccs = sq * cq * heads * depth + sk * ck * heads * depth + sk * cv * heads * v_depth
    maccs += heads * depth * sq * sk + heads * v_depth * sq * sk + sq * heads * v_depth * features
    return int(extra * maccs)


@dataclasses.dataclass
class CoupledPlan:
    """What surgery does to a non-chain model: per parameter, the kept indices of each axis;
    per Dense/Conv layer, the shift its bias takes from the folded constants."""

    network: _tracing.Network
    analysis: Analysis
    verdicts: tuple[GroupVerdict, ...]
    names: tuple[str, ...]
    kept: dict[str, list[np.ndarray]]  # leaf name -> one bool mask per axis
    shifts: dict[str, np.ndarray]  # bias leaf name -> shift over the full bias
    prefix: str  # "" for NNX, "params/" for Linen
    attentions: list[AttentionCall] = dataclasses.field(default_factory=list)

    def layer_plan(self, layer: _tracing.Layer) -> _units.UnitPlan:
        masks = self.kept[self.leaf(layer, "kernel")]
        bias = self.leaf(layer, "bias")
        shift = self.shifts.get(bias, np.zeros(layer.num_outputs))
        return _units.UnitPlan(masks[-2], masks[-1], shift, None)

    def leaf(self, layer: _tracing.Layer, name: str) -> str:
        return f"{self.prefix}{layer.name}/{name}"

    def kept_size(self, name: str) -> int:
        return int(np.prod([int(mask.sum()) for mask in self.kept[name]], dtype=np.int64))

    def param_name(self, path: tuple) -> str:
        return self.prefix + _calls.path_name(path)


def _pure_forward(runner: Any):
    """``(fn, tree, prefix)``: ``fn(tree, x)`` is the runner's (evaluation-mode) forward pass,
    ``prefix`` what the tree's leaf names put before a layer's path (Linen's ``params/``)."""
    fn, tree = runner.pure()
    return fn, tree, ("" if isinstance(runner, _calls._NnxModel) else "params/")


def _owners(network: _tracing.Network, attentions: list[AttentionCall]) -> dict[str, str]:
    """``{layer path string: kind}`` of the traced layers, BatchNorms and the projections of
    the multi-head attentions."""
    owners = {layer.name: layer.kind for layer in network.layers}
    owners.update({_calls.path_name(call.path): "norm" for call in network.norms})
    for call in attentions:
        owners.update({f"{call.name}/{n}": "attention" for n in ("query", "key", "value", "out")})
    return owners


def _owner(name: str, prefix: str) -> str:
    path = name.rsplit("/", 1)[0]
    for collection in ("params/", "batch_stats/"):
        if prefix and path.startswith(collection):
            return path[len(collection) :]
    return path


def plan_coupled(model: Any, example_input: Any, variables: Any = None) -> CoupledPlan:
    """The coupled plan of a (non-chain) model; raises ValueError for what it cannot cut."""
    network = _tracing.trace(model, example_input, variables)
    return _plan(network, _calls.wrap_model(model, variables), example_input)


def _refuse_layers(network: _tracing.Network) -> None:
    paths = [layer.call.path for layer in network.layers]
    if len(set(paths)) != len(paths):
        raise ValueError("a layer is called more than once (shared weights)")
    for layer in network.layers:
        if layer.unsupported:
            raise ValueError(f"{layer.name} is a {layer.unsupported}")
        if layer.call.input_index is not None:
            raise ValueError(f"{layer.name} gathers its inputs (a chain surgery's output)")


def _plan(network: _tracing.Network, runner: Any, example_input: Any) -> CoupledPlan:
    _refuse_layers(network)
    fn, tree, prefix = _pure_forward(runner)
    try:
        analysis = analyse(fn, tree, example_input)
    except ValueError as error:
        raise ValueError(str(error).replace("coupled_groups: ", "")) from error
    leaves = [_host(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    arrays = dict(zip(analysis.names, leaves, strict=True))
    attentions = _attention_calls(runner, jax.numpy.asarray(example_input))
    verdicts, kept, shifts = _judge(network, analysis, arrays, prefix, attentions)
    return CoupledPlan(
        network, analysis, verdicts, analysis.names, kept, shifts, prefix, attentions
    )


def is_key(leaf: Any) -> bool:
    """Whether ``leaf`` is an array of typed PRNG keys (an NNX ``RngKey``)."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _host(leaf: Any) -> np.ndarray:
    # A PRNG key is no weight: it stands as "nonzero" (never a unit to cut).
    return np.ones(np.shape(leaf), bool) if is_key(leaf) else np.asarray(leaf)


def _nonzero_along(array: np.ndarray, axis: int, masks: list[np.ndarray]) -> np.ndarray:
    """Per index of ``axis``: is any entry nonzero among the kept indices of the other axes?"""
    index = tuple(
        np.arange(n) if a == axis else np.flatnonzero(m)
        for a, (n, m) in enumerate(zip(array.shape, masks, strict=True))
    )
    sub = array[np.ix_(*index)] if array.ndim else array
    others = tuple(a for a in range(array.ndim) if a != axis)
    return np.any(sub != 0, axis=others) if sub.size else np.zeros(array.shape[axis], bool)


class _NonzeroSlices:
    """``self(path, axis, indices)``: is any weight of those slices nonzero among the kept
    indices of the other axes? (cached per parameter axis for one round)"""

    def __init__(self, arrays: dict[str, np.ndarray], masks: dict[str, list[np.ndarray]]):
        self.arrays, self.masks = arrays, masks
        self.cache: dict[tuple[str, int], np.ndarray] = {}

    def __call__(self, path: str, axis: int, indices: tuple[int, ...]) -> bool:
        if (path, axis) not in self.cache:
            self.cache[path, axis] = _nonzero_along(self.arrays[path], axis, self.masks[path])
        return bool(self.cache[path, axis][list(indices)].any())


def _judge(network, analysis, arrays, prefix, attentions):
    owners = _owners(network, attentions)
    layers = {f"{prefix}{layer.name}/kernel": layer for layer in network.layers}
    removable = [k for k, g in enumerate(analysis.groups) if g.removable]
    dead: dict[int, str] = {}
    folds: dict[int, dict[str, np.ndarray]] = {}  # group -> {kernel leaf: folded rows}
    kept_why: dict[int, str] = {}

    def masks_now():
        masks = {n: [np.ones(s, bool) for s in arrays[n].shape] for n in analysis.names}
        for k in dead:
            for m in analysis.groups[k].members:
                masks[m.path][m.axis][list(m.indices)] = False
        return masks

    while True:
        nonzero = _NonzeroSlices(arrays, masks_now())
        new: dict[int, str] = {}
        for k in removable:
            if k in dead:
                continue
            group, root = analysis.groups[k], analysis.roots[k]
            reads = [m for m in group.members if m.reads]
            if reads:
                unread = not any(nonzero(m.path, m.axis, m.indices) for m in reads)
            else:  # read by no weight: unused unless an operation consumes it (q . k^T)
                unread = root not in analysis.consumptions
            verdict = "unread" if unread else None
            if verdict is None:
                verdict, why, rows = _constant(group, root, analysis, arrays, layers, nonzero)
                if verdict is None:
                    kept_why[k] = why
                    continue
                folds[k] = rows
            problem = _removal_problem(group, root, analysis, owners, prefix)
            if problem is not None:
                kept_why[k] = f"kept: {problem}"
                continue
            new[k] = verdict
        if not new:
            break
        dead.update(new)
    masks = masks_now()
    shifts = {}
    for kernel, layer in layers.items():
        folded = np.zeros(layer.num_inputs, bool)
        for k, rows in folds.items():
            if dead.get(k) == "constant" and kernel in rows:
                folded |= rows[kernel]
        if folded.any():
            shifts[f"{prefix}{layer.name}/bias"] = _units.folded_shift(layer, folded)
    verdicts = tuple(
        GroupVerdict(analysis.groups[k], k in dead, dead.get(k) or kept_why.get(k, "live"))
        for k in removable
    )
    return verdicts, masks, shifts


def _removal_problem(group, root, analysis, owners, prefix) -> str | None:
    """Why removing the (dead-looking) group would change the model, or None."""
    static = analysis.static.get(root)
    if static:
        return (
            f"its units are tied to entries that {', '.join(static)} adds (zero padding of a "
            "width fixed in the model's code, e.g. a zero-pad shortcut): surgery cannot "
            "change that width"
        )
    consumed = analysis.consumptions.get(root)
    if consumed:
        return (
            f"its units are consumed by {', '.join(consumed)} (e.g. LayerNorm/RMSNorm "
            "statistics over the full width, a softmax over features, q.k^T): removing a unit "
            "changes that result even when the unit is zero"
        )
    for m in group.members:
        owner = _owner(m.path, prefix)
        if owner not in owners:
            return (
                f"it touches {m.path}, a parameter of no Linear/Conv/BatchNorm/"
                "MultiHeadAttention projection"
            )
        if owners[owner] == "attention" and owner.endswith("/value") and m.axis == 2:
            return (
                f"it is a value depth of {owner.rsplit('/', 1)[0]}, which must equal the "
                "query/key depth (jax.nn.dot_product_attention)"
            )
    return None


def _constant(group, root, analysis, arrays, layers, nonzero):
    """``(verdict, why, folded rows)``: "constant" when the group's units carry constants that
    every reader folds, else ``(None, why, None)``."""
    where = {n: k for k, n in enumerate(analysis.names)}
    for m in group.members:
        writes = not m.reads and bool(analysis.reads[where[m.path]] - {m.axis})
        if writes and nonzero(m.path, m.axis, m.indices):
            return None, "live", None
    for m in group.members:
        if analysis.lookups[where[m.path]]:
            return None, f"kept: {m.path} is a table indexed by the data (an embedding)", None
    mixed = analysis.injections.get(root)
    if mixed:
        return None, f"kept: {', '.join(mixed)} mixes other units into its units", None
    rows: dict[str, np.ndarray] = {}
    for m in group.members:
        if not m.reads:
            continue
        layer = layers.get(m.path)
        if layer is None or m.axis != layer.kernel.ndim - 2:
            return None, f"kept: its constant is read by {m.path}, not a Dense/Conv kernel", None
        ok = _units.foldable_rows(layer)[list(m.indices)]
        if not ok.all():
            return (
                None,
                f"kept: the constant it carries cannot be folded into {layer.name} (not "
                "constant over the example, or a nonzero constant and no bias or a padded conv)",
                None,
            )
        folded = rows.setdefault(m.path, np.zeros(layer.num_inputs, bool))
        folded[list(m.indices)] = True
    return "constant", "", rows


def dead_groups(model: Any, example_input: Any, variables: Any = None) -> tuple[GroupVerdict, ...]:
    r"""Says, for every removable coupled group of a model, whether its weights make it dead.

    With :math:`R(G)` the weights that read the units of group :math:`G` (their input rows in
    every Dense/Conv kernel) and :math:`W(G)` those that write them (their output columns),
    both restricted to the units still kept, :math:`G` is dead when

    .. math:: R(G) = 0 \quad (\text{unread}) \qquad \text{or} \qquad
       W(G) = 0 \quad (\text{constant, folded into the readers' biases}),

    repeated until no group changes, and when removing it changes no output: groups whose
    units a LayerNorm/RMSNorm statistic, a softmax over features or a product of two
    activations consume, and those tied to the entries a ``pad`` along a unit axis adds (a
    zero-pad shortcut), are kept, their verdict naming the operation (see the module
    docstring of ``sparsejax.nn._dead``). :func:`sparsejax.model_report` counts, and
    :func:`sparsejax.remove_dead_units` cuts, exactly the dead groups of a non-chain model.

    Args:
      model: an ``nnx.Module``, or a Linen module (or ``apply_fn``) with ``variables``.
      example_input: a batch of inputs; the constants that zero-written units carry are read
        from a run on it.
      variables: the Linen variables; None for an NNX model.

    Returns:
      One :class:`GroupVerdict` per removable group, in the order of
      :func:`sparsejax.coupled_groups`.

    Raises:
      ValueError: a primitive the analysis does not understand, a Linen masked convolution,
        a layer called twice (each named), or bad arguments.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from sparsejax.nn import dead_groups
      >>> class Res(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.a = nnx.Linear(3, 4, rngs=rngs)
      ...         self.b = nnx.Linear(4, 4, rngs=rngs)
      ...         self.c = nnx.Linear(4, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         h = self.a(x)
      ...         return self.c(h + jax.nn.relu(self.b(h)))
      >>> model = Res(nnx.Rngs(0))
      >>> model.b.kernel[1, :] = 0.0  # stream unit 1 is read by b and c: c still reads it
      >>> model.c.kernel[2, :] = 0.0
      >>> model.b.kernel[2, :] = 0.0  # stream unit 2: no layer reads it any more
      >>> [v.reason for v in dead_groups(model, jnp.ones((2, 3)))]
      ['live', 'live', 'unread', 'live']
    """
    _optional.require_flax("sparsejax.nn.dead_groups")
    return plan_coupled(model, example_input, variables).verdicts
