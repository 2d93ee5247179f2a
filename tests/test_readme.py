"""The README (and the docs' Markdown pages) tell the truth: code runs as pasted, commands exist.

* Every ```python block of README.md and docs/*.md runs, on its own, in a fresh interpreter (a
  subprocess started in an empty directory with only the repository on ``PYTHONPATH``), so a
  block that leans on a name defined in another block, or on a file of the repository, fails
  here as it would for a user.
* Every command of a ```bash block, and every inline ``python ...`` command, names a module or
  script that exists and only flags that its ``--help`` lists; every ``.[extra]`` it installs
  is an extra of pyproject.toml. No long job runs: only ``--help``.
* Every relative link and every repository path in backquotes exists.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
# The narrative pages (their ``{code-cell}`` cells are executed by the docs build, .ci/docs)
# and the reproductions, whose commands must run as written too.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "RESULTS.md"]

# A fence opens and closes at the same indentation (blocks inside list items are indented).
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def fenced_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """Returns ``(line, code)`` of every fenced block of ``lang``; ``line`` is the fence's."""
    found = []
    for match in FENCE.finditer(text):
        if match.group("lang") == lang:
            line = text.count("\n", 0, match.start()) + 1
            found.append((line, textwrap.dedent(match.group("body"))))
    return found


def _name(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


PYTHON_BLOCKS = [
    (_name(page), line, code)
    for page in PAGES
    for line, code in fenced_blocks(page.read_text(), "python")
]


def run_python(code: str, cwd: pathlib.Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_python_fence_is_found():
    # The extraction must not miss a block (e.g. one whose fence the pattern does not parse).
    for page in PAGES:
        text = page.read_text()
        assert len(fenced_blocks(text, "python")) == len(re.findall(r"^ *```python", text, re.M))
    assert len(fenced_blocks(TEXT, "python")) >= 10


@pytest.mark.parametrize(
    "page, line, code", PYTHON_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in PYTHON_BLOCKS]
)
def test_python_block_runs_as_pasted(page, line, code, tmp_path):
    # Blank lines in front make the traceback's line numbers the page's.
    result = run_python("\n" * line + code, tmp_path)
    if result.returncode != 0:
        pytest.fail(
            f"{page} line {line}: the ```python block exits with {result.returncode} "
            f"(traceback line numbers are {page}'s):\n{result.stderr[-4000:]}"
        )


def test_a_failing_block_is_reported_with_its_readme_line(tmp_path):
    # The check above is only as good as the failure it reports: a NameError of a block that
    # starts at line 40 must show up at README line 41 (its first line of code).
    result = run_python("\n" * 40 + "undefined_name\n", tmp_path)
    assert result.returncode != 0
    assert "line 41" in result.stderr and "NameError" in result.stderr


def _commands(text: str) -> list[tuple[int, str]]:
    """``(line, command)`` for each command of the bash blocks and each inline ``python`` one."""
    found = []
    for line, block in fenced_blocks(text, "bash"):
        block = re.sub(r"\\\n\s*", " ", block)  # join continuation lines
        for offset, row in enumerate(block.splitlines()):
            row = row.split("#", 1)[0]
            for command in re.split(r"&&|;|\|\|", row):
                if command.strip():
                    found.append((line + 1 + offset, command.strip()))
    for match in re.finditer(r"`(python3? [^`]+)`", text):
        found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


COMMANDS = [
    (f"{_name(page)}:{line}", cmd) for page in PAGES for line, cmd in _commands(page.read_text())
]


def _target(command: str) -> tuple[str, str] | None:
    """``("module", name)`` or ``("script", path)`` of a ``python`` command, else None."""
    words = command.split()
    if not words or words[0] not in ("python", "python3"):
        return None
    if words[1:2] == ["-m"]:
        return ("module", words[2])
    if words[1].endswith(".py"):
        return ("script", words[1])
    return None


def _help_flags(kind: str, name: str) -> set[str]:
    argv = ["-m", name] if kind == "module" else [str(ROOT / name)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, *argv, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"python {' '.join(argv)} --help fails:\n{result.stderr}"
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", result.stdout))


def test_readme_has_commands_to_check():
    targets = {_target(command) for _, command in COMMANDS} - {None}
    assert ("module", "experiments.train") in targets
    assert {("module", "pytest"), ("module", "venv")} <= targets


def _targets_with_flags() -> dict[tuple[str, str], list[tuple[int, str]]]:
    wanted: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for where, command in COMMANDS:
        target = _target(command)
        if target is None:
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", command):
            wanted.setdefault(target, []).append((where, flag))
    return wanted


@pytest.mark.parametrize("target", sorted(_targets_with_flags()), ids=lambda t: t[1])
def test_command_flags_exist(target):
    known = _help_flags(*target)
    missing = [(where, flag) for where, flag in _targets_with_flags()[target] if flag not in known]
    assert not missing, f"the docs use flags that `{target[1]} --help` does not list: {missing}"


def test_commands_name_existing_modules_and_scripts():
    for where, command in COMMANDS:
        target = _target(command)
        if target is None:
            continue
        kind, name = target
        if kind == "script":
            exists = (ROOT / name).is_file()
        elif (ROOT / name.split(".")[0]).is_dir():  # the repository's own: experiments, ...
            path = ROOT / name.replace(".", "/")
            exists = path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
        else:  # an installed tool (pytest, sphinx, venv)
            exists = importlib.util.find_spec(name) is not None
        assert exists, f"{where}: `{command}` names {name}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_installed_extras_exist(page):
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    text = page.read_text()
    used = re.findall(r"\.\[([\w,-]+)\]", text) + re.findall(r"sparsejax\[([\w,-]+)\]", text)
    for names in used:
        assert set(names.split(",")) <= extras, (
            f"{_name(page)} installs extras {names}: not {extras}"
        )


# Paths the pages name as outputs of a build they describe (git-ignored, absent from a clone).
BUILT = ("docs/_build/",)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_and_paths_exist(page):
    # Links are relative to the page; a path in backquotes is relative to the repository root.
    text = page.read_text()
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))  # code is not a link: `f(x)[0](x)`
    links = [
        link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose) if "://" not in link
    ]
    top = {p.name for p in ROOT.iterdir()}
    paths = [
        token
        for token in re.findall(r"`([\w.-]+(?:/[\w.-]+)+/?)`", text)
        if token.split("/", 1)[0] in top and not token.startswith(BUILT)
    ]
    missing = [link for link in links if not (page.parent / link).exists()]
    missing += [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"{_name(page)} points at paths that do not exist: {missing}"
