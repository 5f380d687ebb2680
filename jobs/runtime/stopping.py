"""Stopping a job on request: Ctrl-C (SIGINT) and SIGTERM (what ``ray job stop`` and Kubernetes send).

Every job enters through :func:`jobs.runtime.cli.run_main`, which installs the handlers here for the run
(:func:`handlers`) and turns :class:`Interrupted` into one line and exit status 128 + the signal
(130 for SIGINT, 143 for SIGTERM). Nothing a signal interrupts is lost: shards, cells and
checkpoints are committed atomically by whoever writes them, and the same command resumes.

Why SIGINT was ignored: every process Ray starts has SIGINT blocked (``ray._private.services``
blocks it before exec, so that a terminal's Ctrl-C does not kill Ray's daemons), and a process
inherits its parent's mask: the entrypoint that ``ray job submit`` runs, or a job started from a
shell on a Ray worker, never saw Ctrl-C and ran to its end. :func:`handlers` unblocks both signals.

Why our own handlers: ``ray.init`` replaces the driver's SIGTERM handler with ``sys.exit(15)``
(a SystemExit that ends the job with status 15 and a traceback-free but wordless exit), and
Python's own SIGINT becomes a KeyboardInterrupt traceback of the Ray Data loop. :func:`reinstall`
puts ours back after Ray starts (jobs.runtime.cluster.start_ray). The handler raises :class:`Interrupted`
in the main thread at once (a blocked ``iter_rows`` / ``ray.wait`` wakes within its poll), and
also records the signal, so a loop whose Ray call swallowed the exception still stops
(:func:`check`), and a job that then fails on a dead worker is still reported as interrupted.
A second signal while the job is already stopping ends the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

#: The signals a job stops on.
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None  # the signal that asked this process to stop, if any
_active = False  # whether handlers() is installed (reinstall() puts ours back only then)


class Interrupted(KeyboardInterrupt):
    """The job was asked to stop by ``signum``; ``detail`` says what is kept (e.g. "3 of 40 shards
    committed"). A KeyboardInterrupt, so that code which already treats Ctrl-C specially
    (Ray Data's executor shuts down its actors on it) does the same for SIGTERM."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = "") -> None:
        super().__init__(detail or signal_name(signum))
        self.signum, self.detail = int(signum), detail

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """``SIGINT`` / ``SIGTERM``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _requested


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested (for loops whose Ray calls may have
    swallowed the exception the handler raised)."""
    if _requested is not None:
        raise Interrupted(_requested)


def as_interrupted(err: BaseException, detail: str = "") -> Interrupted:
    """``err`` (a KeyboardInterrupt, or a failure that followed a stop request) as :class:`Interrupted`
    carrying ``detail``."""
    signum = getattr(err, "signum", None) or _requested or signal.SIGINT
    return Interrupted(signum, detail)


def _handler(signum: int, frame: object) -> None:
    global _requested
    if _requested is not None:  # asked twice: stop now (everything committed is already durable)
        os.write(2, f"{signal_name(signum)} again: exiting now\n".encode())
        os._exit(128 + signum)
    _requested = signum
    raise Interrupted(signum)


def reinstall() -> None:
    """Put our handlers back where a library replaced them (``ray.init`` sets its own for SIGTERM);
    does nothing outside :func:`handlers`."""
    if _active and threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """Stop on SIGINT and SIGTERM by raising :class:`Interrupted` for the duration; the previous
    handlers are restored after (a test process that calls a job's main keeps its own). Outside
    the main thread signals cannot be handled, and nothing is installed."""
    global _active, _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _active, _requested = True, None
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    # A process that Ray started has SIGINT blocked (ray._private.services), and so has what it
    # starts: the entrypoint of `ray job submit` ignored Ctrl-C and ran to its end.
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    try:
        yield
    finally:
        _active = False
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        sys.stderr.flush()
