"""Memory of weights: the fraction of zeros, the entropy estimate and the zlib size.

Guyard & Barlaud (2020) measure a sparse model's memory by the entropy of its float16 weights;
the zlib size is the same information as a real compressor sees it. Used by the report
(:mod:`sparsejax.nn._metrics`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def sparsity(tree: Any) -> jax.Array:
    """Fraction of exact zeros over every array leaf of a pytree.

    .. math:: s = \\frac{\\#\\{i : w_i = 0\\}}{\\#\\{i\\}}

    Jittable. Pass ``nnx.state(model, nnx.Param)`` or Linen ``variables["params"]``.

    Args:
      tree: a pytree of arrays (or a single array).

    Returns:
      A float32 scalar in ``[0, 1]`` (0 for a tree without elements).

    >>> import jax.numpy as jnp
    >>> float(sparsity({"w": jnp.array([0.0, 1.0, 0.0, 2.0]), "b": jnp.zeros(4)}))
    0.75
    """
    leaves = jax.tree_util.tree_leaves(tree)
    zeros = sum(jnp.sum(jnp.asarray(leaf) == 0) for leaf in leaves)
    size = sum(jnp.size(leaf) for leaf in leaves)
    return jnp.asarray(zeros, jnp.float32) / max(size, 1)


def _float16_symbols(values: Any) -> np.ndarray:
    # Adding +0.0 turns -0.0 into +0.0: a sign on zero carries no information.
    halves = np.asarray(values, np.float32).astype(np.float16).ravel() + np.float16(0.0)
    return halves.view(np.uint16)


def entropy_bits(x: Any) -> float:
    """Shannon entropy, in bits per weight, of weights quantised to float16.

    Each weight is rounded to float16 and its 16-bit pattern is a symbol (``-0`` is counted as
    ``+0``); with ``p_s`` the frequency of symbol ``s``:

    .. math:: H = -\\sum_s p_s \\log_2 p_s

    ``H * x.size / 8`` bytes is Guyard & Barlaud's memory estimate (an ideal entropy coder's output,
    without its table). Computed on the host with NumPy.

    Args:
      x: an array of any shape (or several arrays concatenated by the caller).

    Returns:
      Bits per weight: 0 for a constant array, ``log2(k)`` for ``k`` equiprobable values.

    >>> import numpy as np
    >>> entropy_bits(np.zeros(10)), entropy_bits(np.array([1.0, 2.0, 3.0, 4.0]))
    (0.0, 2.0)
    """
    symbols = _float16_symbols(x)
    if symbols.size == 0:
        return 0.0
    counts = np.bincount(symbols, minlength=1 << 16)
    frequencies = counts[counts > 0] / symbols.size
    return float(max(0.0, -np.sum(frequencies * np.log2(frequencies))))


def compressed_bytes(x: Any) -> int:
    """Size in bytes of a real compressed encoding of the weights ``x``.

    The encoding is ``numpy.packbits(x != 0)`` (the support, one bit per weight) followed by
    the nonzero weights in float16, high bytes first then low bytes (byte planes compress
    better than interleaved bytes), the whole compressed with ``zlib`` at level 9. It can be
    decoded exactly back to the float16 weights given the shape.

    Args:
      x: an array of any shape.

    Returns:
      The length of the compressed bytes.

    >>> import numpy as np
    >>> compressed_bytes(np.zeros(100_000)) < 200
    True
    """
    return len(_encode(x))


def _encode(x: Any) -> bytes:
    halves = np.asarray(x, np.float32).astype(np.float16).ravel()
    nonzero = halves != 0
    # Little-endian float16 -> (high byte, low byte) rows -> high-byte plane, low-byte plane.
    planes = halves[nonzero].view(np.uint8).reshape(-1, 2)[:, ::-1].T
    payload = np.packbits(nonzero).tobytes() + np.ascontiguousarray(planes).tobytes()
    return zlib.compress(payload, 9)


def _memory(arrays: Sequence[np.ndarray]) -> tuple[int, int, float, int]:
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(0)
    size = int(values.size)
    entropy = entropy_bits(values) * size / 8.0
    return size, int(np.sum(values == 0)), entropy, compressed_bytes(values)
