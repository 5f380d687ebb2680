"""The test layout: every module of the project's packages has its mirror test module, or says where
its tests are, so that finding a module's tests is one look, not a search.

``<package path>/<name>.py`` is mirrored by ``tests/<package path>/test_<name>.py``; a package's
``__init__.py`` that defines functions or classes by ``tests/<parent path>/test_<package>.py``. A
module whose tests live elsewhere says so in its docstring with a line ``Tested by tests/....py``
(several files may follow, each named in full). Reads files only (AST), imports nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attribution", "models", "storage", "workers", "jobs")

_TESTED_BY = re.compile(r"^\s*Tested by (.+)$", re.MULTILINE)
_TEST_FILE = re.compile(r"tests/[\w/]+\.py")


def modules() -> list[Path]:
    """Every module of the packages, as a path relative to the repository (an __init__.py only when it
    defines something: most hold a docstring and imports)."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "__init__.py" or _defines_something(path):
                found.append(path.relative_to(ROOT))
    return found


def _defines_something(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in tree.body)


def mirror(module: Path) -> Path:
    """The test module that mirrors ``module``."""
    if module.name == "__init__.py":
        return Path("tests", *module.parts[:-2], f"test_{module.parts[-2]}.py")
    return Path("tests", *module.parts[:-1], f"test_{module.stem}.py")


def named_tests(module: Path) -> list[str]:
    """The test files the module's docstring names in its "Tested by" lines."""
    docstring = ast.get_docstring(ast.parse((ROOT / module).read_text(encoding="utf-8"))) or ""
    return [name for line in _TESTED_BY.findall(docstring) for name in _TEST_FILE.findall(line)]


def failing() -> list[str]:
    """Modules with neither a mirror nor a "Tested by" line."""
    return [str(module) for module in modules() if not (ROOT / mirror(module)).exists() and not named_tests(module)]


def test_every_module_has_its_mirror_test_module_or_names_its_tests() -> None:
    missing = sorted(failing())
    assert not missing, ("modules with no tests/<package path>/test_<name>.py and no 'Tested by tests/...py' line in "
                         "their docstring (add the mirror test module, or the line naming where their tests are): "
                         + ", ".join(missing))


def test_the_named_test_modules_exist() -> None:
    named = {str(module): named_tests(module) for module in modules()}
    absent = sorted(f"{module} names {name}" for module, names in named.items() for name in names
                    if not (ROOT / name).is_file())
    assert not absent, "a 'Tested by' line names a test file that does not exist: " + "; ".join(absent)


def test_the_rule_sees_the_packages() -> None:
    """Not vacuous: the walk finds the packages' modules and mirrors a known one and a known package."""
    found = {str(module) for module in modules()}
    assert {"attribution/reduce.py", "storage/sources/__init__.py", "jobs/runtime/cluster.py"} <= found
    assert "jobs/__init__.py" not in found  # an empty package file is no module to test
    assert mirror(Path("jobs/runtime/cluster.py")) == Path("tests/jobs/runtime/test_cluster.py")
    assert mirror(Path("storage/sources/__init__.py")) == Path("tests/storage/test_sources.py")
    assert named_tests(Path("tests/test_layout.py")) == []
