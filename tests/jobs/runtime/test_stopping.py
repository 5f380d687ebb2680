"""Ctrl-C and SIGTERM stop a real job within seconds, in one line, with 128 + the signal as exit status;
what was committed stays and the rerun finishes every sample exactly once (jobs.runtime.stopping)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jobs import attribute
from jobs.runtime import stopping
from jobs.runtime.cli import run_main
from tests.jobs.attribute_support import check_exactly_once, source_ids
from tests.ray_cluster import ROOT, job_env, kill_tree, short_tmp, wait_for

#: 20 shards of 10 samples on one worker: the first commits come seconds before the last.
SAMPLES, SHARDS = 200, 20
MANY_SHARDS = ["--limit", str(SAMPLES), "--shard-size", str(SAMPLES // SHARDS), "--batch-size", "10", "--workers",
               "1", "--no-progress"]
#: Seconds a stopped job may take to exit on this loaded machine.
STOP_WITHIN = 60


def shards_committed(out: str) -> set[str]:
    """Shards with a commit record for every method (each method commits on its own)."""
    def records(method: str) -> set[str]:
        folder = os.path.join(out, "_manifest", method)
        return {n for n in os.listdir(folder) if n.endswith(".json")} if os.path.isdir(folder) else set()

    return records("pathway") & records("gradient")


def block_sigint() -> None:
    """What Ray does to every process it starts, and so to the entrypoint of ``ray job submit``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def stop_after_first_commit(out: str, signum: int, blocked: bool = False, ray_address: str | None = None,
                            *extra: str) -> tuple[int, str, float]:
    """Start the attribute job on the shipped model in its own process group (with SIGINT blocked, as
    Ray starts it, if ``blocked``; joining the Ray at ``ray_address`` through ``$RAY_ADDRESS``, as Ray
    starts a ``ray job submit`` entrypoint, if given, else starting a local Ray of its own) and send
    ``signum`` once a shard is committed: SIGINT to the group, as a terminal's Ctrl-C does, SIGTERM to
    the driver; (exit status, stderr, seconds to exit).

    (SIGTERM to the whole group of a job that started its own local Ray also ends Ray's daemons,
    which do not block it as they block SIGINT, and the driver's Ray client then exits the process
    at once with status 1: what was committed stays and the rerun resumes all the same.)"""
    command = [sys.executable, "-m", "jobs.attribute", "--output", out, *MANY_SHARDS, *extra]
    ray_tmp = short_tmp("rs")
    with open(os.path.join(ray_tmp, "stderr"), "w+", encoding="utf-8") as err:
        joined = {"RAY_ADDRESS": ray_address} if ray_address else {}
        driver = subprocess.Popen(command, cwd=ROOT, env=job_env(ray_tmp, **joined), stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True, preexec_fn=block_sigint if blocked else None)
        try:
            wait_for(lambda: shards_committed(out) or driver.poll() is not None, 240, "the first commit")
            assert driver.poll() is None, "the job ended before it was stopped"
            if signum == signal.SIGINT:
                os.killpg(driver.pid, signum)  # a terminal's Ctrl-C: the whole foreground group
            else:
                os.kill(driver.pid, signum)  # `ray job stop` (its Ray is not the job's child), Kubernetes, kill
            sent = time.monotonic()
            code = driver.wait(timeout=STOP_WITHIN)
            seconds = time.monotonic() - sent
        finally:
            kill_tree(driver.pid)
            err.seek(0)
            text = err.read()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return code, text, seconds


def check_stopped(out: str, code: int, text: str, seconds: float, signum: int, capsys, exact: bool = False) -> None:
    """``exact``: the stop line's count is what the rerun finds committed (a run without Ray finishes its
    shard in hand before it says; an actor may commit one after its driver said). The rerun runs on the
    other backend: without Ray after a run on Ray, on the session's Ray after a run without (the output
    binding is the same for both; a rerun on the same backend: tests/jobs/test_attribute_faults.py)."""
    name = signal.Signals(signum).name
    assert code == 128 + signum, text[-3000:]
    assert seconds < STOP_WITHIN
    lines = [line for line in text.splitlines() if "interrupted" in line]
    assert len(lines) == 1, text[-3000:]
    assert lines[0].startswith(f"jobs.attribute: interrupted by {name}: ") and lines[0].endswith("rerun to resume")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    kept = int(lines[0].split(": ")[2].split(" of ")[0])
    with open(os.path.join(out, "_meta", "run.json"), encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["status"] == "interrupted" and record["reason"].startswith(f"interrupted by {name}: "), record
    assert not os.path.exists(os.path.join(out, "_lease.json"))  # released: the rerun need not wait for it

    other = [] if exact else ["--in-process"]
    assert attribute.main(["--output", out, *MANY_SHARDS, *other]) == 0  # the same command resumes
    done, todo = map(int, re.search(r"(\d+) already committed, (\d+) to do", capsys.readouterr().out).groups())
    assert done >= kept >= 1 and done + todo == SHARDS  # nothing committed was computed again
    assert done == kept or not exact
    check_exactly_once(out, None, source_ids(limit=SAMPLES))


@pytest.mark.slow
@pytest.mark.parametrize("signum, blocked, joins, extra",
                         [(signal.SIGINT, False, False, ()), (signal.SIGINT, True, True, ()),
                          (signal.SIGTERM, False, True, ()), (signal.SIGINT, False, False, ("--in-process",))],
                         ids=["sigint", "sigint-started-by-ray", "sigterm", "sigint-in-process"])
def test_a_signal_mid_job_stops_it_in_one_line_and_the_rerun_resumes(signum, blocked, joins, extra, ray_session,
                                                                     tmp_path, capsys) -> None:
    """Ctrl-C reaches a local run, which started its own Ray; ``ray job stop`` (SIGTERM) and a SIGINT
    reach a job that joined a running Ray, as ``ray job submit`` starts one: here the session's Ray,
    on loopback, which the job joins in single-machine mode (jobs.runtime.cluster.joins_loopback).
    Ctrl-C also stops a run without Ray (``--in-process``: the shard in hand finishes first), which the
    rerun on Ray resumes."""
    out = str(tmp_path / "maps")
    address = ray_session.get_runtime_context().gcs_address if joins else None
    code, text, seconds = stop_after_first_commit(out, signum, blocked, address, *extra)
    check_stopped(out, code, text, seconds, signum, capsys, exact="--in-process" in extra)


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_and_exit_130(tmp_path) -> None:
    out = str(tmp_path / "model.pt")
    command = [sys.executable, "-m", "jobs.train", "--limit", "3000", "--epochs", "50", "--threads", "1",
               "--test-split", "none", "--no-progress", "--output", out]
    errors = tmp_path / "stderr"
    with open(errors, "w+", encoding="utf-8") as err:
        job = subprocess.Popen(command, cwd=ROOT, env=job_env(str(tmp_path)), stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
        try:
            wait_for(lambda: "training " in errors.read_text() or job.poll() is not None, 240, "training to start")
            time.sleep(2)  # inside the epochs
            assert job.poll() is None, errors.read_text()[-3000:]
            os.killpg(job.pid, signal.SIGINT)
            code = job.wait(timeout=STOP_WITHIN)
        finally:
            kill_tree(job.pid)
    text = errors.read_text()
    assert code == 130, text[-3000:]
    lines = [line for line in text.splitlines() if "interrupted" in line]
    assert lines == ["jobs.train: interrupted by SIGINT: no checkpoint written (it is written when training ends); "
                     "rerun the same command to train again"], text[-3000:]
    assert "Traceback" not in text
    assert not os.path.exists(out)


# --------------------------------------------------------------------------- run_main, in process


def test_run_main_turns_a_signal_into_one_line_and_128_plus_the_signal(capsys) -> None:
    def job(_args) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    assert run_main("jobs.x", job, None) == 143
    assert capsys.readouterr().err == "jobs.x: interrupted by SIGTERM: rerun the same command to resume\n"
    assert stopping.requested() == signal.SIGTERM


def test_run_main_restores_the_handlers_it_found() -> None:
    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    assert run_main("jobs.x", lambda _args: 0, None) == 0
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before


def test_a_detail_says_what_is_kept(capsys) -> None:
    def job(_args) -> int:
        raise stopping.Interrupted(signal.SIGINT, "3 of 40 shards committed; rerun to resume")

    assert run_main("jobs.attribute", job, None) == 130
    assert capsys.readouterr().err == ("jobs.attribute: interrupted by SIGINT: 3 of 40 shards committed; "
                                       "rerun to resume\n")
