"""The commit log of a map dataset: one JSON record per committed (method, shard).

``_manifest/<method>/<shard_id>.json`` is written last, atomically, after every file it lists.
A shard's outputs count only once this record exists; readers take the files it lists and
nothing else, so leftovers of a crashed attempt are invisible. A record::

    {"format": "pathway-attribution.shard", "version": 1,
     "method": "pathway", "shard_id": "000003", "shard_index": 3,
     "n_samples": 254,            # rows in the maps Parquet file
     "n_errors": 2,               # rows in the errors Parquet file
     "sample_ids_sha256": "...",  # of the shard's sample ids in source order, '\\n'-joined
     "files": [{"path": "maps/pathway/000003.parquet", "bytes": 123, "sha256": "..."},
               {"path": "errors/pathway/000003.parquet", "bytes": 45, "sha256": "..."},
               {"path": "zarr/pathway/maps", "rows": [768, 1024], "sha256": "<of the float16 rows>"}]}

Paths are relative to the dataset's root URL. A record holds no time and nothing about the attempt
that wrote it, so a retried shard rewrites it byte for byte, like its data files.

Tested by tests/storage/maps/test_writer.py and tests/storage/maps/test_sink.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from storage.io.fs import InvalidStorageInput, StorageError
from storage.io.location import Location
from storage.maps.tables import MANIFEST_DIR

FORMAT = "pathway-attribution.shard"
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    """``name`` if it is safe as one path component (letters, digits, ``._=-``), else a clear error."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise InvalidStorageInput(f"{kind} {name!r} must be 1-128 letters, digits or ._=-, starting with a letter "
                                  "or digit (it names files and folders)")
    return name


def commit_path(method: str, shard_id: str) -> str:
    return f"{MANIFEST_DIR}/{check_name('method', method)}/{check_name('shard_id', shard_id)}.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_commit(where: Location, record: Mapping[str, Any]) -> dict:
    """Write the commit record of ``record['method']`` / ``record['shard_id']`` atomically."""
    record = {"format": FORMAT, "version": VERSION, **record}
    where.put_json(commit_path(record["method"], record["shard_id"]), record)
    return record


def read_commit(where: Location, method: str, shard_id: str) -> dict | None:
    """The commit record of one shard, or None if it is not committed."""
    rel = commit_path(method, shard_id)
    data = where.get_optional(rel)
    return None if data is None else _parse(data, where.url_of(rel))


def read_commits(where: Location, method: str | None = None) -> dict[tuple[str, str], dict]:
    """All commit records (of one method, or of all), keyed by (method, shard_id), in shard order.

    One fresh listing says which shards are committed (the records are the source of truth: a
    deleted record un-commits its shard). Their contents come from the index segments (a few
    files, one per earlier run: :func:`index_commits`) and only records no segment holds yet are
    read one by one, so a rerun costs a listing plus the records of the last run, not one read per
    shard.
    """
    base = f"{MANIFEST_DIR}/{check_name('method', method)}" if method else MANIFEST_DIR
    listed = where.find(base)
    records_at = [rel for rel in listed if rel.endswith(".json") and f"/{INDEX}/" not in rel]
    indexed = _read_index(where, [rel for rel in listed if f"/{INDEX}/" in rel and rel.endswith(".parquet")])
    missing = [rel for rel in records_at if rel not in indexed]
    blobs = where.get_many(missing)
    records = [indexed[rel] for rel in records_at if rel in indexed]
    records += [_parse(data, where.url_of(rel)) for rel, data in blobs.items() if data is not None]
    records.sort(key=lambda r: (r["method"], r.get("shard_index") if r.get("shard_index") is not None else -1,
                                r["shard_id"]))
    return {(r["method"], r["shard_id"]): r for r in records}


#: Folder (under each method's manifest folder) of index segments: compact copies of records.
INDEX = "_index"
#: More segments than this are merged into one when the next segment is written.
MAX_SEGMENTS = 16


def index_commits(where: Location, method: str, records: Mapping[str, dict]) -> None:
    """Write one index segment holding the commit records ``{shard_id: record}`` of ``method`` that no
    segment holds yet; merge the segments into one when there are too many. The driver calls this
    at the end of a run, so the next run reads its records in one request."""
    import pyarrow as pa

    from storage.maps.tables import parquet_bytes

    folder = f"{MANIFEST_DIR}/{check_name('method', method)}/{INDEX}"
    segments = where.find(folder, ".parquet")
    known = _read_index(where, segments)
    fresh = {commit_path(method, sid): rec for sid, rec in records.items() if commit_path(method, sid) not in known}
    if not fresh and len(segments) <= MAX_SEGMENTS:
        return
    rows = fresh
    if len(segments) + 1 > MAX_SEGMENTS:
        rows = {**known, **fresh}
    table = pa.table({"path": list(rows), "record": [json.dumps(rec, sort_keys=True) for rec in rows.values()]})
    name = f"{folder}/{now().replace(':', '')}-{uuid.uuid4().hex[:8]}.parquet"
    where.put(name, parquet_bytes(table))
    if rows is not fresh:
        for old in segments:
            where.fs.rm_file(where.path(old))


def _read_index(where: Location, segments: list[str]) -> dict[str, dict]:
    """``{record path: record}`` from index segments (a missing or damaged segment is skipped: the
    records themselves are then read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, dict] = {}
    for rel, data in where.get_many(segments).items():
        if data is None:
            continue
        try:
            table = pq.read_table(pa.BufferReader(data))
            out.update(zip(table.column("path").to_pylist(), (json.loads(r) for r in table.column("record").to_pylist())))
        except (pa.ArrowInvalid, KeyError, ValueError):
            continue
    return out


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
