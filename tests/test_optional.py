"""Optional dependencies: a missing flax or matplotlib is an ImportError naming the extra."""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

import sparsejax
from sparsejax import _optional

FLAX_MODULES = ("flax", "flax.nnx", "flax.linen")


def hide(monkeypatch, *names):
    """Makes ``import name`` fail as if the package were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert _optional.require("math", "x", "y").sqrt(9.0) == 3.0
    hide(monkeypatch, "some_missing_package")
    message = "sparsejax.thing needs some_missing_package: pip install 'sparsejax[extra]'"
    with pytest.raises(ImportError) as info:
        _optional.require("some_missing_package.sub", "sparsejax.thing", "extra")
    assert str(info.value) == message
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize(
    "name, call",
    [
        ("model_report", lambda: sparsejax.model_report(object(), jnp.ones((2, 3)))),
        ("effective_maccs", lambda: sparsejax.effective_maccs(object(), jnp.ones((2, 3)))),
        ("remove_dead_units", lambda: sparsejax.remove_dead_units(object(), jnp.ones((2, 3)))),
        ("sis_sparsify", lambda: sparsejax.sis_sparsify(object(), [jnp.ones((2, 3))])),
        ("sis_layers", lambda: sparsejax.sis_layers(object(), jnp.ones((2, 3)))),
    ],
)
def test_model_helpers_without_flax_name_the_flax_extra(monkeypatch, name, call):
    hide(monkeypatch, *FLAX_MODULES)
    expected = f"sparsejax.{name} needs flax: pip install 'sparsejax[flax]'"
    with pytest.raises(ImportError) as info:
        call()
    assert str(info.value) == expected


def test_plots_without_matplotlib_name_the_plots_extra(monkeypatch, tmp_path):
    hide(monkeypatch, "matplotlib", "matplotlib.figure")
    with pytest.raises(ImportError) as info:
        sparsejax.plots.plot_layer_density({"adam": {"fc": 0.5}}, tmp_path / "f.png")
    assert str(info.value) == "sparsejax.plots needs matplotlib: pip install 'sparsejax[plots]'"


def test_import_sparsejax_works_without_flax_and_matplotlib():
    hidden = (*FLAX_MODULES, "matplotlib", "matplotlib.figure")
    code = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        "import jax.numpy as jnp, sparsejax\n"
        "print(float(jnp.abs(sparsejax.projections.l1_ball(jnp.ones(4), 1.0)).sum()))\n"
        "print(sparsejax.sparsity({'w': jnp.array([0.0, 1.0])}))\n"
        "print(sparsejax.plots.__name__)\n"
    )
    root = str(pathlib.Path(sparsejax.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1.0", "0.5", "sparsejax.nn.plots"]
