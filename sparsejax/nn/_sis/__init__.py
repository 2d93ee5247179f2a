r"""SIS: post-training sparsification by subdifferential inclusion (reconstructed).

The method of Verma & Pesquet (2021).

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
power iteration on each of the first ``eval_batches`` batches (their maximum, times a safety
factor 1.1 since the power method approaches the eigenvalue from below), at most 1. The steps
are stochastic: a direction that one batch sees and the next does not keeps moving under
momentum, by up to :math:`1/(1-\beta)` times its step, so with this :math:`L` the iterates
can diverge (standard-normal 784-d inputs, batch 64). A fit that ends non-finite or worse
than the zero kernel (relative error above 1) is therefore redone with :math:`L/(1-\beta)`,
then with :math:`L = 1`, which bounds the curvature of every batch (each term's Gauss-Newton
matrix has norm :math:`\|\tilde x_k\|^2/\nu_k = 1`); ``estimate_lipschitz=False`` uses
:math:`L = 1` at once (the plain normalisation of DESIGN.md). A sparsified layer with
non-finite weights raises ValueError naming the layer.

:math:`P_C` is the projection onto the sparsity constraint
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

from sparsejax.nn._sis._driver import sis_layers, sis_sparsify
from sparsejax.nn._sis._fitting import SISLayerRecord
from sparsejax.nn._sis._inclusion import ACTIVATIONS, inclusion_residual, project_inclusion_set

__all__ = [
    "ACTIVATIONS",
    "SISLayerRecord",
    "inclusion_residual",
    "project_inclusion_set",
    "sis_layers",
    "sis_sparsify",
]
