"""Sphinx configuration of the sparsejax documentation.

Build (offline; everything comes from the ``docs`` extra):

    pip install -e ".[docs]"
    python -m sphinx -W -b html docs docs/_build

The API reference is generated at build time from the ``__all__`` of each public module, so a
new public name appears in it without editing these files; each object is documented once,
under the shortest public path (``sparsejax.project_l11`` rather than
``sparsejax.transforms.project_l11``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
# The executed pages run in Jupyter kernels, which inherit this environment: they import the
# checkout that autodoc documents, on the CPU, with matplotlib off screen.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import sparsejax  # noqa: E402

# ``sparsejax.plots`` is an attribute that ``sparsejax.__getattr__`` loads lazily, not an
# importable module: give autodoc the module behind it under its public name.
sys.modules.setdefault("sparsejax.plots", sparsejax.plots)

project = "sparsejax"
author = "the sparsejax authors"
copyright = "2026, the sparsejax authors"
release = sparsejax.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "api/generated/**.md", "**.ipynb_checkpoints", "jupyter_execute"]
templates_path = ["_templates"]

# --- MyST / myst-nb: narrative pages are Markdown, tutorials are executed Markdown notebooks.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_merge_streams = True

# --- autodoc: Google-style docstrings, signatures as written.
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# --- HTML: the theme of the JAX ecosystem, nothing loaded from the network at build time.
html_theme = "sphinx_book_theme"
html_title = f"sparsejax {release}"
html_static_path = []
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
suppress_warnings = ["mystnb.unknown_mime_type"]

# ------------------------------------------------------------------------------------------
# API reference, generated from the public modules.

PUBLIC_MODULES = {
    "sparsejax.projections": "Layer 1: pure projections onto sparsity-inducing balls.",
    "sparsejax.prox": "Layer 1: pure proximal operators.",
    "sparsejax.transforms": "Layer 2: Optax transformations.",
    "sparsejax.nn": "Layer 3: model-level helpers (needs the ``flax`` extra).",
    "sparsejax.plots": "The papers' figures, written to files (needs the ``plots`` extra).",
}


def _module(name: str):
    return importlib.import_module(name)


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:  # no __all__: what the module itself defines without a leading "_"
        names = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", "").startswith(module.__name__)
        ]
    return sorted(name for name in names if not name.startswith("_"))


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _title(text: str) -> str:
    return f"{text}\n{'=' * len(text)}\n"


def _autosummary(module: str, names: list[str]) -> str:
    lines = [f".. currentmodule:: {module}", "", ".. autosummary::", "   :toctree: generated", ""]
    return "\n".join(lines + [f"   {name}" for name in names]) + "\n"


def generate_api_pages(api: pathlib.Path = HERE / "api") -> None:
    """Writes ``api/<module>.rst`` for every public module (run when this file is read)."""
    api.mkdir(exist_ok=True)
    top = {name: getattr(sparsejax, name) for name in sparsejax.__all__}
    top_names = {name for name in top if not inspect.ismodule(top[name]) and name[0] != "_"}
    pages = []
    for module_name, summary in PUBLIC_MODULES.items():
        module = _module(module_name)
        names = _public_names(module)
        own = [n for n in names if n not in top_names or top[n] is not getattr(module, n)]
        reexported = [n for n in names if n not in own]
        text = [_title(module_name), summary, "", f".. automodule:: {module_name}", ""]
        if own:
            text += [_autosummary(module_name, own)]
        if reexported:
            text += [
                "Re-exported as ``sparsejax.<name>`` and documented there:",
                "",
                ", ".join(f":obj:`sparsejax.{n}`" for n in reexported),
                "",
            ]
        _write_if_changed(api / f"{module_name}.rst", "\n".join(text))
        pages.append(module_name)
    # The top level: every re-exported name, grouped by the subpackage that defines it.
    text = [_title("sparsejax"), ".. automodule:: sparsejax", ""]
    text += ["The names most code needs, re-exported from the subpackages below.", ""]
    for module_name in ("sparsejax.transforms", "sparsejax.nn"):
        module = _module(module_name)
        names = [n for n in _public_names(module) if n in top_names]
        if names:
            text += [_title(module_name.split(".")[-1]).replace("=", "-"), ""]
            text += [_autosummary("sparsejax", names)]
    _write_if_changed(api / "sparsejax.rst", "\n".join(text))
    index = [_title("API reference"), ".. toctree::", "   :maxdepth: 1", "", "   sparsejax"]
    index += [f"   {name}" for name in pages]
    _write_if_changed(api / "index.rst", "\n".join(index) + "\n")


generate_api_pages()


def setup(app):
    return {"parallel_read_safe": True}
