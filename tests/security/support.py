"""Helpers the output and credential security tests share: a real job's main() run in-process,
a snapshot of a folder (nothing may be written by a refusal), the one error line, and a secret
shaped like an AWS one."""

from __future__ import annotations

import importlib
from pathlib import Path

SECRET = "wJalrXUt/nFEMI+K7MDENGbPxRfiCY"  # shaped like an AWS secret: it holds / and +
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime ({} when it does not exist)."""
    if not root.exists():
        return {}
    found = {".": (0, root.stat().st_mtime_ns)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = (path.stat().st_size if path.is_file() else 0, path.stat().st_mtime_ns)
    return found


def run_job(module: str, argv: list[str], capfd) -> tuple[int, str, str]:
    """``python -m jobs.<module> argv`` in-process: (exit status, stdout, stderr)."""
    capfd.readouterr()
    try:
        code = importlib.import_module(f"jobs.{module}").main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    out, err = capfd.readouterr()
    return code, out, err


def refusal(err: str) -> str:
    """The job's one error line (and that there is exactly one). Exit statuses themselves are
    tests/security/test_errors.py's: a refusal here is any non-zero status with that line."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]
