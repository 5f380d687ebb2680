"""The shard plan of a map dataset: which samples make up which shard, fixed once written.

The driver cuts the source into shards once and stores the plan under the output
(``_plan/shards.parquet``: shard_index, shard_id, sample_id, locator). Reruns read it back,
so a shard always holds the same samples and lands on the same zarr rows, whatever the
source looks like later. Samples that appear in the source afterwards (new files) are
appended as new shards: only they are processed on the next run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import InvalidStorageInput
from storage.location import Location
from storage.sources.base import SampleRef
from storage.tables import PLAN_DIR, parquet_bytes

PLAN_PATH = f"{PLAN_DIR}/shards.parquet"
_SCHEMA = pa.schema([("shard_index", pa.int64()), ("shard_id", pa.string()),
                     ("sample_id", pa.string()), ("locator", pa.string()), ("stamp", pa.string())])


@dataclass(frozen=True)
class Shard:
    index: int
    shard_id: str
    refs: tuple[SampleRef, ...]


@dataclass(frozen=True)
class ShardPlan:
    shards: tuple[Shard, ...]
    shard_size: int

    @property
    def total_rows(self) -> int:
        """Rows the zarr arrays need: every shard owns shard_size rows (the last ones may be partly empty)."""
        return len(self.shards) * self.shard_size


def shard_id(index: int) -> str:
    return f"{index:06d}"


def read_plan(where: Location) -> tuple[list[Shard], int | None]:
    """The stored plan's shards in order and its shard size, or ([], None) without a plan."""
    data = where.get_optional(PLAN_PATH)
    if data is None:
        return [], None
    table = pq.read_table(pa.BufferReader(data))
    size = int((table.schema.metadata or {}).get(b"shard_size", b"0")) or None
    shards: dict[int, list[SampleRef]] = {}
    ids: dict[int, str] = {}
    if "stamp" not in table.column_names:  # planned before stamps were recorded
        table = table.append_column("stamp", pa.array([""] * table.num_rows, pa.string()))
    for index, sid, sample_id, locator, stamp in zip(*(table.column(c).to_pylist() for c in _SCHEMA.names)):
        shards.setdefault(index, []).append(SampleRef(sample_id, json.loads(locator), stamp or ""))
        ids[index] = sid
    return [Shard(i, ids[i], tuple(shards[i])) for i in sorted(shards)], size


def update_plan(where: Location, refs: Sequence[SampleRef], shard_size: int) -> tuple[ShardPlan, int]:
    """Read the stored plan, append shards for samples it lacks, store it; returns (plan, new shards).

    A stored plan fixes the shard size: asking for another one is an error, since it would
    move samples between shards that are already committed.
    """
    if shard_size < 1:
        raise InvalidStorageInput(f"shard size must be >= 1, got {shard_size}")
    shards, stored = read_plan(where)
    if stored is not None and stored != shard_size:
        raise InvalidStorageInput(
            f"{where.url} was planned with shard size {stored}; rerun with --shard-size {stored} or write to a "
            "new output"
        )
    planned = {r.sample_id for s in shards for r in s.refs}
    new = [r for r in refs if r.sample_id not in planned]
    if len({r.sample_id for r in new}) != len(new):
        raise InvalidStorageInput("the source lists duplicate sample ids; they must be unique to be committed "
                                  "exactly once")
    first = len(shards)
    for offset in range(0, len(new), shard_size):
        index = first + offset // shard_size
        shards.append(Shard(index, shard_id(index), tuple(new[offset : offset + shard_size])))
    if new:
        _write(where, shards, shard_size)
    return ShardPlan(tuple(shards), shard_size), len(shards) - first


#: The stamp of a planned sample whose file was deleted (and whose shard was recomputed since).
DELETED = "deleted"


@dataclass(frozen=True)
class SourceChanges:
    """Planned samples whose file changed (another stamp) or vanished since they were planned."""

    changed: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    shards: tuple[int, ...] = ()  # the shards that hold them

    def __bool__(self) -> bool:
        return bool(self.changed or self.deleted)

    def describe(self) -> str:
        examples = [*self.changed[:2], *self.deleted[:2]]
        return (f"{len(self.changed)} samples changed and {len(self.deleted)} deleted in the source since they were "
                f"mapped, in {len(self.shards)} shards (e.g. {', '.join(examples)})")


def source_changes(plan: ShardPlan, refs: Sequence[SampleRef], listing_complete: bool = True) -> SourceChanges:
    """What changed in the source since the plan: a stamp that differs (both known), or a planned
    sample the listing lacks (only when ``refs`` is the whole listing, not a ``--limit`` of it)."""
    current = {r.sample_id: r for r in refs}
    changed, deleted, shards = [], [], set()
    for shard in plan.shards:
        for ref in shard.refs:
            now = current.get(ref.sample_id)
            if now is None and listing_complete and ref.stamp != DELETED:
                deleted.append(ref.sample_id)
                shards.add(shard.index)
            elif now is not None and ref.stamp and now.stamp and ref.stamp != now.stamp:
                changed.append(ref.sample_id)
                shards.add(shard.index)
    return SourceChanges(tuple(changed), tuple(deleted), tuple(sorted(shards)))


def restamp(where: Location, plan: ShardPlan, refs: Sequence[SampleRef], listing_complete: bool = True) -> ShardPlan:
    """The plan with the samples' current locators and stamps (same shards, same rows), stored; a
    sample the listing lacks is stamped deleted, so it is reported once, not on every run."""
    current = {r.sample_id: r for r in refs}

    def now(ref: SampleRef) -> SampleRef:
        if ref.sample_id in current:
            return current[ref.sample_id]
        return SampleRef(ref.sample_id, ref.locator, DELETED) if listing_complete else ref

    shards = tuple(Shard(s.index, s.shard_id, tuple(now(r) for r in s.refs)) for s in plan.shards)
    _write(where, shards, plan.shard_size)
    return ShardPlan(shards, plan.shard_size)


def _write(where: Location, shards: Sequence[Shard], shard_size: int) -> None:
    rows = [(s.index, s.shard_id, r.sample_id, json.dumps(r.locator), r.stamp) for s in shards for r in s.refs]
    schema = _SCHEMA.with_metadata({"shard_size": str(shard_size)})
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(_SCHEMA.names)}, schema=schema)
    where.put(PLAN_PATH, parquet_bytes(table))
