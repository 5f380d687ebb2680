"""Classifiers: specs that describe them, the architectures they name, their
preprocessing, and a pure-torch training loop. No file I/O (checkpoints live in
``storage.checkpoints``).

The names below load their module (and torch) when first used, so a torch-free module such as
:mod:`models.fashion_mnist` can be imported by torch-free readers (storage.sources, jobs.view).
``preprocess`` is not among them: it is also the name of its module, which importing
``models.preprocess`` binds here (``from models.preprocess import preprocess``).

Tested by tests/models/test_fashion_mnist.py.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "denormalize": "models.preprocess", "model_view": "models.preprocess",
    "ModelError": "models.registry", "ModelSpec": "models.registry", "available_archs": "models.registry",
    "build_model": "models.registry", "check_input_size": "models.registry",
    "fashion_mnist_spec": "models.registry", "imagenet_spec": "models.registry",
    "evaluate": "models.training", "predict": "models.training", "resolve_device": "models.training",
    "train_classifier": "models.training",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``models.X`` for the names above: loaded from its module on first use, then kept here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
