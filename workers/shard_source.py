"""The read seam of an attribution run: how a source is cut into shards, and how one shard is read.

Ray Data puts this behind ``Datasource.get_read_tasks`` -> ``ReadTask``; here it is one class:

- :meth:`ShardSource.listing` and :meth:`ShardSource.plan` (driver): what to plan from (row ranges
  where the source is row-addressable, else its refs) and the plan stored under the output, extended
  by what it lacks (``storage.maps.plan``). ``jobs.mapping.planning`` makes the run's read tasks
  (:class:`workers.tasks.ShardTask`) from it; they travel to the actors as block rows
  (``workers.tasks.block_rows``), the one representation Ray Data moves.
- :meth:`ShardSource.tasks` and :meth:`ShardSource.read` (actor): a block row back into tasks from
  the stored plan, and a task's samples as decoded batches, labelled with the model's class indices,
  the next batch decoding on a background thread while the caller computes the current one.

A sample that cannot be read, decoded or (with ``target="label"``) labelled is an error row, never
an exception; a store that cannot be reached raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage.io.location import Location
from storage.maps.plan import Listing, Shard, ShardPlan, plan_form, read_segment, update_plan
from storage.sources import NO_LABEL, RowFile, Sample, SampleError, SampleRef, Source

from .tasks import ShardTask, block_tasks

#: Decoded batches of one shard: (samples, error rows) per batch.
Batches = Iterator[tuple[list[Sample], list[SampleError]]]


class ShardSource:
    """A source as shards planned under the output at ``where``. ``label_map`` (source class index ->
    model class index), ``target`` and ``num_classes`` label the samples read (the worker's; the
    driver, which only plans, leaves them out)."""

    def __init__(self, source: Source, where: Location, *, label_map: Sequence[int] | None = None,
                 target: str = "predicted", num_classes: int = 0) -> None:
        self.source, self.where = source, where
        self.label_map, self.target, self.num_classes = label_map, target, num_classes
        self._segments: dict[str, dict[int, Shard]] = {}
        self._decoder: ThreadPoolExecutor | None = None

    # -- driver: how the source shards -----------------------------------------------------------
    def listing(self, limit: int | None = None) -> Sequence[SampleRef] | list[RowFile]:
        """What to plan from: the source's row files where it is row-addressable (the plan then holds
        row ranges, not one ref per sample), else its refs; an output planned sample by sample stays so."""
        files = None if plan_form(self.where) == "samples" else self.source.row_files(limit)
        return files if files is not None else self.source.list(limit)

    def plan(self, listing: Listing, shard_size: int, *, write: bool = True) -> tuple[ShardPlan, int]:
        """The stored plan extended by the shards ``listing`` adds (stored unless ``write`` is False);
        returns (plan, new shards)."""
        return update_plan(self.where, listing, shard_size, write=write)

    # -- actor: how one shard is read ------------------------------------------------------------
    def tasks(self, row: Mapping[str, Any]) -> list[ShardTask]:
        """The read tasks of a block row (``workers.tasks.block_rows``), their shards from the plan."""
        return block_tasks(row, self._segment_shards)

    def _segment_shards(self, segment: str) -> dict[int, Shard]:
        """A plan segment's shards by index, read once (the last two segments are kept: blocks run in
        plan order, so an actor rarely goes back to an earlier one)."""
        if segment not in self._segments:
            shards = read_segment(self.where, segment)
            while len(self._segments) >= 2:
                self._segments.pop(next(iter(self._segments)))
            self._segments[segment] = {shard.index: shard for shard in shards}
        return self._segments[segment]

    def close(self) -> None:
        """End the decoding thread (a worker in a process that goes on: jobs.mapping.in_process)."""
        if self._decoder is not None:
            self._decoder.shutdown()
            self._decoder = None

    def read(self, task: ShardTask, batch_size: int) -> tuple[list[str], Batches]:
        """The shard's sample ids in source order, and its samples in decoded batches of ``batch_size``."""
        refs = task.shard.sample_refs(self.source)
        return [r.sample_id for r in refs], self._batches(refs, batch_size)

    def _batches(self, refs: Sequence[SampleRef], size: int) -> Batches:
        """Batches of decoded samples; the next batch decodes while the caller computes."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        chunks = [refs[i:i + size] for i in range(0, len(refs), size)]
        pending = self._decoder.submit(self._decode, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            current = pending.result()
            pending = self._decoder.submit(self._decode, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield current

    def _decode(self, refs: Sequence[SampleRef]) -> tuple[list[Sample], list[SampleError]]:
        samples, errors = [], []
        for item in self.source.read(refs):
            if isinstance(item, Sample):
                item = self._labelled(item)
            (errors if isinstance(item, SampleError) else samples).append(item)
        return samples, errors

    def _labelled(self, sample: Sample) -> Sample | SampleError:
        """The sample with its label as the model's class index where the driver matched names; with
        ``target="label"``, an error row when it has no label the model knows."""
        if self.label_map is not None and 0 <= sample.label < len(self.label_map):
            sample.label = self.label_map[sample.label]
        if self.target == "label" and not 0 <= sample.label < self.num_classes:
            why = "has no label" if sample.label == NO_LABEL else \
                f"has label {sample.label}, which is not a class of the model ({self.num_classes} classes)"
            return SampleError(sample.sample_id, f"{sample.sample_id} {why}; --target label needs one", "label")
        return sample
