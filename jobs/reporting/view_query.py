"""The map explorer's queries (jobs.view): filter, sort and page a map dataset's rows without
reading its ``map`` column, and fetch the few maps a page shows.

Filtering and sorting scan only the small columns (a pyarrow.dataset projection over
``<output>/maps``, the directory readers open: docs/format.md), and sorting keeps a running
top-k over the scan's batches, so memory follows the page, not the output. pyarrow.dataset
rather than DuckDB: it reaches every fsspec store (s3:// through the jobs' storage options)
without an extension that DuckDB would have to download; benchmarks/bench_view.py measures it.

Tested by tests/jobs/reporting/test_view_analysis.py and tests/jobs/test_view.py.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage.io.fs import InvalidStorageInput, StorageNotFound, is_local, open_fs, storage_errors
from storage.maps.manifest import check_name
from storage.maps.reader import map_arrays
from storage.maps.tables import ERRORS_SCHEMA

#: Columns that are never shown in the gallery's rows (large, or lists).
_HEAVY = {"map", "threshold", "params"}
#: Integer columns a gallery filter may pin to one value.
INT_FILTERS = ("label", "target", "predicted")
#: The most rows one page may ask for.
MAX_PAGE = 200
#: Gallery filters whose row counts an opened index keeps (a count is a scan of every file).
COUNTS_KEPT = 64


class ViewError(InvalidStorageInput):
    """A request the viewer cannot answer (a bad filter, an unknown column): HTTP 400."""


#: Files scanned as one pyarrow dataset at a time: a scanned fragment keeps its Parquet footer, so
#: one dataset over a million-sample output's thousands of files would hold them all.
CHUNK_FILES = 128


class Files:
    """A dataset's files, scanned a chunk at a time so that memory follows the chunk, not the output."""

    def __init__(self, dataset: ds.FileSystemDataset) -> None:
        self.files, self.schema = list(dataset.files), dataset.schema
        self.format, self.filesystem = dataset.format, dataset.filesystem

    def _parts(self) -> Any:
        for i in range(0, len(self.files), CHUNK_FILES):
            yield ds.FileSystemDataset.from_paths(self.files[i:i + CHUNK_FILES], schema=self.schema,
                                                  format=self.format, filesystem=self.filesystem)

    def count_rows(self, filter: ds.Expression | None = None) -> int:  # noqa: A002 - pyarrow's name
        """Rows that pass ``filter``: from the files' footers without one; with one, counted over a
        scan that projects no column. Not pyarrow's filtered ``count_rows``: its aggregation node
        (AggregateConsume) crashed the process (SIGSEGV) twice in whole test-suite runs, with
        pyarrow 26.0.1 over S3, where a plain filtered scan has not."""
        if filter is None:
            return sum(part.count_rows() for part in self._parts())
        return sum(batch.num_rows for batch in self.batches([], filter))

    def batches(self, columns: list[str] | None, filter: ds.Expression | None = None,  # noqa: A002
                batch_size: int = 1 << 17) -> Any:
        for part in self._parts():
            yield from part.to_batches(columns=columns, filter=filter, batch_size=batch_size)

    def head(self, n: int, columns: list[str] | None, filter: ds.Expression | None = None) -> pa.Table:  # noqa: A002
        """The first ``n`` rows that pass ``filter``, reading no further than they lie.

        On the calling thread: a threaded scan stopped early left pyarrow's threads reading on through
        the fsspec handler, and a viewer that exited then aborted in interpreter finalization
        (tests/jobs/test_view.py, EXIT_AFTER_A_PAGE)."""
        tables, rows = [], 0
        for part in self._parts():
            if rows >= n:
                break
            table = part.scanner(columns=columns, filter=filter, use_threads=False).head(n - rows)
            tables.append(table)
            rows += table.num_rows
        return pa.concat_tables(tables) if tables else self.schema.empty_table().select(columns or self.schema.names)


def _dataset(fs: Any, path: str, schema: pa.Schema | None = None) -> Files | None:
    """The Parquet files under ``path`` as one dataset, or None where there are none yet."""
    import pyarrow.fs as pafs

    filesystem = pafs.LocalFileSystem() if is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    try:
        if not fs.isdir(path):
            return None
        dataset = ds.dataset(path, filesystem=filesystem, format="parquet", schema=schema)
    except (FileNotFoundError, pa.ArrowInvalid):
        return None
    return Files(dataset) if dataset.files else None


class MapIndex:
    """One map dataset, opened once: its maps and errors datasets and the columns they offer."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url, self.storage_options = url, storage_options
        with storage_errors(url, "open", storage_options):
            self.fs, self.root = open_fs(url, storage_options)
            self.maps = _dataset(self.fs, f"{self.root}/maps")
            self.errors = _dataset(self.fs, f"{self.root}/errors", ERRORS_SCHEMA)
        schema = self.maps.schema if self.maps is not None else pa.schema([])
        self.columns = [f.name for f in schema if f.name not in _HEAVY]
        #: Columns a gallery may sort by: the per-sample numbers (logit, kept fraction, ...).
        self.sortable = [f.name for f in schema if f.name not in _HEAVY and
                         (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type))]
        #: The page's requests come on their own threads (ThreadingHTTPServer): the scans of the
        #: maps and errors datasets run one at a time, which costs a viewer with one user little and
        #: keeps pyarrow's dataset scans and their shared filesystem out of concurrent use.
        self._lock = threading.Lock()
        self._kinds: dict[str, int] | None = None
        self._counts: OrderedDict[tuple, int] = OrderedDict()

    def methods(self) -> list[str]:
        """The method labels that have a maps folder."""
        with storage_errors(self.url, "list", None):
            found = self.fs.ls(f"{self.root}/maps", detail=False) if self.fs.isdir(f"{self.root}/maps") else []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found if not p.rsplit("/", 1)[-1].startswith(("_", ".")))

    # ------------------------------------------------------------------ filtering and sorting

    def expression(self, query: Mapping[str, str]) -> ds.Expression | None:
        """The filter a gallery query names: method, label, target, predicted, correct."""
        parts = []
        if query.get("method"):
            parts.append(pc.field("method") == check_name("method", query["method"]))
        for name in INT_FILTERS:
            if query.get(name, "") != "":
                try:
                    parts.append(pc.field(name) == int(query[name]))
                except ValueError:
                    raise ViewError(f"filter {name}={query[name]!r} is not an integer class index") from None
        correct = query.get("correct", "")
        if correct in ("correct", "incorrect"):
            labelled = pc.field("label") >= 0
            same = pc.field("predicted") == pc.field("label")
            parts.append(labelled & (same if correct == "correct" else ~same))
        elif correct:
            raise ViewError(f"correct={correct!r}: use correct or incorrect")
        if not parts:
            return None
        return functools.reduce(lambda a, b: a & b, parts)

    def rows(self, query: Mapping[str, str], sample_ids: pa.Array | None = None) -> dict[str, Any]:
        """One page of rows (small columns only) that pass ``query``'s filters, sorted by its
        ``sort`` column (``order`` asc or desc; nulls last; ties by method and sample id) or in
        source order, with the number of rows that pass. ``sample_ids``: only these samples (a
        cluster of jobs.reporting.view_analysis, joined by id)."""
        offset, limit = _int(query, "offset", 0), min(_int(query, "limit", 24), MAX_PAGE)
        if self.maps is None:
            return {"total": 0, "rows": [], "offset": offset}
        expr = self.expression(query)
        if sample_ids is not None:
            among = pc.field("sample_id").isin(sample_ids.cast(self.maps.schema.field("sample_id").type))
            expr = among if expr is None else expr & among
        sort = query.get("sort") or None
        if sort is not None and sort not in self.sortable:
            raise ViewError(f"sort={sort!r}: sort by one of {', '.join(self.sortable)}")
        with self._lock, storage_errors(self.url, "read", None):  # one scan at a time (see __init__)
            if sort is None:
                total = self._count(query, expr) if sample_ids is None else self.maps.count_rows(filter=expr)
                head = self.maps.head(offset + limit, self.columns, expr)
                page = head.slice(offset, limit)
            else:
                total, page = self._sorted(expr, sort, query.get("order", "asc") == "desc", offset, limit)
        return {"total": total, "offset": offset, "rows": _records(page)}

    def _count(self, query: Mapping[str, str], expr: ds.Expression | None) -> int:
        """The rows that pass a gallery filter, counted once per filter: the next page of the same
        filter reads only as far as its rows lie. The files are those listed at open, so a count
        cannot go stale; the last :data:`COUNTS_KEPT` filters are kept."""
        key = tuple(sorted((k, v) for k, v in query.items() if k not in ("offset", "limit", "sort", "order")))
        if key in self._counts:
            self._counts.move_to_end(key)
        else:
            self._counts[key] = self.maps.count_rows(filter=expr)
            if len(self._counts) > COUNTS_KEPT:
                self._counts.popitem(last=False)
        return self._counts[key]

    def _sorted(self, expr: ds.Expression | None, key: str, descending: bool, offset: int, limit: int
                ) -> tuple[int, pa.Table]:
        """Rows ``offset:offset+limit`` in ``key`` order: a running top-k over a scan of four
        columns (key, method, sample id, shard), then the page's full rows from their shards."""
        k = offset + limit
        keys = [("_key", "descending" if descending else "ascending"), ("method", "ascending"),
                ("sample_id", "ascending")]
        ids = ["method", "sample_id", "shard_id"]
        best: pa.Table | None = None
        pending: list[pa.Table] = []
        pending_rows = total = valid_rows = 0

        def reduce(tables: list[pa.Table]) -> pa.Table:
            table = pa.concat_tables(tables)
            return table.take(pc.select_k_unstable(table, k, sort_keys=keys)) if table.num_rows > k else table

        for batch in self.maps.batches([key, *ids], expr):  # one small batch per shard file: reduce every 64 k rows
            total += batch.num_rows
            table = pa.Table.from_batches([batch])
            table = table.filter(pc.is_valid(table.column(key)))
            if not table.num_rows:
                continue
            valid_rows += table.num_rows
            pending.append(table.select(ids).append_column("_key", pc.cast(table.column(key), pa.float64())))
            pending_rows += table.num_rows
            if pending_rows >= 1 << 16:
                best, pending, pending_rows = reduce(([best] if best is not None else []) + pending), [], 0
        if pending or best is not None:
            best = reduce(([best] if best is not None else []) + pending)
        order = [] if best is None else best.take(pc.sort_indices(best, sort_keys=keys)).slice(offset, limit).to_pylist()
        page = self._full_rows(order)
        if len(order) < limit and total > valid_rows:  # then the rows without the value, in source order
            skip = max(0, offset - valid_rows)
            missing = ~pc.field(key).is_valid()
            rest = self.maps.head(skip + limit - len(order), self.columns,
                                  missing if expr is None else expr & missing).slice(skip)
            page = pa.concat_tables([page, rest.cast(page.schema)]) if page.num_rows else rest
        return total, page

    def _full_rows(self, order: list[dict[str, Any]]) -> pa.Table:
        """The small columns of the rows ``order`` names (method, sample_id, shard_id), in its order,
        read from their shards' files (a few files, not the dataset)."""
        by_file: dict[tuple[str, str], list[str]] = {}
        for r in order:
            by_file.setdefault((r["method"], r["shard_id"]), []).append(r["sample_id"])
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for (method, shard), wanted in by_file.items():
            table = self._read_shard(method, shard, self.columns, [("sample_id", "in", wanted)])
            for row in table.to_pylist():
                found[(row["method"], row["sample_id"])] = row
        rows = [found[(r["method"], r["sample_id"])] for r in order if (r["method"], r["sample_id"]) in found]
        schema = self.maps.schema
        return pa.Table.from_pylist(rows, schema=pa.schema([schema.field(c) for c in self.columns]))

    def error_rows(self, query: Mapping[str, str]) -> dict[str, Any]:
        """One page of the errors tables, filtered by method, kind and sample id, with the count of
        every kind (the page's kind filter offers them)."""
        offset, limit = _int(query, "offset", 0), min(_int(query, "limit", 50), MAX_PAGE)
        if self.errors is None:
            return {"total": 0, "rows": [], "offset": offset, "kinds": {}}
        parts = []
        if query.get("method"):
            parts.append(pc.field("method") == check_name("method", query["method"]))
        if query.get("kind"):
            parts.append(pc.field("kind") == query["kind"])
        if query.get("sample_id"):
            parts.append(pc.field("sample_id") == query["sample_id"])
        expr = functools.reduce(lambda a, b: a & b, parts) if parts else None
        with self._lock, storage_errors(self.url, "read", None):
            kinds = self._error_kinds()
            if expr is None:  # the count from the kinds, the page from the first files only
                total, page = sum(kinds.values()), self.errors.head(offset + limit, None).slice(offset, limit)
            else:  # one scan: the count and the page (a filter's rows may lie in any file)
                total, page = self._errors_page(expr, offset, limit)
        return {"total": total, "offset": offset, "rows": _records(page), "kinds": dict(kinds)}

    def sample_errors(self, sample_id: str) -> list[dict[str, Any]]:
        """A sample's error rows (one per method that failed it, at most a page): one filtered scan."""
        if self.errors is None:
            return []
        with self._lock, storage_errors(self.url, "read", None):
            return _records(self._errors_page(pc.field("sample_id") == sample_id, 0, MAX_PAGE)[1])

    def _errors_page(self, expr: ds.Expression, offset: int, limit: int) -> tuple[int, pa.Table]:
        """The rows that pass ``expr``: how many, and rows ``offset`` to ``offset + limit`` of them."""
        total, kept = 0, []
        for batch in self.errors.batches(None, expr):
            start, stop = max(offset - total, 0), min(offset + limit - total, batch.num_rows)
            if stop > start:
                kept.append(batch.slice(start, stop - start))
            total += batch.num_rows
        return total, pa.Table.from_batches(kept, self.errors.schema)

    def _error_kinds(self) -> dict[str, int]:
        """Error rows by kind, counted once: the files are those listed when the index was opened."""
        if self._kinds is None:
            kinds: dict[str, int] = {}
            for batch in self.errors.batches(["kind"]):  # counted batch by batch: memory follows a batch
                for c in pc.value_counts(pc.fill_null(batch.column(0), "unknown")).to_pylist() if batch.num_rows else []:
                    kinds[c["values"]] = kinds.get(c["values"], 0) + c["counts"]
            self._kinds = dict(sorted(kinds.items()))
        return self._kinds

    # ------------------------------------------------------------------ one sample

    def _read_shard(self, method: str, shard_id: str, columns: list[str] | None, filters: list) -> pa.Table:
        """The rows of one committed shard file (published, or still pending) that pass ``filters``."""
        rel = f"maps/{check_name('method', method)}/{check_name('shard', shard_id)}.parquet"
        for path in (f"{self.root}/{rel}", f"{self.root}/_pending/{rel}"):
            try:
                with self.fs.open(path, "rb") as f:
                    return pq.read_table(f, columns=columns, filters=filters)
            except FileNotFoundError:
                continue
        raise StorageNotFound(f"{self.url} has no shard {shard_id!r} of method {method!r}")

    def _shard_table(self, method: str, shard_id: str, sample_id: str, columns: list[str] | None) -> pa.Table:
        """``sample_id``'s row of one shard file."""
        return self._read_shard(method, shard_id, columns, [("sample_id", "==", str(sample_id))])

    @functools.lru_cache(maxsize=256)
    def map_values(self, method: str, shard_id: str, sample_id: str) -> np.ndarray:
        """The stored map [H, W] (float16) of one sample and method; a small cache, since a page
        and its sample page ask for the same maps."""
        with storage_errors(self.url, "read", None):
            table = self._shard_table(method, shard_id, sample_id, ["sample_id", "map"])
        if not table.num_rows:
            raise StorageNotFound(f"{self.url} has no map of {sample_id!r} by {method!r} in shard {shard_id}")
        return map_arrays(table.column("map"))[0]

    def sample(self, sample_id: str, shard_id: str | None) -> list[dict[str, Any]]:
        """Every method's row of one sample (without the map): from its shard when the gallery
        says which, else through the plan (storage.maps.reader.read_sample)."""
        if shard_id is None:
            from storage.maps.reader import read_sample

            frame = read_sample(self.url, sample_id, storage_options=self.storage_options)
            frame = frame.drop(columns=[c for c in ("map",) if c in frame.columns])
            return [_jsonable(r) for r in frame.to_dict("records")]
        rows: list[dict[str, Any]] = []
        for method in self.methods():
            try:
                with storage_errors(self.url, "read", None):
                    table = self._shard_table(method, shard_id, sample_id, None)
            except StorageNotFound:
                continue
            rows += _records(table.drop_columns(["map"]))
        return rows


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        raise ViewError(f"{name}={query.get(name)!r} is not a whole number") from None
    if value < 0:
        raise ViewError(f"{name}={value} is negative")
    return value


def _records(table: pa.Table) -> list[dict[str, Any]]:
    return [_jsonable(r) for r in table.to_pylist()]


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with NaN and infinities as None and numpy scalars as Python ones (JSON has neither)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, float) and not np.isfinite(v):
            v = None
        out[k] = v
    return out
