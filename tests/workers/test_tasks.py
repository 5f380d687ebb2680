"""workers.tasks: what the driver plans from (row ranges or refs) and the tasks it hands to workers."""

from __future__ import annotations

import numpy as np
import pytest

from attribution import MethodSpec
from storage.maps.writer import MapStore
from storage.maps.plan import read_segment, update_plan
from storage.maps.reader import maps_array, read_maps
from storage.sources import RowFile, open_source
from tests.helpers import every_file, tiny_checkpoint, write_folder
from workers.attributor import ShardAttributor
from workers.tasks import JobConfig, block_rows, block_tasks, plan_shard_tasks, source_listing

METHODS = ("pathway", "gradient")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def test_row_addressable_sources_are_planned_by_ranges_and_others_by_samples(tmp_path) -> None:
    idx = open_source("fashion-mnist")
    listing = source_listing(MapStore(str(tmp_path / "new")), idx, limit=30)
    assert all(isinstance(x, RowFile) for x in listing) and sum(f.rows for f in listing) == 30
    # An output planned sample by sample (as every output was before ranges) stays so.
    old = MapStore(str(tmp_path / "old"))
    update_plan(old.where, idx.list(limit=10), 5)
    assert source_listing(old, idx, limit=30) == idx.list(limit=30)
    names = write_folder(str(tmp_path / "folder"), None, np.zeros((2, 28, 28, 1), np.uint8), np.array([4, 4]))
    folder = open_source(str(tmp_path / "folder"))
    assert [r.sample_id for r in source_listing(MapStore(str(tmp_path / "f")), folder)] == names


def test_a_range_task_travels_as_a_block_row_and_expands_to_the_samples_refs(tmp_path) -> None:
    idx = open_source("fashion-mnist")
    store = MapStore(str(tmp_path / "out"))
    planned = plan_shard_tasks(store, source_listing(store, idx, limit=20), 5, ("pathway",), (28, 28))
    rows = block_rows(planned.tasks, 1)
    assert rows == [{"segment": "_plan/ranges-000000.parquet", "runs": '[[0, 3, ["pathway"]]]'}]
    again = block_tasks(rows[0], lambda segment: {s.index: s for s in read_segment(store.where, segment)})
    assert again == list(planned.tasks) and [(r.start, r.stop) for r in again[3].ranges] == [(15, 20)]
    assert again[3].samples == 5 and again[3].sample_refs(idx) == idx.list(limit=20)[15:20]


def test_a_shard_planned_by_ranges_writes_the_same_bytes_as_planned_by_samples(tmp_path, checkpoint) -> None:
    idx = open_source("fashion-mnist")
    outputs = {}
    for form in ("ranges", "samples"):
        url = str(tmp_path / form)
        listing = idx.row_files(limit=20) if form == "ranges" else idx.list(limit=20)
        planned = plan_shard_tasks(MapStore(url), listing, 8, METHODS, (28, 28))
        assert bool(planned.tasks[1].ranges) == (form == "ranges") and planned.listed == 20
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


def test_a_dry_run_plans_what_a_run_would_and_writes_nothing(tmp_path) -> None:
    """plan_shard_tasks(dry_run=True), as jobs.attribute --dry-run calls it: the plan, the new shards and
    the changed shards a run would recompute, with no plan segment, restamp, un-commit or zarr written."""
    from storage.maps.writer import MapRecords
    from tests.helpers import png_bytes, put

    src = str(tmp_path / "folder")
    images = np.zeros((6, 28, 28, 1), np.uint8)
    names = write_folder(src, None, images[:4], np.array([1, 1, 2, 2]))
    store = MapStore(str(tmp_path / "out"))
    first = plan_shard_tasks(store, source_listing(store, open_source(src)), 2, ("pathway",), (28, 28))
    for task in first.tasks:
        ids = [r.sample_id for r in task.refs]
        maps = MapRecords(ids, np.zeros(len(ids)), np.zeros((len(ids), 28, 28)))
        store.write_shard(task.shard_id, None, "pathway", maps)
    write_folder(src, None, images[4:], np.array([3, 3]), first=4)  # two new files
    put(f"{src}/{names[0]}", None, png_bytes(np.full((28, 28, 1), 200, np.uint8)))  # a planned one changes
    source = open_source(src)
    before = every_file(store.url)
    preview = plan_shard_tasks(store, source_listing(store, source), 2, ("pathway",), (28, 28),
                               recompute_changed=True, dry_run=True)
    assert every_file(store.url) == before
    real = plan_shard_tasks(store, source_listing(store, source), 2, ("pathway",), (28, 28), recompute_changed=True)
    assert every_file(store.url) != before
    assert [(t.shard_id, t.methods) for t in preview.tasks] == [(t.shard_id, t.methods) for t in real.tasks] == \
        [("000000", ("pathway",)), ("000002", ("pathway",))]
    assert preview.recomputed == real.recomputed == ("000000",) and preview.new_shards == real.new_shards == 1
