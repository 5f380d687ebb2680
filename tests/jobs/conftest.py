"""Fixtures shared by the job tests: a tiny trained checkpoint, one local Ray per module, and the
undisturbed attribute job that fault tests compare their bytes with."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.helpers import tiny_checkpoint
from tests.jobs.attribute_support import FM
from tests.ray_cluster import short_tmp


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray on loopback for the module; the jobs' start_ray reuses it."""
    import ray

    from jobs.cluster import start_local_ray

    torch.set_num_threads(1)
    temp = short_tmp("rj")
    start_local_ray(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(request, checkpoint, ray_session, s3_server) -> dict:
    """The undisturbed run of the FM job (one per test module): Fashion-MNIST from local disk to
    s3://, credentials from the environment."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    url, options = s3_server.url(f"maps-e2e-{module}"), s3_server.storage_options
    os.environ["STORAGE_OPTIONS"] = json.dumps(options)
    try:
        from jobs import attribute

        code = attribute.main(["--checkpoint", checkpoint, "--output", url, *FM])
    finally:
        del os.environ["STORAGE_OPTIONS"]
    return {"url": url, "options": options, "code": code}
