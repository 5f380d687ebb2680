"""jobs.runtime.progress: lines at a steady interval where there is no terminal, a bar where there is one."""

from __future__ import annotations

import io
import re
import time

from jobs.runtime.progress import Progress, duration, progress_seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_a_line_comes_at_once_then_at_each_interval_and_at_the_end() -> None:
    stream = io.StringIO()
    with Progress("attribute", 4, "shard", samples_total=100, interval=0.2, stream=stream) as progress:
        assert stream.getvalue().startswith("attribute: 0/4 shards, 0/100 samples, 0.0 samples/s, 0 errors, elapsed 0 s,"
                                            " ETA unknown\n")
        progress.update(1, samples=20, errors=5)
        time.sleep(0.7)  # a shard that takes long: the lines keep coming
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 4, lines
    assert re.fullmatch(r"attribute: 1/4 shards, 25/100 samples, [\d.]+ samples/s, 5 errors, elapsed \d+ s, ETA \d+ s",
                        lines[1]), lines
    assert lines[-1].startswith("attribute: 1/4 shards, 25/100 samples")


def test_units_without_samples_have_a_rate_per_minute_and_no_eta_when_done() -> None:
    stream = io.StringIO()
    with Progress("sanity", 2, "step", interval=60, stream=stream) as progress:
        progress.update(2)
        progress.set_postfix_str("fc: acc 0.5")
    last = stream.getvalue().splitlines()[-1]
    assert re.fullmatch(r"sanity: 2/2 steps, [\d.]+ steps/min, elapsed \d+ s \(fc: acc 0.5\)", last), last


def test_no_progress_means_lines_even_on_a_terminal_and_a_terminal_gets_the_bar() -> None:
    lines = Terminal()
    with Progress("perturb", 3, "task", no_bar=True, interval=60, stream=lines) as progress:
        progress.update(3)
    assert lines.getvalue().splitlines()[-1].startswith("perturb: 3/3 tasks")
    bar = Terminal()
    with Progress("perturb", 3, "task", interval=60, stream=bar) as progress:
        progress.update(3)
    assert "3/3" in bar.getvalue() and "perturb: 3/3 tasks," not in bar.getvalue()


def test_an_interrupted_loop_prints_no_last_line() -> None:
    stream = io.StringIO()
    try:
        with Progress("roar", 3, "cell", interval=60, stream=stream):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert len(stream.getvalue().splitlines()) == 1  # the first line only: the job prints its own one line


def test_the_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PATHWAY_PROGRESS_SECONDS", "5")
    assert progress_seconds() == 5
    monkeypatch.setenv("PATHWAY_PROGRESS_SECONDS", "soon")
    assert progress_seconds() == 30
    assert [duration(s) for s in (42, 185, 7620)] == ["42 s", "3 min 05 s", "2 h 07 min"]
