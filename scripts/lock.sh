#!/usr/bin/env bash
# Refresh requirements.lock and test against it, in one command:
#   1. resolve '.[dev]' fresh from pyproject.toml's ranges (torch pinned by constraints.txt) in a
#      throwaway venv, and write the exact version of every package it installed to requirements.lock;
#   2. scripts/setup.sh brings .venv to the new lock (the lock's hash is in its stamp);
#   3. run the tests in .venv: the arguments are pytest's, -m "not slow" when none are given.
# Review `git diff requirements.lock` (the drift) and commit it with the code that needs it.
#   scripts/lock.sh                       # lock, set up, pytest -m "not slow"
#   scripts/lock.sh tests/storage -q      # the same with other pytest arguments
#   LOCK_ONLY=1 scripts/lock.sh           # only write requirements.lock
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "lock: resolving .[dev] in a fresh venv (a few minutes)"
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
"$tmp/venv/bin/python" -m pip check
py=$("$tmp/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pipv=$("$tmp/venv/bin/python" -m pip --version | cut -d' ' -f2)
{
  echo "# Exact versions of every package that 'pip install -c constraints.txt -e .[dev]' installs:"
  echo "# what scripts/setup.sh installs and the tests run against. pyproject.toml keeps the ranges"
  echo "# for library users. Do not edit by hand: scripts/lock.sh resolves afresh and rewrites it."
  echo "# Written by scripts/lock.sh on $(date -u +%F) with pip $pipv on $(uname -s) $(uname -m)."
  echo "# python: $py"
  # --all keeps setuptools (torch requires it); pip is the venv's own, not a dependency.
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
    | grep -v -i '^pip=='
} > "$tmp/requirements.lock"
mv "$tmp/requirements.lock" requirements.lock
echo "lock: wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
git diff --stat -- requirements.lock 2>/dev/null || true
[ -n "${LOCK_ONLY:-}" ] && exit 0

./scripts/setup.sh
[ $# -gt 0 ] || set -- -m "not slow"
exec .venv/bin/python -m pytest "$@"
