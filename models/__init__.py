"""Classifiers: specs that describe them, the architectures they name, their
preprocessing, and a pure-torch training loop. No file I/O (checkpoints live in
``storage.checkpoints``).
"""

from models.preprocess import denormalize, model_view, preprocess
from models.registry import (
    ModelError,
    ModelSpec,
    available_archs,
    build_model,
    check_input_size,
    fashion_mnist_spec,
    imagenet_spec,
)
from models.training import evaluate, predict, resolve_device, train_classifier

__all__ = [
    "ModelError",
    "ModelSpec",
    "available_archs",
    "build_model",
    "check_input_size",
    "denormalize",
    "evaluate",
    "fashion_mnist_spec",
    "imagenet_spec",
    "model_view",
    "predict",
    "preprocess",
    "resolve_device",
    "train_classifier",
]
