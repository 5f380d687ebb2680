"""jobs.runtime.runner: every job's units through one lifecycle (resume, retries, progress, failure lines),
the same with the tasks on a real local Ray and in this process (``--in-process``, jobs.runtime.tasks)."""

from __future__ import annotations

import os

import pytest

from jobs.runtime.cli import JobStopped
from jobs.runtime.runner import Runner, unit_retries


def test_retries_come_from_the_flag_else_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("PATHWAY_SHARD_RETRIES", raising=False)
    assert unit_retries() == 3
    monkeypatch.setenv("PATHWAY_SHARD_RETRIES", "5")
    assert unit_retries() == 5 and unit_retries(1) == 1 and Runner("j", "unit", []).retries == 5
    monkeypatch.setenv("PATHWAY_SHARD_RETRIES", "many")
    assert unit_retries() == 3


def test_the_plan_counts_what_is_done_and_the_stop_line_names_failures_and_the_fix() -> None:
    runner = Runner("roar", "cell", ["a", "b", "c", "d", "e", "a"], done=["a", "x"])
    assert runner.plan_line() == "5 cells, 1 already done, 4 to compute" and runner.todo == ["b", "c", "d", "e"]
    here = Runner("roar", "cell", ["a", "b"], done=["a"], in_process=True)
    assert here.plan_line() == "2 cells, 1 already done, 1 to compute in this process"
    here = Runner("roar", "cell", ["a", "b"], done=["a", "b"], in_process=True)
    assert here.plan_line() == "2 cells, 2 already done, 0 to compute"  # nothing runs anywhere
    runner.finished = 1
    runner.failures = [("b", "ValueError: bad"), ("c", "OSError: gone"), ("d", "x"), ("e", "y")]
    assert runner.stop_line() == ("the job stopped with 1 of 4 cells committed: cell b: ValueError: bad; "
                                  "cell c: OSError: gone; cell d: x; 1 more cells failed (listed above); "
                                  "rerun to resume")
    with pytest.raises(JobStopped, match="^the job stopped with 1 of 4 cells committed"):
        runner.stop_if_failed()
    runner.failures = [(None, "shard 3 failed: the store kept failing; rerun the same command")]
    assert runner.stop_line().endswith("rerun the same command")  # said once
    Runner("roar", "cell", ["a"]).stop_if_failed()  # nothing failed: nothing to say


@pytest.fixture(params=[pytest.param(False, id="ray", marks=pytest.mark.slow), pytest.param(True, id="in-process")])
def in_process(request: pytest.FixtureRequest) -> bool:
    """Each test with the tasks on Ray and in this process (jobs.runtime.tasks): one contract, two backends."""
    if not request.param:
        request.getfixturevalue("ray_session")
    return request.param


def test_units_left_run_once_each_and_done_units_are_skipped(in_process, capsys) -> None:
    runner = Runner("double", "unit", ["a", "b", "c", "d"], done=["a"], no_bar=True, in_process=in_process)
    task = runner.remote(lambda text: text * 2, num_cpus=1)
    results, settled = {}, []
    runner.run_tasks(["a", "b", "c", "d"], str, task.remote, results.__setitem__, max_running=1,
                     settled=settled.append)
    assert results == {"b": "bb", "c": "cc", "d": "dd"} and sorted(settled) == ["b", "c", "d"]
    assert runner.failures == [] and runner.committed() == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("double: 0/3 units") and lines[-1].startswith("double: 3/3 units,")


def test_the_drivers_retry_budget_reaches_every_task_it_starts(in_process, monkeypatch) -> None:
    """PATHWAY_STORAGE_RETRY_SECONDS set where the job runs holds in its tasks, whatever the workers'
    own environment says (jobs.runtime.cluster.worker_options); unset, tasks keep their own. (In this
    process the tasks read the job's own environment.)"""
    from storage.io import retry

    def seen() -> tuple[str | None, float]:
        return os.environ.get("PATHWAY_STORAGE_RETRY_SECONDS"), retry.budget()

    monkeypatch.delenv("PATHWAY_STORAGE_RETRY_SECONDS", raising=False)
    runner = Runner("budget", "unit", ["a"], no_bar=True, in_process=in_process)
    assert runner.tasks.get(runner.remote(seen, num_cpus=0).remote()) == (None, retry.DEFAULT_BUDGET)
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "7")
    assert runner.tasks.get(runner.remote(seen, num_cpus=0).remote()) == ("7", 7.0)


def test_a_failed_unit_is_one_line_the_others_finish_and_the_job_stops_saying_what_is_kept(in_process, tmp_path,
                                                                                           capsys) -> None:
    tries = tmp_path / "tries"
    tries.mkdir()

    def work(key: str) -> str:
        with open(tries / f"{key}-{os.getpid()}-{len(os.listdir(tries))}", "w"):
            pass
        if key == "bad":
            raise ValueError(f"unit {key} has a bad input")
        return key

    runner = Runner("job", "unit", ["one", "bad", "two"], no_bar=True, retries=2, in_process=in_process)
    task = runner.remote(work, num_cpus=1)
    results: dict[str, str] = {}
    runner.run_tasks(["one", "bad", "two"], str, task.remote, results.__setitem__)
    assert results == {"one": "one", "two": "two"}
    assert [k for k, _ in runner.failures] == ["bad"]
    assert "ValueError: unit bad has a bad input" in runner.failures[0][1]
    assert sum(name.startswith("bad-") for name in os.listdir(tries)) == 1  # a bad input is not retried
    assert "job: unit bad failed: ValueError: unit bad has a bad input" in capsys.readouterr().err
    with pytest.raises(JobStopped) as stopped:
        runner.stop_if_failed()
    assert str(stopped.value).startswith("the job stopped with 2 of 3 units committed: unit bad: ")
    assert str(stopped.value).endswith("; rerun to resume")


def test_a_transient_failure_is_retried_and_one_past_the_retries_says_how_often_it_was_tried(in_process,
                                                                                             tmp_path) -> None:
    marker = tmp_path / "failed-once"

    def flaky(key: str) -> str:
        if not marker.exists():
            marker.write_text("1")
            raise OSError(f"the store dropped {key}")  # what storage.io.retry gives up with
        return key

    runner = Runner("job", "unit", ["k"], no_bar=True, retries=1, in_process=in_process)
    results: dict[str, str] = {}
    runner.run_tasks(["k"], str, runner.remote(flaky, num_cpus=1).remote, results.__setitem__)
    assert results == {"k": "k"} and runner.failures == []

    def broken(key: str) -> str:
        raise OSError(f"the store is down for {key}")

    runner = Runner("job", "unit", ["k"], no_bar=True, retries=1, in_process=in_process)
    runner.run_tasks(["k"], str, runner.remote(broken, num_cpus=1).remote, results.__setitem__)
    assert len(runner.failures) == 1
    assert runner.failures[0][1].endswith("the store is down for k (the unit was tried 2 times)"), runner.failures


def test_a_stop_mid_loop_says_what_is_kept_and_ends_the_loop(in_process) -> None:
    """Ctrl-C or SIGTERM arrives as jobs.runtime.stopping.Interrupted wherever the loop is; it leaves
    the loop with the signal kept and the count of units committed."""
    import signal

    from jobs.runtime.stopping import Interrupted

    runner = Runner("job", "unit", ["a", "b", "c"], no_bar=True, in_process=in_process)
    results: dict[str, str] = {}

    def settled(key: str) -> None:
        if results:  # the second unit to end: the operator stops the job
            raise Interrupted(signal.SIGTERM)

    with pytest.raises(Interrupted) as stopped:
        runner.run_tasks(["a", "b", "c"], str, runner.remote(lambda key: key.upper(), num_cpus=1).remote, results.__setitem__,
                         max_running=1, settled=settled)
    assert len(results) == 1 and stopped.value.signum == signal.SIGTERM
    assert stopped.value.detail == "1 of 3 units committed; rerun to resume"
