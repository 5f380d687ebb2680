"""The suite's order (tests/scheduling.py): longest modules first, each module's tests in their order."""

from __future__ import annotations

import json

import pytest

from tests import scheduling


class Item:
    """What the order reads of a collected test: its node id and its slow mark."""

    def __init__(self, nodeid: str, slow: bool = False) -> None:
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name: str):
        return pytest.mark.slow if name == "slow" and self.slow else None


def test_recorded_modules_go_longest_first_and_keep_their_tests_in_order() -> None:
    items = [Item("a.py::x"), Item("a.py::y"), Item("b.py::x"), Item("c.py::x"), Item("c.py::K::y")]
    ordered = scheduling.longest_first(items, {"a.py": 1.0, "b.py": 30.0, "c.py": 5.0})
    assert [i.nodeid for i in ordered] == ["b.py::x", "c.py::x", "c.py::K::y", "a.py::x", "a.py::y"]


def test_an_unrecorded_module_with_a_slow_test_counts_as_a_typical_slow_one() -> None:
    items = [Item("fast.py::x"), Item("new.py::x"), Item("new.py::y", slow=True), Item("short.py::x")]
    ordered = scheduling.longest_first(items, {"short.py": scheduling.UNRECORDED_SLOW / 2})
    assert [i.nodeid for i in ordered] == ["new.py::x", "new.py::y", "short.py::x", "fast.py::x"]


def test_the_record_names_modules_that_exist() -> None:
    """A renamed or deleted module left in the record would only waste a line; a missing one runs late."""
    from tests.ray_cluster import ROOT

    recorded = json.loads(scheduling.DURATIONS.read_text())
    assert recorded and all((ROOT / module).is_file() for module in recorded), \
        [m for m in recorded if not (ROOT / m).is_file()]


def test_recording_a_run_that_deselects_tests_is_refused() -> None:
    """Its modules' seconds would be a part of theirs: one line, exit 4 (a usage error), nothing written."""
    import subprocess
    import sys

    from tests.ray_cluster import ROOT

    before = scheduling.DURATIONS.read_bytes()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--store-durations", "-m",
                           "not slow", "tests/test_scheduling.py::test_the_record_names_modules_that_exist"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "--store-durations records whole modules: run it without -m and -k" in done.stderr
    assert scheduling.DURATIONS.read_bytes() == before
