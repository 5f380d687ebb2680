"""The local Ray a job starts listens on loopback only, and the job joins no cluster it was not told about.

A real ``python -m jobs.attribute`` runs in a subprocess with no ``$RAY_ADDRESS``, so it starts its own
Ray. While it runs, the listening TCP sockets of its whole process tree (the driver, and every Ray
process below it: GCS, raylet, dashboard head and agent, runtime-env agent, autoscaler monitor, Ray Data's
actors) are sampled until it ends. Its Ray temp folder holds a planted ``ray_current_cluster`` naming
an address: the job must start its own Ray regardless, as the file is writable by anyone on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.ray_cluster import ROOT, Listener, beyond_loopback, job_env, listeners, short_tmp
from tests.servers import free_port

pytestmark = pytest.mark.slow

#: The Ray processes the job must be seen listening from (so the check is not vacuous): a word of their
#: command line (Ray retitles its workers ``ray::<what runs>``).
EXPECTED = ("gcs_server", "raylet", "ray::DashboardAgent", "ShardAttributor")


def test_the_jobs_local_ray_listens_on_loopback_only(checkpoint, tmp_path) -> None:
    ray_tmp = short_tmp("rs")
    try:
        # The address a `ray start` on this machine would leave behind; nothing listens there.
        os.makedirs(os.path.join(ray_tmp, "ray"))
        with open(os.path.join(ray_tmp, "ray", "ray_current_cluster"), "w", encoding="utf-8") as fh:
            fh.write(f"127.0.0.1:{free_port()}")
        command = [sys.executable, "-m", "jobs.attribute", "--checkpoint", checkpoint,
                   "--output", str(tmp_path / "maps"), "--limit", "200", "--shard-size", "50",
                   "--batch-size", "25", "--workers", "1", "--no-progress"]
        env = job_env(ray_tmp)
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the job must switch loopback on by itself
        assert "RAY_ADDRESS" not in env
        job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen: set[Listener] = set()
        samples, deadline = 0, time.monotonic() + 240
        try:
            while job.poll() is None and time.monotonic() < deadline:
                seen |= listeners(job.pid)
                samples += 1
                time.sleep(0.2)
        finally:
            if job.poll() is None:
                job.kill()  # Ray's reaper then stops the daemons it started
            output = job.communicate(timeout=60)[0]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert job.returncode == 0, output[-3000:]
    processes = {listener.process for listener in seen}
    missing = [name for name in EXPECTED if not any(name in process for process in processes)]
    assert not missing, f"never saw {missing} listening in {samples} samples; saw {sorted(processes)}"
    assert any(listener.pid == job.pid for listener in seen), "the driver's own Ray server was not seen"
    exposed = beyond_loopback(seen)
    assert not exposed, "listening beyond loopback: " + "; ".join(exposed)
