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
                     ("sample_id", pa.string()), ("locator", pa.string())])


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
    for index, sid, sample_id, locator in zip(*(table.column(c).to_pylist() for c in _SCHEMA.names)):
        shards.setdefault(index, []).append(SampleRef(sample_id, json.loads(locator)))
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


def _write(where: Location, shards: Sequence[Shard], shard_size: int) -> None:
    rows = [(s.index, s.shard_id, r.sample_id, json.dumps(r.locator)) for s in shards for r in s.refs]
    schema = _SCHEMA.with_metadata({"shard_size": str(shard_size)})
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(_SCHEMA.names)}, schema=schema)
    where.put(PLAN_PATH, parquet_bytes(table))
