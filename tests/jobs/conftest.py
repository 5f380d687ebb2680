"""Fixtures shared by the job tests: the undisturbed attribute job that fault tests compare their
bytes with (the checkpoint and Ray fixtures are tests/conftest.py's)."""

from __future__ import annotations

import json
import os

import pytest

from tests.jobs.attribute_support import FM


#: The reference run of this test process, made by the first module that asks for it.
_REFERENCE: dict = {}


@pytest.fixture(scope="module")
def reference(checkpoint, ray_session, s3_server) -> dict:
    """The undisturbed run of the FM job: Fashion-MNIST from local disk to s3://, credentials from the
    environment. Run once per test process and shared by every module that asks for it: they read it
    (and compare bytes with it); jobs.analyze adds its ``_analysis/`` beside the maps, which no reader
    of the maps sees. Module-scoped only to run on the session's Ray (``ray_session``)."""
    if not _REFERENCE:
        url, options = s3_server.url("maps-e2e"), s3_server.storage_options
        os.environ["STORAGE_OPTIONS"] = json.dumps(options)
        try:
            from jobs import attribute

            code = attribute.main(["--checkpoint", checkpoint, "--output", url, *FM])
        finally:
            del os.environ["STORAGE_OPTIONS"]
        _REFERENCE.update(url=url, options=options, code=code)
    return _REFERENCE
