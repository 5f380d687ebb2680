"""Real Fashion-MNIST images for the evaluation tests (the Debian package's IDX files)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.sources import load_arrays, open_source


def fashion_mnist(split: str, count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images [N, 28, 28, 1] and their labels, from ``start`` in the split."""
    source = open_source("fashion-mnist", split=split)
    images, labels, _ = load_arrays(source, source.list()[start:start + count])
    return images, labels


@pytest.fixture(scope="session")
def fmnist_train() -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist("train", 4000)


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist("test", 400)
