"""A job's progress, shown the way its output is read: a tqdm bar on a terminal, otherwise one line at a
steady interval (``ray job logs``, a Kubernetes pod's log, a file), so a long run is never silent.

    with Progress("attribute", total=40, unit="shard", samples_total=2000, no_bar=args.no_progress) as progress:
        for row in rows:
            progress.update(1, samples=row["samples"], errors=row["errors"])

Without a TTY on stderr, or with ``--no-progress``, a line such as
``attribute: 12/40 shards, 600/2000 samples, 45.3 samples/s, 0 errors, ETA 31 s`` goes to stderr
when the loop starts and then every ``$PATHWAY_PROGRESS_SECONDS`` (default 30) from a background
thread, so it keeps coming while one shard takes minutes; a last line when the loop ends.
The jobs on Ray (attribute, perturb, sanity, roar) all report through this one helper.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

PROGRESS_SECONDS_ENV = "PATHWAY_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0


def progress_seconds() -> float:
    """Seconds between progress lines (``$PATHWAY_PROGRESS_SECONDS``, default 30; at least 0.1)."""
    try:
        return max(0.1, float(os.environ.get(PROGRESS_SECONDS_ENV, DEFAULT_PROGRESS_SECONDS)))
    except ValueError:
        return DEFAULT_PROGRESS_SECONDS


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` shows on a terminal (stderr through jobs.runtime.noise's filter included)."""
    if stream is sys.stderr:
        from jobs.runtime.noise import stderr_is_terminal

        try:
            return stderr_is_terminal()
        except OSError:
            return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts of a job's units (shards, tasks, cells), and optionally of samples and errors, shown as
    a bar on a terminal or as periodic lines elsewhere (see the module docstring)."""

    def __init__(self, desc: str, total: int, unit: str, *, no_bar: bool = False, samples_total: int | None = None,
                 interval: float | None = None, stream: TextIO | None = None) -> None:
        self.desc, self.total, self.unit, self.samples_total = desc, int(total), unit, samples_total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = progress_seconds() if interval is None else interval
        self.lines = no_bar or not is_terminal(self.stream)
        self.done = self.samples = self.errors = 0
        self.postfix = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    # -- the loop's side ------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        if self.lines:
            self._emit()
            self._thread = threading.Thread(target=self._tick, name=f"progress-{self.desc}", daemon=True)
            self._thread.start()
        else:
            from tqdm import tqdm

            self._bar = tqdm(total=self.samples_total if self.samples_total is not None else self.total,
                             unit="sample" if self.samples_total is not None else self.unit, desc=self.desc,
                             dynamic_ncols=True, file=self.stream)
        return self

    def update(self, n: int = 1, *, samples: int = 0, errors: int = 0) -> None:
        """``n`` more units done, holding ``samples`` samples of which ``errors`` were error rows."""
        self.done += n
        self.samples += samples
        self.errors += errors
        if self._bar is not None:
            self._bar.update(samples + errors if self.samples_total is not None else n)

    def set_postfix_str(self, text: str) -> None:
        """A note shown after the counts (the bar's postfix, or the end of the next line)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def write(self, text: str) -> None:
        """A message of its own line, that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if exc[0] is None:
                self._emit()
        if self._bar is not None:
            self._bar.close()

    # -- the lines ------------------------------------------------------------------------------
    def line(self) -> str:
        """The progress line now: units of total, samples and their rate, errors, ETA."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        parts = [f"{self.done}/{self.total} {self.unit}s"]
        if self.samples_total is not None:
            handled = self.samples + self.errors
            parts += [f"{handled}/{self.samples_total} samples", f"{handled / elapsed:.1f} samples/s",
                      f"{self.errors} error{'s' if self.errors != 1 else ''}"]
            left = (self.samples_total - handled) / (handled / elapsed) if handled else None
        else:
            parts.append(f"{self.done / elapsed * 60:.1f} {self.unit}s/min")
            left = (self.total - self.done) / (self.done / elapsed) if self.done else None
        parts.append(f"elapsed {duration(elapsed)}")
        if self.done < self.total:
            parts.append(f"ETA {duration(left)}" if left is not None else "ETA unknown")
        text = f"{self.desc}: {', '.join(parts)}"
        return f"{text} ({self.postfix})" if self.postfix else text

    def _emit(self) -> None:
        try:
            print(self.line(), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed stream ends the lines, never the job
            self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit()
