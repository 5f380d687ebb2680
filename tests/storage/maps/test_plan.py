"""The stored shard plan, on local disk and on real S3: fixed once written, new samples appended as new shards."""

from __future__ import annotations

import pickle

import pyarrow.parquet as pq
import pytest

from storage.io.fs import InvalidStorageInput, join, open_fs
from storage.io.location import Location
from storage.maps.plan import DELETED, PLAN_PATH, PlannedRefs, RowRange, ids_and_stamps, read_plan, shard_id, shard_of, update_plan
from storage.maps.plan_changes import restamp, source_changes
from storage.sources import RowFile, SampleRef, open_source


@pytest.fixture(scope="module")
def refs() -> list[SampleRef]:
    """Real Fashion-MNIST test refs (IDX locators are row numbers)."""
    return open_source("fashion-mnist").list()[:25]


def ids(plan) -> list[list[str]]:
    return [[r.sample_id for r in s.refs] for s in plan.shards]


def test_first_plan_cuts_source_order_into_fixed_shards(storage_root, refs) -> None:
    url, options = storage_root
    assert read_plan(Location(url, options)) == ([], None)
    plan, new = update_plan(Location(url, options), refs, 10)
    assert new == 3 and plan.shard_size == 10 and plan.total_rows == 30
    assert [s.index for s in plan.shards] == [0, 1, 2]
    assert [s.shard_id for s in plan.shards] == ["000000", "000001", "000002"] == [shard_id(i) for i in range(3)]
    assert ids(plan) == [[r.sample_id for r in refs[i:i + 10]] for i in (0, 10, 20)]
    stored, size = read_plan(Location(url, options))
    assert size == 10 and tuple(stored) == plan.shards  # locators survive the JSON round trip
    fs, root = open_fs(url, options)
    table = pq.read_table(fs.open(join(root, PLAN_PATH), "rb"))
    assert table.num_rows == 25 and table.schema.metadata[b"shard_size"] == b"10"


def test_a_samples_segment_is_read_whatever_its_row_order(storage_root, refs) -> None:
    """Segments are written shard by shard, but a segment in another row order (rewritten by
    another tool) reads as the same shards, each sample in its planned place."""
    url, options = storage_root
    plan, _ = update_plan(Location(url, options), refs, 10)
    fs, root = open_fs(url, options)
    table = pq.read_table(fs.open(join(root, PLAN_PATH), "rb"))
    shuffled = table.take(sorted(range(table.num_rows), key=lambda i: (-table.column("shard_index")[i].as_py(), i)))
    with fs.open(join(root, PLAN_PATH), "wb") as fh:
        pq.write_table(shuffled, fh)
    assert tuple(read_plan(Location(url, options))[0]) == plan.shards


def test_planned_refs_read_as_the_refs_that_were_planned(storage_root, refs) -> None:
    """A stored shard's refs are built on demand from the plan's columns; they compare, slice, hash
    and pickle as the tuple of refs that was planned (as a task sends them to a worker)."""
    url, options = storage_root
    plan, _ = update_plan(Location(url, options), refs, 10)
    stored = read_plan(Location(url, options))[0][1].refs
    assert isinstance(stored, PlannedRefs) and len(stored) == 10
    assert stored == plan.shards[1].refs == tuple(refs[10:20]) and stored != tuple(refs[:10])
    assert stored[3] == refs[13] and stored[3].locator == 13 and stored[-1] == refs[19]
    assert stored[2:4] == tuple(refs[12:14]) and list(stored) == refs[10:20]
    assert hash(stored) == hash(tuple(refs[10:20]))
    assert pickle.loads(pickle.dumps(tuple(stored))) == tuple(refs[10:20])
    assert ids_and_stamps(stored) == ([r.sample_id for r in refs[10:20]], [r.stamp for r in refs[10:20]])


def test_rerun_with_same_source_changes_nothing(storage_root, refs) -> None:
    url, options = storage_root
    first, _ = update_plan(Location(url, options), refs, 10)
    fs, root = open_fs(url, options)
    before = fs.cat_file(join(root, PLAN_PATH))
    again, new = update_plan(Location(url, options), list(reversed(refs)), 10)  # listing order no longer matters
    assert new == 0 and again == first
    assert fs.cat_file(join(root, PLAN_PATH)) == before


def test_new_samples_become_new_shards_and_old_shards_keep_their_samples(storage_root, refs) -> None:
    url, options = storage_root
    first, _ = update_plan(Location(url, options), refs[:12], 5)
    assert ids(first) == [[r.sample_id for r in refs[:12][i:i + 5]] for i in (0, 5, 10)]  # last shard: 2 samples
    # The source grows, with new samples listed between old ones; one old sample disappears.
    grown = refs[5:] + refs[:4]
    plan, new = update_plan(Location(url, options), grown, 5)
    assert new == 3
    assert plan.shards[:3] == first.shards  # a planned shard never changes, even if its sample vanished
    assert ids(plan)[3:] == [[r.sample_id for r in refs[12:17]], [r.sample_id for r in refs[17:22]],
                             [r.sample_id for r in refs[22:25]]]
    assert plan.total_rows == 6 * 5
    assert read_plan(Location(url, options))[0] == list(plan.shards)


def test_other_shard_size_for_a_planned_output_is_an_error(storage_root, refs) -> None:
    url, options = storage_root
    update_plan(Location(url, options), refs, 10)
    with pytest.raises(InvalidStorageInput, match="planned with shard size 10; rerun with --shard-size 10"):
        update_plan(Location(url, options), refs, 8)


def test_bad_inputs(tmp_path, refs) -> None:
    where = Location(str(tmp_path))
    with pytest.raises(InvalidStorageInput, match="shard size must be >= 1"):
        update_plan(where, refs, 0)
    with pytest.raises(InvalidStorageInput, match="duplicate sample ids"):
        update_plan(where, [refs[0], refs[1], refs[0]], 2)
    assert read_plan(where) == ([], None)  # nothing was written


def test_unreachable_store_names_the_plan(s3_server) -> None:
    options = {**s3_server.storage_options, "secret": "not-the-secret-123"}
    with pytest.raises(OSError, match="denied/_plan: the store rejected the credentials") as info:
        read_plan(Location(s3_server.url("denied"), options))
    assert "not-the-secret-123" not in str(info.value)


# -- the ranges form: row-addressable sources, a plan that grows with shards -----------------
def row_file(name: str, rows: int, stamp: str = "v1") -> RowFile:
    return RowFile(name, rows, name + "#{row}", stamp)


def test_row_files_are_cut_into_shards_of_ranges_with_the_ids_of_the_samples_form(storage_root) -> None:
    url, options = storage_root
    files = [row_file("a.parquet", 7), row_file("b.parquet", 5)]
    plan, new = update_plan(Location(url, options), files, 5)
    assert new == 3 and plan.form == "ranges" and plan.samples == 12 and plan.planned_rows == 12
    assert [s.ranges for s in plan.shards] == [
        (RowRange("a.parquet", 0, 5, "a.parquet#{row}"),),
        (RowRange("a.parquet", 5, 7, "a.parquet#{row}"), RowRange("b.parquet", 0, 3, "b.parquet#{row}")),
        (RowRange("b.parquet", 3, 5, "b.parquet#{row}"),)]
    # The same shards and ids as listing the samples one by one would give.
    refs = [SampleRef(f"{f.name}#{i}", f"{f.name}#{i}") for f in files for i in range(f.rows)]
    by_samples, _ = update_plan(Location(join(url, "samples"), options), refs, 5)
    assert [s.sample_ids() for s in plan.shards] == [s.sample_ids() for s in by_samples.shards]
    stored, size = read_plan(Location(url, options))
    assert size == 5 and tuple(stored) == plan.shards and stored[1].ranges[1].stamp == "v1"
    fs, root = open_fs(url, options)
    segment = pq.read_table(fs.open(join(root, "_plan/ranges-000000.parquet"), "rb"))
    assert segment.num_rows == 4  # a row per range, not per sample
    assert shard_of(Location(url, options), "b.parquet#2") == "000001"
    assert shard_of(Location(url, options), "b.parquet#5") is None  # past the planned rows
    assert shard_of(Location(url, options), "c.parquet#0") is None


def test_new_rows_and_files_are_appended_as_a_new_segment(storage_root) -> None:
    url, options = storage_root
    where = Location(url, options)
    first, _ = update_plan(where, [row_file("a.parquet", 3)], 4)  # as with --limit 3
    fs, root = open_fs(url, options)
    before = fs.cat_file(join(root, "_plan/ranges-000000.parquet"))
    again, new = update_plan(where, [row_file("a.parquet", 3)], 4)
    assert new == 0 and again == first
    grown, new = update_plan(where, [row_file("a.parquet", 6), row_file("b.parquet", 2)], 4)
    assert new == 2 and grown.shards[:1] == first.shards
    assert [s.ranges for s in grown.shards[1:]] == [
        (RowRange("a.parquet", 3, 6, "a.parquet#{row}"), RowRange("b.parquet", 0, 1, "b.parquet#{row}")),
        (RowRange("b.parquet", 1, 2, "b.parquet#{row}"),)]
    assert fs.cat_file(join(root, "_plan/ranges-000000.parquet")) == before  # the first segment is untouched
    assert fs.exists(join(root, "_plan/ranges-000001.parquet"))
    assert read_plan(where)[0] == list(grown.shards)
    with pytest.raises(InvalidStorageInput, match="planned by row ranges"):
        update_plan(where, [SampleRef("x", "x")], 4)


def test_a_changed_or_deleted_row_file_changes_all_its_planned_rows(storage_root) -> None:
    url, options = storage_root
    where = Location(url, options)
    plan, _ = update_plan(where, [row_file("a.parquet", 3), row_file("b.parquet", 3)], 2)
    assert not source_changes(plan, [row_file("a.parquet", 3), row_file("b.parquet", 3)])
    changes = source_changes(plan, [row_file("a.parquet", 3, "v2")])
    assert (changes.changed, changes.deleted, changes.shards) == (3, 3, (0, 1, 2))
    assert changes.examples == ("a.parquet#0", "a.parquet#2", "b.parquet#0", "b.parquet#1")  # each range's first
    assert not source_changes(plan, [row_file("a.parquet", 3)], listing_complete=False)  # --limit: not deleted
    restamped = restamp(where, plan, [row_file("a.parquet", 3, "v2")])
    assert [r.stamp for s in restamped.shards for r in s.ranges] == ["v2", "v2", DELETED, DELETED]
    assert not source_changes(read_plan_as(where), [row_file("a.parquet", 3, "v2")])  # reported once


def read_plan_as(where):
    from storage.maps.plan import ShardPlan

    shards, size = read_plan(where)
    return ShardPlan(tuple(shards), size)


def test_a_samples_plan_keeps_its_form_and_grows_in_segments(storage_root, refs) -> None:
    url, options = storage_root
    where = Location(url, options)
    update_plan(where, refs[:10], 5)
    plan, new = update_plan(where, refs, 5)
    assert new == 3 and plan.form == "samples"
    fs, root = open_fs(url, options)
    assert pq.read_table(fs.open(join(root, PLAN_PATH), "rb")).num_rows == 10  # the first run's, untouched
    assert pq.read_table(fs.open(join(root, "_plan/shards-000002.parquet"), "rb")).num_rows == 15
    assert shard_of(where, refs[12].sample_id) == "000002"
    with pytest.raises(InvalidStorageInput, match="planned sample by sample"):
        update_plan(where, [row_file("a.parquet", 3)], 5)
