"""requirements.lock against pyproject.toml and .venv, for scripts/setup.sh (stdlib and pip only).

    python scripts/lockcheck.py check requirements.lock   # every range of .[dev] admits the locked version
    python scripts/lockcheck.py sync requirements.lock    # uninstall what the lock does not list
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
KEEP = {"pip", "pathway-attribution"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str) -> dict[str, str]:
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                sys.exit(f"setup: {path}: not an exact pin: {line!r}")
            pins[norm(name.split("[")[0])] = version.strip()
    return pins


def check(pins: dict[str, str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stale = []
    for req in map(Requirement, project["dependencies"] + project["optional-dependencies"]["dev"]):
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(norm(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            stale.append(f"{req} (lock: {version or 'missing'})")
    if stale:
        sys.exit("setup: requirements.lock does not satisfy pyproject.toml: " + "; ".join(stale)
                 + ". Run scripts/lock.sh to refresh it.")


def sync(pins: dict[str, str]) -> None:
    installed = {norm(d.metadata["Name"]) for d in distributions(path=[p for p in sys.path if p])
                 if d.metadata["Name"]}
    extra = sorted(installed - set(pins) - KEEP)
    if extra:
        print("setup: removing packages that requirements.lock does not list:", *extra)
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *extra], check=True)


if __name__ == "__main__":
    command, path = sys.argv[1:3]
    {"check": check, "sync": sync}[command](locked(path))
