"""The driver's planning of an attribution run: which shards it has to do, for which methods.

:func:`plan_run` extends the plan stored under the output by what the source listing adds
(:meth:`workers.shard_source.ShardSource.plan`), finds the samples whose source file changed or
vanished since they were planned (``storage.maps.plan_changes``), skips what every method has
committed, and starts the sink (the zarr arrays sized for the plan). ``jobs.attribute`` and its
``--dry-run`` (``jobs.mapping.preview``), the tests and the benchmarks all plan through it; the
read tasks it returns (:class:`workers.tasks.ShardTask`) go to ``jobs.mapping.actor_pool.run_shards``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from storage.maps.plan import Listing, ShardPlan, listed_samples
from storage.maps.plan_changes import SourceChanges, restamp, source_changes
from storage.maps.sink import MapSink
from workers.shard_source import ShardSource
from workers.tasks import ShardTask


@dataclass(frozen=True)
class PlannedRun:
    """The plan of an output and the tasks a run has to do."""

    plan: ShardPlan
    new_shards: int
    tasks: tuple[ShardTask, ...]
    changes: SourceChanges = SourceChanges()
    recomputed: tuple[str, ...] = ()  # shards un-committed because their source files changed
    listed: int = 0  # samples in the source listing (all of it, or the --limit)
    committed: dict[str, dict[str, dict]] = field(default_factory=dict)  # method -> {shard_id: record}, as planned

    @property
    def pending_samples(self) -> int:
        return sum(task.samples for task in self.tasks)

    @property
    def committed_shards(self) -> int:
        """Shards every method has committed already."""
        return len(self.plan.shards) - len(self.tasks)


def plan_run(shards: ShardSource, sink: MapSink, listing: Listing, shard_size: int, methods: Sequence[str],
             map_shape: tuple[int, int], *, listing_complete: bool = True, recompute_changed: bool = False,
             dry_run: bool = False) -> PlannedRun:
    """Extend the stored plan by what it lacks (``listing``: :meth:`ShardSource.listing`), return a task
    for each shard that some method has not committed, naming those methods, and start the sink for
    the methods with tasks (their zarr arrays sized for the plan).

    Samples whose file changed or vanished since they were planned are reported; with
    ``recompute_changed`` their shards are un-committed for ``methods`` (the plan takes the files'
    new stamps) and computed again, so a deleted file's sample becomes an error row instead of
    keeping the map of a file that is gone.

    ``dry_run`` writes and deletes nothing (no plan segment, no restamp, no un-commit, no zarr) and
    returns what a run would do: the same plan and tasks, from reads alone."""
    plan, new_shards = shards.plan(listing, shard_size, write=not dry_run)
    changes = source_changes(plan, listing, listing_complete)
    recomputed: tuple[str, ...] = ()
    if changes and recompute_changed:
        recomputed = tuple(plan.shards[i].shard_id for i in changes.shards)
        if not dry_run:
            plan = restamp(sink.where, plan, listing, listing_complete)
            for method in methods:
                for index in changes.shards:
                    sink.uncommit(method, plan.shards[index])
    with ThreadPoolExecutor(max_workers=max(1, len(methods))) as pool:  # one listing per method, at once
        done = dict(zip(methods, pool.map(sink.committed, methods)))
    if dry_run and recomputed:  # what the un-commit would have taken out
        done = {m: {s: r for s, r in records.items() if s not in recomputed} for m, records in done.items()}
    tasks = []
    for shard in plan.shards:
        pending = tuple(m for m in methods if shard.shard_id not in done[m])
        if pending:
            tasks.append(ShardTask(shard, pending))
    busy = {m for task in tasks for m in task.methods} if plan.shards else set(methods)
    if not dry_run:  # the other methods' arrays hold every shard already
        sink.start(plan, [m for m in methods if m in busy], map_shape)
    return PlannedRun(plan, new_shards, tuple(tasks), changes, recomputed, listed_samples(listing), done)
