r"""Exact and bi-level projections onto sparsity-inducing balls.

Pure, jittable array functions (no Optax, no Flax): layer 1 of sparsejax. Every function
computes in float32 (float64 for float64 input) and returns the input dtype; it returns its
input unchanged when the input is already inside the ball, zeros at radius 0, NaN for a
problem that contains a NaN, and has finite gradients everywhere (thresholds are
differentiated through the active set they settle on, not through the iterations that find
them).

Edge cases, by choice: a problem holding an ``inf`` (or whose norm overflows the compute
dtype, e.g. float32 entries near 1e38) gives NaN below a finite radius, while at radius
``inf`` every array is inside and comes back as is (:func:`nuclear_ball` gives NaN there too:
the SVD of an infinite matrix is undefined). XLA on CPU computes with subnormal numbers as
zero, so subnormal entries come back as zeros (never outside the ball). An empty array (no
slice, no group, or empty groups) comes back as is. The result of :func:`l1_ball` is inside
the ball up to the rounding of a float sum (about 1e-6 relative in float32) even on rows of
10^7 entries; bfloat16 and float16 results are rounded once more when cast back.

================================  ==================================================  =========
function                          set / operator                                      exact?
================================  ==================================================  =========
:func:`l1_ball`                   :math:`\|w\|_1 \le r` for each 1-D slice            yes
:func:`l1_threshold`              the threshold :math:`\theta` of :func:`l1_ball`     yes
:func:`l21_ball`                  :math:`\sum_i \|w_i\|_2 \le \eta` (group lasso)     yes
:func:`l11_ball`                  bi-level :math:`\ell_{1,1}` (Guyard & Barlaud)      bi-level
:func:`l111_ball`                 nested bi-level :math:`\ell_{1,1,1,\dots}`           bi-level
:func:`bilevel_l1inf_ball`        bi-level :math:`\ell_{1,\infty}`                     bi-level
:func:`l1inf_ball`                :math:`\sum_i \max_j |w_{ij}| \le \eta`             yes
:func:`nuclear_ball`              :math:`\sum_k \sigma_k(W) \le \eta`                 yes
================================  ==================================================  =========

"Exact" means the Euclidean projection :math:`\arg\min_{w \in C} \|w - v\|_2`. The bi-level
operators are not Euclidean projections: they first split the budget between groups, then
project each group onto its share, which is what zeroes whole groups.

A *group* is the slice at one index of ``group_axis``; every other axis belongs to the group.
For a Flax ``Dense`` kernel ``(in, out)`` the default ``group_axis=0`` makes a group of each
input unit, and for a ``Conv`` kernel ``(kh, kw, in, out)`` ``group_axis=-2`` does.

A negative radius given as a concrete number raises ``ValueError``; a traced radius (for
example under :func:`optax.inject_hyperparams` inside ``jit``) cannot be checked, and a
negative traced radius gives an unspecified (finite) result.

References:
  Guyard & Barlaud, *Learning sparse deep neural networks using efficient structured
  projections on convex constraints for green AI*, 2020.
  Duchi, Shalev-Shwartz, Singer & Chandra, *Efficient projections onto the l1-ball for
  learning in high dimensions*, ICML 2008.
  Michelot, *A finite algorithm for finding the projection of a point onto the canonical
  simplex of R^n*, JOTA 1986; Condat, *Fast projection onto the simplex and the l1 ball*,
  Math. Program. 2016.
"""

from __future__ import annotations

from sparsejax.projections._groups import bilevel_l1inf_ball, l11_ball, l21_ball
from sparsejax.projections._l1 import l1_ball, l1_threshold
from sparsejax.projections._l1inf import l1inf_ball
from sparsejax.projections._nested import l111_ball
from sparsejax.projections._nuclear import nuclear_ball

__all__ = [
    "bilevel_l1inf_ball",
    "l1_ball",
    "l1_threshold",
    "l1inf_ball",
    "l11_ball",
    "l21_ball",
    "l111_ball",
    "nuclear_ball",
]
