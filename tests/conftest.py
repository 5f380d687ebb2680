"""Shared fixtures: deterministic seeds, real Fashion-MNIST images, a real S3 server, storage roots
to test against, a tiny trained checkpoint and one local Ray per test session (per process: each
pytest-xdist worker is a session of its own). Helpers that are not fixtures live in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections import Counter

#: OpenMP threads that wait for work sleep instead of spinning, in this process and every process it
#: starts (job subprocesses, Ray's workers): two test processes share the cores, and spinning threads
#: took 10 % of the suite's CPU from the other's work (benchmarks/RESULTS.md, "Test suite", session 13).
#: Set before torch loads its OpenMP runtime, which reads it once; results do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Machines that set PYTHONDONTWRITEBYTECODE=1 (these do) keep no compiled module: every pytest process
#: then rewrote every test module's asserts again (collecting took 9.5 s of CPU instead of 6.2), and every
#: process a run starts (Ray workers, job subprocesses: about 200) compiled the project's modules from
#: source. The test session writes the caches, into the ``__pycache__`` folders git ignores (a checkout
#: it cannot write to just stays without them); the processes it starts read them.
sys.dont_write_bytecode = False

import numpy as np  # noqa: E402 - after the OpenMP setting above
import pytest  # noqa: E402
import torch  # noqa: E402

from storage.sources import FASHION_MNIST_DIR
from tests.helpers import N_IMAGES, fashion_mnist, tiny_checkpoint
from tests.ray_cluster import short_tmp
from tests.servers import S3Server, seaweedfs

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fmnist() -> tuple[np.ndarray, np.ndarray]:
    """The first N_IMAGES Fashion-MNIST test images (uint8 [N, 28, 28, 1]) and labels."""
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist")
    return fashion_mnist("test", N_IMAGES)


@pytest.fixture(scope="session")
def fmnist_train() -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist("train", 4000)


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist("test", 400)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    """One SeaweedFS server on loopback for the whole test session, killed at its end (its data goes
    with the session: no graceful stop to wait for)."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), stop_grace=0) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path) -> tuple[str, dict]:
    """A fresh, empty root URL and its fsspec storage options: a local dir, then s3://."""
    if request.param == "local":
        return str(tmp_path / "root"), {}
    server: S3Server = request.getfixturevalue("s3_server")
    return server.url(f"t-{uuid.uuid4().hex[:12]}"), server.storage_options


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A tiny trained ResNet-8 checkpoint (tests/helpers.py tiny_checkpoint), one per test session and
    trained only when its code changed since the last run (tests read it, none writes it)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


class SharedRay:
    """The one local Ray of the test session, started as the jobs start theirs (whose start_ray reuses
    it, and whose stop_ray leaves it up): started on first use, stopped for a test that needs no Ray
    in this process (``no_ray``), started again after. The fault tests that kill its actor processes
    share it too: Ray restarts the actors, and later modules get new ones."""

    def __init__(self) -> None:
        self.starts = 0
        self.temp: str | None = None

    def up(self) -> None:
        import ray

        from jobs.runtime.cluster import start_local_ray

        _ray_logs_to_fd2()
        if ray.is_initialized():
            return
        self.temp = short_tmp("rj")
        # Ray's log monitor looks for new worker log files every 0.1 s until the session holds 1,000 files,
        # then every 0.5 s; at threshold 0 it does so from the start: 0.30 instead of 0.49 s of CPU per 30 s
        # beside 117 files (benchmarks/RESULTS.md, session 19). Its daemon only: job subprocesses keep Ray's
        # default. A joined driver (the signal tests) still gets every worker line, a new file's 0.5 s later.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
            start_local_ray(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=self.temp, log_to_driver=False)
        self.starts += 1

    def down(self) -> None:
        ray = sys.modules.get("ray")  # not imported: no Ray to stop (and the fast tier never imports it here)
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None


SHARED_RAY = SharedRay()


def _ray_logs_to_fd2() -> None:
    """Point Ray's and Ray Data's console log handlers at the process's stderr (fd 2). They keep the
    ``sys.stderr`` of the moment Ray was imported: in a test process, a test's capture stream, closed when
    that test ends, so a later in-process job's log record became a logging traceback on stderr. fd 2 is
    what a job run as a subprocess logs to, and what ``capfd`` captures."""
    import logging

    import ray.data  # noqa: F401 - configures Ray Data's loggers

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ == "PlainRayHandler" and handler.stream is not sys.__stderr__:
                handler.stream = sys.__stderr__  # not setStream: it flushes the old stream, which may be closed


@pytest.fixture(scope="module")
def ray_session():
    """The session's local Ray (see SharedRay), up for the module; left up for the next module."""
    import ray

    torch.set_num_threads(1)
    SHARED_RAY.up()
    yield ray


@pytest.fixture(autouse=True)
def _ray_for_the_test(request: pytest.FixtureRequest) -> None:
    """Up again for a test that asks for ``ray_session`` after an earlier test of its module stopped it."""
    if "ray_session" in request.fixturenames:
        SHARED_RAY.up()


@pytest.fixture
def no_ray() -> None:
    """No Ray in this process for the test (it starts its own, or checks that a job started none)."""
    SHARED_RAY.down()


def pytest_sessionfinish(session: pytest.Session) -> None:
    SHARED_RAY.down()
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: its counts go to the session's owner
        session.config.workeroutput["costs"] = own_costs()


#: Local Rays started in this process: the shared one's starts, and those of jobs run in-process with none up.
LOCAL_RAYS = [0]


def pytest_configure(config: pytest.Config) -> None:
    """Count every local Ray started in this process (jobs.runtime.cluster's one
    way to start one: the count only, the start is unchanged), and have pytest-xdist hand out the
    test files in the order :func:`pytest_collection_modifyitems` gives them."""
    from jobs.runtime import cluster

    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: its own order is most tests first
        config.option.loadscopereorder = False

    start = cluster.start_local_ray

    def counted(**init_kwargs) -> None:
        LOCAL_RAYS[0] += 1
        start(**init_kwargs)

    cluster.start_local_ray = counted


def own_costs() -> list[int]:
    """[local Ray starts, of them the shared one's, Ray temp folders, tiny checkpoints trained] in this process."""
    from tests import helpers, ray_cluster

    return [LOCAL_RAYS[0], SHARED_RAY.starts, ray_cluster.RAY_TEMPS, helpers.TRAININGS]


#: The pytest-xdist workers' costs, summed as each one ends (empty in a run on one process).
WORKER_COSTS: list[list[int]] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    WORKER_COSTS.append(getattr(node, "workeroutput", {}).get("costs", [0, 0, 0, 0]))


def pytest_terminal_summary(terminalreporter) -> None:
    """How many Rays this run started and how many tiny models it trained: what the slow tier costs."""
    workers = len(WORKER_COSTS)
    rays, shared, temps, trained = (sum(column) for column in zip(own_costs(), *WORKER_COSTS))
    where = f"in {workers} processes" if workers else "in this process"
    terminalreporter.write_line(
        f"tests: {rays} local Ray start(s) {where} ({shared} of them the shared one's), {temps} Ray temp folder(s) "
        f"made by the tests (the shared Rays, job subprocesses, cluster nodes), {trained} tiny checkpoint(s) trained")


#: Fixtures that start a service or train a model: a test using one belongs to the slow tier.
SLOW_FIXTURES = frozenset({"s3_server", "ray_session", "checkpoint", "reference"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs S3, Ray or a trained model (through the fixtures above, or
    ``storage_root``'s s3 case), so that ``pytest -m "not slow"`` is the fast tier: unit tests only,
    no service and no training. Tests that start such things themselves carry the mark by hand.

    Then order the files fewest tests first. pytest-xdist (``--dist loadfile``) gives a process its
    next file when two of its tests are left, so the files handed out last decide how long one process
    runs alone at the end. Its own order (most tests first) ends on the files of one or two long job
    tests; this one ends on unit-test files of many short tests, and the processes finish together."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or params.get("storage_root") == "s3":
            item.add_marker(pytest.mark.slow)
    per_file = Counter(item.nodeid.split("::")[0] for item in items)
    items.sort(key=lambda item: per_file[item.nodeid.split("::")[0]])  # stable: a file's tests keep their order
