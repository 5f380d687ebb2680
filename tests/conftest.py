"""Shared fixtures: deterministic seeds, real Fashion-MNIST images, a real S3 server, storage roots
to test against, a tiny trained checkpoint and one local Ray per module. Helpers that are not
fixtures live in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import pytest
import torch

from storage.sources import FASHION_MNIST_DIR
from tests.helpers import N_IMAGES, fashion_mnist, tiny_checkpoint
from tests.ray_cluster import short_tmp
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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny trained ResNet-8 checkpoint (tests/helpers.py tiny_checkpoint), one per module."""
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray on loopback for the module, started as the jobs start theirs; the jobs'
    start_ray reuses it."""
    import ray

    from jobs.runtime.cluster import start_local_ray

    torch.set_num_threads(1)
    temp = short_tmp("rj")
    start_local_ray(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


#: Fixtures that start a service or train a model: a test using one belongs to the slow tier.
SLOW_FIXTURES = frozenset({"s3_server", "ray_session", "checkpoint", "reference"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs S3, Ray or a trained model (through the fixtures above, or
    ``storage_root``'s s3 case), so that ``pytest -m "not slow"`` is the fast tier: unit tests only,
    no service and no training. Tests that start such things themselves carry the mark by hand."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or params.get("storage_root") == "s3":
            item.add_marker(pytest.mark.slow)
