"""The API reference that docs/conf.py generates lists every public name exactly once.

The Sphinx build itself (with warnings as errors, executing the tutorials) is `.ci/docs`; this
test needs no Sphinx: it runs the page generator of docs/conf.py into a temporary directory.
"""

import importlib.util
import pathlib
import re

import sparsejax

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = (
    "sparsejax",
    "sparsejax.projections",
    "sparsejax.prox",
    "sparsejax.transforms",
    "sparsejax.nn",
)


def _generate(tmp_path):
    spec = importlib.util.spec_from_file_location("sparsejax_docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)  # also writes docs/api (git-ignored), as a build would
    conf.generate_api_pages(tmp_path)
    return {page.stem: page.read_text() for page in tmp_path.glob("*.rst")}


def _documented(pages):
    """``{(module, name)}`` of every entry of the pages' autosummary tables."""
    entries = set()
    for text in pages.values():
        module = None
        for line in text.splitlines():
            if line.startswith(".. currentmodule:: "):
                module = line.split(":: ", 1)[1]
            elif module and re.fullmatch(r"   [A-Za-z_]\w*", line):
                entries.add((module, line.strip()))
    return entries


def test_every_public_name_has_one_api_entry(tmp_path):
    pages = _generate(tmp_path)
    assert set(MODULES) - {"sparsejax"} <= set(pages) and "index" in pages
    documented = _documented(pages)
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if name.startswith("_") or isinstance(obj, type(sparsejax)):
                continue  # __version__ and the subpackages themselves (their own pages)
            # Documented once, under the shortest public path that holds the same object.
            homes = [m for m in MODULES if getattr(importlib.import_module(m), name, None) is obj]
            assert (homes[0], name) in documented, f"{module_name}.{name} has no API entry"
    names = [name for _, name in documented]
    assert len(names) == len(set(names)), "a name is documented twice"


def test_the_api_pages_are_in_the_toctree(tmp_path):
    pages = _generate(tmp_path)
    for module_name in MODULES:
        assert f"   {module_name}\n" in pages["index"] + "\n"
    assert "api/index" in (ROOT / "docs" / "index.md").read_text()


def _public_objects():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        yield module_name, module
        for name in module.__all__:
            yield f"{module_name}.{name}", getattr(module, name)


def test_docstrings_hold_no_control_characters():
    # A "\t" or "\f" in a non-raw docstring becomes a tab or form feed: "\text" renders as
    # "<TAB>ext" and the Sphinx build fails.
    for where, obj in _public_objects():
        doc = getattr(obj, "__doc__", None) or ""
        bad = sorted({repr(c) for c in doc if ord(c) < 32 and c not in "\n"})
        assert not bad, f"{where}'s docstring holds {', '.join(bad)}"
