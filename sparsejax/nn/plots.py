"""Figures in the style of Guyard & Barlaud (2020), written to files (PNG, or any format
matplotlib knows).

Every function takes plain data (mappings of arrays or numbers, or :class:`ModelReport`
objects), writes one figure and returns its path. matplotlib is imported lazily and only its
object-oriented API is used (``matplotlib.figure.Figure``, rendered by Agg), so the global
backend and pyplot state of the caller are left alone.

* :func:`plot_weight_distributions`: density of the weight values of one layer, one curve per
  method (Guyard & Barlaud (2020) Fig. 1: Gaussian shape for Adam, Laplacian for the projections);
* :func:`plot_layer_density`: fraction of nonzero weights per layer, one bar per method (the
  per-layer view of Guyard & Barlaud (2020) Fig. 6);
* :func:`plot_kernel_patterns`: the sparsity pattern of kernels as images
  (Guyard & Barlaud (2020) Fig. 2);
* :func:`plot_against_eta`: accuracy and MACCs against the radius ``eta`` (Figs. 3-5, 7);
* :func:`plot_accuracy_vs_maccs`: accuracy against MACCs, with reference points (e.g. the
  paper's table rows) drawn beside the measured ones.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "eta.png"
>>> path = plot_against_eta({"PGL11": {"eta": [100, 400], "accuracy": [80.0, 87.5],
...                                    "maccs": [1e5, 2.67e5]}}, out)
>>> path.read_bytes()[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparsejax import _optional

__all__ = [
    "plot_accuracy_vs_maccs",
    "plot_against_eta",
    "plot_kernel_patterns",
    "plot_layer_density",
    "plot_weight_distributions",
]

# Most weights a density estimate uses (a fixed-seed subsample beyond that).
_KDE_SAMPLES = 20_000


def _figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float] = (6.4, 4.2)):
    matplotlib_figure = _optional.require("matplotlib.figure", "sparsejax.plots", "plots")
    figure = matplotlib_figure.Figure(figsize=size, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _save(figure: Any, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _check_mapping(value: Any, name: str) -> None:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{name} must be a non-empty mapping, got {value!r:.80}")


def _gaussian_kde(values: np.ndarray, grid_size: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Parzen (Gaussian kernel) density with Silverman's bandwidth (the standard deviation
    alone when the interquartile range is 0)."""
    if values.size > _KDE_SAMPLES:
        values = np.random.default_rng(0).choice(values, _KDE_SAMPLES, replace=False)
    iqr = np.subtract(*np.percentile(values, [75, 25]))
    spread = min(np.std(values), iqr / 1.34) if iqr > 0 else np.std(values)
    scale = max(np.max(np.abs(values)), 1e-12)
    bandwidth = max(0.9 * spread * values.size ** (-0.2), 1e-3 * scale)
    grid = np.linspace(values.min() - 3 * bandwidth, values.max() + 3 * bandwidth, grid_size)
    density = np.zeros_like(grid)
    for chunk in np.array_split(values, max(1, values.size // 2000)):
        density += np.exp(-0.5 * ((grid[:, None] - chunk[None, :]) / bandwidth) ** 2).sum(1)
    return grid, density / (values.size * bandwidth * np.sqrt(2 * np.pi))


def plot_weight_distributions(
    weights: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    exclude_zeros: bool = True,
    title: str | None = None,
) -> pathlib.Path:
    """Density of the weight values of one layer under several methods
    (Guyard & Barlaud (2020) Fig. 1).

    A Parzen estimate with a Gaussian kernel and Silverman's bandwidth
    :math:`h = 0.9 \\min(\\sigma, \\mathrm{IQR}/1.34)\\, n^{-1/5}`.

    Args:
      weights: ``{method: array}``, e.g. the ``conv2`` kernel after each optimiser.
      path: the file to write.
      exclude_zeros: leave exact zeros out (a projection's spike at 0 would hide the shape);
        the legend gives each method's fraction of zeros.
      title: the figure title.

    Returns:
      The path written.

    Raises:
      ValueError: for an empty mapping or a method without (nonzero) weights.
    """
    _check_mapping(weights, "weights")
    figure, axes = _figure()
    axis = axes[0, 0]
    for method, array in weights.items():
        values = np.asarray(array, np.float64).ravel()
        zeros = np.mean(values == 0) if values.size else 0.0
        values = values[values != 0] if exclude_zeros else values
        if values.size == 0:
            raise ValueError(f"weights[{method!r}] has no values to estimate a density from")
        axis.plot(*_gaussian_kde(values), label=f"{method} ({100 * zeros:.0f}% zeros)")
    axis.set(xlabel="weight value", ylabel="density", title=title or "Weight distribution")
    axis.legend()
    return _save(figure, path)


def _densities(entry: Any, method: str) -> dict[str, float]:
    if hasattr(entry, "layers"):  # a ModelReport
        return {row.name: 1.0 - row.sparsity for row in entry.layers if row.kind != "other"}
    if isinstance(entry, Mapping) and entry:
        return {str(name): float(value) for name, value in entry.items()}
    raise ValueError(
        f"densities[{method!r}] must be a ModelReport or a non-empty {{layer: density}} "
        f"mapping, got {entry!r:.80}"
    )


def plot_layer_density(
    densities: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> pathlib.Path:
    """Fraction of nonzero weights per layer, one bar per method.

    Args:
      densities: ``{method: {layer: density}}`` with densities in ``[0, 1]``, or
        ``{method: ModelReport}`` (density ``1 - sparsity`` of each layer's parameters).
      path: the file to write.
      title: the figure title.

    Returns:
      The path written.

    Raises:
      ValueError: for an empty mapping or entries of the wrong kind.
    """
    _check_mapping(densities, "densities")
    table = {method: _densities(entry, method) for method, entry in densities.items()}
    layers = list(dict.fromkeys(name for rows in table.values() for name in rows))
    figure, axes = _figure(size=(max(6.4, 0.8 * len(layers) * len(table)), 4.2))
    axis = axes[0, 0]
    width = 0.8 / len(table)
    positions = np.arange(len(layers))
    for offset, (method, rows) in enumerate(table.items()):
        heights = [100.0 * rows.get(name, np.nan) for name in layers]
        axis.bar(positions + (offset - (len(table) - 1) / 2) * width, heights, width, label=method)
    axis.set_xticks(positions, layers, rotation=45 if len(layers) > 6 else 0, ha="right")
    axis.set(ylabel="nonzero weights (%)", title=title or "Weight density per layer")
    axis.set_yscale("log")
    axis.legend()
    return _save(figure, path)


def _kernel_image(kernel: np.ndarray) -> np.ndarray:
    """A Dense kernel as is (inputs are rows); a conv kernel ``(kh, kw, in, out)`` as an
    ``(in * kh, out * kw)`` mosaic of its ``kh x kw`` slices."""
    if kernel.ndim == 2:
        return kernel
    if kernel.ndim != 4:
        raise ValueError(f"kernels must be 2-D (Dense) or 4-D (Conv), got shape {kernel.shape}")
    height, width, inputs, outputs = kernel.shape
    return kernel.transpose(2, 0, 3, 1).reshape(inputs * height, outputs * width)


def plot_kernel_patterns(
    kernels: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    binary: bool = False,
    title: str | None = None,
) -> pathlib.Path:
    """Kernels as images, zeros in white (Guyard & Barlaud (2020) Fig. 2).

    Rows are input units (a zero row is a removed input neuron or channel), columns output
    units; conv kernels are drawn as a mosaic of their ``kh x kw`` slices.

    Args:
      kernels: ``{label: kernel}``, e.g. ``{"fc1 Adam": k1, "fc1 PGL11": k2}``.
      path: the file to write.
      binary: draw the support (nonzero or not) instead of ``|w|``.
      title: the figure title.

    Returns:
      The path written.

    Raises:
      ValueError: for an empty mapping or a kernel that is neither 2-D nor 4-D.
    """
    _check_mapping(kernels, "kernels")
    images = {label: _kernel_image(np.asarray(k, np.float64)) for label, k in kernels.items()}
    figure, axes = _figure(1, len(images), size=(3.6 * len(images), 4.0))
    for axis, (label, image) in zip(axes[0], images.items()):
        shown = (image != 0).astype(float) if binary else np.abs(image)
        # Fixed limits: a kernel without zeros (a constant support image) must draw black.
        limits = {"vmin": 0.0, "vmax": 1.0} if binary else {}
        axis.imshow(shown, cmap="Greys", aspect="auto", interpolation="nearest", **limits)
        kernel = np.asarray(kernels[label])
        live = np.any(kernel != 0, axis=(*range(kernel.ndim - 2), kernel.ndim - 1))
        axis.set(title=f"{label}\n{int(np.sum(~live))}/{live.size} zero input groups")
        unit = "channel" if kernel.ndim == 4 else "unit"
        axis.set(xlabel=f"output {unit}", ylabel=f"input {unit}")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _series(entry: Any, keys: Sequence[str], owner: str) -> dict[str, np.ndarray]:
    if not isinstance(entry, Mapping) or any(key not in entry for key in keys):
        raise ValueError(f"{owner} must be a mapping with keys {list(keys)}, got {entry!r:.80}")
    series = {key: np.asarray(entry[key], np.float64).ravel() for key in keys}
    lengths = {key: len(value) for key, value in series.items()}
    if len(set(lengths.values())) != 1 or not lengths[keys[0]]:
        raise ValueError(f"{owner} needs non-empty sequences of equal length, got {lengths}")
    return series


def plot_against_eta(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    *,
    baseline: Mapping[str, float] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Accuracy (top) and MACCs (bottom) against the radius ``eta``
    (Guyard & Barlaud (2020) Figs. 3-5, 7).

    Args:
      curves: ``{method: {"eta": [...], "accuracy": [...], "maccs": [...]}}``.
      path: the file to write.
      baseline: ``{"accuracy": a, "maccs": m}`` of the dense model, drawn as dashed lines.
      title: the figure title.

    Returns:
      The path written.

    Raises:
      ValueError: for an empty mapping, missing keys or sequences of unequal length.
    """
    _check_mapping(curves, "curves")
    figure, axes = _figure(2, 1, size=(6.4, 6.4))
    for method, entry in curves.items():
        series = _series(entry, ("eta", "accuracy", "maccs"), f"curves[{method!r}]")
        order = np.argsort(series["eta"])
        for axis, key in zip(axes[:, 0], ("accuracy", "maccs")):
            axis.plot(series["eta"][order], series[key][order], marker="o", label=method)
    for axis, key, label in zip(axes[:, 0], ("accuracy", "maccs"), ("accuracy (%)", "MACCs")):
        if baseline is not None and key in baseline:
            axis.axhline(baseline[key], color="grey", linestyle="--", label="dense baseline")
        axis.set(xlabel="eta", ylabel=label)
        axis.set_xscale("log")
        axis.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_accuracy_vs_maccs(
    points: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    *,
    reference: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Accuracy against MACCs; measured methods as lines, reference points as crosses.

    Args:
      points: ``{method: {"maccs": [...], "accuracy": [...]}}`` (MACCs in any unit, e.g.
        percent of the dense model; the axis is labelled "MACCs").
      path: the file to write.
      reference: the same layout for published figures (e.g. Guyard & Barlaud (2020) Table IV).
      title: the figure title.

    Returns:
      The path written.

    Raises:
      ValueError: for an empty mapping, missing keys or sequences of unequal length.
    """
    _check_mapping(points, "points")
    figure, axes = _figure()
    axis = axes[0, 0]
    for method, entry in points.items():
        series = _series(entry, ("maccs", "accuracy"), f"points[{method!r}]")
        order = np.argsort(series["maccs"])
        axis.plot(series["maccs"][order], series["accuracy"][order], marker="o", label=method)
    for label, entry in (reference or {}).items():
        series = _series(entry, ("maccs", "accuracy"), f"reference[{label!r}]")
        axis.scatter(series["maccs"], series["accuracy"], marker="x", s=60, label=label)
    axis.set(xlabel="MACCs", ylabel="accuracy (%)", title=title or "Accuracy against MACCs")
    axis.legend()
    return _save(figure, path)
