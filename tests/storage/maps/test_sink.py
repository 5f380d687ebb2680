"""storage.maps.sink.MapSink: a run's write lifecycle (repair, start, write, commit, fail, uncommit) over
one map dataset, on local disk and S3."""

from __future__ import annotations

import numpy as np
import pytest

from storage import SampleError, StorageError, maps_array, read_maps, read_run
from storage.maps.manifest import INDEX, MANIFEST_DIR
from storage.maps.plan import Shard, ShardPlan
from storage.maps.sink import MapSink
from storage.maps.writer import MapStore
from storage.sources.base import SampleRef
from tests.helpers import MAP_SHAPE, map_records as records

H, W = MAP_SHAPE
S = 4  # shard size


def ids_of(k, n=S):
    return [f"s/{k * S + i:04d}" for i in range(n)]


def plan_of(*sizes: int) -> ShardPlan:
    """A plan of shards of ``sizes`` samples (only their index, id and size matter to the sink)."""
    return ShardPlan(tuple(Shard(k, f"{k:06d}", refs=tuple(SampleRef(sid, sid) for sid in ids_of(k, n)))
                           for k, n in enumerate(sizes)), S)


def test_a_run_starts_writes_and_commits_the_planned_rows(storage_root) -> None:
    """start sizes the zarr arrays for every shard of the plan; commit indexes the commit records and
    trims the arrays to the planned rows (the last shard is not full)."""
    url, options = storage_root
    sink = MapSink(url, options)
    plan = plan_of(S, 2)
    sink.start(plan, ["m"], (H, W))
    assert maps_array(url, "m", storage_options=options).shape == (2 * S, H, W)
    for shard in plan.shards:
        ids = shard.sample_ids()
        sink.write(shard, "m", records(ids, seed=shard.index), (), ids)
    committed = sink.commit(plan, ["m"])
    assert list(committed["m"]) == ["000000", "000001"]
    assert maps_array(url, "m", storage_options=options).shape == (S + 2, H, W)
    assert sink.where.find(f"{MANIFEST_DIR}/m/{INDEX}", ".parquet")  # the next run reads one segment
    assert sink.unfinished(["m", "other"], "000001") == ("other",)


def test_a_shard_committed_by_an_attempt_that_died_is_finished_by_repair(storage_root, monkeypatch) -> None:
    """The attempt dies after its commit record, before flagging its zarr rows and publishing: the
    next run's repair() finishes both, so the committed maps read back from zarr and Parquet alike."""
    url, options = storage_root
    MapStore(url, options).ensure_zarr("m", n=8, shape=(H, W), shard_size=S)
    errs = [SampleError(ids_of(1)[0], "boom")]
    dying = MapStore(url, options)
    monkeypatch.setattr(dying, "_mark_committed", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        dying.write_shard("b", 1, "m", records(ids_of(1)[1:], seed=3), errs, sample_ids=ids_of(1))
    assert list(MapStore(url, options).committed("m")) == ["b"]
    assert np.isnan(maps_array(url, "m", storage_options=options)[S:2 * S]).all()  # committed, not yet flagged
    sink = MapSink(url, options)
    assert sorted(sink.repair()) == ["errors/m/b.parquet", "maps/m/b.parquet"]
    arr, df = maps_array(url, "m", storage_options=options), read_maps(url, "m", storage_options=options)
    assert np.isnan(arr[S]).all() and df["sample_id"].tolist() == ids_of(1)[1:]
    np.testing.assert_array_equal(arr[S + 1:2 * S], np.stack(df["map"]))
    assert sink.repair() == []


def test_repair_drops_the_tables_of_an_attempt_that_never_committed(tmp_path) -> None:
    url = str(tmp_path / "out")
    sink = MapSink(url)
    sink.where.put("_pending/maps/m/000003.parquet", b"half a table")
    assert sink.repair() == [] and sink.where.find("_pending") == []


def test_uncommit_takes_a_shard_out_of_the_committed_set_and_unflags_its_rows(storage_root) -> None:
    url, options = storage_root
    sink = MapSink(url, options)
    plan = plan_of(S, S)
    sink.start(plan, ["m"], (H, W))
    for shard in plan.shards:
        sink.write(shard, "m", records(shard.sample_ids()), (), shard.sample_ids())
    sink.uncommit("m", plan.shards[1])
    assert list(sink.committed("m")) == ["000000"]
    arrays = maps_array(url, "m", storage_options=options)
    assert np.isnan(arrays[S:]).all() and not np.isnan(arrays[:S]).any()  # maps_array reads committed rows only


def test_fail_writes_the_record_and_a_store_that_refuses_it_is_left_as_it_is(tmp_path) -> None:
    url = str(tmp_path / "out")
    MapSink(url).fail({"status": "failed", "reason": "boom"})
    assert read_run(url)["reason"] == "boom"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output's folder would be")
    with pytest.raises(StorageError):
        MapSink(str(blocked / "out")).write_run({"status": "running"})
    MapSink(str(blocked / "out")).fail({"status": "failed", "reason": "boom"})  # no exception: the cause is reported
