"""Tests of sparsejax.plots: every figure is written as a non-empty PNG; the density estimate
matches scipy's Gaussian KDE at the same bandwidth; conv kernels tile as documented; bad data
raises ValueError."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from sparsejax import plots
from sparsejax.nn import _metrics as metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_every_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    adam = rng.standard_normal((20, 10, 5, 5)).transpose(2, 3, 0, 1)
    projected = adam * (rng.random((1, 1, 20, 1)) < 0.3)
    model = nnx.Sequential(nnx.Linear(6, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    report = metrics.model_report(model, jnp.ones((1, 6)))
    written = [
        plots.plot_weight_distributions(
            {"Adam": adam, "PGL11": projected}, tmp_path / "fig1.png", exclude_zeros=False
        ),
        plots.plot_layer_density(
            {"Adam": report, "PGL11": {"layers/0": 0.05, "layers/1": 0.5}}, tmp_path / "d.png"
        ),
        plots.plot_kernel_patterns(
            {"conv2 Adam": adam, "fc PGL11": projected[0, 0]}, tmp_path / "fig2.png", binary=True
        ),
        plots.plot_against_eta(
            {
                "PGL1": {"eta": [400, 100, 200], "accuracy": [89, 85, 88], "maccs": [2e6] * 3},
                "PGL11": {"eta": [100, 400], "accuracy": [80, 87.5], "maccs": [1e5, 2.7e5]},
            },
            tmp_path / "sub" / "fig5.png",
            baseline={"accuracy": 89.9, "maccs": 2.379e6},
        ),
        plots.plot_accuracy_vs_maccs(
            {"PGL11 (ours)": {"maccs": [6.5, 12.9, 28.0], "accuracy": [66.8, 77.0, 82.9]}},
            tmp_path / "acc.png",
            reference={"Guyard & Barlaud (2020)": {"maccs": [11.2], "accuracy": [87.5]}},
        ),
    ]
    for path in written:
        _assert_png(path)


def test_density_estimate_matches_scipy_gaussian_kde_at_silvermans_bandwidth():
    values = np.random.default_rng(1).laplace(size=3000)
    grid, density = plots._gaussian_kde(values)
    iqr = np.subtract(*np.percentile(values, [75, 25]))
    bandwidth = 0.9 * min(values.std(), iqr / 1.34) * values.size ** (-0.2)
    reference = scipy.stats.gaussian_kde(values, bw_method=bandwidth / values.std(ddof=1))
    np.testing.assert_allclose(density, reference(grid), rtol=1e-8, atol=1e-12)


def test_conv_kernels_tile_as_a_mosaic_of_their_windows():
    kernel = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    image = plots._kernel_image(kernel)
    assert image.shape == (4 * 2, 5 * 3)
    for i in range(4):
        for o in range(5):
            np.testing.assert_array_equal(
                image[2 * i : 2 * i + 2, 3 * o : 3 * o + 3], kernel[..., i, o]
            )


def test_bad_plot_data_raises_value_errors(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        plots.plot_weight_distributions({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="no values"):
        plots.plot_weight_distributions({"x": np.zeros(3)}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="densities"):
        plots.plot_layer_density({"Adam": 3.0}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_kernel_patterns({"k": np.zeros(3)}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="equal length"):
        plots.plot_against_eta({"m": {"eta": [1, 2], "accuracy": [1], "maccs": [1, 2]}}, "a.png")
    with pytest.raises(ValueError, match="keys"):
        plots.plot_accuracy_vs_maccs({"m": {"maccs": [1]}}, tmp_path / "a.png")


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_binary_pattern_of_a_constant_support(tmp_path, fill):
    # A kernel with no zeros is all support (black); an all-zero kernel is all white.
    import matplotlib.image

    path = plots.plot_kernel_patterns({"k": np.full((8, 8), fill)}, tmp_path / "k.png", binary=True)
    pixels = matplotlib.image.imread(path)[..., :3].mean(axis=-1)
    dark = float((pixels < 0.2).mean())
    assert dark > 0.2 if fill else dark < 0.05
