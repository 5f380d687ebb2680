"""Shared fixtures: deterministic seeds, real Fashion-MNIST images, a real S3 server, and storage
roots to test against. Helpers that are not fixtures live in tests/helpers.py."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch

from storage.sources import FASHION_MNIST_DIR
from tests.helpers import N_IMAGES, fashion_mnist
from tests.servers import S3Server, seaweedfs

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fmnist() -> tuple[np.ndarray, np.ndarray]:
    """The first N_IMAGES Fashion-MNIST test images (uint8 [N, 28, 28, 1]) and labels."""
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist")
    return fashion_mnist("test", N_IMAGES)


@pytest.fixture(scope="session")
def fmnist_train() -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist("train", 4000)


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist("test", 400)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    """One SeaweedFS server on loopback for the whole test session."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path) -> tuple[str, dict]:
    """A fresh, empty root URL and its fsspec storage options: a local dir, then s3://."""
    if request.param == "local":
        return str(tmp_path / "root"), {}
    server: S3Server = request.getfixturevalue("s3_server")
    return server.url(f"t-{uuid.uuid4().hex[:12]}"), server.storage_options
