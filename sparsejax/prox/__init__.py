r"""Proximal operators of sparsifying penalties (Formanek & Hadházi).

Pure, jittable array functions. Each operator is the proximal map of a penalty
``lam * H(w)`` taken with a step ``mu`` (per weight for adaptive optimizers) in the metric that
the step defines:

.. math::

   \operatorname{prox}(z) = \operatorname*{argmin}_w \;
   \sum_i \frac{(w_i - z_i)^2}{2 \mu_i} + \lambda\, H(w) .

With a scalar step this is the usual Euclidean prox of ``lam * mu * H``; with per-weight steps
(RMSProp's ``mu_i = lr / (sqrt(nu_i) + eps)``) it is the prox in the optimizer's own metric,
which is what makes the scalar and group rules below consistent with each other:

* :func:`l1` (``H = ||w||_1``, or the group norm ``sum_g ||w_g||_F``): soft thresholding,
  ``sign(z) max(|z| - lam mu, 0)``; for groups, group shrinkage (exact, see :func:`l1`).
* :func:`l0` (``H = ||w||_0``, or the number of nonzero groups): keep ``z_i`` iff
  ``z_i^2 > 2 lam mu_i``; keep a group iff ``sum_{i in g} z_i^2 / mu_i > 2 lam``.
* :func:`prune_smallest`: the paper's "L0 with compression rate": zero the fraction ``rate`` of
  groups with the smallest Frobenius norm (the projection onto "at most k nonzero groups").

The elementwise building blocks :func:`soft_threshold` and :func:`hard_threshold` take the
threshold itself (scalar or per weight); :func:`group_norms` gives the group Frobenius norms.

Groups
------
On Flax kernels (Dense ``(in, out)``, Conv ``(kh, kw, in, out)``), ``group`` is one of:

* ``"weight"``: each element is its own group (unstructured);
* ``"kernel"``: each ``kh x kw`` slice ``x[:, :, i, o]`` (the reduction is over every axis but the
  last two, so a Dense kernel's "kernel" is one weight);
* ``"input"``: everything attached to one input unit/channel ``x[..., i, :]``;
* ``"output"``: everything attached to one output unit/filter ``x[..., o]``.

The paper's "channel-wise" regularization prunes output filters (``"output"``); sparsejax's
structured projections group by input unit by default (``"input"``); both are available.

Reference: A. Formanek, D. Hadhazi, "Compressing convolutional neural networks by L0
regularization", eqs. (9), (11)-(14) and Sec. II.C.
"""

from __future__ import annotations

from sparsejax.prox._groups import GROUPS, check_group, group_axes, group_norms
from sparsejax.prox._penalties import l0, l1
from sparsejax.prox._rate import keep_largest, keep_largest_inputs, prune_smallest
from sparsejax.prox._thresholds import hard_threshold, soft_threshold

__all__ = [
    "GROUPS",
    "check_group",
    "group_axes",
    "group_norms",
    "hard_threshold",
    "keep_largest",
    "keep_largest_inputs",
    "l0",
    "l1",
    "prune_smallest",
    "soft_threshold",
]
