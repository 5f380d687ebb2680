"""The sink of an attribution run: its whole write lifecycle over one map dataset, in one place.

Ray Data's ``Datasink`` has ``on_write_start`` / ``write`` / ``on_write_complete`` / ``on_write_failed``;
:class:`MapSink` has the same seams, plus the recovery a resumable output needs:

- :meth:`MapSink.repair` (driver, before planning): finish the shards an attempt committed but
  died before publishing, drop the tables of attempts that never committed (``_pending/``);
- :meth:`MapSink.start` (driver, after planning): the zarr arrays created or grown to the plan, for
  the methods with work (before any worker writes); :meth:`MapSink.uncommit` takes a shard whose
  source files changed out of the committed set;
- :meth:`MapSink.write` (workers): one shard of one method, its commit record last
  (:meth:`storage.maps.writer.MapStore.write_shard`: the per-shard commit protocol);
- :meth:`MapSink.commit` (driver, after the workers): the commit records indexed (the next run reads
  them in one request), the zarr arrays trimmed to the planned rows and their metadata consolidated;
- :meth:`MapSink.fail` (driver): the failure record written, whatever the store then says.

``jobs.attribute`` drives it (the run record's content: ``jobs.mapping.record``); the worker
(``workers.attributor``) writes through it; ``jobs.mapping.planning`` starts it and un-commits
through it. Picklable, so an actor can hold one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.io.fs import StorageError
from storage.io.location import Location
from storage.io.retry import retrying
from storage.maps.manifest import commit_path, index_commits, read_commit
from storage.maps.plan import Shard, ShardPlan
from storage.maps.writer import MapRecords, MapStore
from storage.sources.base import SampleError


class MapSink:
    """The write lifecycle of the map dataset at ``url`` (see the module docstring)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.store = MapStore(url, storage_options)

    def __repr__(self) -> str:
        return f"MapSink({self.store.url!r})"

    @property
    def where(self) -> Location:
        return self.store.where

    @property
    def url(self) -> str:
        return self.store.url

    # -- what is committed ---------------------------------------------------------------------
    def committed(self, method: str) -> dict[str, dict]:
        """``{shard_id: commit record}`` of ``method``, in shard order."""
        return self.store.committed(method)

    def unfinished(self, methods: Sequence[str], shard_id: str) -> tuple[str, ...]:
        """Those of ``methods`` for which the shard is not committed and published yet: a retried
        block of shards skips what its first attempt finished."""
        return tuple(m for m in methods if not self.store.is_finished(m, shard_id))

    # -- driver: before the workers ------------------------------------------------------------
    def repair(self) -> list[str]:
        """Finish the shards committed by an attempt that died before it had flagged their zarr rows
        and published their tables, and drop the tables of attempts that never committed (their retry
        writes them again); returns the tables it published. One listing of ``_pending/``, usually
        empty: a shard's tables leave it only after its zarr rows are flagged (MapStore.write_shard)."""
        finished: dict[tuple[str, str], dict | None] = {}
        published = []
        for rel in self.where.find("_pending", ".parquet"):
            final = rel[len("_pending/"):]
            kind, method, name = final.split("/", 2)
            key = (method, name.removesuffix(".parquet"))
            if key not in finished:
                record = read_commit(self.where, *key)
                finished[key] = record
                if record is not None and record.get("shard_index") is not None:
                    self._reflag(record)
            record = finished[key]
            if record is not None and any(f["path"] == final for f in record["files"]):
                self.where.move(rel, final)
                published.append(final)
            else:
                self.where.remove(rel)
        return published

    def _reflag(self, record: Mapping[str, Any]) -> None:
        """Flag a committed shard's zarr rows from what it committed: its rows' ids and its maps table."""
        from storage.maps.zarr_maps import mark_committed, open_for_writing

        method, url, options = record["method"], self.store.zarr_url(record["method"]), self.store.storage_options
        start, stop = next(f for f in record["files"] if "rows" in f)["rows"]
        maps_path = next(f["path"] for f in record["files"] if f["path"].startswith("maps/"))
        data = self.where.get_optional(f"_pending/{maps_path}") or self.where.get(maps_path)
        mapped = set(pq.read_table(pa.BufferReader(data), columns=["sample_id"]).column(0).to_pylist())
        arrays = open_for_writing(url, options)
        order = retrying(lambda: arrays["sample_id"][start:stop].tolist(), f"reading zarr ids of {method}")
        flags = np.array([sid in mapped for sid in order], dtype=bool)
        mark_committed(url, arrays, start, flags, options)

    def uncommit(self, method: str, shard: Shard) -> None:
        """Take a shard out of the committed set (its record first, then its zarr flags), so that the
        next computation of it replaces its maps; its tables stay until that rewrites them."""
        from storage.maps.zarr_maps import mark_committed, open_for_writing

        self.where.remove(commit_path(method, shard.shard_id))
        if self.where.exists(f"zarr/{method}/zarr.json"):
            url, options = self.store.zarr_url(method), self.store.storage_options
            arrays = open_for_writing(url, options)
            start = int(shard.index) * arrays["maps"].chunks[0]
            if start < arrays["maps"].shape[0]:
                rows = min(shard.size, arrays["maps"].shape[0] - start)
                mark_committed(url, arrays, start, np.zeros(rows, dtype=bool), options)

    def start(self, plan: ShardPlan, methods: Sequence[str], map_shape: tuple[int, int]) -> None:
        """Create or grow the zarr arrays of ``methods`` (those with work) to the plan's rows."""
        for method in methods:
            self.store.ensure_zarr(method, plan.total_rows, map_shape, plan.shard_size)

    # -- workers -------------------------------------------------------------------------------
    def write(self, shard: Shard, method: str, records: MapRecords, errors: Sequence[SampleError],
              sample_ids: Sequence[str]) -> dict:
        """Write and commit one shard of ``method`` (``sample_ids``: the shard's ids in source order);
        returns its commit record. Rewriting a shard with the same data gives the same bytes."""
        return self.store.write_shard(shard.shard_id, shard.index, method, records, errors, sample_ids=sample_ids)

    # -- driver: after the workers -------------------------------------------------------------
    def commit(self, plan: ShardPlan, methods: Sequence[str],
               committed: Mapping[str, dict[str, dict]] | None = None) -> dict[str, dict[str, dict]]:
        """End of a run: index each method's commit records (so the next run reads them in one
        request), trim its zarr arrays to the planned rows and consolidate their metadata; returns
        ``{method: {shard_id: record}}``. ``committed``: what planning read, still true when no
        worker ran (on S3 each read lists every record); else they are read again."""
        records = dict(committed) if committed is not None else {m: self.committed(m) for m in methods}
        for method in methods:
            index_commits(self.where, method, records[method])
            self.store.finish_zarr(method, plan.planned_rows)
        return records

    def fail(self, record: Mapping[str, Any]) -> None:
        """Write a failed (or interrupted) run's record. A store that refuses the write too is left as
        it is: the error that failed the run is the one to report."""
        try:
            self.store.write_run(record)
        except (StorageError, OSError, ValueError, TypeError):
            pass

    def write_run(self, record: Mapping[str, Any]) -> dict:
        """Write ``_meta/run.json`` (at the start and the end of a run)."""
        return self.store.write_run(record)
