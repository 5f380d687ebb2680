"""Fixtures shared by the job tests: the undisturbed attribute job that fault tests compare their
bytes with (the checkpoint and Ray fixtures are tests/conftest.py's)."""

from __future__ import annotations

import json
import os

import pytest

from tests.jobs.attribute_support import FM


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
