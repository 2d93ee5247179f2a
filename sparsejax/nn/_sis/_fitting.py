"""Fitting one layer with SIS: the jitted steps, the curvature, backtracking, the record."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------
from sparsejax.nn._sis._inclusion import (
    _CONSTRAINTS,
    _constraint_name,
    inclusion_residual,
    project_inclusion_set,
)
from sparsejax.nn._sis._model import (
    _get_layer_params,
    _Layer,
    _layer_apply,
    _run_to_layer,
    _sample_norms,
)

_POWER_ITERATIONS = 50
# The power method approaches the largest eigenvalue from below: this makes it an upper bound.
_LIPSCHITZ_SAFETY = 1.1


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

    # A random start: the all-ones direction can be (nearly) orthogonal to the top eigenvector.
    keys = jax.random.split(jax.random.key(0), len(jax.tree.leaves(weights)))
    leaves, treedef = jax.tree.flatten(weights)
    start = treedef.unflatten(
        [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
    )
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
    if samples == 0:
        raise ValueError("batches: the evaluation batches hold no examples (empty batches)")
    return squared / max(zero_squared, np.finfo(np.float32).tiny), phi_sum / samples


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
      lipschitz: the curvature :math:`L \\le 1` that divided the step size: the safe
        estimate of :func:`sis_sparsify` (1 when ``estimate_lipschitz=False``).
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
    candidates = [1.0]
    if settings.estimate_lipschitz:
        candidates = _lipschitz_candidates(settings, spec, pretrained, states)
    used = [candidates[-1]]

    def errors(weights):
        batches = _first(settings.source, settings.eval_batches)
        return _layer_errors(spec, weights, pretrained, states, batches)

    def fit(value):
        schedule = _schedule(
            settings.control,
            value,
            pretrained["kernel"],
            settings.units,
            settings.steps,
            settings.ramp,
        )
        # Backtracking: a fit worse than the zero kernel (relative error > 1) or non-finite
        # diverged; refit with the next, larger curvature bound (the last one, 1, always holds).
        for lipschitz in candidates:
            rate = jnp.float32(settings.step_size / lipschitz)
            weights = _fit_layer(
                spec, schedule, rate, pretrained, states, settings.stream, settings.steps
            )
            used[0] = lipschitz
            if lipschitz == candidates[-1] or _converged(weights, errors):
                return weights

    error_before, _ = errors(pretrained)
    if settings.control == "max_error":
        level, weights = _search_sparsity(fit, errors, level, pretrained, settings.search_steps)
    else:
        weights = fit(level)
    bad = [name for name, value in weights.items() if not bool(jnp.all(jnp.isfinite(value)))]
    if bad:
        raise ValueError(
            f"SIS produced non-finite {', '.join(bad)} in layer {layer.name!r} "
            f"(lipschitz={used[0]:.4g}, step_size={settings.step_size}, momentum="
            f"{settings.momentum}): check that the batches are finite, or lower step_size or "
            "momentum"
        )
    error_after, phi_after = errors(weights)
    record = _record(layer, activation, settings.control, level, weights["kernel"])
    return weights, record._replace(
        error_before=error_before,
        error_after=error_after,
        phi_after=phi_after,
        lipschitz=used[0],
    )


def _lipschitz_candidates(settings: _Settings, spec: _Spec, pretrained, states) -> list[float]:
    """Increasing curvature bounds for backtracking: the largest per-batch Gauss-Newton
    eigenvalue over the first ``eval_batches`` batches times the safety factor, the same over
    ``1 - momentum`` (safe under stochastic momentum), and 1 (always an upper bound)."""
    batches = _first(settings.source, settings.eval_batches)
    largest = max(float(_curvature(spec, pretrained, pretrained, *states, b)) for b in batches)
    estimate = min(1.0, _LIPSCHITZ_SAFETY * largest)
    momentum_safe = min(1.0, estimate / (1.0 - settings.momentum))
    return sorted({estimate, momentum_safe, 1.0})


def _converged(weights: Mapping[str, jax.Array], errors: Callable) -> bool:
    finite = all(bool(jnp.all(jnp.isfinite(value))) for value in weights.values())
    return finite and errors(weights)[0] <= 1.0


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
