"""The docs name only files and modules that exist: a regrouping (issue #25) must not leave a README
line or a design note pointing at a module that moved.

Checked without importing anything (fast, no Ray, no torch): every path rooted at a folder of the
repository (``jobs/runtime/cli.py``), every dotted name rooted at a package (``storage.maps.plan``,
``jobs.mapping.actor_pool.MAX_TASK_BLOCKS``: the module, then the first name after it must be
defined at its top level) and every ``python -m jobs.X`` (a module file).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jobs", "storage", "workers", "attribution", "models", "tests")
FOLDERS = (*PACKAGES, "benchmarks", "scripts", "deploy", "docs")
#: Text files whose paths and module names readers follow.
DOCS = sorted({ROOT / "README.md", ROOT / "cluster.yaml", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "benchmarks").glob("*.md"), *(p for p in (ROOT / "deploy").iterdir() if p.is_file())})

_PATH = re.compile(r"(?<![\w/.$-])((?:%s)/[\w./-]*[\w/])" % "|".join(FOLDERS))
_DOTTED = re.compile(r"(?<![\w/.$-])((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(PACKAGES))
_RUN = re.compile(r"python3? -m ((?:%s)(?:\.\w+)+)" % "|".join(PACKAGES))
#: A dotted name ending in one of these is a file name (``models.pt``), not a module.
_FILE_SUFFIXES = {"py", "md", "json", "yaml", "yml", "csv", "html", "txt", "pt", "sh", "png", "parquet"}


@functools.cache
def top_level_names(module: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (inside if / try blocks too); with a module
    ``__getattr__`` (names loaded lazily) also the string keys of its top-level dicts, where such a
    module lists the names it serves."""
    names: set[str] = set()
    tree = ast.parse(module.read_text(encoding="utf-8"))
    if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body):
        names.update(key.value for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                     and isinstance(node.value, ast.Dict) for key in node.value.keys
                     if isinstance(key, ast.Constant) and isinstance(key.value, str))
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            body.extend(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
                        + [s for h in getattr(node, "handlers", []) for s in h.body])
    return frozenset(names)


def missing_dotted(name: str) -> str | None:
    """Why ``name`` (``pkg.module[.attr...]``) does not resolve, or None when it does."""
    parts = name.split(".")
    if parts[-1] in _FILE_SUFFIXES:
        return None
    for k in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:k])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file() or base.is_dir():
            break
    if k == 1 and len(parts) > 1 and not (ROOT / parts[0] / parts[1]).exists() \
            and parts[1] not in top_level_names(ROOT / parts[0] / "__init__.py"):
        return f"no module {'.'.join(parts[:2])}"
    if k < len(parts) and module.is_file() and parts[k] not in top_level_names(module):
        return f"{'.'.join(parts[:k])} ({module.relative_to(ROOT)}) defines no {parts[k]}"
    return None


def problems(text: str) -> list[str]:
    """Every path or module name in ``text`` that does not exist here, as 'line N: why'."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _PATH.finditer(line):
            path = match.group(1)
            if "<" not in path and not (ROOT / path).exists():
                found.append(f"line {number}: {path} does not exist")
        reported = set()
        for match in _DOTTED.finditer(line):
            why = missing_dotted(match.group(1))
            if why:
                reported.add(match.group(1))
                found.append(f"line {number}: {match.group(1)}: {why}")
        for match in _RUN.finditer(line):
            if match.group(1) in reported:
                continue
            module = ROOT.joinpath(*match.group(1).split("."))
            if not module.with_suffix(".py").is_file() and not (module / "__main__.py").is_file():
                found.append(f"line {number}: python -m {match.group(1)}: no such command module")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_names_only_what_exists(doc: Path) -> None:
    found = problems(doc.read_text(encoding="utf-8"))
    assert not found, (f"{doc.relative_to(ROOT)} names files or modules that do not exist (moved? docs/design.md "
                       "§3 says where things live now); fix the doc:\n  " + "\n  ".join(found))


def test_the_check_sees_the_docs_references() -> None:
    """The patterns match what the docs write, so a passing check means something."""
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in DOCS)
    assert len(_PATH.findall(text)) >= 50
    assert len(_DOTTED.findall(text)) >= 50
    assert len(_RUN.findall(text)) >= 20


def test_the_check_catches_moved_and_missing_names() -> None:
    """Names from before the regrouping, and a name a module lacks, are reported; current ones are not."""
    old = ("`jobs/cli.py`, `storage/maps.py`, jobs.actor_pool, storage.location.Location, "
           "storage.maps.MapStore, storage.maps.reader.no_such_reader, python -m jobs.no_such_job")
    found = problems(old)
    assert len(found) == 7, found
    assert "jobs/cli.py does not exist" in found[0]
    assert "no module jobs.actor_pool" in found[2]
    assert "storage.maps.reader (storage/maps/reader.py) defines no no_such_reader" in found[5]
    current = ("`jobs/runtime/cli.py`, storage/maps/writer.py, jobs.mapping.actor_pool.MAX_TASK_BLOCKS, "
               "storage.io.location.Location, storage.MapStore, models.ModelSpec, python -m jobs.attribute, "
               "outputs/maps/x, models/weights/resnet8-fashion-mnist.pt, `zarr/<method>/`")
    assert problems(current) == []
