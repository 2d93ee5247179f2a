"""Float64 NumPy / SciPy references and shared fixtures for the proximal-operator tests."""

from __future__ import annotations

import itertools

import numpy as np

CONV_SHAPE = (3, 2, 4, 5)  # (kh, kw, in, out)
DENSE_SHAPE = (6, 4)  # (in, out)
GROUPINGS = ("weight", "kernel", "input", "output")


# --------------------------------------------------------------------------- references


def reference_groups(shape, group):
    """Index arrays (one boolean mask per group) built by explicit loops over the layout."""
    ndim = len(shape)
    masks = []
    if group == "weight":
        for index in itertools.product(*map(range, shape)):
            mask = np.zeros(shape, bool)
            mask[index] = True
            masks.append(mask)
    elif group == "kernel":
        for i, o in itertools.product(range(shape[-2]), range(shape[-1])):
            mask = np.zeros(shape, bool)
            mask[..., i, o] = True
            masks.append(mask)
    elif group == "input":
        for i in range(shape[ndim - 2]):
            mask = np.zeros(shape, bool)
            mask[..., i, :] = True
            masks.append(mask)
    else:
        for o in range(shape[-1]):
            mask = np.zeros(shape, bool)
            mask[..., o] = True
            masks.append(mask)
    return masks


def reference_l0(z, lam, mu, group):
    """Group L0 prox: keep a group iff zeroing it costs more (sum z^2 / 2mu) than lam."""
    mu = np.broadcast_to(mu, z.shape)
    out = np.zeros_like(z)
    for mask in reference_groups(z.shape, group):
        cost_of_zeroing = np.sum(z[mask] ** 2 / (2 * mu[mask]))
        if cost_of_zeroing > lam:
            out[mask] = z[mask]
    return out


def reference_group_shrink(z, threshold, group):
    """Group soft threshold with a group-constant threshold (block soft thresholding)."""
    out = np.zeros_like(z)
    for mask in reference_groups(z.shape, group):
        norm = np.linalg.norm(z[mask])
        if norm > threshold:
            out[mask] = z[mask] * (1 - threshold / norm)
    return out


def weighted_group_objective(w, z, mu, lam):
    return np.sum((w - z) ** 2 / (2 * mu)) + lam * np.linalg.norm(w)


def between_middle_values(values):
    """A level strictly between the two middle values: about half the groups on each side."""
    ordered = np.sort(np.asarray(values, np.float64))
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2


def random_kernel(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)
