"""The commit log of a map dataset: one JSON record per committed (method, shard).

``manifest/<method>/<shard_id>.json`` is written last, atomically, after every file it lists.
A shard's outputs count only once this record exists; readers take the files it lists and
nothing else, so leftovers of a crashed attempt are invisible. A record::

    {"format": "pathway-attribution.shard", "version": 1,
     "method": "pathway", "shard_id": "s00003", "shard_index": 3,
     "n_samples": 254,            # rows in the maps Parquet file
     "n_errors": 2,               # rows in the errors Parquet file
     "sample_ids_sha256": "...",  # of the shard's sample ids in source order, '\\n'-joined
     "files": [{"path": "maps/pathway/s00003.parquet", "bytes": 123, "sha256": "..."},
               {"path": "errors/pathway/s00003.parquet", "bytes": 45, "sha256": "..."},
               {"path": "zarr/pathway/maps", "rows": [768, 1024], "sha256": "<of the float16 rows>"}]}

Paths are relative to the dataset's root URL. A record holds no time and nothing about the attempt
that wrote it, so a retried shard rewrites it byte for byte, like its data files.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Mapping
from typing import Any

import fsspec

from storage.fs import StorageError, join, storage_errors, write_json_atomic

FORMAT = "pathway-attribution.shard"
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    """``name`` if it is safe as one path component (letters, digits, ``._=-``), else ValueError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{kind} {name!r} must be 1-128 letters, digits or ._=- (it names files)")
    return name


def commit_path(method: str, shard_id: str) -> str:
    return f"manifest/{check_name('method', method)}/{check_name('shard_id', shard_id)}.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_commit(fs: fsspec.AbstractFileSystem, root: str, url: str, record: Mapping[str, Any],
                 storage_options: Mapping[str, Any] | None = None) -> dict:
    """Write the commit record of ``record['method']`` / ``record['shard_id']`` atomically."""
    record = {"format": FORMAT, "version": VERSION, **record}
    rel = commit_path(record["method"], record["shard_id"])
    with storage_errors(join(url, rel), "write", storage_options):
        write_json_atomic(fs, join(root, rel), record)
    return record


def read_commit(fs: fsspec.AbstractFileSystem, root: str, url: str, method: str, shard_id: str,
                storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The commit record of one shard, or None if it is not committed."""
    rel = commit_path(method, shard_id)
    try:
        with storage_errors(join(url, rel), "read", storage_options):
            data = fs.cat_file(join(root, rel))
    except FileNotFoundError:
        return None
    return _parse(data, join(url, rel))


def read_commits(fs: fsspec.AbstractFileSystem, root: str, url: str, method: str | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> dict[tuple[str, str], dict]:
    """All commit records (of one method, or of all), keyed by (method, shard_id), in shard order."""
    base = join(root, "manifest", check_name("method", method)) if method else join(root, "manifest")
    with storage_errors(join(url, "manifest"), "list", storage_options):
        try:
            paths = sorted(p for p in fs.find(base, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            paths = []
        blobs = fs.cat(paths, on_error="return") if paths else {}
    records = []
    for path in paths:
        data = blobs.get(path, blobs.get(fs._strip_protocol(path)))
        if isinstance(data, FileNotFoundError) or data is None:
            continue  # removed between listing and reading
        if isinstance(data, BaseException):
            with storage_errors(join(url, path[len(root.rstrip('/')) + 1:]), "read", storage_options):
                raise data
        records.append(_parse(data, path))
    records.sort(key=lambda r: (r["method"], r.get("shard_index") if r.get("shard_index") is not None else -1,
                                r["shard_id"]))
    return {(r["method"], r["shard_id"]): r for r in records}


def _parse(data: bytes, where: str) -> dict:
    try:
        record = json.loads(data)
    except ValueError as err:
        raise StorageError(f"commit record {where} is not JSON ({err}); delete it to recompute the shard") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StorageError(f"{where} is not a shard commit record (format {FORMAT!r} expected)")
    if record.get("version", 0) > VERSION:
        raise StorageError(f"{where} has commit record version {record['version']}; this code reads <= {VERSION}")
    return record
