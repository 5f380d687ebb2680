"""Transient or permanent: which storage failures are worth another try, and trying again.

An object store throttles (503 SlowDown), fails (500, 502, 504), times out or drops connections
now and then; the same request a moment later succeeds. Those failures are *transient* and are
retried here with exponential backoff and jitter, for up to a time budget that rides out a store
blip of a minute or so. Everything else (no such key, access denied, a malformed request, a
corrupt file, a store that says it is out of space) is *permanent*: retrying cannot help, so it
is raised at once.

s3fs retries a few of these itself, briefly; what still comes out is an ``OSError`` whose errno
says what the store answered (``EBUSY`` for 503, ``EREMOTEIO`` for 500) or a connection error,
which :func:`is_transient` recognizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from storage.io.fs import redact_text

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds one operation keeps retrying transient failures (``$PATHWAY_STORAGE_RETRY_SECONDS``).
DEFAULT_BUDGET = 120.0
_FIRST_WAIT, _MAX_WAIT = 0.2, 10.0
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.ECONNREFUSED, errno.EPIPE, getattr(errno, "EREMOTEIO", errno.EIO)}
_TRANSIENT_TEXT = ("slowdown", "slow down", "reduce your request rate", "service unavailable", "internalerror",
                   "internal error", "requesttimeout", "request timeout", "bad gateway", "gateway timeout",
                   "throttl", "too many requests", "server disconnected", "connection reset", "timed out",
                   "connection aborted", "broken pipe", "incompleteread", "response ended prematurely")
_TRANSIENT_NAMES = ("Timeout", "ServerDisconnected", "ClientConnection", "ClientPayload", "ClientOSError",
                    "EndpointConnection", "ConnectionClosed", "ReadTimeout", "ConnectTimeout", "ResponseStreaming",
                    "IncompleteRead", "ProtocolError", "RemoteDisconnected")


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_TEXT = ("no space left", "storagefull", "storage full", "insufficientstorage", "insufficient storage",
              "quotaexceeded", "quota exceeded", "disk quota", "minimum free drive threshold", "no free volumes")


def is_out_of_space(err: BaseException) -> bool:
    """Whether ``err`` says that the store has no room for a write: a full disk or volume (ENOSPC, HTTP
    507, MinIO's XMinioStorageFull), a quota. Not retried: space is not freed by waiting a minute."""
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return True
    text = f"{type(err).__name__} {err}".lower()
    return any(marker in text for marker in _FULL_TEXT)


#: Whether this process has talked to a store yet (or was told the driver did). Until then a refused
#: connection is a misconfigured endpoint, reported at once; afterwards it is a blip, retried.
_REACHED = False
_CONNECTION_NAMES = ("ConnectionRefused", "EndpointConnection", "ClientConnectorError", "ConnectError")


def reached() -> None:
    """Record that the store answered (or, in a worker, that the driver's preflight reached it)."""
    global _REACHED
    _REACHED = True


def _unreachable(err: BaseException) -> bool:
    return isinstance(err, ConnectionRefusedError) or any(n in type(err).__name__ for n in _CONNECTION_NAMES) \
        or "could not connect" in str(err).lower()


def budget() -> float:
    """The retry budget in seconds (``$PATHWAY_STORAGE_RETRY_SECONDS``, default 120)."""
    try:
        return max(0.0, float(os.environ.get("PATHWAY_STORAGE_RETRY_SECONDS", DEFAULT_BUDGET)))
    except ValueError:
        return DEFAULT_BUDGET


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is a failure that the same request can get past a moment later."""
    marked = getattr(err, "transient", None)
    if marked is not None:
        return bool(marked)
    if _unreachable(err):
        return _REACHED
    if is_out_of_space(err):
        return False
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError, socket.timeout, asyncio.TimeoutError,
                        http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return True
    if any(name in type(err).__name__ for name in _TRANSIENT_NAMES):
        return True
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
        return True
    text = str(err).lower()
    return any(marker in text for marker in _TRANSIENT_TEXT)


def _note_retries(err: BaseException, attempts: int, seconds: float) -> None:
    """Let the error's message say how long it was retried (storage.io.fs.translate words it; an error
    it already worded on the first attempt is reworded)."""
    with contextlib.suppress(AttributeError, TypeError):
        err.retried = (attempts, seconds)
        if err.args and isinstance(err.args[0], str) and "the store failed (" in err.args[0]:
            err.args = (err.args[0].replace("the store failed (", f"the store kept failing for {seconds:.0f} s "
                                            f"({attempts} attempt{'s' if attempts != 1 else ''}; ", 1), *err.args[1:])


def retrying(operation: Callable[[], T], what: str, *, seconds: float | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``operation()``, retried with backoff while it fails transiently, for up to ``seconds``
    (default :func:`budget`); a permanent failure, or a transient one past the budget, is raised."""
    start = time.monotonic()
    deadline = start + (budget() if seconds is None else seconds)
    wait, attempt = _FIRST_WAIT, 1
    while True:
        try:
            result = operation()
            reached()
            return result
        except Exception as err:  # noqa: BLE001 - classified below, re-raised unless transient
            if not _unreachable(err):
                reached()  # the store answered, if only to refuse
            left = deadline - time.monotonic()
            if not is_transient(err) or left <= 0:
                if is_transient(err):
                    _note_retries(err, attempt, time.monotonic() - start)
                raise
            pause = min(wait * (0.5 + random.random()), left)
            log.info("%s failed transiently (attempt %d: %s: %s); retrying in %.1f s", redact_text(what), attempt,
                     type(err).__name__, redact_text(str(err)[:200]), pause)  # logs never hold a URL's credentials
            sleep(pause)
            wait, attempt = min(wait * 2, _MAX_WAIT), attempt + 1
