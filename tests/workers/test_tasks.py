"""workers.tasks: the read tasks the driver hands to workers, as the few Ray Data rows they travel as."""

from __future__ import annotations

import json
from dataclasses import replace

from jobs.mapping.planning import plan_run
from storage.maps.plan import read_segment
from storage.maps.sink import MapSink
from storage.sources import open_source
from workers.shard_source import ShardSource
from workers.tasks import ShardTask, block_rows, block_tasks

METHODS = ("pathway", "gradient")


def planned_tasks(url: str, shard_size: int, limit: int, methods=METHODS, rows: bool = False) -> list[ShardTask]:
    """The driver's tasks for the first ``limit`` Fashion-MNIST samples (by row ranges or sample by sample)."""
    sink = MapSink(url)
    shards = ShardSource(open_source("fashion-mnist"), sink.where)
    listing = shards.listing(limit) if rows else shards.source.list(limit)
    return list(plan_run(shards, sink, listing, shard_size, methods, (28, 28)).tasks)


def expand(url: str, rows: list[dict]) -> list[ShardTask]:
    """What a worker makes of the rows (workers.tasks.block_tasks over the stored plan)."""
    where = MapSink(url).where
    return [task for row in rows for task in block_tasks(row, lambda s: {x.index: x for x in read_segment(where, s)})]


def test_task_blocks_round_trip_through_the_plan(tmp_path) -> None:
    """The driver's rows name a plan segment and runs of shards; a worker gets the same tasks back
    from the stored plan. Runs break where the methods differ, rows where a block crosses segments."""
    url = str(tmp_path / "maps")
    tasks = planned_tasks(url, 3, 7)
    assert [t.samples for t in tasks] == [3, 3, 1] and all(t.methods == METHODS for t in tasks)
    rows = block_rows(tasks, 1)
    assert rows == [{"segment": "_plan/shards.parquet", "runs": json.dumps([[0, 2, list(METHODS)]])}]
    assert expand(url, rows) == tasks
    mixed = [tasks[0], replace(tasks[1], methods=("gradient",)), tasks[2]]
    assert [json.loads(r["runs"]) for r in block_rows(mixed, 2)] == [[[0, 0, list(METHODS)]],
                                                                      [[1, 1, ["gradient"]], [2, 2, list(METHODS)]]]
    assert expand(url, block_rows(mixed, 2)) == mixed
    grown = planned_tasks(url, 3, 12)  # a second segment
    assert [t.segment for t in grown] == ["_plan/shards.parquet"] * 3 + ["_plan/shards-000003.parquet"] * 2
    rows = block_rows(grown, 1)
    assert [r["segment"] for r in rows] == ["_plan/shards.parquet", "_plan/shards-000003.parquet"]
    assert expand(url, rows) == grown and [t.shard.refs for t in expand(url, rows)] == [t.shard.refs for t in grown]


def test_a_range_task_travels_as_a_block_row_and_expands_to_the_samples_refs(tmp_path) -> None:
    idx = open_source("fashion-mnist")
    url = str(tmp_path / "out")
    tasks = planned_tasks(url, 5, 20, ("pathway",), rows=True)
    rows = block_rows(tasks, 1)
    assert rows == [{"segment": "_plan/ranges-000000.parquet", "runs": '[[0, 3, ["pathway"]]]'}]
    again = expand(url, rows)
    assert again == tasks and [(r.start, r.stop) for r in again[3].shard.ranges] == [(15, 20)]
    assert again[3].samples == 5 and again[3].shard.sample_refs(idx) == idx.list(limit=20)[15:20]
    assert again[3].first_sample_id == again[3].shard.ranges[0].describe()
    assert tasks[0].first_sample_id != "-"
