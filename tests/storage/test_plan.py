"""The stored shard plan, on local disk and on real S3: fixed once written, new samples appended as new shards."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from storage.fs import InvalidStorageInput, join, open_fs
from storage.location import Location
from storage.plan import PLAN_PATH, read_plan, shard_id, update_plan
from storage.sources import SampleRef, open_source


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
    with pytest.raises(OSError, match="plan/shards.parquet") as info:
        read_plan(Location(s3_server.url("denied"), options))
    assert "not-the-secret-123" not in str(info.value)
