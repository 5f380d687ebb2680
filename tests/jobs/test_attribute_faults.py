"""``python -m jobs.attribute`` under real faults of its processes: workers, drivers and a worker node
killed by pid (found in /proc below the process we started). Every sample exactly once. The store's
faults are tests/jobs/test_attribute_store_faults.py's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from jobs import attribute
from storage.maps.reader import read_run
from tests.jobs.attribute_support import (FM, check_exactly_once, commit_times, commits, parquet_bytes,
                                          source_ids)
from tests.ray_cluster import ROOT, job_env, kill_tree, short_tmp, wait_for, worker_pids

pytestmark = pytest.mark.slow  # real jobs; the actors it kills are its own jobs' (Ray restarts them)

KILLS = 3


def test_worker_killed_repeatedly_mid_job(reference, checkpoint, ray_session, tmp_path, capsys) -> None:
    """SIGKILL the actor three times, each after it committed a shard: Ray restarts it and retries
    its shard every time; every sample exactly once, and the same bytes as the undisturbed run."""
    out = str(tmp_path / "maps")
    killed: list[int] = []

    def killer() -> None:
        for _ in range(KILLS):
            done = commits(out)
            wait_for(lambda: commits(out) > done, 120, "a commit since the last kill", interval=0.02)
            pids = wait_for(lambda: [p for p in worker_pids(os.getpid()) if p not in killed], 30,
                            "a live ShardAttributor actor process", interval=0.02)
            os.kill(pids[0], 9)
            killed.append(pids[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert attribute.main(["--checkpoint", checkpoint, "--output", out, *FM]) == 0
    thread.join(timeout=5)
    assert len(killed) == KILLS, f"killed {killed}: the job ended first"
    printed = capsys.readouterr().out
    workers = set(re.findall(r"worker \S+:(\d+):cpu", printed))
    assert workers - {str(pid) for pid in killed}, printed  # a restarted actor finished the job
    assert not any(os.path.exists(f"/proc/{pid}") for pid in killed)
    check_exactly_once(out, None, source_ids(limit=400))
    assert parquet_bytes(out, None) == parquet_bytes(reference["url"], reference["options"])


def test_a_retried_block_of_several_shards_skips_those_it_committed(reference, checkpoint, ray_session, tmp_path,
                                                                   monkeypatch) -> None:
    """Past jobs.mapping.actor_pool.MAX_TASK_BLOCKS tasks, shards share a Ray Data block (one actor task). Kill
    the actor after it committed a shard of its block: the block is retried whole, and the retry leaves
    the shards already committed as they are (their files are not written again)."""
    from jobs.mapping import actor_pool

    monkeypatch.setattr(actor_pool, "MAX_TASK_BLOCKS", 2)  # 8 shards: 2 blocks of 4
    out = str(tmp_path / "maps")
    folder = os.path.join(out, "maps", "pathway")
    before_kill: dict[str, int] = {}
    killed: list[int] = []

    def published() -> list[str]:
        """Tables moved to maps/ (a commit record comes first, so commits(out) >= 1 is not enough)."""
        return [n for n in os.listdir(folder) if n.endswith(".parquet")] if os.path.isdir(folder) else []

    def killer() -> None:
        wait_for(lambda: published(), 120, "a first published shard", interval=0.02)
        pid = wait_for(lambda: worker_pids(os.getpid()), 30, "a live ShardAttributor actor process", interval=0.02)[0]
        # listed before the kill: each of these was published by then (a local move is one rename)
        before_kill.update({n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in published()})
        os.kill(pid, 9)
        killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert attribute.main(["--checkpoint", checkpoint, "--output", out, *FM]) == 0
    thread.join(timeout=5)
    assert killed and before_kill, "the job ended before the kill"
    after = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in before_kill}
    assert after == before_kill  # committed before the kill: skipped by the retry, not rewritten
    check_exactly_once(out, None, source_ids(limit=400))
    assert parquet_bytes(out, None) == parquet_bytes(reference["url"], reference["options"])


def test_driver_killed_then_rerun_finishes_missing_shards(checkpoint, ray_session, tmp_path, capsys) -> None:
    out = str(tmp_path / "maps")
    command = [sys.executable, "-m", "jobs.attribute", "--checkpoint", checkpoint, "--output", out, *FM]
    ray_tmp = short_tmp("rd")
    driver = subprocess.Popen(command, cwd=ROOT, env=job_env(ray_tmp), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: commits(out) > 0 or driver.poll() is not None, 180, "the first commit")
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        kill_tree(driver.pid)  # the driver and the Ray it started vanish at once
        driver.wait(timeout=30)
    finally:
        kill_tree(driver.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    before = commit_times(out)
    done = {key.split("/")[1] for key in before if key.startswith("pathway/")}
    assert 1 <= len(done) < 8, f"killed too late to test a resume: {sorted(before)}"

    assert attribute.main(command[3:]) == 0  # the same command line, again
    printed = capsys.readouterr().out
    skipped = int(re.search(r"(\d+) already committed, (\d+) to do", printed).group(1))
    gradient_done = {key.split("/")[1] for key in before if key.startswith("gradient/")}
    assert skipped == len(done & gradient_done)  # a shard is skipped when all its methods are committed
    after = commit_times(out)
    assert {k: after[k] for k in before} == before  # committed shards were not recomputed
    assert len(after) == 2 * 8
    check_exactly_once(out, None, source_ids(limit=400))


def test_a_worker_node_lost_mid_job_on_a_two_node_cluster(checkpoint, tmp_path) -> None:
    """A real two-node cluster on this host (the host's address, token auth: a head that nodes join
    cannot stay on loopback): a head that runs only the driver (0 CPUs) and a worker node
    (``ray start --address``) that runs the actor. After two commits the worker node's raylet is
    SIGKILLed, which takes its actor down with it; a replacement node joins, as an autoscaler would
    start one, Ray restarts the actor there and retries the lost shard, and the job finishes (or, had
    it stopped, a rerun of the same command would) with every sample exactly once."""
    import contextlib

    from tests.ray_cluster import ray_head_node, ray_worker_node

    out = str(tmp_path / "maps")
    command = [sys.executable, "-m", "jobs.attribute", "--checkpoint", checkpoint, "--output", out, "--limit", "200",
               "--shard-size", "25", "--batch-size", "25", "--workers", "1", "--no-progress"]
    # The GCS declares a node dead after 3 failed health checks 0.5 s apart (the default takes ~15 s).
    fast = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_timeout_ms": "1000"}
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        head = stack.enter_context(ray_head_node(num_cpus=0, dashboard=False, joinable=True, **fast))
        first = ray_worker_node(head, num_cpus=2)
        node = stack.enter_context(first)
        env = {**head.env, "RAY_ADDRESS": head.gcs_address}
        driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        stack.callback(kill_tree, driver.pid)
        wait_for(lambda: commits(out) >= 2 or driver.poll() is not None, 120, "two commits")
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        actors = node.worker_pids()
        raylet = node.raylet()
        assert actors and raylet, "the actor does not run on the worker node"
        os.kill(raylet, signal.SIGKILL)
        at_kill = commits(out)
        killed = time.monotonic()
        stack.enter_context(ray_worker_node(head, num_cpus=2))  # the replacement
        printed = driver.communicate(timeout=120)[0].decode()
        first_code = driver.returncode
        reran = None
        if first_code != 0:  # the job stopped: the same command again, on the same cluster
            reran = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=120)
            assert reran.returncode == 0, (reran.stdout + reran.stderr)[-4000:]
        seconds = time.monotonic() - start
    assert at_kill < 8, f"killed too late to test a recovery: {at_kill} of 8 shards committed"
    assert not any(os.path.exists(f"/proc/{pid}") for pid in [raylet, *actors])
    check_exactly_once(out, None, source_ids(limit=200))
    assert read_run(out)["status"] == "complete"
    print(f"node lost after {at_kill} of 8 shards; job exit {first_code}"
          f"{'' if reran is None else ', rerun exit 0'}; finished {time.monotonic() - killed:.1f} s after the kill; "
          f"{seconds:.1f} s in all; samples lost 0, duplicated 0\n{printed[-1500:]}", file=sys.stderr)
