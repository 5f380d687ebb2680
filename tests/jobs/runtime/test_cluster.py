"""jobs.runtime.cluster: the local Ray a job starts is on loopback, and the switch that puts it there is on
for the start only; workers are sized from the cluster's resources and the work there is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from jobs.runtime.cluster import (WorkerSizing, is_loopback, joins_loopback, plan_workers, single_machine_mode,
                                  worker_options)
from tests.ray_cluster import ROOT, short_tmp


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


#: Run in a fresh Python: the test process may hold the session's Ray, and stopping it costs a restart.
LOCAL_RAY_CHECK = """
import os, sys
import ray
from ray._private import ray_constants
from jobs.runtime.cluster import is_loopback, start_local_ray

os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
assert ray_constants.ENABLE_RAY_CLUSTER  # Linux: Ray's multi-node mode is the default
start_local_ray(num_cpus=1, num_gpus=0, include_dashboard=False, _temp_dir=sys.argv[1], log_to_driver=False)
try:
    assert ray_constants.ENABLE_RAY_CLUSTER, "a later ray.init(address=...) in this process must still join clusters"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert is_loopback(ray.util.get_node_ip_address()), ray.util.get_node_ip_address()
    worker_ip = ray.get(ray.remote(num_cpus=0)(ray.util.get_node_ip_address).remote(), timeout=120)
    assert is_loopback(worker_ip), worker_ip
finally:
    ray.shutdown()
print("ok")
"""


@pytest.mark.slow
def test_start_local_ray_runs_on_loopback_and_restores_the_switch() -> None:
    temp = short_tmp("rc")
    try:
        done = subprocess.run([sys.executable, "-c", LOCAL_RAY_CHECK, temp], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.stdout + done.stderr)[-3000:]


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
