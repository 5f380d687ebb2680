"""workers.identity: a worker's name says its Ray node and pid."""

from __future__ import annotations

import os
import socket

import pytest

from workers.identity import NODE_ID_CHARS, node_id, worker_name


def _inside() -> tuple[str, str, int]:
    import ray

    return worker_name("cpu"), ray.get_runtime_context().get_node_id(), os.getpid()


def test_outside_ray_the_host_name_stands_in(no_ray) -> None:
    assert node_id() == socket.gethostname()
    assert worker_name() == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.slow
def test_inside_ray_the_name_is_the_node_id_and_pid(ray_session) -> None:
    name, node, pid = ray_session.get(ray_session.remote(num_cpus=0)(_inside).remote())
    assert name == f"{node[:NODE_ID_CHARS]}:{pid}:cpu"
