"""jobs.runtime.noise: the benign lines every run printed are gone from a real job's whole output, while a
genuine warning on the same logger, a genuine Ray Core error line and a genuine Python warning
still show; the per-worker lines name node id and pid."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys

import pytest

from jobs.runtime import noise
from tests.ray_cluster import ROOT, job_env, short_tmp

#: The job, with genuine warnings emitted through the very channels the filters sit on, after Ray starts.
WRAPPER = """
import logging, os, runpy, sys, warnings
import jobs.runtime.cluster as cluster
start = cluster.start_ray
def start_ray(address):
    start(address)
    logging.getLogger("ray._private.authentication.authentication_token_setup").warning("a genuine ray warning")
    os.write(2, b"[2026-12-06 06:00:00,000 E 1 1] core_worker.cc:1: a genuine core worker error\\n")
    warnings.warn("a genuine python warning", UserWarning)
cluster.start_ray = start_ray
sys.argv = ["jobs.attribute", *sys.argv[1:]]
runpy.run_module("jobs.attribute", run_name="__main__")
"""

NOISE = ("Token authentication is enabled", "has constructor arguments in the object store",
         "Consolidated metadata is currently not part", "Progress bars disabled")


@pytest.mark.slow
def test_a_real_job_prints_no_known_noise_and_every_genuine_warning(tmp_path) -> None:
    ray_tmp = short_tmp("rn")
    command = [sys.executable, "-c", WRAPPER, "--output", str(tmp_path / "maps"), "--limit", "200",
               "--shard-size", "50", "--workers", "1", "--no-progress"]
    try:
        job = subprocess.run(command, cwd=ROOT, env=job_env(ray_tmp, PATHWAY_PROGRESS_SECONDS="1"),
                             capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-3000:]
    for line in NOISE:
        assert line not in output, output
    for line in ("a genuine ray warning", "E 1 1] core_worker.cc:1: a genuine core worker error",
                 "UserWarning: a genuine python warning", "Started a local Ray instance"):
        assert line in job.stderr, job.stderr
    assert re.search(r"^attribute: 0/4 shards, 0/200 samples", job.stderr, re.M), job.stderr  # --no-progress: lines
    assert re.search(r"^attribute: 4/4 shards, 200/200 samples", job.stderr, re.M), job.stderr
    # A worker is named by its Ray node id (8 hex digits) and pid, with its device.
    assert re.search(r"^  worker [0-9a-f]{8}:\d+:cpu: 200 samples", job.stdout, re.M), job.stdout


def test_ray_log_records_are_dropped_by_message_at_their_logger(caplog) -> None:
    noise.quiet_ray_logs()
    noise.quiet_ray_logs()  # once is enough: no second filter
    for name, start in noise.RAY_LOG_NOISE:
        logger = logging.getLogger(name)
        assert len(logger.filters) == len(set(map(id, logger.filters)))
        with caplog.at_level(logging.WARNING):
            logger.warning(f"{start} and so on")
            logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"] * len(noise.RAY_LOG_NOISE)


STDERR_SCRIPT = r"""
import os, sys, time
from jobs.runtime import noise
noise.filter_stderr()
os.write(2, b"[2026-12-06 06:02:45,017 E 3228 3228] core_worker.cc:2465: Actor with class name: "
            b"'MapWorker(MapBatches(ShardAttributor))' and ID: '3e040b6710851e509fa0ea4901000000' has constructor "
            b"arguments in the object store and max_restarts > 0. If the arguments in the object store go out of "
            b"scope or are lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 "
            b"for more details.\n")
os.write(2, b"[2026-12-06 06:02:45,017 E 3228 3228] core_worker.cc:2465: Actor with class name: 'Mine' and ID: "
            b"'3e04' has constructor arguments in the object store and max_restarts > 0.\n")
os.write(2, b"\rbar 50%")
time.sleep(0.5)
print("a python line", file=sys.stderr)
os.write(2, b"[partial")
noise.unfilter_stderr()
print("after", file=sys.stderr)
"""


def test_the_stderr_filter_drops_exactly_ray_datas_constructor_line() -> None:
    job = subprocess.run([sys.executable, "-c", STDERR_SCRIPT], cwd=ROOT, capture_output=True, timeout=60)
    assert job.returncode == 0, job.stderr
    assert job.stderr == (b"[2026-12-06 06:02:45,017 E 3228 3228] core_worker.cc:2465: Actor with class name: 'Mine' "
                          b"and ID: '3e04' has constructor arguments in the object store and max_restarts > 0.\n"
                          b"\rbar 50%a python line\n[partialafter\n")


def test_behind_the_filter_stderr_is_still_known_to_be_a_terminal() -> None:
    import os
    import pty

    script = ("import sys; from jobs.runtime import noise, progress; noise.filter_stderr(); "
              "print(progress.is_terminal(sys.stderr), sys.stderr.isatty(), file=sys.stdout); noise.unfilter_stderr()")
    main, child = pty.openpty()
    try:
        job = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=child,
                             timeout=60, text=True)
    finally:
        os.close(child)
        os.close(main)
    assert job.stdout.split() == ["True", "False"]  # a terminal gets the bar, though fd 2 is now a pipe
