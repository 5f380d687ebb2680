"""What changed in a map dataset's source since it was planned, and re-planning the changed shards.

A plan stamps each planned sample (or row range) with its file's size and version as listed, or, for
a byte span of an index, with a CRC of its bytes (:mod:`storage.maps.plan`). A rerun compares the stamps
with the listing: :func:`source_changes` says what changed or vanished, and :func:`restamp` takes the
new stamps where the job recomputes those shards (``--recompute-changed``).

Tested by tests/storage/maps/test_plan.py and tests/storage/test_source_ranges.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from storage.io.fs import InvalidStorageInput
from storage.io.location import Location
from storage.maps.plan import DELETED, Listing, Shard, ShardPlan, ids_and_stamps, write_segment
from storage.sources.base import RowFile, RowRange, SampleRef


@dataclass(frozen=True)
class SourceChanges:
    """Planned samples whose file (or byte span) changed or vanished since they were planned."""

    changed: int = 0     # samples
    deleted: int = 0     # samples
    examples: tuple[str, ...] = ()  # a few of them: sample ids, or rows of a file where ids are data
    shards: tuple[int, ...] = ()  # the shards that hold them

    def __bool__(self) -> bool:
        return bool(self.changed or self.deleted)

    def describe(self) -> str:
        return (f"{self.changed} samples changed and {self.deleted} deleted in the source since they were "
                f"mapped, in {len(self.shards)} shards (e.g. {', '.join(self.examples[:4])})")


def _stamp_now(planned: RowRange, files: dict[str, RowFile]) -> str | None:
    """A planned range's stamp as the source is now (None: its file is gone): the file's, or its span's."""
    f = files.get(planned.file)
    if f is None:
        return None
    return f.span_stamp(*planned.span) if planned.span is not None and f.span_stamp is not None else f.stamp


def source_changes(plan: ShardPlan, listing: Listing, listing_complete: bool = True) -> SourceChanges:
    """What changed in the source since the plan: a stamp that differs (both known), or a planned
    sample (row file) the listing lacks (only when ``listing`` is the whole source, not a ``--limit``
    of it). A changed or deleted row file changes every planned row of it; a file read by byte spans
    (an index, a tar) changes only the rows whose bytes changed."""
    current = _now_stamps(listing)
    files = {x.name: x for x in listing if isinstance(x, RowFile)}
    counts = {"changed": 0, "deleted": 0}
    examples: list[str] = []
    shards = set()
    for shard in plan.shards:
        if shard.ranges:
            parts = [(_stamp_now(r, files), r.stamp, r) for r in shard.ranges]
        else:
            ids, stamps = ids_and_stamps(shard.refs)
            parts = zip(map(current.get, ids), stamps, ids)
        for now, planned, part in parts:
            if now == planned and now is not None:  # the common case, first
                continue
            if now is None and listing_complete and planned != DELETED:
                what = "deleted"
            elif now is not None and planned and now and planned != now:
                what = "changed"
            else:
                continue
            counts[what] += 1 if isinstance(part, str) else part.stop - part.start
            if len(examples) < 10:
                examples.append(part if isinstance(part, str) else part.describe())
            shards.add(shard.index)
    return SourceChanges(counts["changed"], counts["deleted"], tuple(examples), tuple(sorted(shards)))


def _now_stamps(listing: Listing) -> dict[str, str]:
    """{sample id: its stamp now} of a listing of refs."""
    return {x.sample_id: x.stamp for x in listing if isinstance(x, SampleRef)}


def restamp(where: Location, plan: ShardPlan, listing: Listing, listing_complete: bool = True) -> ShardPlan:
    """The plan with the samples' (row files') current stamps and locators (same shards, same rows),
    stored; one the listing lacks is stamped deleted, so it is reported once, not on every run.

    Ranges whose ids are data cannot be mapped again in place: their rows may now hold other samples,
    whose ids other shards may hold, so a changed one is an error that asks for a new output."""
    refs = {x.sample_id: x for x in listing if isinstance(x, SampleRef)}
    files = {x.name: x for x in listing if isinstance(x, RowFile)}

    def gone(stamp: str) -> str:
        return DELETED if listing_complete else stamp

    def range_now(r: RowRange) -> RowRange:
        now = _stamp_now(r, files)
        if r.ids_in_rows and now != r.stamp and (now is not None or listing_complete):
            raise InvalidStorageInput(f"{r.describe()} changed since they were mapped, and their sample ids are data "
                                      "(read with the rows), which may now name other samples: write to a new output "
                                      "to map the source as it is now")
        return replace(r, stamp=gone(r.stamp) if now is None else now)

    def now(shard: Shard) -> Shard:
        return replace(shard, refs=tuple(refs.get(r.sample_id) or replace(r, stamp=gone(r.stamp)) for r in shard.refs),
                       ranges=tuple(map(range_now, shard.ranges)))

    shards = tuple(now(s) for s in plan.shards)
    for segment in sorted({s.segment for s in shards}):
        write_segment(where, segment, [s for s in shards if s.segment == segment], plan.shard_size)
    return ShardPlan(shards, plan.shard_size)
