"""``python -m jobs.attribute`` under real faults of its store: requests failing behind a fault proxy, an
outage longer than the retry budget, and stores that fill up. Every sample exactly once. The faults of
its processes (killed workers, drivers, nodes) are tests/jobs/test_attribute_faults.py's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from jobs import attribute
from storage.maps.reader import read_errors, read_run
from tests.helpers import botocore_attempts, fashion_mnist, write_folder
from tests.jobs.attribute_support import (SMALL_BUDGET, both_committed, check_exactly_once, parquet_bytes,
                                          run_fm_job, source_ids)

pytestmark = pytest.mark.slow  # real stores, real jobs

#: The reruns that finish a stopped job resume it without Ray: the faults are the first run's, on Ray, and
#: what a rerun finds is the binding's business, the same on either backend (jobs.mapping.in_process).
RESUME_WITHOUT_RAY = ("--in-process",)


def test_store_faults_on_reads_writes_and_commits_lose_and_duplicate_nothing(checkpoint, ray_session, s3_server,
                                                                            capsys) -> None:
    """Source and output on S3 behind a proxy that fails one request in 30 (503, 500, dropped
    connections) from the driver and the workers alike: the job exits 0 with no error row, and its
    maps are byte for byte those of an undisturbed run."""
    from tests.faultproxy import Rule, fault_proxy

    options = s3_server.storage_options
    images, labels = fashion_mnist("test", 40)
    src = s3_server.url("folder-faults")
    write_folder(src, options, images, labels)
    args = ["--source", src, "--checkpoint", checkpoint, "--shard-size", "10", "--batch-size", "10", "--workers",
            "1", "--no-progress"]
    calm = s3_server.url("maps-calm")  # the same bytes on Ray or not (tests/jobs/mapping/test_in_process.py)
    assert attribute.main([*args, "--output", calm, "--storage-options", json.dumps(options), "--in-process"]) == 0
    faulty = s3_server.url("maps-faults")
    with fault_proxy(s3_server.endpoint_url, seed=3) as proxy:
        proxied = botocore_attempts(proxy.storage_options(options), 2)
        proxy.rules = [Rule("503", rate=0.015), Rule("500", rate=0.01), Rule("drop", rate=0.0075)]
        assert attribute.main([*args, "--output", faulty, "--storage-options", json.dumps(proxied)]) == 0
        injected = len(proxy.injected)
    assert injected >= 10, f"only {injected} faults injected: the test proved little"
    expected = source_ids(src, options)
    check_exactly_once(faulty, options, expected)
    assert read_errors(faulty, storage_options=options).empty
    assert parquet_bytes(faulty, options) == parquet_bytes(calm, options)
    print(f"faults injected: {injected}; samples lost 0, duplicated 0", file=sys.stderr)


OUTAGE = 6.0  # seconds the output store fails every request: three times the workers' retry budget


def test_a_store_outage_longer_than_the_retry_budget_retries_the_shard_and_loses_nothing(checkpoint, ray_session,
                                                                                       s3_server, capfd,
                                                                                       monkeypatch) -> None:
    """The output store answers 503 to every request for 6 s, from the moment a worker writes shard
    000002, while each request is retried for 2 s only (PATHWAY_STORAGE_RETRY_SECONDS, set where the
    job runs and so in its workers): that shard fails with TransientShardFailure, Ray Data runs it
    again after a backoff, and the job exits 0 with every sample exactly once. (Permanent failures
    stop the job at once: test_failures_not_caused_by_data_exit_1_fast.)"""
    from tests.faultproxy import Rule, fault_proxy

    options, prefix = s3_server.storage_options, "maps-outage"
    url = s3_server.url(prefix)
    with fault_proxy(s3_server.endpoint_url) as proxy:
        proxied = botocore_attempts(proxy.storage_options(options), 1)
        # Every request under the output but the driver's lease renewals, from shard 000002's first write on.
        proxy.rules = [Rule("503", path=rf"/{s3_server.bucket}/{prefix}/(?!_lease)",
                            trigger=r"/_pending/maps/pathway/000002", window=OUTAGE)]
        # Five shard retries: even if every attempt fails only after its whole 2 s budget, the
        # attempts cover 10 s, well past the 6 s outage, however Ray's random backoff falls.
        monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "2")
        monkeypatch.setenv("PATHWAY_SHARD_RETRIES", "5")
        start = time.monotonic()
        code = attribute.main(["--checkpoint", checkpoint, "--output", url, "--limit", "200", "--shard-size", "50",
                               "--batch-size", "25", "--workers", "1", "--no-progress", "--storage-options",
                               json.dumps(proxied)])
        seconds = time.monotonic() - start
        result = capfd.readouterr()
    printed = result.out + result.err
    assert code == 0, printed[-4000:]
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


def test_a_store_that_fills_up_mid_job_stops_it_in_one_line_and_a_rerun_with_room_finishes(checkpoint, ray_session,
                                                                                         tmp_path, capfd,
                                                                                         monkeypatch) -> None:
    """A real full store: SeaweedFS with one 1 MB volume, which runs out of space a few shards into the
    job. SeaweedFS answers every write with 500 InternalError once full (its log says "No writable
    volumes and no free volumes left"), which is indistinguishable from a passing failure, so it is
    retried for the budget (2 s here) and the shard once more; then the job stops with exit 1 and one
    line naming the URL and saying that the store may be out of space. The same store restarted with
    more volumes (space freed) takes the same command to completion, every sample exactly once."""
    from tests.servers import seaweedfs

    data, output = tmp_path / "weed", "s3://test-bucket/maps-full"
    start = time.monotonic()
    with seaweedfs(data, extra_args=("-master.volumeSizeLimitMB=1", "-volume.max=1")) as server:
        full = run_fm_job(checkpoint, output, capfd, monkeypatch, botocore_attempts(server.storage_options, 1),
                          **SMALL_BUDGET)
        options, url = server.storage_options, server.url("maps-full")
        done = both_committed(url, options)
        run = read_run(url, options)
    first = time.monotonic() - start
    assert full.returncode == 1, (full.stdout + full.stderr)[-4000:]
    last = full.stderr.strip().splitlines()[-1]
    # "for 2 s": the budget set where the job runs is its workers' too (jobs.runtime.cluster.worker_options)
    assert re.match(rf"jobs\.attribute: error: the job stopped with {len(done)} of 8 shards committed: shard \d+ .*cannot write "
                    r".*s3://test-bucket/maps-full/\S+: the store kept failing for [2-5] s \(\d+ attempts?; .*internal "
                    r"error.*\); it is overloaded, unreachable or out of space .*rerun the same command .*"
                    r"\(the shard was tried 2 times\)$", last), last
    assert "Traceback" not in full.stderr, full.stderr[-4000:]
    assert 1 <= len(done) < 8, f"the store filled up at {len(done)} of 8 shards: not mid-job"
    assert "no free volumes left" in (data / "weed.log").read_text(errors="replace")  # the server's account
    # A full SeaweedFS refuses every write, run.json's too: it is left as the run began it.
    assert run["status"] == "running" or (run["status"] == "failed" and "out of space" in run["reason"]), run

    with seaweedfs(data, extra_args=("-master.volumeSizeLimitMB=1", "-volume.max=16")) as server:  # room again
        rerun = run_fm_job(checkpoint, output, capfd, monkeypatch, botocore_attempts(server.storage_options, 1),
                           RESUME_WITHOUT_RAY, **SMALL_BUDGET)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
        assert re.search(rf"{len(done)} already committed, {8 - len(done)} to do", rerun.stdout), rerun.stdout
        check_exactly_once(server.url("maps-full"), server.storage_options, source_ids(limit=400))
        assert read_run(server.url("maps-full"), server.storage_options)["status"] == "complete"
    print(f"SeaweedFS full after {len(done)} of 8 shards; job stopped in {first:.1f} s, run.json {run['status']!r}, "
          f"with: {last}\nrerun: exit 0; {time.monotonic() - start:.1f} s in all; samples lost 0, duplicated 0",
          file=sys.stderr)


def test_a_local_disk_that_fills_up_stops_the_job_at_once_and_a_rerun_with_room_finishes(checkpoint, ray_session,
                                                                                       tmp_path, capfd,
                                                                                       monkeypatch) -> None:
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
        full = run_fm_job(checkpoint, output, capfd, monkeypatch, **SMALL_BUDGET)
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
        rerun = run_fm_job(checkpoint, output, capfd, monkeypatch, extra=RESUME_WITHOUT_RAY, **SMALL_BUDGET)
        assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
        assert re.search(rf"{len(done)} already committed, {8 - len(done)} to do", rerun.stdout), rerun.stdout
        check_exactly_once(output, None, source_ids(limit=400))
        assert read_run(output)["status"] == "complete"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    print(f"tmpfs full after {len(done)} of 8 shards; job stopped in {first:.1f} s, run.json {run['status']!r}, "
          f"with: {last}\nrerun: exit 0; {time.monotonic() - start:.1f} s in all; samples lost 0, duplicated 0",
          file=sys.stderr)
