"""Fixtures shared by the job tests: a tiny trained checkpoint and one local Ray per module."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.helpers import tiny_checkpoint
from tests.ray_cluster import short_tmp


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray on loopback for the module; the jobs' start_ray reuses it."""
    import ray

    torch.set_num_threads(1)
    temp = short_tmp("rj")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
