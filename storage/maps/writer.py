"""The map sink: Parquet + zarr v3 + errors + commit manifest + run record under one root URL.

Layout (paths relative to the root URL; ``<method>`` and ``<shard_id>`` are checked to be plain
file-name components; docs/format.md is the full reference)::

    maps/<method>/<shard_id>.parquet      one row per sample with a map (storage.maps.tables.map_schema:
                                          sample, method, params, label, the details, map)
    errors/<method>/<shard_id>.parquet    one row per sample that could not be processed
    zarr/<method>/                        zarr v3 group: maps [N, H, W] float16 (NaN = no map),
                                          sample_id [N], committed [N]; chunks of shard_size rows
    _pending/                             tables written but not yet published
    _manifest/<method>/<shard_id>.json    the shard's commit record (storage.maps.manifest)
    _meta/run.json                        config, method params, versions, start/end times

Several methods share one root: each has its own sub-directory everywhere, and a commit covers
one (method, shard). Parquet bytes depend only on the data (fixed writer settings, no times in
metadata, rows in shard order), zarr chunks are compressed deterministically, and commit records
hold no time or attempt, so a retried shard rewrites identical bytes in every file it touches:
its maps and errors Parquet files, its zarr chunks, and its commit record (the time a shard was
committed is its record's modification time on the store).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import platform
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from storage.io.fs import join
from storage.io.location import Location
from storage.maps.manifest import check_name, now, read_commit, read_commits, write_commit
from storage.sources.base import SampleError
from storage.maps.tables import (FORMAT, FORMAT_VERSION, RUN_PATH, data_path, detail_type, errors_table, map_schema,
                            parquet_bytes, pending_path)

log = logging.getLogger(__name__)

_VERSIONED = ("pathway-attribution", "torch", "torchvision", "ray", "pyarrow", "zarr", "numpy", "fsspec", "s3fs")


def _array(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)


@dataclass
class MapRecords:
    """The maps of one shard, column by column, in shard (source) order.

    ``maps`` is [n, H, W] (numpy or torch, any float dtype; stored as float16); an empty shard
    passes [0, H, W]. ``details`` are the method's per-sample outputs (name -> n values, or [n, k]
    for lists) and ``detail_types`` the kinds of the output's detail columns in order
    (:func:`storage.maps.tables.detail_type`): the union over all its methods, so that every table of
    an output has the same columns; a detail a method does not report is null. ``params`` are the method's parameters (stored as sorted JSON).
    """

    sample_ids: Sequence[str]
    labels: Any
    maps: Any
    params: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    detail_types: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sample_ids = [str(s) for s in self.sample_ids]
        n = len(self.sample_ids)
        if len(set(self.sample_ids)) != n:
            raise ValueError("MapRecords.sample_ids must be unique")
        maps = _array(self.maps)
        if maps.ndim != 3 or maps.shape[0] != n:
            raise ValueError(f"MapRecords.maps must be [n={n}, H, W], got {maps.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            half = np.ascontiguousarray(maps.astype(np.float16))
        overflow = int(np.count_nonzero(np.isinf(half) & np.isfinite(maps)))
        if overflow:
            log.warning("%d map values exceed the float16 range (|x| > 65504) and are stored as inf", overflow)
        self.maps = half
        self.labels = _array(self.labels).astype(np.int64).reshape(-1)
        if self.labels.shape != (n,):
            raise ValueError(f"MapRecords.labels must have {n} entries, got {self.labels.shape}")
        if not set(self.details) <= set(self.detail_types):
            raise ValueError(f"MapRecords.details {sorted(self.details)} are not all among the declared "
                             f"{sorted(self.detail_types)}")
        self.details = {name: _array(values) for name, values in self.details.items()}
        for name, values in self.details.items():
            if values.shape[:1] != (n,):
                raise ValueError(f"MapRecords.details[{name!r}] must have {n} rows, got {values.shape}")

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.maps.shape[1]), int(self.maps.shape[2])

    def to_table(self, method: str, shard_id: str) -> pa.Table:
        n = len(self)
        params = json.dumps(dict(self.params), sort_keys=True, separators=(",", ":"), default=str)
        schema = map_schema(*self.shape, self.detail_types)
        height, width = self.shape
        flat = pa.array(self.maps.reshape(-1), type=pa.float16())
        rows = pa.FixedSizeListArray.from_arrays(flat, width)
        columns = {
            "sample_id": pa.array(self.sample_ids, pa.string()), "shard_id": pa.array([shard_id] * n, pa.string()),
            "method": pa.array([method] * n, pa.string()), "params": pa.array([params] * n, pa.string()),
            "label": pa.array(self.labels, pa.int64()),
            **{name: _detail_column(self.details.get(name), kind, n) for name, kind in self.detail_types.items()},
            "map": pa.FixedSizeListArray.from_arrays(rows, height),
        }
        return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _detail_column(values: np.ndarray | None, kind: str, n: int) -> pa.Array:
    """One detail column: nulls where the method does not report it (every method of an output writes
    the same columns, so that each reader sees one table), one-item lists for a scalar in a list
    column (a global threshold beside per-layer ones)."""
    dtype = detail_type(kind)
    if values is None:
        return pa.nulls(n, dtype)
    if pa.types.is_string(dtype):  # text details: "" is "nothing to say" (e.g. not degenerate), stored as null
        return pa.array([str(v) if v is not None and str(v) else None for v in values], dtype)
    if pa.types.is_list(dtype) and values.ndim == 1:
        values = values[:, None]
    return pa.array(list(values) if values.ndim > 1 else values, dtype)


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of the packages a map dataset depends on (without importing them)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


class MapStore:
    """Writer (and commit index) of one map dataset at ``url``; picklable, so workers can hold one.

    The format's primitives: ``ensure_zarr`` (before any worker writes), ``write_shard`` (write and
    commit one shard), ``committed``, ``finish_zarr``, ``write_run``. A run's lifecycle over them
    (repair, start, write, commit, fail) is :class:`storage.maps.sink.MapSink`'s. zarr is imported on
    the first zarr call, not at construction (its import cost: benchmarks/RESULTS.md, "zarr's import").
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.where = Location(url, storage_options)
        self.url, self.storage_options = self.where.url, self.where.storage_options
        self._zarr: dict[str, tuple] = {}  # method -> opened (maps, sample_id) arrays; not pickled
        self._executor: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zarr": {}, "_executor": None}

    def __repr__(self) -> str:
        return f"MapStore({self.url!r})"

    def zarr_url(self, method: str) -> str:
        return join(self.url, "zarr", check_name("method", method))

    # -- commit log ---------------------------------------------------------------------------
    def is_finished(self, method: str, shard_id: str) -> bool:
        """Whether the shard is committed for ``method`` and its tables are published (so its zarr
        flags are set too): nothing of it is left to do. Two requests."""
        return read_commit(self.where, method, shard_id) is not None and \
            self.where.exists(data_path("maps", method, shard_id))

    def committed(self, method: str | None = None) -> dict[str, dict]:
        """Commit records in shard order: ``{shard_id: record}`` for one method, or
        ``{"<method>/<shard_id>": record}`` for all methods when ``method`` is None."""
        records = read_commits(self.where, method)
        if method is not None:
            return {shard: rec for (_, shard), rec in records.items()}
        return {f"{m}/{shard}": rec for (m, shard), rec in records.items()}

    # -- zarr ---------------------------------------------------------------------------------
    def ensure_zarr(self, method: str, n: int, shape: tuple[int, int], shard_size: int) -> None:
        """Create (idempotently) or grow the method's zarr arrays to ``n`` rows; driver only."""
        from storage.maps.zarr_maps import ensure_arrays

        ensure_arrays(self.zarr_url(method), n, shape, shard_size, self.storage_options)

    # -- shards -------------------------------------------------------------------------------
    def write_shard(self, shard_id: str, shard_index: int | None, method: str, records: MapRecords,
                    errors: Sequence[SampleError] = (), *, sample_ids: Sequence[str] | None = None) -> dict:
        """Write one shard's maps, errors and zarr rows, then commit it; returns the commit record.

        ``sample_ids`` is the shard's full id list in source order (maps and errors together); it
        places each map on its zarr row. It may be left out when the shard has no errors (then
        ``records`` must be in source order). ``shard_index=None`` writes no zarr rows (Parquet
        only). Rewriting a shard with the same data gives the same bytes.
        """
        check_name("shard_id", shard_id)
        check_name("method", method)
        if not isinstance(records, MapRecords):
            raise TypeError(f"records must be MapRecords, got {type(records).__name__}")
        errors = list(errors)
        error_ids = [e.sample_id for e in errors]
        overlap = set(error_ids) & set(records.sample_ids)
        if overlap or len(set(error_ids)) != len(error_ids):
            raise ValueError(f"shard {shard_id}: samples both mapped and errored, or errored twice: "
                             f"{sorted(overlap or error_ids)[:5]}")
        if sample_ids is None:
            if errors and shard_index is not None:
                raise ValueError(f"shard {shard_id} has errors: pass sample_ids (the shard's ids in source order) "
                                 "so that every map lands on its zarr row")
            order = list(records.sample_ids) + error_ids
        else:
            order = [str(s) for s in sample_ids]
            if sorted(order) != sorted(list(records.sample_ids) + error_ids):
                raise ValueError(f"shard {shard_id}: sample_ids must be exactly the mapped plus the errored ids")

        # The zarr rows are compressed and written on a second thread while the Parquet files are
        # encoded and written here (zstd releases the GIL); the commit waits for both. The tables go
        # to _pending/ first and are published after the commit record (see publish(); MapSink.repair
        # finishes what a crash left there).
        zarr_job = None
        if shard_index is not None:
            zarr_job = self._pool().submit(self._write_zarr_rows, method, int(shard_index), order, records)
        files = []
        try:
            tables = {"maps": records.to_table(method, shard_id),
                      "errors": errors_table(error_ids, [str(e.reason) for e in errors], shard_id, method,
                                             [e.kind for e in errors])}
            for kind, table in tables.items():
                data = parquet_bytes(table)
                self.where.put(pending_path(kind, method, shard_id), data)
                files.append({"path": data_path(kind, method, shard_id), "bytes": len(data), "sha256": _sha256(data)})
        finally:
            zarr_entry = zarr_job.result() if zarr_job is not None else None
        if zarr_entry is not None:
            files.append(zarr_entry)
        record = {"method": method, "shard_id": shard_id, "shard_index": shard_index,
                  "n_samples": len(records), "n_errors": len(errors),
                  "sample_ids_sha256": _sha256("\n".join(order).encode()), "files": files}
        record = write_commit(self.where, record)
        if shard_index is not None:  # before publishing: what is left in _pending/ tells MapSink.repair what to finish
            self._mark_committed(method, record, order, set(records.sample_ids), records.shape)
        self.publish(record)
        return record

    def publish(self, record: Mapping[str, Any]) -> None:
        """Move a committed shard's tables from ``_pending/`` to ``maps/`` and ``errors/``.

        This runs after the commit record, so a reader that globs ``maps/`` never sees a row of an
        attempt that did not commit, nor a row twice (a retry writes the same bytes to the same
        path). A crash between the record and this step leaves the tables in ``_pending/``: readers
        that follow the manifest read them there, and the driver publishes them on its next run
        (:meth:`storage.maps.sink.MapSink.repair`).
        """
        for entry in record["files"]:
            if entry["path"].endswith(".parquet"):
                self.where.move(f"_pending/{entry['path']}", entry["path"])

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapstore-zarr")
        return self._executor

    def _zarr_arrays(self, method: str, shard_index: int, n: int, shape: tuple[int, int]) -> dict:
        from storage.maps.zarr_maps import fits, open_for_writing

        arrays = self._zarr.get(method)
        if arrays is None or not fits(arrays, shard_index, n, shape):
            arrays = self._zarr[method] = open_for_writing(self.zarr_url(method), self.storage_options)  # grown
        return arrays

    def _write_zarr_rows(self, method: str, shard_index: int, order: list[str], records: MapRecords) -> dict:
        """Write the shard's zarr rows (NaN for errored samples); returns its manifest entry."""
        from storage.maps.zarr_maps import write_rows

        position = {sid: i for i, sid in enumerate(order)}
        block = np.full((len(order), *records.shape), np.nan, dtype=np.float16)
        block[[position[s] for s in records.sample_ids]] = records.maps
        arrays = self._zarr_arrays(method, shard_index, len(order), records.shape)
        start, stop = write_rows(self.zarr_url(method), arrays, shard_index, order, block, self.storage_options)
        return {"path": f"zarr/{method}/maps", "rows": [start, stop], "sha256": _sha256(block.tobytes())}

    def _mark_committed(self, method: str, record: Mapping[str, Any], order: list[str], mapped: set[str],
                        shape: tuple[int, int]) -> None:
        from storage.maps.zarr_maps import mark_committed

        entry = next(f for f in record["files"] if "rows" in f)
        arrays = self._zarr_arrays(method, int(record["shard_index"]), len(order), shape)
        flags = np.array([sid in mapped for sid in order], dtype=bool)
        mark_committed(self.zarr_url(method), arrays, entry["rows"][0], flags, self.storage_options)

    def finish_zarr(self, method: str, rows: int) -> None:
        """At the end of a run: trim the method's arrays to ``rows`` and consolidate their metadata."""
        from storage.maps.zarr_maps import finish

        finish(self.zarr_url(method), rows, self.storage_options)

    # -- run ----------------------------------------------------------------------------------
    def write_run(self, run: Mapping[str, Any]) -> dict:
        """Write ``run.json`` (config, method params, start/end times...); adds ``versions``."""
        run = dict(run)
        run.setdefault("format", {"name": FORMAT, "version": FORMAT_VERSION})
        run["versions"] = {**versions(), **dict(run.get("versions") or {})}
        run.setdefault("started_at", now())
        self.where.put_json(RUN_PATH, run)
        return run
