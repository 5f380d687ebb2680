"""A storage prefix opened once: every read and write of a map dataset (or any output folder) under it.

    where = Location("s3://bucket/maps/run1", storage_options)
    where.put("_meta/run.json", data)    # atomic: readers see the old object or the whole new one
    where.get("_manifest/pathway/000003.json")
    where.find("_manifest/pathway", ".json")

Paths are relative to the prefix; errors are :class:`storage.io.fs.StorageError` naming the full URL
(never a credential). Transient store failures (throttling, 5xx, timeouts, dropped connections)
are retried with backoff first (:mod:`storage.io.retry`). Keys are used exactly as given: no glob expansion, so file names holding
``[``, ``]``, ``*`` or ``?`` are data, not patterns. Listings bypass fsspec's directory cache, so a
long-lived reader sees records written after its first listing.

Tested by tests/storage/io/test_fs.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage.io.fs import (StorageNotFound, is_local, join, open_fs, resolve_storage_options, storage_errors,
                        write_bytes_atomic, write_json_atomic)
from storage.io.retry import retrying

#: Parallel requests for many small objects (commit records): object stores answer slowly but in parallel.
PARALLEL_READS = 16


class Location:
    """An opened prefix: ``fs``, its ``root`` path, the ``url`` and its ``storage_options``. Picklable.

    ``storage_options`` None means ``$STORAGE_OPTIONS``'s, as the jobs read it; the options kept are
    resolved once here (:func:`storage.io.fs.resolve_storage_options`) and are a copy of the caller's."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = str(url).rstrip("/")
        self.storage_options = resolve_storage_options(storage_options)
        self.fs, root = open_fs(self.url, self.storage_options)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def path(self, rel: str) -> str:
        """The filesystem path of ``rel``."""
        return join(self.root, rel) if rel else self.root

    def url_of(self, rel: str) -> str:
        """The URL of ``rel``, for messages and for users."""
        return join(self.url, rel) if rel else self.url

    def put(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` atomically (parent folders are made where a filesystem has them)."""
        with storage_errors(self.url_of(rel), "write", self.storage_options):
            retrying(lambda: write_bytes_atomic(self.fs, self.path(rel), data), f"writing {self.url_of(rel)}")

    def put_json(self, rel: str, obj: Any) -> bytes:
        """``obj`` as sorted, indented JSON at ``rel``, atomically; returns the bytes."""
        with storage_errors(self.url_of(rel), "write", self.storage_options):
            return retrying(lambda: write_json_atomic(self.fs, self.path(rel), obj), f"writing {self.url_of(rel)}")

    def move(self, source: str, target: str) -> None:
        """Move ``source`` to ``target`` (a rename on local disk; a server-side copy and a delete on
        object stores, so ``target`` appears whole)."""
        def move() -> None:
            if is_local(self.fs):
                os.makedirs(os.path.dirname(self.fs._strip_protocol(self.path(target))), exist_ok=True)
                os.replace(self.fs._strip_protocol(self.path(source)), self.fs._strip_protocol(self.path(target)))
            else:
                self.fs.copy(self.path(source), self.path(target))
                self.fs.rm_file(self.path(source))

        with storage_errors(self.url_of(target), "publish", self.storage_options):
            retrying(move, f"moving {self.url_of(source)} to {self.url_of(target)}")

    def remove(self, rel: str) -> None:
        """Delete ``rel`` (no error when it is gone already)."""
        def remove() -> None:
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass

        with storage_errors(self.url_of(rel), "delete", self.storage_options):
            retrying(remove, f"deleting {self.url_of(rel)}")

    def get(self, rel: str) -> bytes:
        """The bytes at ``rel``; :class:`StorageNotFound` when there are none."""
        with storage_errors(self.url_of(rel), "read", self.storage_options):
            return retrying(lambda: self.fs.cat_file(self.path(rel)), f"reading {self.url_of(rel)}")

    def get_optional(self, rel: str) -> bytes | None:
        """The bytes at ``rel``, or None when it does not exist."""
        try:
            return self.get(rel)
        except StorageNotFound:
            return None

    def get_json(self, rel: str) -> Any:
        return json.loads(self.get(rel))

    def get_many(self, rels: Sequence[str]) -> dict[str, bytes | None]:
        """``{rel: bytes}`` for many small objects, read in parallel; None where one is gone."""
        if len(rels) <= 1:
            return {rel: self.get_optional(rel) for rel in rels}
        with ThreadPoolExecutor(max_workers=min(PARALLEL_READS, len(rels))) as pool:
            return dict(zip(rels, pool.map(self.get_optional, rels)))

    def exists(self, rel: str) -> bool:
        with storage_errors(self.url_of(rel), "check", self.storage_options):
            self._forget(rel)
            return retrying(lambda: self.fs.exists(self.path(rel)), f"checking {self.url_of(rel)}")

    def find(self, rel: str, suffix: str = "") -> list[str]:
        """Every file under ``rel`` (recursively) whose name ends with ``suffix``, as sorted paths
        relative to the prefix; [] when ``rel`` does not exist. Always a fresh listing."""
        base = self.path(rel)

        def listing() -> list[str]:
            self._forget(rel)
            try:
                return self.fs.find(base, detail=False)
            except FileNotFoundError:
                return []

        with storage_errors(self.url_of(rel), "list", self.storage_options):
            paths = retrying(listing, f"listing {self.url_of(rel)}")
        start = len(self.root) + 1
        return sorted(p[start:] for p in (self.fs._strip_protocol(p) for p in paths) if p.endswith(suffix))

    def _forget(self, rel: str) -> None:
        """Drop fsspec's cached listings of ``rel`` (s3fs caches directories per instance, and
        instances are shared per process), so what others wrote since is seen."""
        if not is_local(self.fs):
            self.fs.invalidate_cache(self.path(rel))

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]


def put_url(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` to a single URL atomically (a file next to another output: metrics, a plot)."""
    parent, _, name = str(url).rstrip("/").rpartition("/")
    Location(parent or ".", storage_options).put(name, data)
