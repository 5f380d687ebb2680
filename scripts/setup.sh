#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine, idempotently:
# the Fashion-MNIST data package (the embedded default dataset) and a virtualenv in .venv
# with the project installed (CPU torch pinned by constraints.txt, dev extras for tests).
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

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Reinstall only when the dependency files change.
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (about a minute on a fresh machine)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
