"""workers.identity: a worker's name says its Ray node and pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.ray_cluster import ROOT
from workers.identity import NODE_ID_CHARS, worker_name


def _inside() -> tuple[str, str, int]:
    import ray

    return worker_name("cpu"), ray.get_runtime_context().get_node_id(), os.getpid()


def test_outside_ray_the_host_name_stands_in() -> None:
    """In a fresh Python (this test process may hold the session's Ray, and stopping it costs a restart)."""
    code = "import os; from workers.identity import node_id, worker_name; print(node_id(), worker_name(), os.getpid())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    node, name, pid = done.stdout.split()
    assert node == socket.gethostname() and name == f"{socket.gethostname()}:{pid}"


@pytest.mark.slow
def test_inside_ray_the_name_is_the_node_id_and_pid(ray_session) -> None:
    name, node, pid = ray_session.get(ray_session.remote(num_cpus=0)(_inside).remote())
    assert name == f"{node[:NODE_ID_CHARS]}:{pid}:cpu"
