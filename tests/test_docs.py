"""The documentation site: it builds with ``mkdocs build --strict`` (no broken link or anchor),
every page is in the navigation, and no docstring or page names a file of this repository that
does not exist."""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# A file of this repository as prose names it: under one of its top-level folders (``lore/`` is
# short for ``src/lore/``) with an extension, or a capitalised Markdown file such as ``README.md``.
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|src|benchmarks|tests|scripts|lore)/[\w./-]*\.[A-Za-z]\w*"
                       r"|[A-Z][A-Z0-9_-]*\.md)\b")


def _nav_pages(node) -> list[str]:
    """Every Markdown file the mkdocs ``nav`` names, however deeply nested."""
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    return []


def _docstrings() -> list[tuple[str, str]]:
    """(where, text) of every module, class and function docstring in src/lore."""
    found = []
    for path in sorted((ROOT / "src" / "lore").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    name = getattr(node, "name", "module")
                    found.append((f"{path.relative_to(ROOT)} ({name})", doc))
    return found


@functools.cache
def _markdown_names() -> frozenset[str]:
    """Names of the repository's Markdown files (tracked or new, never ignored ones like .venv)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(Path(line).name for line in listed.splitlines())


def _missing_files(text: str) -> list[str]:
    names = _markdown_names()
    missing = []
    for name in REPO_PATH.findall(text):
        if "/" not in name:  # a bare NAME.md: anywhere in the repository
            if name not in names:
                missing.append(name)
            continue
        path = ROOT / "src" / name if name.startswith("lore/") else ROOT / name
        if not path.exists():
            missing.append(name)
    return missing


def test_the_path_pattern_finds_repository_files():
    assert REPO_PATH.findall("see LORE.md, `src/lore/x.py` and benchmarks/RESULTS.md; lore/models/lore.py.") \
        == ["LORE.md", "src/lore/x.py", "benchmarks/RESULTS.md", "lore/models/lore.py"]
    assert _missing_files("docs/method.md, lore/losses.py, README.md") == []
    assert _missing_files("LORE.md and docs/nothing.md") == ["LORE.md", "docs/nothing.md"]
    # a dataset's own files and folders are not this repository's
    assert REPO_PATH.findall("split_zhou_Flowers.json, images/0001.jpg, RUN/tb/") == []


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages
    assert "method.md" in nav and "api.md" in nav


def test_no_docstring_or_page_names_a_missing_file():
    texts = _docstrings() + [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))
                             for p in sorted(DOCS.rglob("*.md"))]
    missing = [f"{where}: {name}" for where, text in texts for name in _missing_files(text)]
    assert missing == []


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    # the API page is generated from the docstrings, not written by hand
    for text in ("build_model", "load_run", "features", "a run directory written by"):
        assert text in api
    method = (tmp_path / "site" / "method" / "index.html").read_text(encoding="utf-8")
    for anchor in ('id="lin"', 'id="kla"', 'id="prompt-generator"', 'id="l_kp"', 'id="easy-to-hard"'):
        assert anchor in method
