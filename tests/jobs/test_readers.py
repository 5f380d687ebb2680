"""A real job's map dataset opens in every reader people use, locally and on S3, with the map as a
2-D array, one row per (method, sample), and nothing an interrupted attempt left behind."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import attribute
from storage.io.fs import join, open_fs
from storage.io.location import Location
from storage.maps.reader import map_arrays, read_maps

pytestmark = pytest.mark.slow  # starts Ray

N, H, W = 36, 28, 28
METHODS = ("pathway", "gradient")


@pytest.fixture(scope="module", params=["local", "s3"])
def dataset(request, checkpoint, ray_session, tmp_path_factory) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(output URL, storage options, the maps per method as read by the project's reader), with the
    leftovers of a crashed attempt (tables in _pending/, zarr rows, no commit record) added."""
    if request.param == "local":
        url, options = str(tmp_path_factory.mktemp("readers") / "maps"), {}
    else:
        server = request.getfixturevalue("s3_server")
        url, options = server.url("readers"), server.storage_options
    store_args = ["--storage-options", json.dumps(options)] if options else []
    assert attribute.main(["--checkpoint", checkpoint, "--output", url, "--limit", str(N), "--shard-size", "12",
                           "--methods", " ".join(METHODS), "--in-process", "--no-progress", *store_args]) == 0
    expected = {m: np.stack(read_maps(url, m, options).sort_values("sample_id")["map"]) for m in METHODS}
    where = Location(url, options)  # a crashed attempt: its tables never committed
    for rel in where.find("maps", ".parquet")[:1] + where.find("errors", ".parquet")[:1]:
        where.put(f"_pending/{rel.rsplit('/', 1)[0]}/999999.parquet", where.get(rel))
    return url, options, expected


def check(rows: int, ids: list[str], maps: np.ndarray) -> None:
    assert rows == len(METHODS) * N and len(set(ids)) == N
    assert maps.shape == (len(METHODS) * N, H, W)


def check_table(table, expected: dict[str, np.ndarray]) -> None:
    """A pyarrow table of the whole map dataset: its rows, and its pathway maps in sample_id order."""
    maps = map_arrays(table.column("map"))  # or the one-liner in its docstring
    check(table.num_rows, table.column("sample_id").to_pylist(), maps)
    order = np.lexsort((table.column("sample_id").to_numpy(zero_copy_only=False),))
    first = [i for i in order if table.column("method")[i].as_py() == "pathway"]
    np.testing.assert_array_equal(maps[first], expected["pathway"])


def test_pyarrow(dataset) -> None:
    url, options, expected = dataset
    fs, root = open_fs(url, options)
    check_table(pq.read_table(join(root, "maps"), filesystem=fs), expected)


def test_pandas(dataset) -> None:
    import pandas as pd

    url, options, expected = dataset
    df = pd.read_parquet(join(url, "maps"), storage_options=options or None)
    maps = np.stack([np.stack(m) for m in df["map"]])  # nested arrays -> [N, H, W]
    check(len(df), list(df.sample_id), maps)
    pathway = df[df.method == "pathway"].sort_values("sample_id")
    np.testing.assert_array_equal(np.stack([np.stack(m) for m in pathway["map"]]), expected["pathway"])


def test_polars(dataset) -> None:
    import polars as pl

    url, options, expected = dataset
    if options:
        fs, root = open_fs(url, options)
        frames = [pl.read_parquet(fs.open(p, "rb")) for p in fs.glob(join(root, "maps/*/*.parquet"))]
        df = pl.concat(frames)
    else:
        df = pl.read_parquet(join(url, "maps/*/*.parquet"))
    assert str(df.schema["map"]) == "Array(Float16, shape=(28, 28))"
    maps = df["map"].to_numpy()
    check(len(df), df["sample_id"].to_list(), maps)
    pathway = df.filter(pl.col("method") == "pathway").sort("sample_id")
    np.testing.assert_array_equal(pathway["map"].to_numpy(), expected["pathway"])


def test_duckdb(dataset) -> None:
    import duckdb

    url, options, expected = dataset
    con = duckdb.connect()
    if options:
        fs, _ = open_fs(url, options)
        con.register_filesystem(fs)
    glob = join(url, "maps/*/*.parquet")
    rows = con.sql(f"select sample_id, method, map from read_parquet('{glob}') order by method, sample_id").fetchall()
    maps = np.array([r[2] for r in rows], dtype=np.float32)  # FLOAT[][]: 28 x 28 nested lists
    check(len(rows), [r[0] for r in rows], maps)
    np.testing.assert_array_equal(maps[[r[1] == "pathway" for r in rows]], expected["pathway"].astype(np.float32))


def test_hugging_face_datasets(dataset, tmp_path) -> None:
    import datasets

    url, options, expected = dataset
    # a cache of its own: datasets keys its cache on the files' URLs, which the S3 fixture reuses across runs
    data = datasets.load_dataset("parquet", data_files=join(url, "maps/*/*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "hf-cache"),
                                 storage_options=copy.deepcopy(options) or None)  # datasets adds keys to it
    assert data.num_rows == len(METHODS) * N
    rows = data.with_format("numpy")
    first = rows[0]["map"]
    assert first.shape == (H, W)
    pathway = data.filter(lambda r: r["method"] == "pathway").sort("sample_id").with_format("numpy")
    np.testing.assert_array_equal(np.stack(pathway["map"]).astype(np.float16), expected["pathway"])


def test_hugging_face_datasets_bulk_read(dataset, tmp_path) -> None:
    """docs/format.md's bulk read: one method's folder, a process per core filling the cache, the Arrow
    format. In a Python of its own, as the format document says: ``num_proc`` forks, and this test
    process is a Ray driver, whose forked children inherit Ray's threads and signal handlers."""
    url, options, expected = dataset
    script = f"""
import copy, json, sys
import datasets, numpy as np
from storage.maps.reader import map_arrays
datasets.disable_progress_bars()
data = datasets.load_dataset("parquet", data_files={join(url, "maps/pathway/*.parquet")!r}, split="train",
                             columns=["sample_id", "map"], num_proc=2, cache_dir={str(tmp_path / "hf-cache")!r},
                             storage_options=json.loads({json.dumps(options)!r}) or None)
table = data.with_format("arrow")[:]
np.savez({str(tmp_path / "read.npz")!r}, ids=table.column("sample_id").to_numpy(zero_copy_only=False).astype(str),
         maps=map_arrays(table.column("map")))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2], timeout=300)
    read = np.load(tmp_path / "read.npz")
    order = np.argsort(read["ids"], kind="stable")
    np.testing.assert_array_equal(read["maps"][order], expected["pathway"])


def test_ray_data(dataset) -> None:
    import ray

    url, options, expected = dataset
    fs, root = open_fs(url, options)
    ds = ray.data.read_parquet(join(root, "maps"), filesystem=fs if options else None)
    assert ds.count() == len(METHODS) * N
    check_table(ds.take_batch(len(METHODS) * N, batch_format="pyarrow"), expected)  # as docs/format.md reads it


def test_xarray(dataset) -> None:
    import xarray as xr

    url, options, expected = dataset
    ds = xr.open_zarr(join(url, "zarr", "pathway"), storage_options=options or None, consolidated=True)
    assert ds["maps"].dims == ("sample", "y", "x") and ds.sizes["sample"] == N
    assert "sample_id" in ds.coords and bool(ds["committed"].all())
    ordered = ds.sortby("sample_id")
    np.testing.assert_array_equal(ordered["maps"].values, expected["pathway"])
