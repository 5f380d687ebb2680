"""Known-benign lines that Ray prints on every run, silenced at their source; everything else shows.

Each was found in a real job's whole output (tests/jobs/runtime/test_noise.py runs one and checks):

* Ray's token warning (``authentication_token_setup.py``, Python logging, WARNING): "Token
  authentication is enabled for this Ray cluster...". The local Ray binds loopback and the job's
  own clients hold the token; docs/cluster.md says when token auth matters.
* Ray Data's "Progress bars disabled..." (Python logging, WARNING): the job turns Ray Data's bars off
  itself (jobs.runtime.cluster.start_ray) and prints its own progress (jobs.runtime.progress).
* Ray Core's E-level "Actor with class name: 'MapWorker(...)' ... has constructor arguments in the
  object store and max_restarts > 0" (``core_worker.cc``, C++ glog on the driver's stderr): Ray
  Data's actor pool always passes its transformer by reference and restarts actors; the
  transformer stays referenced by the pool for the whole run. Printed by C++, so no logging
  filter reaches it: :class:`StderrFilter` drops exactly that line from the driver's fd 2, and only
  while the job's Ray runs. Ray's own switch (``RAY_BACKEND_LOG_LEVEL``) would hide every C++ error.
* zarr's consolidated-metadata warning is silenced where storage.maps.zarr_maps consolidates.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import threading

#: (logger name, message start) of the Python log records that are dropped.
RAY_LOG_NOISE = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster"),
    ("ray.data._internal.progress", "Progress bars disabled. To enable, set"),
)
#: Whole stderr lines (bytes, without the newline) that are dropped: Ray Data's actor-pool
#: constructor-arguments line only.
STDERR_NOISE = (
    re.compile(rb"^\[[^\]]* E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: 'MapWorker\(.*\)' and ID: "
               rb"'[0-9a-f]+' has constructor arguments in the object store and max_restarts > 0\. "),
)


class _StartsWith(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_ray_logs() -> None:
    """Drop Ray's known-benign log records (:data:`RAY_LOG_NOISE`) at the loggers that emit them
    (idempotent; a record of another message, or another logger, is untouched)."""
    for name, start in RAY_LOG_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _StartsWith) and f.start == start for f in logger.filters):
            logger.addFilter(_StartsWith(start))


def is_noise(line: bytes) -> bool:
    """Whether a stderr line (without its newline) is one of :data:`STDERR_NOISE`."""
    return any(pattern.search(line) for pattern in STDERR_NOISE)


class StderrFilter:
    """Pass the process's fd 2 through a pipe that drops :data:`STDERR_NOISE` lines and forwards
    everything else as it comes (a partial line that may be a glog line waits at most 0.2 s).

    Install it after Ray's daemons have started (they would inherit the pipe); :meth:`close`
    restores fd 2 and forwards what is left."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.saved, data):]
            except OSError:
                return

    def _pump(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self.read], [], [], 0.2 if pending else None)
            if not ready:
                self._write(pending)
                pending = b""
                continue
            chunk = os.read(self.read, 65536)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            out = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if pending and not pending.startswith(b"["):  # a progress bar's \r line, a prompt: now
                out, pending = out + pending, b""
            self._write(out)
        self._write(pending)
        os.close(self.read)

    def close(self) -> None:
        """Restore fd 2 and forward what is still in the pipe."""
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # closes the pipe's write end: the pump reads to its end
        self.thread.join(timeout=2)
        if not self.thread.is_alive():
            os.close(self.saved)


_filter: StderrFilter | None = None


def filter_stderr() -> None:
    """Start :class:`StderrFilter` for this process, once."""
    global _filter
    if _filter is None:
        _filter = StderrFilter()


def stderr_is_terminal() -> bool:
    """Whether the process's stderr is a terminal: the filter's pipe hides that from ``isatty``."""
    return os.isatty(_filter.saved if _filter is not None else 2)


def unfilter_stderr() -> None:
    """Stop the filter, if one runs."""
    global _filter
    if _filter is not None:
        _filter.close()
        _filter = None
