"""jobs.runtime.cluster: the local Ray a job starts is on loopback, and the switch that puts it there is on
for the start only; an address where no Ray answers is refused in one line before Ray's join; workers are
sized from the cluster's resources and the work there is."""

from __future__ import annotations

import os

import pytest

from jobs.runtime import cluster
from jobs.runtime.cli import JobError
from jobs.runtime.cluster import (WorkerSizing, check_answers, is_loopback, joins_loopback, plan_workers,
                                  single_machine_mode, start_ray, worker_options)
from tests.servers import free_port


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.0.2.2", False), ("::ffff:10.0.0.1", False),
    ("fe80::1", False), ("localhost.example.com", False), ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6379", True), ("localhost:6379", True), ("[::1]:6379", True), ("127.0.0.1", True),
    ("192.0.2.2:6379", False), ("head.example.com:6379", False), ("ray://127.0.0.1:10001", False),
])
def test_joins_loopback(address: str, loopback: bool) -> None:
    assert joins_loopback(address) is loopback


def test_auto_joins_loopback_when_the_last_ray_start_was_on_loopback(monkeypatch) -> None:
    from ray._private import services

    monkeypatch.setattr(services, "get_ray_address_from_environment", lambda addr, temp: "127.0.0.1:6379")
    assert joins_loopback("auto")
    monkeypatch.setattr(services, "get_ray_address_from_environment", lambda addr, temp: "10.0.0.5:6379")
    assert not joins_loopback("auto")


def test_single_machine_mode_is_on_for_the_block_only(monkeypatch) -> None:
    from ray._private import ray_constants

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    with single_machine_mode(False):
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1" and ray_constants.ENABLE_RAY_CLUSTER
    with single_machine_mode():
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and not ray_constants.ENABLE_RAY_CLUSTER
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1" and ray_constants.ENABLE_RAY_CLUSTER


def test_an_address_where_nothing_answers_is_refused_in_one_line_before_ray_joins(monkeypatch) -> None:
    import ray
    from ray._private import services

    port = free_port()  # closed: nothing listens there
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a job's fresh driver
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail(f"ray.init ran: {kwargs}"))
    with pytest.raises(JobError, match=rf"no Ray answers at 127\.0\.0\.1:{port}: .*ray start --head"):
        start_ray(f"127.0.0.1:{port}")
    monkeypatch.setattr(services, "get_ray_address_from_environment", lambda addr, temp: f"127.0.0.1:{port}")
    with pytest.raises(JobError, match=rf"no Ray answers at 'auto' \(127\.0\.0\.1:{port}\)"):
        start_ray("auto")  # a stale ray_current_cluster: the cluster it names is gone
    for address in ("head-node", "http://127.0.0.1:8265"):
        with pytest.raises(JobError, match=rf"'{address}' \(--ray-address or \$RAY_ADDRESS\) is not host:port"):
            check_answers(address)


def test_an_address_where_something_else_answers_is_refused_in_one_line(monkeypatch) -> None:
    import socket
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    web = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)  # as the dashboard's port would answer
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with pytest.raises(JobError, match=r"is not a Ray GCS \(it does not speak gRPC.*port \(8265\) is for ray job"):
            check_answers(f"127.0.0.1:{web.server_port}")
    finally:
        web.shutdown()
        web.server_close()
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections and never says a word
        with pytest.raises(JobError, match="no Ray answers at .*timed out"):
            check_answers(f"127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("RAY_USE_TLS", "1")  # a TLS GCS waits for the client's hello: the connection is all
        check_answers(f"127.0.0.1:{silent.getsockname()[1]}")
    check_answers(f"ray://127.0.0.1:{free_port()}")  # Ray Client connects (and fails) in its own words


def test_the_local_ray_a_job_starts_is_on_loopback_and_the_switch_is_restored(ray_session) -> None:
    """The session's Ray was started by start_local_ray, as a job's local Ray is (tests/conftest.py
    SharedRay), so its state is the state a job's start leaves; checking it here costs no Ray start."""
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER, ("a later ray.init(address=...) in this process must still join "
                                              "clusters (or $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER was 0 before the run)")
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert is_loopback(ray_session.util.get_node_ip_address()), ray_session.util.get_node_ip_address()
    get_ip = ray_session.remote(num_cpus=0)(ray_session.util.get_node_ip_address)
    worker_ip = ray_session.get(get_ip.remote(), timeout=120)
    assert is_loopback(worker_ip), worker_ip
    check_answers(ray_session.get_runtime_context().gcs_address)  # a live GCS passes the check a job makes


def test_a_gcs_that_refuses_the_driver_ends_the_job_in_one_line(ray_session, monkeypatch) -> None:
    """Ray's join raises ConnectionError after its retries when the GCS answers and refuses the driver (a
    token cluster joined without RAY_AUTH_MODE=token: seen by hand, 24 s, in benchmarks/RESULTS.md session
    19); the job says so in one line. The GCS is the session's real one, so the check before the join passes."""
    gcs = ray_session.get_runtime_context().gcs_address

    def refused(**kwargs) -> None:
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(ray_session, "is_initialized", lambda: False)  # as in a job's fresh driver
    monkeypatch.setattr(ray_session, "init", refused)
    with pytest.raises(JobError, match=rf"could not join the Ray at {gcs} \(Failed to connect.*RAY_AUTH_MODE=token"):
        start_ray(gcs)


def test_worker_options_carry_the_drivers_worker_settings_only_when_set(monkeypatch) -> None:
    monkeypatch.delenv("PATHWAY_STORAGE_RETRY_SECONDS", raising=False)
    monkeypatch.setenv("PATHWAY_SHARD_RETRIES", "9")  # the driver's own setting: not the workers'
    assert worker_options() == {}  # workers start as before: no runtime_env of the job's own
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "30")
    assert worker_options() == {"runtime_env": {"env_vars": {"PATHWAY_STORAGE_RETRY_SECONDS": "30"}}}


@pytest.mark.parametrize("resources, device, workers, default, units, expected", [
    ({"CPU": 8}, "auto", None, 1, None, WorkerSizing(1, 0, 8, 8, "cpu")),
    ({"CPU": 8}, "auto", 4, 1, None, WorkerSizing(4, 0, 2, 2, "cpu")),
    ({"CPU": 8}, "cpu", None, "cpus", None, WorkerSizing(8, 0, 1, 1, "cpu")),
    ({"CPU": 8}, "auto", 4, 1, 1, WorkerSizing(1, 0, 8, 8, "cpu")),  # one block: one worker, every thread
    ({"CPU": 8}, "auto", 4, 1, 3, WorkerSizing(3, 0, 2, 2, "cpu")),
    ({"CPU": 8}, "auto", 4, 1, 0, WorkerSizing(1, 0, 8, 8, "cpu")),  # nothing to do: never zero workers
    ({"CPU": 8, "GPU": 4}, "auto", None, 1, None, WorkerSizing(4, 1, 1, 0, "cuda")),
    ({"CPU": 8, "GPU": 4}, "auto", None, 1, 2, WorkerSizing(2, 1, 1, 0, "cuda")),
    ({"CPU": 8, "GPU": 4}, "cpu", 2, 1, None, WorkerSizing(2, 0, 4, 4, "cpu")),
    ({"CPU": 2}, "cuda", None, 1, None, WorkerSizing(1, 1, 1, 0, "cuda")),  # asks for a GPU none has yet
])
def test_plan_workers_splits_the_cluster_and_starts_no_worker_without_work(resources, device, workers, default, units,
                                                                           expected) -> None:
    assert plan_workers(resources, device, workers, default, units) == expected
