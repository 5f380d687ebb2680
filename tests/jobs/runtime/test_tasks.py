"""jobs.runtime.tasks: the tasks of a run without Ray keep the contract of Ray's (arguments as a worker
gets them, references resolved, retries of transient errors only, a task's thread count) and never
import Ray. The same jobs' results on both backends: tests/jobs/test_perturb.py, test_sanity.py,
test_analyze.py and test_roar.py; the runner on both: test_runner.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from jobs.runtime.cli import JobError, check_in_process, job_parser, ray_flags, worker_flags
from jobs.runtime.tasks import HereTasks, TaskFailed, as_sent
from tests.ray_cluster import ROOT


def test_a_task_gets_large_arrays_read_only_and_small_objects_as_copies() -> None:
    """As from Ray's object store: a task that writes into a large input fails (it would on Ray too),
    and a small one it changes is its own copy; the driver's objects stay as they were."""
    big, small = np.zeros(100_000, np.float32), [1, 2]
    sent = as_sent({"big": big, "small": small})
    assert np.shares_memory(sent["big"], big) and not sent["big"].flags.writeable
    sent["small"].append(3)
    assert small == [1, 2]

    def scale(x: np.ndarray) -> np.ndarray:
        x *= 2
        return x

    ref = HereTasks().remote(scale).remote(big)
    with pytest.raises(TaskFailed) as failed:
        HereTasks().get(ref)
    assert isinstance(failed.value.cause, ValueError) and "read-only" in str(failed.value)
    assert not big.any()


def test_references_are_resolved_and_a_failed_one_fails_what_depends_on_it() -> None:
    tasks = HereTasks()
    pair = tasks.remote(lambda n: (n, n + 1), num_returns=2).remote(1)
    assert tasks.get(list(pair)) == [1, 2]
    added = tasks.remote(lambda a, b: a + b).remote(*pair)
    assert tasks.get(added) == 3

    def broken() -> int:
        raise KeyError("no such unit")

    bad = tasks.remote(broken).remote()
    after = tasks.remote(lambda a: a + 1).remote(bad)
    with pytest.raises(TaskFailed, match="KeyError: 'no such unit'"):
        tasks.get(after)


def test_only_transient_errors_are_retried_and_only_as_often_as_allowed() -> None:
    tasks, calls = HereTasks(), []

    def flaky(fails: int, error: type[Exception]) -> str:
        calls.append(error)
        if len(calls) <= fails:
            raise error("the store dropped it")
        return "done"

    options = {"max_retries": 2, "retry_exceptions": [OSError]}
    assert tasks.get(tasks.remote(flaky, **options).remote(2, OSError)) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(TaskFailed) as failed:
        tasks.get(tasks.remote(flaky, **options).remote(5, OSError))
    assert len(calls) == 3 and isinstance(failed.value.cause, OSError)
    calls.clear()
    with pytest.raises(TaskFailed):
        tasks.get(tasks.remote(flaky, **options).remote(1, ValueError))
    assert len(calls) == 1  # a bug or a bad input fails at once


def test_a_task_runs_on_its_cpus_as_threads_and_the_jobs_count_is_restored() -> None:
    tasks, before = HereTasks(), torch.get_num_threads()

    def threads() -> int:
        torch.set_num_threads(5)  # what a worker-side function may do (workers/roar.py)
        return 1

    assert tasks.get(tasks.remote(torch.get_num_threads, num_cpus=1).remote()) == 1
    assert tasks.get(tasks.remote(threads, num_cpus=3).remote()) == 1
    assert torch.get_num_threads() == before


def test_a_run_without_ray_never_imports_it() -> None:
    code = ("import sys\nfrom jobs.runtime.runner import Runner\n"
            "r = Runner('job', 'unit', ['a', 'b'], no_bar=True, in_process=True)\nr.start(None)\nout = {}\n"
            "task = r.remote(lambda k, x: k * x, num_cpus=1)\nx = r.put(2)\n"
            "r.run_tasks(['a', 'b'], str, lambda k: task.remote(k, x), out.__setitem__)\n"
            "print(out, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "{'a': 'aa', 'b': 'bb'} False"


@pytest.mark.parametrize("argv", [["--in-process", "--ray-address", "auto"], ["--in-process", "--workers", "2"]])
def test_in_process_is_refused_beside_a_cluster_or_more_workers(argv) -> None:
    args = job_parser("python -m jobs.x", "x", [ray_flags(), worker_flags("one")]).parse_args(argv)
    with pytest.raises(JobError, match="--in-process runs the work in this process: leave out --ray-address and "
                                       "--workers"):
        check_in_process(args)
    check_in_process(job_parser("python -m jobs.x", "x", [ray_flags(), worker_flags("one")]).parse_args(
        ["--in-process", "--workers", "1"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("job", ["attribute", "roar"])
def test_in_process_on_a_device_this_machine_lacks_is_refused_before_anything_is_written(job, tmp_path,
                                                                                        capsys) -> None:
    import importlib

    argv = {"attribute": ["--output", str(tmp_path / "maps")],
            "roar": ["--train-maps", str(tmp_path / "a"), "--test-maps", str(tmp_path / "b")]}[job]
    assert importlib.import_module(f"jobs.{job}").main([*argv, "--in-process", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"jobs.{job}: error: --device cuda --in-process: device 'cuda' requested but CUDA is not available "
                   "on this machine; leave out --in-process to run on a cluster's GPUs, or use --device cpu"), err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("job, argv, what", [
    ("attribute", ["--output", "{tmp}/maps"], "one model replica"),
    ("perturb", ["--output", "{tmp}/perturbation"], "the work"),
    ("sanity", ["--output", "{tmp}/sanity"], "the work"),
    ("analyze", ["{tmp}/maps"], "the work"),
    ("roar", ["--train-maps", "{tmp}/a", "--test-maps", "{tmp}/b"], "one cell at a time"),
])
def test_every_job_on_ray_takes_in_process_and_refuses_it_beside_a_cluster(job, argv, what, tmp_path,
                                                                         capsys) -> None:
    """Before anything is read or written: one line, exit 2."""
    import importlib

    module = importlib.import_module(f"jobs.{job}")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert module.main([*argv, "--in-process", "--ray-address", "127.0.0.1:6379", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"jobs.{job}: error: --in-process runs {what} in this process: leave out --ray-address and "
                   "--workers"), err
    assert not list(tmp_path.iterdir())
