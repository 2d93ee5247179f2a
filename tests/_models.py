"""Small models shared by the tests of several layers."""

import jax
from flax import nnx


class Residual(nnx.Module):
    """``c(h + b2(relu(b(h))))`` with ``h = a(x)``: one residual stream of width 4 (written
    by ``a`` and ``b2``, read by ``b`` and ``c``) and one internal block unit set (width 5)."""

    def __init__(self, rngs):
        self.a = nnx.Linear(3, 4, rngs=rngs)
        self.b = nnx.Linear(4, 5, rngs=rngs)
        self.b2 = nnx.Linear(5, 4, rngs=rngs)
        self.c = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.a(x)
        return self.c(h + self.b2(jax.nn.relu(self.b(h))))
