r"""SIS: post-training sparsification by subdifferential inclusion (seed 004, reconstructed).

SIS sparsifies an already-trained network layer by layer, from a few minibatches of its own
activations, without retraining and without labels.

Provenance: the method section was reconstructed
-------------------------------------------------
Seed 004 (S. Verma, J.-C. Pesquet, "Sparsifying networks via subdifferential inclusion",
ICML 2021) is available to sparsejax only through its abstract and introduction. Its method
section — the exact objective, algorithm, step sizes, stopping rule and experimental protocol —
was **not** available. This module implements the reconstruction written down in the project's
``DESIGN.md``, derived from what the introduction does state: activations are proximity
operators, sparsification is an *approximate subdifferential inclusion* whose accuracy controls
the sparsity, the algorithm is iterative with guaranteed convergence, and it runs on minibatches
of partial training data. What that means for a user:

* numbers obtained with this module are numbers of *this* formulation, not a reproduction of
  the paper's results, and they should be reported as such;
* where this formulation differs from the paper's, we cannot tell you how, because the paper's
  method is unknown to us. The following are sparsejax's own choices, made on this machine's
  experiments (see ``experiments/RESULTS.md``), not the paper's: the gradual ramp of the
  constraint (``ramp``), the inertial step (``momentum``), the step scaled by an estimated
  Lipschitz constant (``estimate_lipschitz``), the targets taken from the pretrained network
  (``targets``), and the relative error that ``max_error`` bounds.

The formulation
---------------
An activation :math:`R` is the proximity operator of a convex function :math:`f` (ReLU: the
indicator of the non-negative orthant; sigmoid, tanh, identity: smooth strictly convex
functions; softmax: a negative entropy on the simplex). Hence

.. math::

   y = R(u) \iff u - y \in \partial f(y) \iff u \in D(y) := y + \partial f(y),

a closed convex set. For ReLU, :math:`D(y)_i = \{y_i\}` if :math:`y_i > 0` and
:math:`(-\infty, 0]` otherwise; for a strictly monotone activation :math:`D(y) = \{u\}` (the
pre-activation); for softmax :math:`D(y) = \{z + t \mathbf 1 : t \in \mathbb R\}` with
:math:`z = \log y`. A layer with kernel :math:`W`, bias :math:`b`, inputs :math:`x_k` and
target outputs :math:`y_k` reproduces its targets iff :math:`u_k = W^\top x_k + b \in D(y_k)`
for every :math:`k`. SIS measures how far it is from that with

.. math::

   r_k = P_{D(y_k)}(u_k) - u_k, \qquad \nu_k = \|x_k\|_2^2 + 1, \qquad
   \varphi(W, b) = \frac1K \sum_k \frac{\|r_k\|_2^2}{2 \nu_k},

which is 0 at the pretrained weights and has an :math:`L`-Lipschitz gradient with
:math:`L \le 1`, and decreases it from the pretrained weights by projected (or proximal)
stochastic gradient, one minibatch per step:

.. math::

   W \leftarrow P_C\Big(W + \frac{\gamma}{L K} \sum_k \frac{x_k r_k^\top}{\nu_k}\Big),
   \qquad b \leftarrow b + \frac{\gamma}{L K} \sum_k \frac{r_k}{\nu_k},
   \qquad \gamma \in (0, 2),

evaluated at the inertial point :math:`W + \beta (W - W_{\text{previous}})` (FISTA-like,
``momentum`` :math:`\beta`). :math:`L` is the largest eigenvalue of
:math:`\frac1K\sum_k \tilde x_k \tilde x_k^\top/\nu_k`, :math:`\tilde x_k = (x_k, 1)`, found by
power iteration on one batch (``estimate_lipschitz=False`` uses the bound :math:`L = 1`, the
plain normalisation of DESIGN.md). :math:`P_C` is the projection onto the sparsity constraint
(keep the largest entries or the largest input units, an l1 ball, or the bi-level l1,1 ball
that removes whole input units) or, in penalised form, the soft threshold
:math:`S_{\gamma\lambda/L}`. The constraint is reached gradually (``ramp``): a hard projection
onto the final set at the first step would amount to magnitude pruning. Only the l1 ball and
the soft threshold, with ``momentum=0`` and ``ramp=0``, are covered by the classical convergence
theory of forward-backward splitting; "keep the largest" (a non-convex set), the bi-level l1,1
operator (not the projection onto a convex set), the ramp and the inertial step are heuristics
whose effect is measured in ``experiments/RESULTS.md``.

Conv layers treat every output position as a sample whose input is its receptive-field patch
(im2col); the gradient is computed with the layer's own convolution (its transpose) rather
than a materialised patch matrix, which is the same sum in less memory. Layers are processed
in call order, and each one's inputs come from the already-sparsified network. With the
default ``targets="network"`` the targets :math:`y_k` are the pretrained *network*'s outputs
of that layer, so each layer also corrects the errors made upstream (:math:`\varphi` at the
pretrained weights is then 0 only for the first layer); ``targets="layer"`` takes the
pretrained layer applied to the sparsified inputs, for which :math:`\varphi = 0` at the
pretrained weights of every layer.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> class Net(nnx.Module):
  ...     def __init__(self, rngs):
  ...         self.fc1 = nnx.Linear(16, 32, rngs=rngs)
  ...         self.fc2 = nnx.Linear(32, 4, rngs=rngs)
  ...     def __call__(self, x):
  ...         return self.fc2(jax.nn.relu(self.fc1(x)))
  >>> model = Net(nnx.Rngs(0))
  >>> batches = [jax.random.normal(jax.random.key(i), (64, 16)) for i in range(4)]
  >>> params, records = sis_sparsify(model, batches, sparsity=0.5, steps=50)
  >>> [(r.path, round(r.sparsity, 2)) for r in records]
  [('fc1', 0.5), ('fc2', 0.5)]
  >>> nnx.update(model, params)  # the model now carries the sparse weights
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import projections, prox
from sparsejax.prox import keep_largest, keep_largest_inputs

ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity", "softmax")
"""Activation names SIS understands; every name but ``relu`` and ``softmax`` is strictly
monotone, so its inclusion set is the single pre-activation."""

_TARGETS = ("network", "layer")
_BALLS = ("l1", "l11")
_UNITS = ("weights", "inputs")


# --------------------------------------------------------------------------------------------
# Inclusion sets (pure array functions)
# --------------------------------------------------------------------------------------------


def _check_activation(activation: str, name: str = "activation") -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {activation!r}")


def project_inclusion_set(u: jax.Array, reference: jax.Array, activation: str) -> jax.Array:
    r"""Projects pre-activations onto the inclusion set :math:`D(y)` of the target outputs.

    The target outputs are given by their pre-activation ``reference`` (``y = R(reference)``),
    which is exact where ``y`` is not (a saturated sigmoid cannot be inverted in float32).

    .. math::

       \text{relu: } P_D(u)_i = \begin{cases} y_i & y_i > 0 \\ \min(u_i, 0) & y_i = 0
       \end{cases} \qquad
       \text{strictly monotone: } P_D(u) = R^{-1}(y) \qquad
       \text{softmax: } P_D(u) = \log y + \operatorname{mean}(u - \log y)\,\mathbf 1

    (the softmax set is invariant to the constant in :math:`\log y`, so ``reference`` serves).

    Args:
      u: pre-activations, ``(..., units)``.
      reference: pre-activations of the target outputs, same shape as ``u``.
      activation: one of :data:`ACTIVATIONS`; softmax acts over the last axis.

    Returns:
      :math:`P_{D(y)}(u)`, the shape of ``u``.

    Raises:
      ValueError: for an unknown activation.

    >>> import jax.numpy as jnp
    >>> u, ref = jnp.array([1.0, -2.0, 4.0]), jnp.array([0.5, -1.0, -1.0])
    >>> print(project_inclusion_set(u, ref, "relu"))
    [ 0.5 -2.   0. ]
    >>> print(project_inclusion_set(u, jnp.zeros(3), "softmax"))  # uniform target
    [1. 1. 1.]
    """
    _check_activation(activation)
    u = jnp.asarray(u)
    reference = jnp.asarray(reference, dtype=u.dtype)
    if activation == "relu":
        return jnp.where(reference > 0, reference, jnp.minimum(u, 0))
    if activation == "softmax":
        return reference + jnp.mean(u - reference, axis=-1, keepdims=True)
    return jnp.broadcast_to(reference, u.shape)


def inclusion_residual(u: jax.Array, reference: jax.Array, activation: str) -> jax.Array:
    r"""Returns :math:`r = P_{D(y)}(u) - u`, zero exactly when ``R(u) == R(reference)``.

    Args:
      u: pre-activations, ``(..., units)``.
      reference: pre-activations of the target outputs, same shape as ``u``.
      activation: one of :data:`ACTIVATIONS`.

    Returns:
      The residual, the shape of ``u``; :math:`\tfrac12\|r\|^2` is the squared distance whose
      gradient in ``u`` is :math:`-r`.

    >>> import jax.numpy as jnp
    >>> print(inclusion_residual(jnp.array([1.0, -2.0]), jnp.array([2.0, -1.0]), "relu"))
    [1. 0.]
    """
    return project_inclusion_set(u, reference, activation) - jnp.asarray(u)


# --------------------------------------------------------------------------------------------
# Sparsity constraints on one kernel
# --------------------------------------------------------------------------------------------


_CONSTRAINTS = {
    "top_k": lambda kernel, keep, rate: keep_largest(kernel, keep),
    "top_k_inputs": lambda kernel, keep, rate: keep_largest_inputs(kernel, keep),
    "soft": lambda kernel, lam, rate: prox.soft_threshold(kernel, rate * lam),
    "l1": lambda kernel, radius, rate: projections.l1_ball(kernel.reshape(-1), radius).reshape(
        kernel.shape
    ),
    # Group = everything attached to one input unit: axis -2 of a Dense or Conv kernel.
    "l11": lambda kernel, radius, rate: projections.l11_ball(
        kernel, radius, group_axis=kernel.ndim - 2
    ),
}
"""``(kernel, level, rate) -> constrained kernel`` for each way of controlling sparsity."""


def _constraint_name(control: str, ball: str, units: str) -> str:
    if control in ("sparsity", "max_error"):
        return "top_k" if units == "weights" else "top_k_inputs"
    return "soft" if control == "penalty" else ball


# --------------------------------------------------------------------------------------------
# Reading layers out of an NNX model
# --------------------------------------------------------------------------------------------


def _nnx():
    try:
        from flax import nnx  # optional: sparsejax itself needs only jax and optax
    except ImportError as err:  # pragma: no cover - exercised only without flax
        raise ImportError(
            "sparsejax.sis needs flax (pip install 'sparsejax[experiments]')"
        ) from err
    return nnx


class _ReachedLayer(Exception):
    """Raised inside a forward pass to stop it once the layer of interest has been called."""


@contextlib.contextmanager
def _intercepted_calls(hook: Callable) -> Iterator[None]:
    """Routes every ``nnx.Linear``/``nnx.Conv`` call through ``hook(layer, inputs, call)``."""
    nnx = _nnx()
    originals = {cls: vars(cls)["__call__"] for cls in (nnx.Linear, nnx.Conv)}

    def wrap(original):
        def call(self, inputs, *args, **kwargs):
            return hook(self, inputs, lambda x: original(self, x, *args, **kwargs))

        return call

    try:
        for cls, original in originals.items():
            cls.__call__ = wrap(original)
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def _path_string(path: tuple) -> str:
    return "/".join(str(key) for key in path)


class _Layer(NamedTuple):
    path: tuple
    name: str
    kind: str
    kernel_shape: tuple[int, ...]


def _layer_info(layer: Any, path: tuple) -> _Layer:
    nnx = _nnx()
    name = _path_string(path)
    kind = "conv" if isinstance(layer, nnx.Conv) else "dense"
    if kind == "conv" and (layer.feature_group_count != 1 or layer.mask is not None):
        raise ValueError(
            f"layer {name!r}: SIS supports convolutions with feature_group_count=1 and no mask, "
            f"got feature_group_count={layer.feature_group_count!r}, "
            f"mask={'set' if layer.mask is not None else None}"
        )
    return _Layer(path, name, kind, tuple(layer.kernel.shape))


def _discover_layers(graphdef: Any, states: tuple, batch: Any) -> list[_Layer]:
    """Lists the model's Dense/Conv layers in the order the forward pass calls them."""
    nnx = _nnx()
    found: list[_Layer] = []

    def forward(states, batch):
        model = nnx.merge(graphdef, *states)
        paths = {
            id(node): path
            for path, node in nnx.iter_graph(model)
            if isinstance(node, (nnx.Linear, nnx.Conv))
        }

        def hook(layer, inputs, call):
            if id(layer) not in paths:
                raise ValueError(f"a {type(layer).__name__} called by the model is not part of it")
            info = _layer_info(layer, paths[id(layer)])
            if any(seen.path == info.path for seen in found):
                raise ValueError(
                    f"layer {info.name!r} is called more than once per forward pass; SIS needs "
                    "each Dense/Conv layer to be called exactly once"
                )
            found.append(info)
            return call(inputs)

        with _intercepted_calls(hook):
            model(batch)

    jax.eval_shape(forward, states, batch)
    if not found:
        raise ValueError("the model calls no nnx.Linear or nnx.Conv layer; nothing to sparsify")
    return found


def _module_at(model: Any, path: tuple) -> Any:
    for node_path, node in _nnx().iter_graph(model):
        if node_path == path:
            return node
    raise ValueError(f"no module at path {_path_string(path)!r}")


def _run_to_layer(graphdef, states, path, batch, *, with_output: bool):
    """Runs the model until layer ``path``; returns the layer, its inputs and its output."""
    nnx = _nnx()
    model = nnx.merge(graphdef, *states)
    target = _module_at(model, path)
    captured = {}

    def hook(layer, inputs, call):
        if layer is not target:
            return call(inputs)
        captured["inputs"] = inputs
        if with_output:
            captured["outputs"] = call(inputs)
        raise _ReachedLayer

    with _intercepted_calls(hook), contextlib.suppress(_ReachedLayer):
        model(batch)
    return target, captured["inputs"], captured.get("outputs")


def _layer_apply(layer: Any, params: Mapping[str, jax.Array], inputs: jax.Array) -> jax.Array:
    """Calls a copy of ``layer`` whose kernel (and bias) are ``params``: its own geometry."""
    nnx = _nnx()
    copy = nnx.merge(*nnx.split(layer))
    copy.kernel = nnx.Param(params["kernel"])
    if "bias" in params:
        copy.bias = nnx.Param(params["bias"])
    return copy(inputs)


def _sample_norms(layer: Any, params: Mapping[str, jax.Array], inputs: jax.Array) -> jax.Array:
    """``nu = ||x||^2 + 1`` per output position: the layer with an all-ones kernel on ``x**2``
    sums each receptive-field patch of squares, whatever the padding, stride or dilation."""
    kernel = params["kernel"]
    ones = {"kernel": jnp.ones((*kernel.shape[:-1], 1), kernel.dtype)}
    if "bias" in params:
        ones["bias"] = jnp.zeros((1,), kernel.dtype)
    return _layer_apply(layer, ones, inputs * inputs) + 1


def _tree_keys(key_path: tuple) -> tuple:
    keys = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            keys.append(key.key)
        elif isinstance(key, jax.tree_util.SequenceKey):
            keys.append(key.idx)
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            keys.append(key.name)
    return tuple(keys)


def _get_layer_params(params: Any, layer: _Layer) -> dict[str, jax.Array]:
    found = {}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = _tree_keys(key_path)
        if keys[:-1] == layer.path and keys[-1] in ("kernel", "bias"):
            found[keys[-1]] = leaf
    return found


def _set_layer_params(params: Any, layer: _Layer, values: Mapping[str, jax.Array]) -> Any:
    def replace(key_path, leaf):
        keys = _tree_keys(key_path)
        if keys[:-1] == layer.path and keys[-1] in values:
            return values[keys[-1]]
        return leaf

    return jax.tree_util.tree_map_with_path(replace, params)


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


_POWER_ITERATIONS = 30


class _Spec(NamedTuple):
    """Everything static about one layer's problem; hashable, so it keys the jit caches and a
    second call on the same architecture reuses the compiled steps."""

    graphdef: Any
    path: tuple
    activation: str
    constraint: str
    targets: str
    momentum: float


# The jitted functions below take ``(spec, ..., pretrained, params, reference_params, rest,
# batch)``: the layer's pretrained weights, the current (partly sparsified) and pretrained
# parameters of the whole model, its other state, and one input batch.


def _inputs_and_reference(spec: _Spec, pretrained, params, reference_params, rest, batch):
    module, inputs, _ = _run_to_layer(
        spec.graphdef, (params, rest), spec.path, batch, with_output=False
    )
    if spec.targets == "network":
        reference = _run_to_layer(
            spec.graphdef, (reference_params, rest), spec.path, batch, with_output=True
        )[2]
    else:
        reference = _layer_apply(module, pretrained, inputs)
    return module, inputs, reference


def _residuals(spec: _Spec, weights, *context):
    module, inputs, reference = _inputs_and_reference(spec, *context)
    outputs, pullback = jax.vjp(lambda w: _layer_apply(module, w, inputs), weights)
    norms = _sample_norms(module, weights, inputs)
    residual = inclusion_residual(outputs, reference, spec.activation)
    zero_residual = project_inclusion_set(jnp.zeros_like(outputs), reference, spec.activation)
    return residual, zero_residual, norms, pullback


@functools.partial(jax.jit, static_argnums=0)
def _step(spec: _Spec, weights, previous, level, rate, *context):
    lookahead = jax.tree.map(lambda w, p: w + spec.momentum * (w - p), weights, previous)
    residual, _, norms, pullback = _residuals(spec, lookahead, *context)
    samples = residual.size // residual.shape[-1]
    (ascent,) = pullback(residual / (norms * samples))
    moved = jax.tree.map(lambda w, d: w + rate * d, lookahead, ascent)
    constrain = _CONSTRAINTS[spec.constraint]
    return {**moved, "kernel": constrain(moved["kernel"], level, rate)}, weights


@functools.partial(jax.jit, static_argnums=0)
def _errors(spec: _Spec, weights, *context):
    """Sums over one batch: squared residuals, squared distances of 0 to the inclusion sets,
    the terms of phi, and the number of samples."""
    residual, zero_residual, norms, _ = _residuals(spec, weights, *context)
    squared = jnp.sum(residual**2, axis=-1, keepdims=True)
    return jnp.stack(
        [jnp.sum(squared), jnp.sum(zero_residual**2), jnp.sum(squared / (2 * norms)), squared.size]
    )


@functools.partial(jax.jit, static_argnums=0)
def _curvature(spec: _Spec, weights, *context):
    """Largest eigenvalue of the Gauss-Newton matrix of phi on one batch (power method): a
    Lipschitz constant of grad phi for every activation here, and at most 1."""
    module, inputs, _ = _inputs_and_reference(spec, *context)
    _, pullback = jax.vjp(lambda w: _layer_apply(module, w, inputs), weights)
    norms = _sample_norms(module, weights, inputs)

    def gram(direction):
        return pullback(_layer_apply(module, direction, inputs) / (norms * norms.size))[0]

    def iterate(_, carry):
        direction, _ = carry
        image = gram(direction)
        size = optax.tree.norm(image)
        return jax.tree.map(lambda v: v / size, image), size

    start = jax.tree.map(jnp.ones_like, weights)
    start = jax.tree.map(lambda v: v / optax.tree.norm(start), start)
    _, largest = jax.lax.fori_loop(0, _POWER_ITERATIONS, iterate, (start, jnp.float32(1)))
    return largest


def _fit_layer(spec, schedule, rate, pretrained, states, stream, steps):
    weights = previous = pretrained
    for t in range(steps):
        weights, previous = _step(
            spec, weights, previous, schedule(t), rate, pretrained, *states, next(stream)
        )
    return weights


def _layer_errors(spec, weights, pretrained, states, batches) -> tuple[float, float]:
    totals = sum(_errors(spec, weights, pretrained, *states, batch) for batch in batches)
    squared, zero_squared, phi_sum, samples = (float(v) for v in totals)
    return squared / max(zero_squared, np.finfo(np.float32).tiny), phi_sum / samples


# --------------------------------------------------------------------------------------------
# Public model-level API
# --------------------------------------------------------------------------------------------


class SISLayerRecord(NamedTuple):
    """What :func:`sis_sparsify` did to one layer.

    Attributes:
      path: the layer's path in the model (``"fc1"``, ``"blocks/0/conv"``); its kernel is
        ``path + "/kernel"``.
      kind: ``"dense"`` or ``"conv"``.
      activation: the activation whose inclusion set was used.
      kernel_shape: the kernel's shape.
      control: ``"sparsity"``, ``"radius"``, ``"penalty"`` or ``"max_error"``.
      level: the value of the control used for this layer (for ``max_error``: the fraction of
        zeros that the search settled on).
      sparsity: fraction of exact zeros in the sparsified kernel.
      zero_input_units: input units (kernel rows / input channels) whose weights are all zero.
      zero_output_units: output units (kernel columns / filters) whose weights are all zero.
      error_before: relative inclusion error of the pretrained weights on the sparsified
        network's inputs (0 for the first layer; see :func:`sis_sparsify`).
      error_after: relative inclusion error of the sparsified weights.
      phi_after: the objective :math:`\\varphi` of the sparsified weights.
      lipschitz: the curvature estimate :math:`L \\le 1` that divided the step size (1 when
        ``estimate_lipschitz=False``).
    """

    path: str
    kind: str
    activation: str
    kernel_shape: tuple[int, ...]
    control: str
    level: float
    sparsity: float
    zero_input_units: int
    zero_output_units: int
    error_before: float
    error_after: float
    phi_after: float
    lipschitz: float


def _batch_source(batches: Any) -> Callable[[], Iterator[Any]]:
    if callable(batches):
        return lambda: iter(batches())
    if not isinstance(batches, Iterable):
        raise ValueError(f"batches must be an iterable of model inputs, got {type(batches)!r}")
    if iter(batches) is batches:
        raise ValueError(
            "batches must be re-iterable (a list, or a callable returning a fresh iterator): SIS "
            f"passes over it once per layer; got the one-shot iterator {batches!r}"
        )
    return lambda: iter(batches)


def _cycled(source: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in source():
            empty = False
            yield jax.tree.map(jnp.asarray, batch)
        if empty:
            raise ValueError("batches yielded no batch")


def _per_layer(value: Any, layer: _Layer, name: str) -> Any:
    """A scalar applies to every layer; ``{pattern: value}`` to the layers whose kernel path
    (``"fc1/kernel"``) the first matching pattern finds (others get ``None``)."""
    if not isinstance(value, Mapping):
        return value
    for pattern, entry in value.items():
        if re.search(pattern, f"{layer.name}/kernel"):
            return entry
    return None


def _check_mapping_keys(value: Any, layers: list[_Layer], name: str) -> None:
    if not isinstance(value, Mapping):
        return
    names = [f"{layer.name}/kernel" for layer in layers]
    for pattern in value:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"{name} pattern {pattern!r} matches no layer; the layers are {names}")


def _check_level(value: Any, name: str, *, upper: float | None = None) -> None:
    entries = value.values() if isinstance(value, Mapping) else [value]
    for entry in entries:
        number = float(entry) if np.ndim(entry) == 0 else math.nan
        bad = not math.isfinite(number) or number < 0 or (upper is not None and number > upper)
        if bad:
            bound = f"in [0, {upper}]" if upper is not None else "finite and >= 0"
            raise ValueError(f"{name} must be {bound}, got {entry!r}")


def _control(sparsity, radius, penalty, max_error) -> tuple[str, Any]:
    given = {
        name: value
        for name, value in (
            ("sparsity", sparsity),
            ("radius", radius),
            ("penalty", penalty),
            ("max_error", max_error),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError(
            "give exactly one of sparsity, radius, penalty, max_error; got "
            f"{sorted(given) or 'none'}"
        )
    ((name, value),) = given.items()
    _check_level(value, name, upper=1.0 if name == "sparsity" else None)
    return name, value


def _check_options(
    ball, steps, step_size, momentum, ramp, targets, eval_batches, search_steps
) -> None:
    if ball not in _BALLS:
        raise ValueError(f"ball must be one of {_BALLS}, got {ball!r}")
    if targets not in _TARGETS:
        raise ValueError(f"targets must be one of {_TARGETS}, got {targets!r}")
    for name, value in (
        ("steps", steps),
        ("eval_batches", eval_batches),
        ("search_steps", search_steps),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 < step_size < 2:
        raise ValueError(f"step_size must be in (0, 2), got {step_size!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not 0 <= ramp <= 1:
        raise ValueError(f"ramp must be in [0, 1], got {ramp!r}")


def _activations_for(layers: list[_Layer], activations: Any) -> list[str]:
    """ReLU for hidden layers and softmax for the last, unless ``activations`` says otherwise."""
    chosen = []
    for index, layer in enumerate(layers):
        default = "softmax" if index == len(layers) - 1 else "relu"
        if isinstance(activations, str):
            name = activations
        elif activations is None:
            name = default
        else:
            name = _per_layer(activations, layer, "activations") or default
        _check_activation(name, f"activation of layer {layer.name!r}")
        chosen.append(name)
    return chosen


def sis_layers(model: Any, batch: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """Lists the layers :func:`sis_sparsify` acts on, in the order the model calls them.

    Args:
      model: a Flax NNX module; ``model(batch)`` must run.
      batch: one input batch (only its shape and dtype are used).

    Returns:
      ``(path, kind, kernel_shape)`` per ``nnx.Linear``/``nnx.Conv`` layer; ``path`` is what
      per-layer mappings match (as ``path + "/kernel"``).

    Raises:
      ValueError: if a layer is called twice, or the model calls no Dense/Conv layer.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> sis_layers(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 3)))
    [('', 'dense', (3, 2))]
    """
    nnx = _nnx()
    graphdef, state = nnx.split(model)
    layers = _discover_layers(graphdef, (state,), batch)
    return [(layer.name, layer.kind, layer.kernel_shape) for layer in layers]


def sis_sparsify(
    model: Any,
    batches: Any,
    *,
    sparsity: Any = None,
    radius: Any = None,
    penalty: Any = None,
    max_error: Any = None,
    ball: str = "l1",
    units: str = "weights",
    activations: Any = None,
    steps: int = 600,
    step_size: float = 1.0,
    momentum: float = 0.9,
    estimate_lipschitz: bool = True,
    ramp: float = 0.5,
    targets: str = "network",
    eval_batches: int = 8,
    search_steps: int = 6,
) -> tuple[Any, list[SISLayerRecord]]:
    r"""Sparsifies a trained NNX model layer by layer with SIS (reconstructed, see the module).

    Each ``nnx.Linear``/``nnx.Conv`` layer, in call order, is fitted from its pretrained
    weights by ``steps`` minibatch steps of projected (or proximal) gradient on

    .. math::

       \varphi(W, b) = \frac1K \sum_k \frac{\|P_{D(y_k)}(u_k) - u_k\|^2}{2(\|x_k\|^2 + 1)},
       \qquad u_k = W^\top x_k + b,

    with ``x_k`` the layer's inputs in the already-sparsified network and ``y_k`` its target
    outputs. Memory is that of one batch: batches are streamed, never stored.

    Exactly one of the four controls is given (a number for every layer, or
    ``{pattern: value}`` matched with ``re.search`` against ``"<layer path>/kernel"``; layers
    no pattern matches are left as they are):

    * ``sparsity`` — fraction of zeros per kernel (projection onto "keep the largest"), or
      with ``units="inputs"`` the fraction of input units removed (keep the input units of
      largest l2 norm: a structured constraint that cuts MACCs).
    * ``radius`` — the kernel is projected onto the ball of that radius: ``ball="l1"``
      (the flattened kernel) or ``ball="l11"`` (the bi-level l1,1 ball, group = input unit,
      which removes whole input neurons/channels).
    * ``penalty`` — :math:`\lambda` of the penalised form (soft threshold at
      :math:`\gamma\lambda/L`).
    * ``max_error`` — the inclusion accuracy: the largest fraction of zeros (bisection over
      ``search_steps`` halvings) whose relative inclusion error stays within ``max_error``.

    The *relative inclusion error* of a layer is
    :math:`\sum_k \|r_k\|^2 / \sum_k \operatorname{dist}(0, D(y_k))^2`: 0 when the layer
    reproduces its targets, 1 for the all-zero layer. Records report it on the first
    ``eval_batches`` batches.

    Args:
      model: a trained Flax NNX module in evaluation mode (``model.eval()``: dropout off,
        batch statistics frozen); ``model(batch)`` must call each Dense/Conv layer once.
        It is not modified.
      batches: model inputs (no labels), re-iterable: a list of arrays, or a callable
        returning a fresh iterator. Steps cycle through it.
      sparsity: fraction of zeros, in [0, 1].
      radius: l1 or l1,1 radius (>= 0).
      penalty: soft-threshold weight :math:`\lambda` (>= 0).
      max_error: largest relative inclusion error allowed (>= 0).
      ball: ``"l1"`` or ``"l11"``, the ball of ``radius``.
      units: what ``sparsity`` and ``max_error`` count: ``"weights"`` or ``"inputs"`` (whole
        input units: kernel rows, conv input channels).
      activations: activation after each layer, from :data:`ACTIVATIONS`: one name for
        every layer, or ``{pattern: name}``; default ReLU for every layer but the last, which
        is softmax. A layer followed by a normalisation should say ``"identity"``.
      steps: minibatch steps per layer (per trial for ``max_error``).
      step_size: :math:`\gamma \in (0, 2)`, in units of :math:`1/L`.
      momentum: inertia :math:`\beta \in [0, 1)` of the step (0: plain forward-backward).
      estimate_lipschitz: divide the step by the estimated curvature :math:`L \le 1` of
        :math:`\varphi` (power iteration on the first batch); ``False`` takes :math:`L = 1`.
      ramp: fraction of the steps over which the control moves linearly from its no-op value
        (no zeros; the pretrained kernel's l1 norm; no penalty) to its target (0: at once).
      targets: ``"network"`` — ``y_k`` are the pretrained network's outputs of this layer, so
        the layer also corrects the errors made upstream; ``"layer"`` — ``y_k`` are the
        pretrained layer applied to the sparsified inputs, so :math:`\varphi = 0` at the
        pretrained weights for every layer (DESIGN.md's literal reading).
      eval_batches: batches used to measure the errors in the records.
      search_steps: halvings of the ``max_error`` search.

    Returns:
      ``(params, records)``: the model's ``nnx.Param`` state with sparsified kernels and
      refitted biases (apply it with ``nnx.update(model, params)``), and one
      :class:`SISLayerRecord` per sparsified layer.

    Raises:
      ValueError: for a bad control, option, activation or pattern, a one-shot iterator or
        empty ``batches``, or a model SIS cannot read (a layer called twice, grouped or masked
        convolutions).
    """
    nnx = _nnx()
    control, spec = _control(sparsity, radius, penalty, max_error)
    _check_options(ball, steps, step_size, momentum, ramp, targets, eval_batches, search_steps)
    if units not in _UNITS:
        raise ValueError(f"units must be one of {_UNITS}, got {units!r}")
    source = _batch_source(batches)
    stream = _cycled(source)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    layers = _discover_layers(graphdef, (params, rest), next(_cycled(source)))
    _check_mapping_keys(spec, layers, control)
    if not isinstance(activations, (str, type(None))):
        _check_mapping_keys(activations, layers, "activations")
    layer_activations = _activations_for(layers, activations)
    settings = _Settings(
        graphdef,
        control,
        ball,
        units,
        targets,
        step_size,
        momentum,
        estimate_lipschitz,
        steps,
        ramp,
        eval_batches,
        search_steps,
        source,
        stream,
    )
    pretrained_params = params
    records = []
    for layer, activation in zip(layers, layer_activations):
        level = _per_layer(spec, layer, control)
        if level is None:
            continue
        weights, record = _sparsify_layer(
            settings, layer, activation, float(level), (params, pretrained_params, rest)
        )
        params = _set_layer_params(params, layer, weights)
        records.append(record)
    return params, records


class _Settings(NamedTuple):
    graphdef: Any
    control: str
    ball: str
    units: str
    targets: str
    step_size: float
    momentum: float
    estimate_lipschitz: bool
    steps: int
    ramp: float
    eval_batches: int
    search_steps: int
    source: Callable[[], Iterator[Any]]
    stream: Iterator[Any]


def _sparsify_layer(settings: _Settings, layer: _Layer, activation: str, level: float, states):
    """Runs SIS on one layer; ``states = (current params, pretrained params, other state)``."""
    spec = _Spec(
        settings.graphdef,
        layer.path,
        activation,
        _constraint_name(settings.control, settings.ball, settings.units),
        settings.targets,
        float(settings.momentum),
    )
    pretrained = _get_layer_params(states[1], layer)
    lipschitz = 1.0
    if settings.estimate_lipschitz:
        first = next(_first(settings.source, 1))
        lipschitz = float(_curvature(spec, pretrained, pretrained, *states, first))
    rate = jnp.float32(settings.step_size / lipschitz)

    def fit(value):
        schedule = _schedule(
            settings.control,
            value,
            pretrained["kernel"],
            settings.units,
            settings.steps,
            settings.ramp,
        )
        return _fit_layer(spec, schedule, rate, pretrained, states, settings.stream, settings.steps)

    def errors(weights):
        batches = _first(settings.source, settings.eval_batches)
        return _layer_errors(spec, weights, pretrained, states, batches)

    error_before, _ = errors(pretrained)
    if settings.control == "max_error":
        level, weights = _search_sparsity(fit, errors, level, pretrained, settings.search_steps)
    else:
        weights = fit(level)
    error_after, phi_after = errors(weights)
    record = _record(layer, activation, settings.control, level, weights["kernel"])
    return weights, record._replace(
        error_before=error_before,
        error_after=error_after,
        phi_after=phi_after,
        lipschitz=lipschitz,
    )


def _schedule(control: str, value: float, kernel: jax.Array, units: str, steps: int, ramp: float):
    """The control's value at step ``t``: it moves linearly from its no-op value (no zeros,
    the pretrained kernel's l1 norm, no penalty) to ``value`` over the first ``ramp * steps``
    steps, then stays. This continuation keeps each projection close to the current point:
    a hard projection at step 0 would amount to magnitude pruning."""
    ramp_steps = max(1, round(ramp * steps))

    def progress(t: int) -> float:
        return min(1.0, (t + 1) / ramp_steps)

    if control in ("sparsity", "max_error"):
        size = kernel.size if units == "weights" else kernel.shape[-2]
        return lambda t: jnp.asarray(size - round(value * progress(t) * size), jnp.int32)
    if control == "radius":
        start = max(float(jnp.sum(jnp.abs(kernel))), value)
        return lambda t: jnp.asarray(start + (value - start) * progress(t), jnp.float32)
    return lambda t: jnp.asarray(value * progress(t), jnp.float32)


def _first(source: Callable[[], Iterator[Any]], count: int) -> Iterator[Any]:
    for index, batch in enumerate(source()):
        if index == count:
            return
        yield jax.tree.map(jnp.asarray, batch)


def _search_sparsity(fit, errors, tolerance, pretrained, search_steps):
    """Bisection for the largest fraction of zeros whose relative error is <= tolerance."""
    feasible, infeasible, best = 0.0, 1.0, pretrained
    for _ in range(search_steps):
        trial = (feasible + infeasible) / 2
        weights = fit(trial)
        if errors(weights)[0] <= tolerance:
            feasible, best = trial, weights
        else:
            infeasible = trial
    return feasible, best


def _record(layer, activation, control, level, kernel) -> SISLayerRecord:
    zeros = np.asarray(kernel) == 0
    input_axes = tuple(a for a in range(zeros.ndim) if a != zeros.ndim - 2)
    return SISLayerRecord(
        path=layer.name,
        kind=layer.kind,
        activation=activation,
        kernel_shape=layer.kernel_shape,
        control=control,
        level=float(level),
        sparsity=float(zeros.mean()),
        zero_input_units=int(zeros.all(axis=input_axes).sum()),
        zero_output_units=int(zeros.all(axis=tuple(range(zeros.ndim - 1))).sum()),
        error_before=math.nan,
        error_after=math.nan,
        phi_after=math.nan,
        lipschitz=math.nan,
    )
