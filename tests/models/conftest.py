"""Tiny models on a CPU shared with other processes: one intra-op thread, so OpenMP does not spin."""

from __future__ import annotations

import pytest

from tests.helpers import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
