"""The map sink: Parquet + zarr v3 + errors + commit manifest + run.json under one root URL.

Layout (paths relative to the root URL; ``<method>`` and ``<shard_id>`` are checked to be plain
file-name components)::

    run.json                              config, method params, versions, start/end times
    maps/<method>/<shard_id>.parquet      one row per sample that has a map (schema: MAP_SCHEMA)
    errors/<method>/<shard_id>.parquet    one row per sample that could not be processed
    zarr/<method>/                        zarr v3 group: maps [N, H, W] float16 (NaN = no map),
                                          sample_id [N] string; chunks of shard_size rows
    manifest/<method>/<shard_id>.json     the shard's commit record, written last (storage.manifest)

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
import io
import json
import logging
import platform
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import StorageError, is_local, join, open_fs, storage_errors, write_bytes_atomic, \
    write_json_atomic
from storage.manifest import check_name, now, read_commit, read_commits, write_commit
from storage.sources.base import SampleError

log = logging.getLogger(__name__)

ZSTD_LEVEL = 3
#: Parquet writer settings: fixed, so equal tables give equal bytes.
#: No dictionary for the map column: it only costs time and bytes there; byte-stream-split made
#: float16 maps larger (benchmarks/bench_storage.py measured both).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=ZSTD_LEVEL, use_dictionary=["method", "params", "shard_id"],
                       write_statistics=["sample_id", "label", "target", "predicted", "shard_id"],
                       data_page_version="2.0")
ERRORS_SCHEMA = pa.schema([("sample_id", pa.string()), ("reason", pa.string()), ("shard_id", pa.string()),
                           ("method", pa.string())])
_VERSIONED = ("pathway-attribution", "torch", "torchvision", "ray", "pyarrow", "zarr", "numpy", "fsspec", "s3fs")


def map_schema(height: int, width: int) -> pa.Schema:
    """The maps Parquet schema for [H, W] maps."""
    return pa.schema([
        ("sample_id", pa.string()), ("shard_id", pa.string()),
        ("label", pa.int64()), ("target", pa.int64()), ("predicted", pa.int64()),
        ("method", pa.string()), ("params", pa.string()),
        ("kept_fraction", pa.float64()), ("threshold", pa.float64()),
        ("logit_before", pa.float64()), ("logit_after", pa.float64()), ("still_predicts", pa.bool_()),
        ("map", pa.fixed_shape_tensor(pa.float16(), [int(height), int(width)])),
    ])


def _column(values: Any, n: int, name: str, dtype: Any) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if arr.shape != (n,):
        raise ValueError(f"MapRecords.{name} must have shape ({n},), got {arr.shape}")
    return arr.astype(dtype)


@dataclass
class MapRecords:
    """The maps of one shard, column by column, in shard (source) order.

    ``maps`` is [n, H, W] (numpy or torch, any float dtype; stored as float16). The optional
    columns (None = null for every row) follow the method's extras: kept fraction, threshold,
    target logit before/after pruning, and whether the pruned net still predicts the target.
    ``params`` are the method's parameters (stored as sorted JSON on every row).
    """

    sample_ids: Sequence[str]
    labels: Any
    targets: Any
    predicted: Any
    maps: Any
    params: Mapping[str, Any] = field(default_factory=dict)
    kept_fraction: Any = None
    threshold: Any = None
    logit_before: Any = None
    logit_after: Any = None
    still_predicts: Any = None

    def __post_init__(self) -> None:
        self.sample_ids = [str(s) for s in self.sample_ids]
        n = len(self.sample_ids)
        if len(set(self.sample_ids)) != n:
            raise ValueError("MapRecords.sample_ids must be unique")
        maps = self.maps.detach().cpu().numpy() if hasattr(self.maps, "detach") else np.asarray(self.maps)
        if maps.ndim != 3 or maps.shape[0] != n:
            raise ValueError(f"MapRecords.maps must be [n={n}, H, W], got {maps.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            half = np.ascontiguousarray(maps.astype(np.float16))
        overflow = int(np.count_nonzero(np.isinf(half) & np.isfinite(maps)))
        if overflow:
            log.warning("%d map values exceed the float16 range (|x| > 65504) and are stored as inf", overflow)
        self.maps = half
        for name, dtype in (("labels", np.int64), ("targets", np.int64), ("predicted", np.int64)):
            setattr(self, name, _column(getattr(self, name), n, name, dtype))
        for name in ("kept_fraction", "threshold", "logit_before", "logit_after"):
            setattr(self, name, _column(getattr(self, name), n, name, np.float64))
        self.still_predicts = _column(self.still_predicts, n, "still_predicts", bool)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.maps.shape[1]), int(self.maps.shape[2])

    def to_table(self, method: str, shard_id: str) -> pa.Table:
        n = len(self)
        params = json.dumps(dict(self.params), sort_keys=True, separators=(",", ":"), default=str)
        schema = map_schema(*self.shape)
        tensor_type = schema.field("map").type
        flat = pa.array(self.maps.reshape(n, -1).reshape(-1), type=pa.float16())
        storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(self.shape)))
        cols = {
            "sample_id": pa.array(self.sample_ids, pa.string()), "shard_id": pa.array([shard_id] * n, pa.string()),
            "label": self.labels, "target": self.targets, "predicted": self.predicted,
            "method": pa.array([method] * n, pa.string()), "params": pa.array([params] * n, pa.string()),
            "kept_fraction": self.kept_fraction, "threshold": self.threshold, "logit_before": self.logit_before,
            "logit_after": self.logit_after, "still_predicts": self.still_predicts,
            "map": pa.ExtensionArray.from_storage(tensor_type, storage),
        }
        arrays = [cols[f.name] if isinstance(cols[f.name], pa.Array) else
                  pa.nulls(n, f.type) if cols[f.name] is None else pa.array(cols[f.name], f.type) for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)


def _errors_table(errors: Sequence[SampleError], shard_id: str, method: str) -> pa.Table | None:
    if not errors:
        return None
    return pa.table({"sample_id": [e.sample_id for e in errors], "reason": [str(e.reason) for e in errors],
                     "shard_id": [shard_id] * len(errors), "method": [method] * len(errors)}, schema=ERRORS_SCHEMA)


def parquet_bytes(table: pa.Table, **overrides: Any) -> bytes:
    """``table`` as Parquet bytes with the fixed settings (one row group per shard)."""
    options = {**PARQUET_OPTIONS, **overrides}
    if "map" not in table.column_names:
        options["write_statistics"] = True
        options["use_dictionary"] = [c for c in ("method", "shard_id") if c in table.column_names]
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, table.num_rows), **options)
    return buf.getvalue()


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

    Driver: ``ensure_zarr`` once per method (before any worker writes), ``write_run`` at start and
    end. Workers: ``commit_record`` to skip done shards, ``write_shard`` to write and commit one.
    """

    #: Modules imported on the first zarr write, not at construction (zarr costs ~0.15 s).
    lazy_imports: tuple[str, ...] = ("storage.zarr_maps",)

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, root = open_fs(self.url, self.storage_options)
        self.root = root.rstrip("/")
        self._zarr: dict[str, tuple] = {}  # method -> opened (maps, sample_id) arrays; not pickled
        self._executor: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zarr": {}, "_executor": None}

    def __repr__(self) -> str:
        return f"MapStore({self.url!r})"

    def _put(self, rel: str, data: bytes) -> None:
        with storage_errors(join(self.url, rel), "write", self.storage_options):
            if is_local(self.fs):
                self.fs.makedirs(join(self.root, rel.rsplit("/", 1)[0]), exist_ok=True)
            write_bytes_atomic(self.fs, join(self.root, rel), data)

    def zarr_url(self, method: str) -> str:
        return join(self.url, "zarr", check_name("method", method))

    # -- commit log ---------------------------------------------------------------------------
    def committed(self, method: str | None = None) -> dict[str, dict]:
        """Commit records in shard order: ``{shard_id: record}`` for one method, or
        ``{"<method>/<shard_id>": record}`` for all methods when ``method`` is None."""
        records = read_commits(self.fs, self.root, self.url, method, self.storage_options)
        if method is not None:
            return {shard: rec for (_, shard), rec in records.items()}
        return {f"{m}/{shard}": rec for (m, shard), rec in records.items()}

    def commit_record(self, method: str, shard_id: str) -> dict | None:
        """The commit record of one shard (one small read), or None: a worker's 'already done?' check."""
        return read_commit(self.fs, self.root, self.url, method, shard_id, self.storage_options)

    # -- zarr ---------------------------------------------------------------------------------
    def ensure_zarr(self, method: str, n: int, shape: tuple[int, int], shard_size: int) -> None:
        """Create (idempotently) or grow the method's zarr arrays to ``n`` rows; driver only."""
        from storage.zarr_maps import ensure_arrays

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

        # The zarr rows are compressed and written on a second thread while the Parquet file is
        # encoded and written here (zstd releases the GIL); the commit waits for both.
        zarr_job = None
        if shard_index is not None:
            zarr_job = self._pool().submit(self._write_zarr_rows, method, int(shard_index), order, records)
        files = []
        try:
            tables = {"maps": records.to_table(method, shard_id), "errors": _errors_table(errors, shard_id, method)}
            for kind, table in tables.items():
                if table is None:
                    continue
                rel = f"{kind}/{method}/{shard_id}.parquet"
                data = parquet_bytes(table)
                self._put(rel, data)
                files.append({"path": rel, "bytes": len(data), "sha256": _sha256(data)})
        finally:
            if zarr_job is not None:
                files.append(zarr_job.result())
        record = {"method": method, "shard_id": shard_id, "shard_index": shard_index,
                  "n_samples": len(records), "n_errors": len(errors),
                  "sample_ids_sha256": _sha256("\n".join(order).encode()), "files": files}
        return write_commit(self.fs, self.root, self.url, record, self.storage_options)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapstore-zarr")
        return self._executor

    def _write_zarr_rows(self, method: str, shard_index: int, order: list[str], records: MapRecords) -> dict:
        """Write the shard's zarr rows (NaN for errored samples); returns its manifest entry."""
        from storage.zarr_maps import fits, open_for_writing, write_rows

        position = {sid: i for i, sid in enumerate(order)}
        block = np.full((len(order), *records.shape), np.nan, dtype=np.float16)
        block[[position[s] for s in records.sample_ids]] = records.maps
        url = self.zarr_url(method)
        arrays = self._zarr.get(method)
        if arrays is None or not fits(arrays, shard_index, len(order), records.shape):
            arrays = self._zarr[method] = open_for_writing(url, self.storage_options)  # new, or grown by the driver
        start, stop = write_rows(url, arrays, shard_index, order, block, self.storage_options)
        return {"path": f"zarr/{method}/maps", "rows": [start, stop], "sha256": _sha256(block.tobytes())}

    # -- run ----------------------------------------------------------------------------------
    def write_run(self, run: Mapping[str, Any]) -> dict:
        """Write ``run.json`` (config, method params, start/end times...); adds ``versions``."""
        run = dict(run)
        run["versions"] = {**versions(), **dict(run.get("versions") or {})}
        run.setdefault("started_at", now())
        with storage_errors(join(self.url, "run.json"), "write", self.storage_options):
            write_json_atomic(self.fs, join(self.root, "run.json"), run)
        return run
