#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine, idempotently:
# the Fashion-MNIST data package (the embedded default dataset) and a virtualenv in .venv
# with the exact versions of requirements.lock (CPU torch, dev extras for tests) and the
# project itself, editable. scripts/lock.sh refreshes the lock (README, "Setup").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing the Fashion-MNIST data package (dataset-fashion-mnist)"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: warning: no apt-get; get the Fashion-MNIST IDX files and set FASHION_MNIST_DIR" >&2
  fi
fi

# The map explorer's browser tests (tests/jobs/test_view_browser.py) drive Debian's headless chromium
# through its chromedriver; without them those tests skip, naming this line.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing chromium and chromium-driver (the map explorer's browser tests)"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: warning: no apt-get; install chromium and chromedriver for the browser tests" >&2
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
# The lock holds one Python's wheels (its "# python:" line). Another Python resolves
# pyproject.toml's ranges instead: it works, but is not the tested set of versions.
lock_python=$(sed -n 's/^# python: *//p' requirements.lock)
venv_python=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mode=lock
[ "$venv_python" = "$lock_python" ] || mode=ranges
# Reinstall only when the dependency files (or the way they are used) change.
stamp=".venv/.installed-$( (cat pyproject.toml constraints.txt requirements.lock; echo "$mode") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -f .venv/.installed-*  # a failed install leaves no stamp: the next run installs again
  if [ "$mode" = lock ]; then
    echo "setup: installing requirements.lock and the project into .venv (2-5 minutes on a fresh machine)"
    # First: the lock must satisfy pyproject.toml's ranges (else it is stale: scripts/lock.sh).
    .venv/bin/python scripts/lockcheck.py check requirements.lock
    # Every package is pinned, so nothing is resolved: --no-deps installs exactly the lock, and
    # pip check below fails if the lock misses or contradicts a requirement. The lock pins
    # setuptools too (torch needs it), which then builds the project without an isolated env.
    "${pip[@]}" install -q --no-deps -c constraints.txt -r requirements.lock
    "${pip[@]}" install -q --no-deps --no-build-isolation -e .
    # An existing .venv may hold packages that the lock no longer lists: remove them.
    .venv/bin/python scripts/lockcheck.py sync requirements.lock
  else
    echo "setup: warning: requirements.lock is for Python $lock_python, .venv has $venv_python;" \
         "resolving pyproject.toml's ranges instead (untested versions)" >&2
    "${pip[@]}" install -q -c constraints.txt -e '.[dev]'
  fi
  "${pip[@]}" check
  touch "$stamp"
fi
# Byte-compile the project (0.3 s; only changed files after the first time). Every job, test and
# Ray worker process imports it, and where PYTHONDONTWRITEBYTECODE is set, as on the build machines,
# Python never writes these files itself: each process compiled the project's modules again (0.08 s
# of CPU per Ray actor, measured beside torch and ray.data's imports; benchmarks/RESULTS.md).
.venv/bin/python -m compileall -q attribution jobs models storage workers tests
