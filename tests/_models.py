"""Small models shared by the tests of several layers."""

import jax
import jax.numpy as jnp
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


class Concat(nnx.Module):
    """``c([relu(a(x)), tanh(b(x))])``: a concatenation of 2 + 3 units read by ``c``."""

    def __init__(self, rngs):
        self.a = nnx.Linear(3, 2, rngs=rngs)
        self.b = nnx.Linear(3, 3, rngs=rngs)
        self.c = nnx.Linear(5, 1, rngs=rngs)

    def __call__(self, x):
        return self.c(jnp.concatenate([jax.nn.relu(self.a(x)), jnp.tanh(self.b(x))], axis=-1))


class ConvResidual(nnx.Module):
    """A ResNet basic block with BatchNorm on a stem, then global average pooling."""

    def __init__(self, rngs):
        self.stem, self.bn0 = nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
        self.c1, self.bn1 = nnx.Conv(4, 6, (3, 3), rngs=rngs), nnx.BatchNorm(6, rngs=rngs)
        self.c2, self.bn2 = nnx.Conv(6, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn0(self.stem(x)))
        h = jax.nn.relu(h + self.bn2(self.c2(jax.nn.relu(self.bn1(self.c1(h))))))
        return self.fc(h.mean(axis=(1, 2)))
