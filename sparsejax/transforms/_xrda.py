r"""Extended regularized dual averaging with an adaptively weighted l1 penalty (Siegel et al.).

xRDA trains a network and prunes it in the same run: a dual-averaging iterate ``z`` collects the
(momentum-averaged) gradient steps and the weights are the soft threshold of ``z`` by an
*accumulated* step ``lam * S_n``. Proximal SGD thresholds by ``lam * s_n``, which shrinks with
the step size, so a zeroed weight comes back as soon as one step pushes it out; xRDA's dead zone
``+-lam * S_n`` widens over training, so pruned weights stay pruned. Adaptive l1 weights, large
for weights that are small relative to the largest of their tensor, do most of the pruning.

Reference: "Training Sparse Neural Networks using Compressed Sensing" (Siegel et al.; Siegel, Chen,
Jin & Xu), Sec. 3, eqs. (3), (5), (10), (12), (13); the update follows the authors' code as
listed in sparsejax's design notes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax.prox import soft_threshold
from sparsejax.transforms import _selection as selection
from sparsejax.transforms._selection import Budget, Where, flat_budgets

ScalarOrSchedule = optax.ScalarOrSchedule  # a number or a callable ``n -> value``

_STRUCTURES = ("weight", "kernel")


class XRDAState(NamedTuple):
    r"""State of :func:`xrda`.

    Attributes:
      count: number of updates done so far (``int32``); the next update is step
        ``n = count + 1`` of the listing.
      z: the dual-averaging iterate (the paper's :math:`\Theta_{n-1/2}`), one array per leaf,
        starting at the initial parameters (``optax.MaskedNode()`` for int/bool leaves, as
        ``v``, ``a`` and ``S``).
      v: the momentum (time-scale average of the gradients plus weight decay), per leaf.
      a: the running average of ``|theta|`` of each penalised leaf (one entry per ``kh x kw``
        kernel with ``structure="kernel"``); ``optax.MaskedNode()`` for unpenalised leaves.
      S: the accumulated, weighted threshold step :math:`S_n` of each penalised leaf (same shape
        as ``a``); the weights are thresholded at ``lam * S``. ``MaskedNode`` where unpenalised.
    """

    count: jax.Array
    z: optax.Updates
    v: optax.Updates
    a: optax.Updates
    S: optax.Updates


def xrda(
    total_steps: int,
    learning_rate: ScalarOrSchedule = 1.0,
    lam: Budget = 1e-6,
    *,
    beta: float = 2e-3,
    momentum_timescale: float = 9.5,
    magnitude_timescale: float = 9.5,
    weight_decay: float = 5e-4,
    alpha: ScalarOrSchedule | None = None,
    structure: str = "weight",
    where: Where = None,
) -> optax.GradientTransformation:
    r"""xRDA with momentum and adaptive l1 weights: sparse training in one pass (Siegel et al.).

    Per parameter leaf, with state :math:`z_0 = \theta_0,\ v_0 = a_0 = S_0 = 0` and step
    :math:`n = 1, 2, \dots`:

    .. math::

        g_n &= \nabla L(\theta_n) + \omega\, \theta_n \\
        a_n &= e^{-s_n/T_b} a_{n-1} + (1 - e^{-s_n/T_b})\, |\theta_n| \\
        w_n &= \frac{\beta + 1}{\beta + a_n / \max a_n}
               \quad (w_n = 1 \text{ where } \max a_n = 0) \\
        S_n &= \alpha_n S_{n-1} + s_n w_n \\
        z_n &= \alpha_n z_{n-1} + (1 - \alpha_n)\, \theta_n - s_n v_n, \qquad
        v_n = e^{-s_n/T} v_{n-1} + (1 - e^{-s_n/T})\, g_n \\
        \theta_{n+1} &= \operatorname{sign}(z_n) \max(|z_n| - \lambda S_n, 0)

    with cosine schedules :math:`s_n = s_0 (1 + \cos(\pi n / N))/2` and
    :math:`\alpha_n = (1 - \cos(\pi n / N))/2` (``n`` is held at ``N`` after ``N`` steps).
    :math:`\alpha = 0` is proximal SGD with momentum, :math:`\alpha = 1` is RDA. The update
    returned is :math:`\theta_{n+1} - \theta_n`, with :math:`\theta_n` read from ``params``, so
    a transformation placed after it (e.g. a projection) acts on the weights the model holds
    and the next step continues from them; ``z`` keeps the unthresholded dual iterate.

    While a weight keeps its sign its step is the proximal-SGD step
    :math:`\theta_n - s_n v_n - \lambda s_n w_n` whatever :math:`\alpha_n` (substitute
    :math:`z_{n-1} = \theta_n + \operatorname{sign}(\theta_n) \lambda S_{n-1}`). The averaging
    only changes how a weight leaves zero or changes sign: its dual ``z`` must first cross the
    dead zone :math:`\pm\lambda S_n`, which widens as :math:`\alpha_n \to 1`. That is what keeps
    pruned weights pruned against gradient noise (Siegel et al., Sec. 3.2).

    Leaves not selected by ``where``/``lam`` (by default everything but ``kernel`` leaves:
    biases, norm scales, embeddings) get the same dual-averaging and momentum update without
    the threshold (:math:`\lambda = 0`, :math:`\theta_{n+1} = z_n`). The paper penalises every
    parameter group; ``where=".*"`` does that. Integer and bool leaves (step counters, flags)
    are not trained: their update passes through unchanged and they carry no state
    (``MaskedNode``); ``where`` selecting one is an error naming it.

    A non-finite gradient makes ``z`` and ``v`` non-finite for good. To skip such steps, wrap
    the transformation: ``optax.apply_if_finite(sparsejax.xrda(...), max_consecutive_errors)``
    drops the update and keeps the previous state whenever an update is not finite, so training
    continues from finite state (the skipped step does not advance the schedules).

    With ``structure="kernel"`` (eq. 13) the adaptive weight is shared by each ``kh x kw``
    kernel of a convolution: ``a`` averages the mean ``|theta|`` of each kernel (all axes but the
    last two of a ``(kh, kw, in, out)`` kernel), so a kernel's weights are pruned together.
    As in the paper, leaves with fewer than three dimensions (Dense kernels) stay weight-wise.

    Where this differs from the paper's text (the listing follows the authors' code):

    * the adaptive weight enters the accumulation, :math:`S_n = \alpha_n S_{n-1} + s_n w_n`
      elementwise, rather than multiplying a scalar :math:`S_n` as eq. (3) with (12) reads;
      the two agree when :math:`w` is constant;
    * eq. (12) writes :math:`s_n` in the backward step; the sentence after it, eq. (10) and
      the code use :math:`S_n`, and so does sparsejax;
    * weight decay :math:`\omega` (default ``5e-4``) is not in the text; the code adds it to
      the gradient before the momentum;
    * eq. (13) divides each kernel's l1 norm by the largest one; the mean used here differs
      by the kernel size, which cancels in the ratio.

    Args:
      total_steps: :math:`N`, the length of the cosine schedules (the number of training
        steps). Required even when both schedules are given, so one call reads the same.
      learning_rate: :math:`s_0`, the initial step size of the cosine schedule (paper: 1.0;
        0.25 for ResNets), or a schedule ``n -> s_n`` called with the 1-based step ``n``
        (``optax.cosine_decay_schedule(s0, total_steps)`` reproduces the default). Under
        ``optax.inject_hyperparams`` the injected value is :math:`s_0` and the cosine still
        applies.
      lam: :math:`\lambda`, the l1 strength (paper: ``1e-6``; ``1.3e-6`` for ResNets): one
        number for every selected leaf or ``{path_pattern: value}`` per layer, see
        :mod:`sparsejax.selection`.
      beta: :math:`\beta > 0`; the weight ranges from 1 (largest ``a``) to
        :math:`1 + 1/\beta` (``a = 0``). Paper: ``2e-3``.
      momentum_timescale: :math:`T > 0`, the momentum is :math:`e^{-s_n/T}`. Paper: 9.5.
      magnitude_timescale: :math:`T_b > 0` of the running ``|theta|`` average. Paper: 9.5.
      weight_decay: :math:`\omega \ge 0`, added to the gradient of every leaf.
      alpha: ``None`` for the cosine from 0 to 1, a constant in ``[0, 1]``, or a schedule
        ``n -> alpha_n``.
      structure: ``"weight"`` (eq. 3) or ``"kernel"`` (eq. 13).
      where: which leaves are penalised (see :mod:`sparsejax.selection`). With
        ``optax.inject_hyperparams`` a callable ``where`` must be listed in ``static_args``.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`XRDAState` (``z`` and ``v``
      for every leaf, ``a`` and ``S`` for every penalised one, per kernel with
      ``structure="kernel"``). It needs ``params`` and turns gradients into the step, so only
      gradient transformations (e.g. clipping) go before it and projections after it.

    Raises:
      ValueError: a hyperparameter out of range (non-positive ``total_steps``, ``beta`` or
        timescale, negative ``learning_rate``, ``lam`` or ``weight_decay``, ``alpha`` outside
        ``[0, 1]``, unknown ``structure``); at ``init``, a ``where``/``lam`` selecting nothing;
        at ``update``, missing ``params``.

    >>> import jax, jax.numpy as jnp, optax
    >>> target = {"kernel": jnp.array([[2.0, 0.05], [-0.03, -1.5]])}
    >>> loss = lambda p: 0.5 * jnp.sum((p["kernel"] - target["kernel"]) ** 2)
    >>> params = {"kernel": jnp.ones((2, 2))}
    >>> tx = xrda(total_steps=50, learning_rate=0.5, lam=0.1, weight_decay=0.0)
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for _ in range(50):
    ...     updates, state = update(jax.grad(loss)(params), state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> print(params["kernel"] != 0)
    [[ True False]
     [False  True]]
    """
    _validate(
        total_steps,
        learning_rate,
        lam,
        beta,
        momentum_timescale,
        magnitude_timescale,
        weight_decay,
        alpha,
        structure,
        where,
    )
    step_size = _step_size_schedule(learning_rate, total_steps)
    averaging = _averaging_schedule(alpha, total_steps)

    def init_fn(params: optax.Params) -> XRDAState:
        thetas, treedef = jax.tree.flatten(params)
        lams = flat_budgets(params, lam, where, name="lam")
        trained = [selection.is_floating(t) for t in thetas]
        masked = optax.MaskedNode()
        magnitudes = [
            jnp.zeros(jnp.shape(_magnitude(t, structure)), jnp.result_type(t))
            if ok and leaf_lam is not None
            else masked
            for t, ok, leaf_lam in zip(thetas, trained, lams, strict=True)
        ]
        return XRDAState(
            count=jnp.zeros([], jnp.int32),
            # a copy, so that donating both params and state to a jitted step is safe; explicit
            # dtypes make the state strongly typed (weak params would retype it: a recompile)
            z=treedef.unflatten(
                [
                    jnp.array(t, jnp.result_type(t), copy=True) if ok else masked
                    for t, ok in zip(thetas, trained)
                ]
            ),
            v=treedef.unflatten(
                [
                    jnp.zeros(jnp.shape(t), jnp.result_type(t)) if ok else masked
                    for t, ok in zip(thetas, trained)
                ]
            ),
            a=treedef.unflatten(magnitudes),
            S=treedef.unflatten(list(magnitudes)),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(selection.NO_PARAMS_MSG)
        thetas, treedef = jax.tree.flatten(params)
        # A flat list aligned with the leaves: None nodes of params are not leaves.
        lams = flat_budgets(params, lam, where, name="lam")
        n = state.count + 1
        s, alpha_n = step_size(n), averaging(n)
        hyper = dict(
            s=s,
            alpha=alpha_n,
            momentum=jnp.exp(-s / momentum_timescale),
            magnitude_decay=jnp.exp(-s / magnitude_timescale),
            weight_decay=weight_decay,
            beta=beta,
            structure=structure,
        )
        columns = zip(
            thetas,
            treedef.flatten_up_to(updates),
            treedef.flatten_up_to(state.z),
            treedef.flatten_up_to(state.v),
            treedef.flatten_up_to(state.a),
            treedef.flatten_up_to(state.S),
            lams,
            strict=True,
        )
        new_updates, z, v, a, big_s = [], [], [], [], []
        for theta, grad, *leaf_state, leaf_lam in columns:
            if not selection.is_floating(theta):  # int/bool leaves pass through untouched
                outs = (grad, *leaf_state)
            else:
                new_theta, *new_state = _leaf_update(theta, grad, *leaf_state, leaf_lam, hyper)
                outs = (new_theta - theta, *new_state)
            for column, out in zip((new_updates, z, v, a, big_s), outs):
                column.append(out)
        new_state = XRDAState(
            optax.safe_increment(state.count), *(treedef.unflatten(c) for c in (z, v, a, big_s))
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _leaf_update(theta, grad, z, v, a, big_s, lam, hyper):
    """One step of the listing for one leaf; returns (theta_new, z, v, a, S)."""
    dtype = theta.dtype
    s, alpha = hyper["s"], hyper["alpha"]
    grad = grad + hyper["weight_decay"] * theta
    v = hyper["momentum"] * v + (1 - hyper["momentum"]) * grad
    z = alpha * z + (1 - alpha) * theta - s * v
    z, v = z.astype(dtype), v.astype(dtype)
    if lam is None:  # static: unpenalised leaves skip the threshold and carry no a, S
        return z, z, v, a, big_s
    decay = hyper["magnitude_decay"]
    a = decay * a + (1 - decay) * _magnitude(theta, hyper["structure"])
    big_s = alpha * big_s + s * adaptive_l1_weight(a, hyper["beta"])
    a, big_s = a.astype(dtype), big_s.astype(dtype)
    return soft_threshold(z, lam * big_s), z, v, a, big_s


def adaptive_l1_weight(magnitude: jax.Array, beta: Any) -> jax.Array:
    r"""The adaptive l1 weight of Siegel et al., eq. (3) (and eq. (13) for per-kernel magnitudes).

    .. math::

        w = \frac{\beta + 1}{\beta + a / \max a}

    It is 1 for the largest entry of the tensor and :math:`1 + 1/\beta` for entries whose
    magnitude is 0; where the whole tensor is 0 the weight is 1.

    Args:
      magnitude: the (averaged) magnitudes ``a >= 0`` of one tensor.
      beta: :math:`\beta > 0`.

    Returns:
      The weights, with the shape of ``magnitude``.

    >>> print(adaptive_l1_weight(jnp.array([4.0, 1.0, 0.0]), 1.0))
    [1.  1.6 2. ]
    """
    largest = jnp.max(magnitude)
    ratio = magnitude / jnp.where(largest > 0, largest, 1)
    return jnp.where(largest > 0, (beta + 1) / (beta + ratio), jnp.ones_like(ratio))


def _magnitude(theta: jax.Array, structure: str) -> jax.Array:
    """``|theta|``, or its mean over each ``kh x kw`` kernel (kept as size-1 axes)."""
    magnitude = jnp.abs(theta)
    if structure == "kernel" and theta.ndim >= 3:
        return jnp.mean(magnitude, axis=tuple(range(theta.ndim - 2)), keepdims=True)
    return magnitude


def _cosine_fraction(n: jax.Array, total_steps: Any) -> jax.Array:
    """``(1 + cos(pi min(n, N) / N)) / 2``: 1 at the start, 0 at step ``N``."""
    progress = jnp.minimum(n, total_steps) / total_steps
    return 0.5 * (1 + jnp.cos(math.pi * progress))


def _step_size_schedule(learning_rate: ScalarOrSchedule, total_steps: Any) -> Callable:
    if callable(learning_rate):
        return learning_rate
    return lambda n: learning_rate * _cosine_fraction(n, total_steps)


def _averaging_schedule(alpha: ScalarOrSchedule | None, total_steps: Any) -> Callable:
    if alpha is None:
        return lambda n: 1 - _cosine_fraction(n, total_steps)
    if callable(alpha):
        return alpha
    return lambda n: jnp.asarray(alpha)


# --------------------------------------------------------------------------- validation


def _concrete(value: Any) -> np.ndarray | None:
    """The value as a NumPy scalar, None when it is traced (cannot be checked), NaN (which every
    range check refuses) when it is not one real number: a list, a string, a bool, an array."""
    if isinstance(value, jax.core.Tracer):
        return None
    number_types = (int, float, np.number, np.ndarray, jax.Array)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, number_types):
        return np.asarray(np.nan)
    array = np.asarray(value)
    return array if array.shape == () and array.dtype.kind in "fiu" else np.asarray(np.nan)


def _check_range(value, name, *, low, low_inclusive=True, high=None):
    array = _concrete(value)
    if array is None:
        return
    ok = np.all(np.isfinite(array)) and np.all(array >= low if low_inclusive else array > low)
    if high is not None:
        ok = ok and np.all(array <= high)
    if not ok:
        bounds = f"{'>=' if low_inclusive else '>'} {low}" + (
            f" and <= {high}" if high is not None else ""
        )
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


def _validate(
    total_steps,
    learning_rate,
    lam,
    beta,
    momentum_timescale,
    magnitude_timescale,
    weight_decay,
    alpha,
    structure,
    where,
):
    steps = _concrete(total_steps)
    if steps is not None and not (
        steps.ndim == 0 and np.isfinite(steps) and steps == np.round(steps) and steps >= 1
    ):
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if not callable(learning_rate):
        _check_range(learning_rate, "learning_rate", low=0)
    selection.check_budget(lam, "lam")
    _check_range(beta, "beta", low=0, low_inclusive=False)
    _check_range(momentum_timescale, "momentum_timescale", low=0, low_inclusive=False)
    _check_range(magnitude_timescale, "magnitude_timescale", low=0, low_inclusive=False)
    _check_range(weight_decay, "weight_decay", low=0)
    if alpha is not None and not callable(alpha):
        _check_range(alpha, "alpha", low=0, high=1)
    if not isinstance(structure, str) or structure not in _STRUCTURES:
        raise ValueError(f"structure must be one of {_STRUCTURES}, got {structure!r}")
    selection.check_where(where)
