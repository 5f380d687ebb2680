"""One writer per output: a lease object that the driver of a run holds, renews and releases.

Two drivers on one output would plan different samples under the same shard ids. The driver
therefore takes ``_lease.json`` under the output before it plans anything:

- on an object store, with a conditional create (``If-None-Match: *``); a lease whose holder
  stopped renewing it is taken over with a conditional overwrite (``If-Match`` on its ETag), so
  of two drivers racing for an expired lease exactly one wins; renewals are conditional too, so a
  driver whose lease was taken over learns it at its next renewal and stops;
- on local disk, with an exclusive create, and a lease held by a process of this machine that
  is gone is taken over at once (no need to wait for it to expire).

A second driver is refused with a message naming the holder (host, process, since when, until
when) and the fix. Filesystems without conditional writes get the same protocol without the
atomicity (documented in docs/format.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from storage.io.fs import StorageError, is_local, storage_errors, write_bytes_atomic
from storage.io.location import Location
from storage.io.retry import retrying

LEASE = "_lease.json"
#: Seconds a lease lasts without renewal; the holder renews it every third of that.
DEFAULT_TTL = 90.0


class LeaseHeld(StorageError):
    """Another driver holds the output's lease."""


class LeaseLost(StorageError):
    """This driver's lease was taken over by another (it stopped renewing for longer than the TTL)."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Lease:
    """The output's lease, for one driver. Use as a context manager: acquired on entry, renewed in the
    background, released on exit (also after an error)."""

    def __init__(self, where: Location, ttl: float = DEFAULT_TTL, purpose: str = "jobs.attribute") -> None:
        self.where, self.ttl, self.purpose = where, float(ttl), purpose
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: LeaseLost | None = None

    # -- the record ----------------------------------------------------------------------
    def _record(self) -> bytes:
        now = _now()
        return json.dumps({"token": self.token, "purpose": self.purpose, "host": socket.gethostname(),
                           "pid": os.getpid(), "renewed_at": now.isoformat(timespec="seconds"),
                           "expires_at": (now + _dt.timedelta(seconds=self.ttl)).isoformat(timespec="seconds")},
                          indent=1).encode()

    @property
    def _path(self) -> str:
        return self.where.path(LEASE)

    # -- acquiring -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeld` naming who holds it. A store blip is retried:
        a create whose answer was lost is recognized by the token it wrote."""
        with storage_errors(self.where.url_of(LEASE), "take the lease", self.where.storage_options):
            retrying(self._acquire, f"taking the lease on {self.where.url}")

    def _acquire(self) -> None:
        if self._create():
            return
        holder, etag = self._read()
        if holder is None:  # released between our create and our read
            if self._create():
                return
            holder, etag = self._read()
        if holder is not None and holder.get("token") == self.token:
            self._etag = etag
            return
        if holder is not None and not _expired(holder) and not _gone_here(holder):
            raise LeaseHeld(
                f"{self.where.url} is being written by another run ({holder.get('purpose')} on "
                f"{holder.get('host')}, pid {holder.get('pid')}, lease renewed {holder.get('renewed_at')}, "
                f"valid until {holder.get('expires_at')}); wait for it to finish, or for its lease to expire "
                "if it died, or write to another --output"
            )
        if not self._replace(etag):
            holder, _ = self._read()
            raise LeaseHeld(f"{self.where.url}: another run took the expired lease first "
                            f"({(holder or {}).get('host')}, pid {(holder or {}).get('pid')}); write to another "
                            "--output or wait for it to finish")

    def _create(self) -> bool:
        data = self._record()
        if is_local(self.where.fs):
            path = self.where.fs._strip_protocol(self._path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        if _s3(self.where.fs):
            try:
                self._etag = _etag(self.where.fs.call_s3("put_object", **self._key(), Body=data, IfNoneMatch="*"))
                return True
            except OSError as err:
                if _precondition(err):
                    return False
                raise
        if self.where.fs.exists(self._path):
            return False
        write_bytes_atomic(self.where.fs, self._path, data)
        return True

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            if _s3(self.where.fs):
                self.where.fs.invalidate_cache(self._path)
                with self.where.fs.open(self._path, "rb") as fh:  # reads pinned to the ETag it saw first
                    return json.loads(fh.read()), fh.details.get("ETag")
            return json.loads(self.where.fs.cat_file(self._path)), None
        except FileNotFoundError:
            return None, None
        except ValueError:
            return {}, None  # a torn lease file: treated as expired

    def _replace(self, etag: str | None) -> bool:
        """Overwrite a stale lease with ours; False when another driver got there first."""
        data = self._record()
        if _s3(self.where.fs):
            try:
                match = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
                self._etag = _etag(self.where.fs.call_s3("put_object", **self._key(), Body=data, **match))
                return True
            except OSError as err:
                if _precondition(err):
                    return False
                raise
        write_bytes_atomic(self.where.fs, self._path, data)
        holder, _ = self._read()
        return bool(holder) and holder.get("token") == self.token

    # -- renewing and releasing ------------------------------------------------------------
    def renew(self) -> None:
        """Extend the lease; :class:`LeaseLost` when another driver holds it now."""
        with storage_errors(self.where.url_of(LEASE), "renew the lease", self.where.storage_options):
            if _s3(self.where.fs):
                try:
                    self._etag = _etag(self.where.fs.call_s3("put_object", **self._key(), Body=self._record(),
                                                             IfMatch=self._etag))
                    return
                except OSError as err:
                    if not _precondition(err):
                        raise
            else:
                holder, _ = self._read()
                if holder and holder.get("token") == self.token:
                    write_bytes_atomic(self.where.fs, self._path, self._record())
                    return
        raise LeaseLost(f"the lease on {self.where.url} was taken over by another run while this one held it; "
                        "this run stops so that the two do not write the same shards")

    def release(self) -> None:
        """Delete the lease if it is still ours."""
        def release() -> None:
            holder, _ = self._read()
            if holder and holder.get("token") == self.token:
                self.where.fs.rm_file(self._path)

        with storage_errors(self.where.url_of(LEASE), "release the lease", self.where.storage_options):
            retrying(release, f"releasing the lease on {self.where.url}")

    def _renewer(self, on_lost: Callable[[LeaseLost], None] | None) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LeaseLost as err:
                self.lost = err
                if on_lost is not None:
                    on_lost(err)
                return
            except StorageError:
                continue  # a store blip: the next renewal tries again, well before expiry

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._renewer, args=(None,), daemon=True, name="lease-renewer")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost is None:
            self.release()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the background renewal found the lease taken over."""
        if self.lost is not None:
            raise self.lost

    def _key(self) -> dict[str, str]:
        bucket, key, _ = self.where.fs.split_path(self._path)
        return {"Bucket": bucket, "Key": key}


def _s3(fs: Any) -> bool:
    """Whether conditional writes are available (s3fs: S3 and S3-compatible stores)."""
    return hasattr(fs, "call_s3")


def _etag(response: dict[str, Any]) -> str | None:
    return response.get("ETag")


def _precondition(err: OSError) -> bool:
    """Whether a conditional write was refused (412 PreconditionFailed, or 409 from a concurrent one)."""
    text = str(err).lower()
    return isinstance(err, FileExistsError) or any(m in text for m in ("precondition", "pre-condition", "conditional"))


def _expired(holder: dict[str, Any]) -> bool:
    try:
        return _dt.datetime.fromisoformat(holder["expires_at"]) <= _now()
    except (KeyError, TypeError, ValueError):
        return True


def _gone_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran on this machine and its process no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError):
        return False
    return False
