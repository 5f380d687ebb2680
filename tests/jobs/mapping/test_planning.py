"""jobs.mapping.planning.plan_run: the stored plan extended, changed samples found, committed shards
skipped, the sink started; and with dry_run, the same from reads alone."""

from __future__ import annotations

import numpy as np

from attribution import MethodSpec
from jobs.mapping.planning import plan_run
from storage.maps.reader import maps_array, read_maps
from storage.maps.sink import MapSink
from storage.maps.writer import MapRecords
from storage.sources import open_source
from tests.helpers import every_file, png_bytes, put, write_folder
from workers.attributor import ShardAttributor
from workers.shard_source import ShardSource
from workers.tasks import JobConfig

METHODS = ("pathway", "gradient")


def test_a_shard_planned_by_ranges_writes_the_same_bytes_as_planned_by_samples(tmp_path, checkpoint) -> None:
    idx = open_source("fashion-mnist")
    outputs = {}
    for form in ("ranges", "samples"):
        url = str(tmp_path / form)
        sink = MapSink(url)
        listing = idx.row_files(limit=20) if form == "ranges" else idx.list(limit=20)
        planned = plan_run(ShardSource(idx, sink.where), sink, listing, 8, METHODS, (28, 28))
        assert bool(planned.tasks[1].shard.ranges) == (form == "ranges") and planned.listed == 20
        assert planned.pending_samples == 20 and planned.committed_shards == 0
        config = JobConfig(source="fashion-mnist", checkpoint=checkpoint, output=url,
                           methods=tuple(MethodSpec(m) for m in METHODS), batch_size=8, device="cpu")
        worker = ShardAttributor(config.to_dict(), threads=1)
        for task in planned.tasks:
            worker.process_shard(task)
        outputs[form] = {p: b for p, b in every_file(url, None).items() if not p.startswith("_plan/")}
        assert list(read_maps(url, "pathway").sample_id) == [r.sample_id for r in idx.list(limit=20)]
        assert not np.isnan(maps_array(url, "gradient")[:20]).any()
    assert outputs["ranges"].keys() == outputs["samples"].keys()
    differing = [p for p in outputs["ranges"] if outputs["ranges"][p] != outputs["samples"][p]]
    assert differing == [], differing


def test_committed_shards_are_skipped_per_method_and_the_sink_is_started_for_those_with_work(tmp_path) -> None:
    """A method that committed every shard gets no task and no zarr call; a new one gets every shard."""
    idx = open_source("fashion-mnist")
    sink = MapSink(str(tmp_path / "out"))
    shards = ShardSource(idx, sink.where)
    first = plan_run(shards, sink, idx.list(6), 3, ("pathway",), (28, 28))
    assert sink.where.exists("zarr/pathway/zarr.json")
    for task in first.tasks:
        ids = task.shard.sample_ids()
        sink.write(task.shard, "pathway", MapRecords(ids, np.zeros(len(ids)), np.zeros((len(ids), 28, 28))), (), ids)
    again = plan_run(shards, sink, idx.list(6), 3, ("pathway", "gradient"), (28, 28))
    assert [(t.shard_id, t.methods) for t in again.tasks] == [("000000", ("gradient",)), ("000001", ("gradient",))]
    assert sorted(again.committed["pathway"]) == ["000000", "000001"] and again.committed["gradient"] == {}
    assert sink.where.exists("zarr/gradient/zarr.json")


def test_a_dry_run_plans_what_a_run_would_and_writes_nothing(tmp_path) -> None:
    """plan_run(dry_run=True), as jobs.attribute --dry-run calls it: the plan, the new shards and the
    changed shards a run would recompute, with no plan segment, restamp, un-commit or zarr written."""
    src = str(tmp_path / "folder")
    images = np.zeros((6, 28, 28, 1), np.uint8)
    names = write_folder(src, None, images[:4], np.array([1, 1, 2, 2]))
    sink = MapSink(str(tmp_path / "out"))

    def plan(**kwargs):
        shards = ShardSource(open_source(src), sink.where)
        return plan_run(shards, sink, shards.listing(), 2, ("pathway",), (28, 28), **kwargs)

    for task in plan().tasks:
        ids = [r.sample_id for r in task.shard.refs]
        sink.store.write_shard(task.shard_id, None, "pathway", MapRecords(ids, np.zeros(len(ids)),
                                                                          np.zeros((len(ids), 28, 28))))
    write_folder(src, None, images[4:], np.array([3, 3]), first=4)  # two new files
    put(f"{src}/{names[0]}", None, png_bytes(np.full((28, 28, 1), 200, np.uint8)))  # a planned one changes
    before = every_file(sink.url)
    preview = plan(recompute_changed=True, dry_run=True)
    assert every_file(sink.url) == before
    real = plan(recompute_changed=True)
    assert every_file(sink.url) != before
    assert [(t.shard_id, t.methods) for t in preview.tasks] == [(t.shard_id, t.methods) for t in real.tasks] == \
        [("000000", ("pathway",)), ("000002", ("pathway",))]
    assert preview.recomputed == real.recomputed == ("000000",) and preview.new_shards == real.new_shards == 1
