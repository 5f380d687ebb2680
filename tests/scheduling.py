"""The order the suite runs in: test modules longest first, so that several processes finish together.

The README's test command runs the suite on two processes (pytest-xdist, ``-n 2 --dist loadfile``):
each takes a whole test module at a time, in collection order. Most of the suite's time is a few modules
of a minute or more (real jobs, clusters and stores that fail on purpose); handed out last, one of
them runs alone while the other processes sit idle. So modules are collected longest first
(largest-first scheduling), by the seconds each took in a recorded run, kept in ``tests/durations.json``
and rewritten by ``pytest --store-durations``. A module the record does not name yet counts as
:data:`UNRECORDED_SLOW` seconds if it has a slow test (one that starts Ray, S3 or a training), else 0.

The order changes nothing but the order: tests within a module keep theirs, and a stale record only
makes the processes finish less evenly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")

#: Seconds assumed for a module with a slow test that the record does not name yet (a typical one).
UNRECORDED_SLOW = 10.0

_measured: dict[str, float] = defaultdict(float)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test module's seconds in this run to {DURATIONS.name} (the order the suite "
                          "runs in); run the whole suite with it")


def pytest_configure(config: pytest.Config) -> None:
    """A module's seconds are its whole module's: a run that deselects tests (``-m``, ``-k``) would record
    a part of some modules as all of them."""
    if config.getoption("store_durations") and (config.option.markexpr or config.option.keyword):
        raise pytest.UsageError("--store-durations records whole modules: run it without -m and -k")


def recorded() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def longest_first(items: list[pytest.Item], seconds: dict[str, float]) -> list[pytest.Item]:
    """``items`` with the modules of most ``seconds`` first; a stable sort, so each module's tests keep their
    order and modules of equal weight keep the collection's."""
    weight: dict[str, float] = {}
    for item in items:
        module = module_of(item.nodeid)
        slow = item.get_closest_marker("slow") is not None
        weight[module] = max(weight.get(module, 0.0), seconds.get(module, UNRECORDED_SLOW if slow else 0.0))
    return sorted(items, key=lambda item: -weight[module_of(item.nodeid)])


@pytest.hookimpl(trylast=True)  # after conftest.py marks the slow tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = longest_first(items, recorded())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every phase's seconds, by module (the process that runs the session gets the workers' reports too)."""
    _measured[module_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not config.getoption("store_durations") or hasattr(config, "workerinput"):  # only the session's owner writes
        return
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return  # an interrupted run records a part only
    merged = recorded() | {module: round(seconds, 1) for module, seconds in _measured.items()}
    DURATIONS.write_text(json.dumps(dict(sorted(merged.items(), key=lambda kv: -kv[1])), indent=1) + "\n")
