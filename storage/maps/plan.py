"""The shard plan of a map dataset: which samples make up which shard, fixed once written.

The driver cuts the source into shards once and stores the plan under the output (``_plan/``).
Reruns read it back, so a shard always holds the same samples and lands on the same zarr rows,
whatever the source looks like later. Samples that appear in the source afterwards (new files,
new rows) are appended as new shards, in a new plan segment: only they are processed next run.

A plan takes one of two forms, fixed by its first run:

- **ranges** (``_plan/ranges-<first shard>.parquet``: shard_index, shard_id, file, start, stop,
  id_format, stamp, byte_start, byte_stop): for row-addressable sources (Parquet files, IDX, CSV /
  JSONL indexes, WebDataset tars). A shard is a few row ranges, so the plan grows with shards, not
  samples. Where ids follow from the row (``id_format``) the driver never lists samples one by one;
  where they are data (a ``sample_id`` column, an index's paths, a tar's keys; ``id_format`` empty)
  the worker reads them with the rows. Rows read by bytes (index lines, tar members) carry their
  byte span, stamped by its bytes, so a worker reads just its span, and rows appended to an index
  are new rows while the planned ones stay unchanged.
- **samples** (``_plan/shards.parquet`` for the first run's shards, as before plans had segments,
  then ``_plan/shards-<first shard>.parquet``: shard_index, shard_id, sample_id, locator, stamp):
  one row per sample, for sources that must be listed file by file anyway (folders), and for
  outputs planned this way before their source was row-addressable (they stay so).

Both forms cut the source in listing order into shards of ``shard_size`` (a shard may span files),
so a source planned either way gets the same shards and ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.io.fs import InvalidStorageInput
from storage.io.location import Location
from storage.sources.base import RowFile, RowRange, SampleRef, Source, row_of_id
from storage.maps.tables import PLAN_DIR, parquet_bytes

#: The first segment of a plan of the samples form (the whole plan, before plans had segments).
PLAN_PATH = f"{PLAN_DIR}/shards.parquet"
SAMPLES_SCHEMA = pa.schema([("shard_index", pa.int64()), ("shard_id", pa.string()), ("sample_id", pa.string()),
                            ("locator", pa.string()), ("stamp", pa.string())])
RANGES_SCHEMA = pa.schema([("shard_index", pa.int64()), ("shard_id", pa.string()), ("file", pa.string()),
                           ("start", pa.int64()), ("stop", pa.int64()), ("id_format", pa.string()),
                           ("stamp", pa.string()), ("byte_start", pa.int64()), ("byte_stop", pa.int64())])
_PREFIX = {"samples": "shards", "ranges": "ranges"}
#: The name of the plan's id index segments (``_plan/ids-<first shard>.parquet``), see :func:`shard_of`.
ID_INDEX = "ids"

#: The stamp of a planned sample (or row file) that was deleted (and whose shard was recomputed since).
DELETED = "deleted"


def samples_in(refs: Sequence[SampleRef], ranges: Sequence[RowRange]) -> int:
    """How many samples a shard's refs and row ranges hold."""
    return len(refs) + sum(r.stop - r.start for r in ranges)


class PlannedRefs(Sequence[SampleRef]):
    """A shard's planned samples as columns of its plan segment (ids, JSON locators, stamps), made
    into :class:`SampleRef` objects only when read one by one. A rerun compares the id and stamp of
    every planned sample, but needs refs only for the shards it runs; building 200,000 refs costs
    as much as listing a local folder of 200,000 files (benchmarks/bench_scale.py)."""

    __slots__ = ("ids", "locators", "stamps")

    def __init__(self, ids: list[str], locators: list[str], stamps: list[str]) -> None:
        self.ids, self.locators, self.stamps = ids, locators, stamps

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return tuple(self)[i]
        return SampleRef(self.ids[i], _locator(self.locators[i]), self.stamps[i])

    def __iter__(self) -> Iterator[SampleRef]:
        return map(SampleRef, self.ids, map(_locator, self.locators), self.stamps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PlannedRefs({len(self)} samples: {self.ids[:2]}...)"


def ids_and_stamps(refs: Sequence[SampleRef]) -> tuple[list[str], list[str]]:
    """The sample ids and stamps of refs, without building them where they are planned ones."""
    if isinstance(refs, PlannedRefs):
        return refs.ids, refs.stamps
    return [r.sample_id for r in refs], [r.stamp for r in refs]


@dataclass(frozen=True)
class Shard:
    index: int
    shard_id: str
    refs: tuple[SampleRef, ...] = ()
    ranges: tuple[RowRange, ...] = ()
    segment: str = field(default="", compare=False)  # the plan file that holds it

    @property
    def size(self) -> int:
        return samples_in(self.refs, self.ranges)

    def sample_ids(self) -> list[str]:
        return list(ids_and_stamps(self.refs)[0]) + [sid for r in self.ranges for sid in r.sample_ids()]

    def sample_refs(self, source: Source) -> list[SampleRef]:
        """The shard's refs; row ranges are expanded by ``source`` (a row-addressable one)."""
        return list(self.refs) + [ref for r in self.ranges for ref in source.row_refs(r)]


@dataclass(frozen=True)
class ShardPlan:
    shards: tuple[Shard, ...]
    shard_size: int

    @property
    def total_rows(self) -> int:
        """Rows the zarr arrays need: every shard owns shard_size rows (the last ones may be partly empty)."""
        return len(self.shards) * self.shard_size

    @property
    def planned_rows(self) -> int:
        """The zarr rows up to the last planned sample: ``(shards - 1) * shard_size + len(last shard)``."""
        return (len(self.shards) - 1) * self.shard_size + self.shards[-1].size if self.shards else 0

    @property
    def samples(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def form(self) -> str | None:
        """"ranges" or "samples"; None for an empty plan."""
        return None if not self.shards else "ranges" if self.shards[0].ranges else "samples"


def shard_id(index: int) -> str:
    return f"{index:06d}"


def _segments(where: Location) -> list[str]:
    return [rel for rel in where.find(PLAN_DIR, ".parquet") if rel.rsplit("/", 1)[-1].startswith(("shards", "ranges"))]


def plan_form(where: Location) -> str | None:
    """"ranges" or "samples" for a stored plan (from its segments' names alone), None without one."""
    names = {rel.rsplit("/", 1)[-1][:6] for rel in _segments(where)}
    return None if not names else "ranges" if names == {"ranges"} else "samples"


def read_plan(where: Location) -> tuple[list[Shard], int | None]:
    """The stored plan's shards in order and its shard size, or ([], None) without a plan."""
    segments = _segments(where)
    shards: list[Shard] = []
    sizes = set()
    for rel, data in where.get_many(segments).items():
        if data is None:
            continue
        table = pq.read_table(pa.BufferReader(data))
        sizes.add(int((table.schema.metadata or {}).get(b"shard_size", b"0")) or None)
        shards += _shards_of(table, rel)
    if len(sizes - {None}) > 1:
        raise InvalidStorageInput(f"{where.url_of(PLAN_DIR)} holds segments of different shard sizes {sorted(sizes)}")
    if len({bool(s.ranges) for s in shards}) > 1:
        raise InvalidStorageInput(f"{where.url_of(PLAN_DIR)} mixes plan forms; it was not written by this tool")
    return sorted(shards, key=lambda s: s.index), next(iter(sizes - {None}), None)


def read_segment(where: Location, segment: str) -> list[Shard]:
    """The shards of one plan segment (``_plan/…parquet``, as :attr:`Shard.segment` names it): a worker
    reads the samples of the shards it is given from here, so they need not travel with its tasks."""
    return _shards_of(pq.read_table(pa.BufferReader(where.get(segment))), segment)


def _shards_of(table: pa.Table, segment: str) -> list[Shard]:
    return _ranges_of(table, segment) if "file" in table.column_names else _samples_of(table, segment)


def _samples_of(table: pa.Table, segment: str) -> list[Shard]:
    if "stamp" not in table.column_names:  # format 2 plans before 463aff9 (stamps)
        table = table.append_column("stamp", pa.array([""] * table.num_rows, pa.string()))
    table = table.set_column(table.schema.get_field_index("stamp"), "stamp", pc.fill_null(table.column("stamp"), ""))
    index = table.column("shard_index").to_numpy()
    if len(index) and (np.diff(index) < 0).any():  # written shard by shard; sort anything else
        table = table.take(np.argsort(index, kind="stable"))
        index = table.column("shard_index").to_numpy()
    ids, locators, stamps = (table.column(c).to_pylist() for c in ("sample_id", "locator", "stamp"))
    starts = [0, *(np.flatnonzero(np.diff(index)) + 1).tolist()]
    stops = [*starts[1:], len(ids)]
    shard_ids = table.column("shard_id").take(pa.array(starts, pa.int64())).to_pylist() if ids else []
    return [Shard(int(index[a]), sid, PlannedRefs(ids[a:b], locators[a:b], stamps[a:b]), segment=segment)
            for a, b, sid in zip(starts, stops, shard_ids) if b > a]


def _locator(text: str) -> str | int:
    """A stored locator: a JSON string without escapes (a folder's relative path: most plans) is
    taken as it is, which is what ``json.loads`` would give, at a tenth of the cost."""
    if len(text) > 1 and text[0] == '"' and text[-1] == '"' and "\\" not in text:
        return text[1:-1]
    return json.loads(text)


def _ranges_of(table: pa.Table, segment: str) -> list[Shard]:
    ranges: dict[int, list[RowRange]] = {}
    ids: dict[int, str] = {}
    columns = [table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
               for c in RANGES_SCHEMA.names]  # format 2 ranges segments before f865140 (byte spans) lack them
    for index, sid, file, start, stop, fmt, stamp, first, end in zip(*columns):
        span = (first, end) if first is not None else None
        ranges.setdefault(index, []).append(RowRange(file, start, stop, fmt, stamp or "", span))
        ids[index] = sid
    return [Shard(i, ids[i], ranges=tuple(ranges[i]), segment=segment) for i in ranges]


def shard_of(where: Location, sample_id: str) -> str | None:
    """The id of the shard that holds ``sample_id``, reading the plan's segments without building it
    (a filter on the samples form; each range's id pattern on the ranges form, or a filter on the id
    index where ids are data); None if unplanned."""
    for rel in [*_segments(where), *_id_indexes(where)]:
        data = where.get_optional(rel)
        if data is None:
            continue
        if pq.read_schema(pa.BufferReader(data)).get_field_index("file") < 0:
            hit = pq.read_table(pa.BufferReader(data), columns=["shard_index"], filters=[("sample_id", "==", sample_id)])
            if hit.num_rows:
                return shard_id(hit.column("shard_index")[0].as_py())
            continue
        table = pq.read_table(pa.BufferReader(data))
        for sid, file, start, stop, fmt in zip(*(table.column(c).to_pylist()
                                                for c in ("shard_id", "file", "start", "stop", "id_format"))):
            row = row_of_id(fmt, sample_id)
            if row is not None and start <= row < stop:
                return str(sid)
    return None


def _id_indexes(where: Location) -> list[str]:
    return [rel for rel in where.find(PLAN_DIR, ".parquet") if rel.rsplit("/", 1)[-1].startswith(ID_INDEX)]


def _write_id_index(where: Location, shards: Sequence[Shard], files: Sequence[RowFile]) -> None:
    """``_plan/ids-<first shard>.parquet`` (sample_id, shard_index) for the new shards' ranges whose ids
    are data: written once, when they are planned, and read only to find a sample by its id (reruns
    never read it). Written before the plan segment, which is what plans the shards."""
    by_name = {f.name: f for f in files}
    ids, index = [], []
    for shard in shards:
        for r in shard.ranges:
            owned = by_name[r.file].ids
            if r.ids_in_rows and owned is not None:
                part = owned[r.start:r.stop]
                ids.append(part.cast(pa.string()) if isinstance(part, pa.Array) else pa.array(part, pa.string()))
                index.append(np.full(r.stop - r.start, shard.index, np.int64))
    if ids:
        table = pa.table({"sample_id": pa.concat_arrays(ids), "shard_index": np.concatenate(index)})
        where.put(f"{PLAN_DIR}/{ID_INDEX}-{shard_id(shards[0].index)}.parquet", parquet_bytes(table))


Listing = Sequence[SampleRef] | Sequence[RowFile]


def listed_samples(listing: Listing) -> int:
    """How many samples a listing (refs, or row files) holds."""
    return sum(x.rows if isinstance(x, RowFile) else 1 for x in listing)


def update_plan(where: Location, listing: Listing, shard_size: int, *,
                write: bool = True) -> tuple[ShardPlan, int]:
    """Read the stored plan, append shards for what it lacks as a new segment; returns (plan, new shards).
    ``write=False`` stores nothing (a preview: ``jobs.attribute --dry-run``), and gives the same plan.

    ``listing`` is the source's refs (samples form) or its row files (ranges form); a stored plan of
    the samples form needs refs. A stored plan fixes the shard size: asking for another one is an
    error, since it would move samples between shards that are already committed.
    """
    if shard_size < 1:
        raise InvalidStorageInput(f"shard size must be >= 1, got {shard_size}")
    shards, stored = read_plan(where)
    if stored is not None and stored != shard_size:
        raise InvalidStorageInput(
            f"{where.url} was planned with shard size {stored}; rerun with --shard-size {stored} or write to a "
            "new output"
        )
    ranges = bool(listing) and isinstance(listing[0], RowFile)
    if ranges and shards and not shards[0].ranges:
        raise InvalidStorageInput(f"{where.url} was planned sample by sample: list the source's samples to extend it")
    if not ranges and shards and shards[0].ranges and listing:
        raise InvalidStorageInput(f"{where.url} was planned by row ranges, but the source is no longer row-addressable "
                                  "(a sample_id column appeared?): write to a new output")
    first = len(shards)
    cut = _cut_ranges if ranges else _cut_samples
    new = [Shard(first + k, shard_id(first + k), **part)
           for k, part in enumerate(cut(shards, listing, shard_size))]  # type: ignore[arg-type]
    if new:
        segment = PLAN_PATH if not ranges and first == 0 else \
            f"{PLAN_DIR}/{_PREFIX['ranges' if ranges else 'samples']}-{shard_id(first)}.parquet"
        new = [replace(s, segment=segment) for s in new]
        if ranges and write:
            _write_id_index(where, new, listing)  # type: ignore[arg-type]
        if write:
            write_segment(where, segment, new, shard_size)
    return ShardPlan(tuple(shards + new), shard_size), len(new)


def _cut_samples(shards: Sequence[Shard], refs: Sequence[SampleRef], shard_size: int) -> Iterable[dict]:
    planned = {sid for s in shards for sid in ids_and_stamps(s.refs)[0]}
    new = [r for r in refs if r.sample_id not in planned]
    if len({r.sample_id for r in new}) != len(new):
        raise InvalidStorageInput("the source lists duplicate sample ids; they must be unique to be committed "
                                  "exactly once")
    for offset in range(0, len(new), shard_size):
        yield {"refs": tuple(new[offset:offset + shard_size])}


def _cut_ranges(shards: Sequence[Shard], files: Sequence[RowFile], shard_size: int) -> Iterable[dict]:
    """The rows the plan lacks (past each file's planned rows), cut into shards of consecutive ranges;
    where rows are read by bytes, a range also stops at a gap between rows (a skipped line or member)."""
    covered: dict[str, int] = {}
    for shard in shards:
        for r in shard.ranges:
            covered[r.file] = max(covered.get(r.file, 0), r.stop)
    part: list[RowRange] = []
    room = shard_size
    for f in files:
        start = covered.get(f.name, 0)
        gaps = _gaps(f)
        while start < f.rows:
            stop = min(f.rows, start + room, int(gaps[np.searchsorted(gaps, start, side="right")]))
            part.append(_range(f, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield {"ranges": tuple(part)}
                part, room = [], shard_size
    if part:
        yield {"ranges": tuple(part)}


def _gaps(f: RowFile) -> np.ndarray:
    """The rows a range of ``f`` must not run past (sorted, ending with ``f.rows``): each row that does
    not start where the one before it ends."""
    if f.starts is None or f.ends is None or f.rows < 2:
        return np.array([f.rows], np.int64)
    return np.append(np.flatnonzero(f.starts[1:f.rows] != f.ends[:f.rows - 1]) + 1, f.rows)


def _range(f: RowFile, start: int, stop: int) -> RowRange:
    """Rows ``start:stop`` of ``f``, with their byte span and its stamp where rows are read by bytes."""
    if f.starts is None or f.ends is None:
        return RowRange(f.name, start, stop, f.id_format, f.stamp)
    span = (int(f.starts[start]), int(f.ends[stop - 1]))
    return RowRange(f.name, start, stop, f.id_format, f.span_stamp(*span) if f.span_stamp else f.stamp, span)


def write_segment(where: Location, segment: str, shards: Sequence[Shard], shard_size: int) -> None:
    if shards and shards[0].ranges:
        schema = RANGES_SCHEMA
        rows = [(s.index, s.shard_id, r.file, r.start, r.stop, r.id_format, r.stamp, *(r.span or (None, None)))
                for s in shards for r in s.ranges]
    else:
        schema = SAMPLES_SCHEMA
        rows = [(s.index, s.shard_id, r.sample_id, json.dumps(r.locator), r.stamp) for s in shards for r in s.refs]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(schema.names)},
                     schema=schema.with_metadata({"shard_size": str(shard_size)}))
    where.put(segment, parquet_bytes(table))
