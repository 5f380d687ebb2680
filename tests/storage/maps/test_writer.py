"""The map writer (storage.maps.writer.MapStore): Parquet + zarr + errors + manifest + run.json, on local
disk and S3. The run's lifecycle over it (repair, start, commit, fail) is tests/storage/maps/test_sink.py's."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import (InvalidStorageInput, MapRecords, MapStore, SampleError, StorageError, StorageNotFound,
                     join_with_source, maps_array, read_errors, read_maps, read_maps_table, read_run, read_sample,
                     read_shard)
from storage.io.fs import join, open_fs
from storage.sources import open_source
from tests.helpers import DETAIL_TYPES, MAP_SHAPE, every_file, map_records, png_bytes, put, write_parquet

H, W = MAP_SHAPE
S = 4  # shard size
records = map_records


def ids_of(k, n=S):
    return [f"s/{k * S + i:04d}" for i in range(n)]


def cat(url, options, rel):
    fs, root = open_fs(url, options)
    return fs.cat_file(join(root, rel))


def test_write_commit_read(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.ensure_zarr("pathway", n=10, shape=(H, W), shard_size=S)
    shard0 = records(ids_of(0), seed=0)
    errors1 = [SampleError(ids_of(1)[1], "cannot decode image: broken")]
    rec0 = store.write_shard("s00000", 0, "pathway", shard0)
    rec1 = store.write_shard("s00001", 1, "pathway", records([ids_of(1)[0], *ids_of(1)[2:]], seed=1), errors1,
                             sample_ids=ids_of(1))
    assert rec0["n_samples"] == 4 and rec1["n_errors"] == 1 and rec1["n_samples"] == 3
    assert [f["path"] for f in rec1["files"]] == ["maps/pathway/s00001.parquet", "errors/pathway/s00001.parquet",
                                                  "zarr/pathway/maps"]
    assert store.committed("pathway") == {"s00000": rec0, "s00001": rec1}

    df = read_maps(url, "pathway", storage_options=options)
    assert df["sample_id"].tolist() == ids_of(0) + [ids_of(1)[0], *ids_of(1)[2:]]
    np.testing.assert_array_equal(np.stack(df["map"][:4]), shard0.maps)
    assert df["map"][0].dtype == np.float16 and df["map"][0].shape == (H, W)
    assert json.loads(df["params"][0]) == {"p": 70, "score": "taylor"}
    assert df.columns.tolist() == ["sample_id", "shard_id", "method", "params", "label", *DETAIL_TYPES, "map"]
    np.testing.assert_array_equal(np.stack(df["threshold"][:4]), shard0.details["threshold"])
    assert df["prediction_kept"].tolist()[:4] == [True, False, True, False]
    assert set(df["method"]) == {"pathway"}

    table = read_maps_table(url, storage_options=options)
    assert table.schema.field("map").type.extension_name == "arrow.fixed_shape_tensor"
    assert table.schema.field("map").type.value_type == pa.float16() and table.schema.field("map").type.shape == [H, W]
    assert read_maps_table(url, "pathway", options, columns=["sample_id"]).column_names == ["sample_id"]

    errors = read_errors(url, storage_options=options)
    assert errors.to_dict("records") == [{"sample_id": ids_of(1)[1], "reason": "cannot decode image: broken",
                                          "shard_id": "s00001", "method": "pathway", "kind": "read"}]

    arr = maps_array(url, "pathway", storage_options=options)
    assert arr.shape == (10, H, W) and arr.dtype == np.float16 and arr.chunks == (S, H, W)
    np.testing.assert_array_equal(arr[0:4], shard0.maps)
    assert np.isnan(arr[5]).all() and np.isnan(arr[8:]).all()  # the errored sample and the unwritten shard
    np.testing.assert_array_equal(arr[4], df["map"][4])


def test_rewrite_is_byte_identical(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.ensure_zarr("m", n=8, shape=(H, W), shard_size=S)
    errs = [SampleError(ids_of(0)[2], "boom")]
    ids = [i for i in ids_of(0) if i != ids_of(0)[2]]
    first = store.write_shard("a", 0, "m", records(ids), errs, sample_ids=ids_of(0))
    blobs = {f["path"]: cat(url, options, f["path"]) for f in first["files"] if f["path"].endswith(".parquet")}
    tree = every_file(url, options)
    assert "_manifest/m/a.json" in tree and any(p.startswith("zarr/m/maps/c/") for p in tree)
    again = MapStore(url, options).write_shard("a", 0, "m", records(ids), errs, sample_ids=ids_of(0))
    assert again == first
    assert every_file(url, options) == tree  # Parquet, zarr chunks and the commit record, byte for byte
    for rel, data in blobs.items():
        assert next(f for f in first["files"] if f["path"] == rel)["bytes"] == len(data)
    assert pq.ParquetFile(pa.BufferReader(blobs["maps/m/a.parquet"])).metadata.num_row_groups == 1


def test_uncommitted_shard_is_invisible(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.write_shard("done", None, "m", records(ids_of(0)))
    # a crashed attempt: data files written, no commit record
    from storage.maps.tables import parquet_bytes

    put(join(url, "maps/m/crashed.parquet"), options, parquet_bytes(records(ids_of(1)).to_table("m", "crashed")))
    put(join(url, "errors/m/crashed.parquet"), options, b"half a file")
    assert read_maps(url, storage_options=options)["sample_id"].tolist() == ids_of(0)
    assert read_errors(url, storage_options=options).empty
    assert list(store.committed()) == ["m/done"]


def test_zarr_chunks_align_with_shards(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.ensure_zarr("m", n=10, shape=(H, W), shard_size=S)
    store.ensure_zarr("m", n=10, shape=(H, W), shard_size=S)  # idempotent
    for k, n in enumerate((S, S, 2)):
        store.write_shard(f"s{k}", k, "m", records(ids_of(k, n), seed=k))
    fs, root = open_fs(url, options)
    chunks = sorted(p.rsplit("/maps/", 1)[1] for p in fs.find(join(root, "zarr/m/maps")) if "/c/" in p)
    assert chunks == ["c/0/0/0", "c/1/0/0", "c/2/0/0"]  # one chunk per shard
    import zarr

    group = zarr.open_group(store=__import__("storage.maps.zarr_maps", fromlist=["x"]).zarr_store(join(url, "zarr/m"), options))
    assert group["sample_id"][:].tolist() == ids_of(0) + ids_of(1) + ids_of(2, 2)
    assert dict(group.attrs) == {"shard_size": S, "map_shape": [H, W]}
    # incremental run: the driver grows N, new shards append, old rows stay
    store.ensure_zarr("m", n=16, shape=(H, W), shard_size=S)
    store.write_shard("s3", 3, "m", records(ids_of(3), seed=3))
    arr = maps_array(url, storage_options=options)
    assert arr.shape == (16, H, W)
    np.testing.assert_array_equal(arr[0:4], records(ids_of(0), seed=0).maps)
    np.testing.assert_array_equal(arr[12:16], records(ids_of(3), seed=3).maps)
    assert np.isnan(arr[10:12]).all()
    with pytest.raises(StorageError, match="use another output URL"):
        store.ensure_zarr("m", n=16, shape=(H, W), shard_size=S + 1)
    with pytest.raises(StorageError, match="does not fit"):
        store.write_shard("s9", 9, "m", records(ids_of(9)))


def test_write_shard_without_zarr_arrays_is_clear(tmp_path):
    with pytest.raises(StorageError, match="ensure_zarr"):
        MapStore(str(tmp_path)).write_shard("s0", 0, "m", records(ids_of(0)))


def test_errors_need_source_order(tmp_path):
    store = MapStore(str(tmp_path))
    store.ensure_zarr("m", 4, (H, W), S)
    with pytest.raises(ValueError, match="pass sample_ids"):
        store.write_shard("s0", 0, "m", records(ids_of(0)[:3]), [SampleError(ids_of(0)[3], "x")])
    with pytest.raises(ValueError, match="exactly"):
        store.write_shard("s0", 0, "m", records(ids_of(0)[:3]), [], sample_ids=ids_of(0))
    with pytest.raises(InvalidStorageInput, match="file"):
        store.write_shard("../evil", 0, "m", records(ids_of(0)))


def test_several_methods_share_a_root(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.write_shard("s0", None, "pathway", records(ids_of(0)))
    store.write_shard("s0", None, "gradient", records(ids_of(0), seed=5))
    assert sorted(store.committed()) == ["gradient/s0", "pathway/s0"]
    assert read_maps(url, "gradient", options)["method"].unique().tolist() == ["gradient"]
    assert len(read_maps(url, storage_options=options)) == 2 * S
    with pytest.raises(ValueError, match="pass method"):
        maps_array(url, storage_options=options)


def test_float16_overflow_is_logged(caplog):
    rec = MapRecords(["a"], [0], np.full((1, 2, 2), 1e6, np.float32))
    assert np.isinf(rec.maps).all() and "exceed the float16 range" in caplog.text


def test_details_must_be_as_declared():
    with pytest.raises(ValueError, match="are not all among the declared"):
        MapRecords(["a"], [0], np.zeros((1, 2, 2)), details={"x": [1]}, detail_types={"y": "int64"})
    with pytest.raises(ValueError, match="clash"):
        MapRecords(["a"], [0], np.zeros((1, 2, 2)), details={"label": [1]},
                   detail_types={"label": "int64"}).to_table("m", "s0")


def test_text_details_are_string_columns_with_null_for_nothing_to_say():
    reasons = np.array(["", "all-zero map"], dtype=object)  # attribution's degenerate detail
    table = MapRecords(["a", "b"], [0, 1], np.zeros((2, 2, 2)), details={"degenerate": reasons},
                       detail_types={"degenerate": "string"}).to_table("m", "s0")
    assert table.schema.field("degenerate").type == pa.string()
    assert table.column("degenerate").to_pylist() == [None, "all-zero map"]


def test_a_shard_with_no_maps_commits_its_errors(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.ensure_zarr("m", n=S, shape=(H, W), shard_size=S)
    empty = MapRecords([], [], np.zeros((0, H, W)), details={k: np.zeros(0) for k in DETAIL_TYPES if k != "threshold"}
                       | {"threshold": np.zeros((0, 3))}, detail_types=DETAIL_TYPES)
    errors = [SampleError(i, "cannot decode image") for i in ids_of(0)]
    record = store.write_shard("s0", 0, "m", empty, errors, sample_ids=ids_of(0))
    assert record["n_samples"] == 0 and record["n_errors"] == S
    assert read_maps(url, "m", options).empty and read_errors(url, "m", options).sample_id.tolist() == ids_of(0)
    assert np.isnan(maps_array(url, "m", options)[:]).all()


def test_run_json(storage_root):
    url, options = storage_root
    store = MapStore(url, options)
    store.write_run({"config": {"model": "small_cnn"}, "params": {"p": 70}, "started_at": "t0"})
    run = store.write_run({**read_run(url, options), "ended_at": "t1"})
    got = read_run(url, options)
    assert got == json.loads(json.dumps(run))
    assert got["config"] == {"model": "small_cnn"} and got["started_at"] == "t0" and got["ended_at"] == "t1"
    assert {"python", "pathway-attribution", "torch", "ray", "pyarrow", "zarr"} <= set(got["versions"])
    assert got["versions"]["pyarrow"] == pa.__version__


def test_truncated_committed_parquet_names_the_file(storage_root):
    url, options = storage_root
    MapStore(url, options).write_shard("s0", None, "m", records(ids_of(0)))
    fs, root = open_fs(url, options)
    path = join(root, "maps/m/s0.parquet")
    fs.pipe_file(path, fs.cat_file(path)[:100])
    with pytest.raises(StorageError, match=re.escape(join(url, "maps/m/s0.parquet"))):
        read_maps(url, storage_options=options)


def test_empty_dataset_reads_empty(tmp_path):
    assert read_maps(str(tmp_path)).empty and read_errors(str(tmp_path)).empty


def test_join_with_source(tmp_path, fmnist):
    images, labels = fmnist
    write_parquet(str(tmp_path / "src.parquet"), {}, images, labels, sample_ids=True)
    source = open_source(str(tmp_path / "src.parquet"))
    ids = ["img-0003", "img-0007", "img-0001"]
    MapStore(str(tmp_path / "out")).write_shard("s0", None, "m", records(ids))
    maps = read_maps(str(tmp_path / "out"))
    for given in (source, str(tmp_path / "src.parquet")):  # a Source, or its URL
        joined = join_with_source(maps, given, original=True)
        for sid, image in zip(joined["sample_id"], joined["image"]):
            np.testing.assert_array_equal(image, images[int(sid[-4:])])
    with pytest.raises(InvalidStorageInput, match="original=True"):
        join_with_source(maps, source)
    MapStore(str(tmp_path / "other")).write_shard("s0", None, "m", records([*ids[:2], "not-in-source"]))
    with pytest.raises(InvalidStorageInput, match=r"not the source.*1 of their samples.*not-in-source"):
        join_with_source(read_maps(str(tmp_path / "other")), source, original=True)


def test_read_sample_reads_only_its_shard(tmp_path):
    """By id: the plan names the shard, and that shard's files are all that is read."""
    from storage.io.location import Location
    from storage.maps.plan import update_plan
    from storage.sources.base import SampleRef

    url = str(tmp_path / "out")
    where = Location(url)
    plan, _ = update_plan(where, [SampleRef(s, {}) for k in range(3) for s in ids_of(k)], S)
    store = MapStore(url)
    written = {}
    for shard in plan.shards:
        for method in ("a", "b"):
            rec = records([r.sample_id for r in shard.refs], seed=shard.index)
            written[method, shard.shard_id] = rec
            store.write_shard(shard.shard_id, None, method, rec)
    store.write_run({"config": {"methods": [{"name": "a"}, {"name": "pathway", "label": "b"}]}})
    where.remove(f"maps/a/{plan.shards[0].shard_id}.parquet")  # only shard 1's files may be read
    row = read_sample(url, ids_of(1)[2])
    assert row.method.tolist() == ["a", "b"] and row.sample_id.tolist() == [ids_of(1)[2]] * 2
    np.testing.assert_array_equal(row["map"][0], written["a", plan.shards[1].shard_id].maps[2])
    assert read_sample(url, ids_of(2)[0], "b").method.tolist() == ["b"]
    with pytest.raises(StorageNotFound, match="no sample 'nope'"):
        read_sample(url, "nope")
    # read_shard: one committed shard by id, its record and table only (shard 0's table is gone here).
    shard = read_shard(url, "b", plan.shards[2].shard_id, columns=["sample_id", "map"])
    assert shard.sample_id.tolist() == ids_of(2)
    np.testing.assert_array_equal(np.stack(shard["map"]), written["b", plan.shards[2].shard_id].maps)
    with pytest.raises(StorageNotFound, match="no committed shard '000009' of 'a'"):
        read_shard(url, "a", "000009")


def test_an_index_of_commit_records_keeps_reruns_to_one_listing(s3_server) -> None:
    """After index_commits, reading the committed set reads one segment, not a record per shard; the
    records stay the source of truth (a deleted record un-commits its shard, a new one counts)."""
    from storage.io.location import Location
    from storage.maps.manifest import index_commits, read_commits
    from tests.faultproxy import fault_proxy

    with fault_proxy(s3_server.endpoint_url) as proxy:
        url = s3_server.url("indexed")
        options = proxy.storage_options(s3_server.storage_options)
        store = MapStore(url, options)
        for k in range(6):
            store.write_shard(f"s{k}", None, "m", records(ids_of(k), seed=k))
        where = Location(url, options)
        index_commits(where, "m", store.committed("m"))
        where.fs.rm_file(where.path("_manifest/m/s2.json"))  # a user un-commits shard 2
        store.write_shard("s6", None, "m", records(ids_of(6), seed=6))
        proxy.rules, proxy.injected = [], []
        before = proxy.forwarded
        committed = read_commits(Location(url, options), "m")
        requests = proxy.forwarded - before
    assert [shard for _, shard in committed] == ["s0", "s1", "s3", "s4", "s5", "s6"]
    assert committed[("m", "s6")]["n_samples"] == S
    assert requests <= 3  # one listing, one segment, the one record written since


def test_join_with_source_shows_images_as_the_model_saw_them(tmp_path, fmnist):
    """A 56 px RGB folder under a 28 px grayscale model: the joined image is the map's size and channels,
    the model's own view of the file; original=True gives the file as it is."""
    from models import fashion_mnist_spec, model_view

    images, labels = fmnist
    big = [np.repeat(np.kron(im, np.ones((2, 2, 1), np.uint8)), 3, axis=-1) for im in images[:3]]
    for i, image in enumerate(big):
        put(str(tmp_path / "src" / "Bag" / f"{i}.png"), {}, png_bytes(image[:, :, :1], "RGB"))
    source = open_source(str(tmp_path / "src"))
    spec = fashion_mnist_spec()
    ids = ["Bag/0.png", "Bag/2.png"]
    MapStore(str(tmp_path / "out")).write_shard("s0", None, "m", records(ids))
    maps = read_maps(str(tmp_path / "out"))
    seen = join_with_source(maps, source, {"model": spec.to_dict()})  # as read_run(url) gives it
    for sid, image in zip(seen.sample_id, seen.image):
        assert image.shape == (28, 28, 1)
        np.testing.assert_array_equal(image, model_view(spec, [big[int(sid[-5])]])[0])
    stored = join_with_source(maps, source, original=True)
    assert [im.shape for im in stored.image] == [(56, 56, 3)] * 2


def test_errors_written_before_kinds_read_back_with_kind_null(tmp_path):
    """Error rows carry a kind now; an output written before that still reads, with kind null."""
    url = str(tmp_path)
    store = MapStore(url)
    store.write_shard("s0", None, "m", records(ids_of(0, 3)), [SampleError(ids_of(0)[3], "broken", "decode")],
                      sample_ids=ids_of(0))
    store.write_shard("s1", None, "m", records(ids_of(1, 3)), [SampleError(ids_of(1)[3], "old")],
                      sample_ids=ids_of(1))
    old = pq.read_table(tmp_path / "errors/m/s1.parquet").drop_columns(["kind"])
    pq.write_table(old, tmp_path / "errors/m/s1.parquet")
    errors = read_errors(url, "m")
    assert errors.sample_id.tolist() == [ids_of(0)[3], ids_of(1)[3]]
    assert errors.kind.tolist()[0] == "decode" and errors.kind.isna().tolist() == [False, True]


def test_a_detail_column_that_earlier_shards_lack_reads_null_there(tmp_path):
    """An output mapped before a detail existed (``degenerate``) and extended after: asking for the
    column gives null for the earlier shards' rows; a column no file has is one clear error."""
    url = str(tmp_path)
    store = MapStore(url)
    store.write_shard("s0", None, "m", records(ids_of(0)))
    reasons = np.array([""] * (S - 1) + ["all-zero map"], dtype=object)
    later = records(ids_of(1))
    store.write_shard("s1", None, "m", MapRecords(later.sample_ids, later.labels, later.maps, params=later.params,
                                                  details={**later.details, "degenerate": reasons},
                                                  detail_types={**DETAIL_TYPES, "degenerate": "string"}))
    table = read_maps(url, "m", columns=["sample_id", "degenerate"])
    assert table.sample_id.tolist() == ids_of(0) + ids_of(1)
    assert table.degenerate.isna().sum() == 2 * S - 1 and table.degenerate.iloc[-1] == "all-zero map"
    with pytest.raises(StorageError, match=r"no column\(s\) \['degenrate'\]"):
        read_maps(url, "m", columns=["sample_id", "degenrate"])
