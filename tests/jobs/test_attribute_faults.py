"""``python -m jobs.attribute`` under real faults: workers, drivers and a worker node killed by pid
(found in /proc below the process we started), store requests failing behind a fault proxy, a
store outage longer than the retry budget, and stores that fill up. Every sample exactly once.
"""

from __future__ import annotations

import json
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
from storage.maps.reader import read_errors, read_run
from tests.helpers import fashion_mnist, write_folder
from tests.jobs.attribute_support import (FM, SMALL_BUDGET, both_committed, check_exactly_once, commit_times,
                                          commits, parquet_bytes, run_fm_job, source_ids)
from tests.ray_cluster import ROOT, job_env, kill_tree, short_tmp, wait_for, worker_pids

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # starts Ray; kills its workers, so no other module shares it

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


def test_store_faults_on_reads_writes_and_commits_lose_and_duplicate_nothing(checkpoint, ray_session, s3_server,
                                                                            capsys) -> None:
    """Source and output on S3 behind a proxy that fails a fifth of all requests (503, 500, dropped
    connections) from the driver and the workers alike: the job exits 0 with no error row, and its
    maps are byte for byte those of an undisturbed run."""
    from tests.faultproxy import Rule, fault_proxy

    options = s3_server.storage_options
    images, labels = fashion_mnist("test", 40)
    src = s3_server.url("folder-faults")
    write_folder(src, options, images, labels)
    args = ["--source", src, "--checkpoint", checkpoint, "--shard-size", "10", "--batch-size", "10", "--workers",
            "1", "--no-progress"]
    calm = s3_server.url("maps-calm")
    assert attribute.main([*args, "--output", calm, "--storage-options", json.dumps(options)]) == 0
    faulty = s3_server.url("maps-faults")
    with fault_proxy(s3_server.endpoint_url, seed=3) as proxy:
        proxied = proxy.storage_options(options) | {"config_kwargs": {"retries": {"max_attempts": 1}}}
        proxy.rules = [Rule("503", rate=0.1), Rule("500", rate=0.05), Rule("drop", rate=0.05)]
        assert attribute.main([*args, "--output", faulty, "--storage-options", json.dumps(proxied)]) == 0
        injected = len(proxy.injected)
    assert injected >= 20, f"only {injected} faults injected: the test proved little"
    expected = source_ids(src, options)
    check_exactly_once(faulty, options, expected)
    assert read_errors(faulty, storage_options=options).empty
    assert parquet_bytes(faulty, options) == parquet_bytes(calm, options)
    print(f"faults injected: {injected}; samples lost 0, duplicated 0", file=sys.stderr)


OUTAGE = 6.0  # seconds the output store fails every request: three times the workers' retry budget


def test_a_store_outage_longer_than_the_retry_budget_retries_the_shard_and_loses_nothing(checkpoint, s3_server
                                                                                       ) -> None:
    """The output store answers 503 to every request for 6 s, from the moment a worker writes shard
    000002, while each request is retried for 2 s only (PATHWAY_STORAGE_RETRY_SECONDS): that shard
    fails with TransientShardFailure, Ray Data runs it again after a backoff, and the job exits 0
    with every sample exactly once. (Permanent failures stop the job at once:
    test_failures_not_caused_by_data_exit_1_fast.)"""
    from tests.faultproxy import Rule, fault_proxy

    options, prefix = s3_server.storage_options, "maps-outage"
    url = s3_server.url(prefix)
    ray_tmp = short_tmp("ro")
    with fault_proxy(s3_server.endpoint_url) as proxy:
        proxied = proxy.storage_options(options) | {"config_kwargs": {"retries": {"max_attempts": 1}}}
        # Every request under the output but the driver's lease renewals, from shard 000002's first write on.
        proxy.rules = [Rule("503", path=rf"/{s3_server.bucket}/{prefix}/(?!_lease)",
                            trigger=r"/_pending/maps/pathway/000002", window=OUTAGE)]
        command = [sys.executable, "-m", "jobs.attribute", "--checkpoint", checkpoint, "--output", url, "--limit",
                   "200", "--shard-size", "50", "--batch-size", "25", "--workers", "1", "--no-progress",
                   "--storage-options", json.dumps(proxied)]
        # Five shard retries: even if every attempt fails only after its whole 2 s budget, the
        # attempts cover 10 s, well past the 6 s outage, however Ray's random backoff falls.
        env = job_env(ray_tmp, PATHWAY_STORAGE_RETRY_SECONDS="2", PATHWAY_SHARD_RETRIES="5")
        start = time.monotonic()
        try:
            result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        seconds = time.monotonic() - start
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-4000:]
    # The trigger request (the shard's first write) failed, was retried for 2 s against a 6 s outage and
    # gave up; the same file was written again after the outage: by a new run of the shard.
    began = proxy.rules[0].started
    puts = [(t, outcome) for t, method, path, outcome in proxy.requests
            if method == "PUT" and path.startswith(f"/{s3_server.bucket}/{prefix}/_pending/maps/pathway/000002")]
    assert began is not None and puts and puts[0][1] == "503", puts
    again = [t - began for t, outcome in puts if outcome == "forwarded" and t > began + OUTAGE]
    assert again, f"shard 000002 was not written again after the outage: {puts}"
    injected = len(proxy.injected)
    check_exactly_once(url, options, source_ids(limit=200))
    assert read_errors(url, storage_options=options).empty and read_run(url, options)["status"] == "complete"
    refused = sum(outcome != "forwarded" for _, outcome in puts)
    print(f"outage: {injected} faults over {proxy.injected_at[-1] - began:.1f} s, {refused} of them on PUTs of shard "
          f"000002's maps; the shard wrote them again {again[0]:.1f} s after the outage began; "
          f"job {seconds:.1f} s; samples lost 0, duplicated 0", file=sys.stderr)


def test_a_worker_node_lost_mid_job_on_a_two_node_cluster(checkpoint, tmp_path) -> None:
    """A real two-node cluster on loopback: a head that runs only the driver (0 CPUs) and a worker node
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
        head = stack.enter_context(ray_head_node(num_cpus=0, dashboard=False, **fast))
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


def test_a_store_that_fills_up_mid_job_stops_it_in_one_line_and_a_rerun_with_room_finishes(checkpoint, tmp_path
                                                                                         ) -> None:
    """A real full store: SeaweedFS with one 1 MB volume, which runs out of space a few shards into the
    job. SeaweedFS answers every write with 500 InternalError once full (its log says "No writable
    volumes and no free volumes left"), which is indistinguishable from a passing failure, so it is
    retried for the budget (2 s here) and the shard once more; then the job stops with exit 1 and one
    line naming the URL and saying that the store may be out of space. The same store restarted with
    more volumes (space freed) takes the same command to completion, every sample exactly once."""
    from tests.servers import seaweedfs

    data, output = tmp_path / "weed", "s3://test-bucket/maps-full"
    one_attempt = {"config_kwargs": {"retries": {"max_attempts": 1}}}  # our retries only, not botocore's too
    start = time.monotonic()
    with seaweedfs(data, extra_args=("-master.volumeSizeLimitMB=1", "-volume.max=1")) as server:
        full = run_fm_job(checkpoint, output, server.storage_options | one_attempt, **SMALL_BUDGET)
        options, url = server.storage_options, server.url("maps-full")
        done = both_committed(url, options)
        run = read_run(url, options)
    first = time.monotonic() - start
    assert full.returncode == 1, (full.stdout + full.stderr)[-4000:]
    last = full.stderr.strip().splitlines()[-1]
    assert re.match(rf"jobs\.attribute: error: the job stopped with {len(done)} of 8 shards committed: shard \d+ .*cannot write "
                    r".*s3://test-bucket/maps-full/\S+: the store kept failing for \d+ s \(\d+ attempts?; .*internal "
                    r"error.*\); it is overloaded, unreachable or out of space .*rerun the same command .*"
                    r"\(the shard was tried 2 times\)$", last), last
    assert "Traceback" not in full.stderr, full.stderr[-4000:]
    assert 1 <= len(done) < 8, f"the store filled up at {len(done)} of 8 shards: not mid-job"
    assert "no free volumes left" in (data / "weed.log").read_text(errors="replace")  # the server's account
    # A full SeaweedFS refuses every write, run.json's too: it is left as the run began it.
    assert run["status"] == "running" or (run["status"] == "failed" and "out of space" in run["reason"]), run

    with seaweedfs(data, extra_args=("-master.volumeSizeLimitMB=1", "-volume.max=16")) as server:  # room again
        rerun = run_fm_job(checkpoint, output, server.storage_options | one_attempt, **SMALL_BUDGET)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
        assert re.search(rf"{len(done)} already committed, {8 - len(done)} to do", rerun.stdout), rerun.stdout
        check_exactly_once(server.url("maps-full"), server.storage_options, source_ids(limit=400))
        assert read_run(server.url("maps-full"), server.storage_options)["status"] == "complete"
    print(f"SeaweedFS full after {len(done)} of 8 shards; job stopped in {first:.1f} s, run.json {run['status']!r}, "
          f"with: {last}\nrerun: exit 0; {time.monotonic() - start:.1f} s in all; samples lost 0, duplicated 0",
          file=sys.stderr)


def test_a_local_disk_that_fills_up_stops_the_job_at_once_and_a_rerun_with_room_finishes(checkpoint, tmp_path
                                                                                       ) -> None:
    """A real full disk: the output on a 1 MiB tmpfs. ENOSPC says what it is, so it is not retried: the
    job stops at the first failed write with exit 1 and one line saying the store is out of space; the
    same command after the tmpfs grows (remounted at 32 MiB) finishes, every sample exactly once.
    Needs the right to mount (root); skipped where there is none."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False,
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    output = str(mount / "maps")
    try:
        start = time.monotonic()
        full = run_fm_job(checkpoint, output, **SMALL_BUDGET)
        first = time.monotonic() - start
        done = both_committed(output, None)
        run = read_run(output)
        assert full.returncode == 1, (full.stdout + full.stderr)[-4000:]
        last = full.stderr.strip().splitlines()[-1]
        assert re.match(rf"jobs\.attribute: error: the job stopped with {len(done)} of 8 shards committed: shard \d+ .*cannot "
                        rf"\w[\w ]* {re.escape(output)}/\S+: the store is out of space \(.*No space left on device\): "
                        r"free space .*rerun the same command \(committed work is kept\)$", last), last
        assert "Traceback" not in full.stderr, full.stderr[-4000:]
        assert 1 <= len(done) < 8, f"the disk filled up at {len(done)} of 8 shards: not mid-job"
        assert run["status"] == "running" or (run["status"] == "failed" and "out of space" in run["reason"]), run
        subprocess.run(["mount", "-o", "remount,size=32m", str(mount)], check=True)
        rerun = run_fm_job(checkpoint, output, **SMALL_BUDGET)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
        assert re.search(rf"{len(done)} already committed, {8 - len(done)} to do", rerun.stdout), rerun.stdout
        check_exactly_once(output, None, source_ids(limit=400))
        assert read_run(output)["status"] == "complete"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    print(f"tmpfs full after {len(done)} of 8 shards; job stopped in {first:.1f} s, run.json {run['status']!r}, "
          f"with: {last}\nrerun: exit 0; {time.monotonic() - start:.1f} s in all; samples lost 0, duplicated 0",
          file=sys.stderr)
