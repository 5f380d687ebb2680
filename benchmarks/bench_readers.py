"""Reader benchmark: one method's maps into a numpy [N, H, W] array, by every reader people use.

The baseline is pyarrow alone reading the same Parquet files (``pq.read_table`` of
``<output>/maps/<method>`` and one reshape). Each reader is timed doing the same job its own
documented way (docs/format.md); the target is at most 1.5x the baseline for each. xarray reads
the zarr copy (other bytes), so its ratio is reported but is not the same comparison.

Run alone: ``python benchmarks/bench_readers.py [--n 10000] [--size 28] [--no-s3]`` (it writes
gradient maps of a random-init ResNet-8 for the first n Fashion-MNIST test images; with ``--size 224``
they are resized to ImageNet's map size, 100 KB each, where the bytes rather than each library's
start-up dominate); ``bench_storage.py`` calls :func:`time_readers` on its own output too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import read_maps, read_maps_table  # noqa: E402
from storage.io.fs import join, open_fs  # noqa: E402
from storage.maps.reader import map_arrays  # noqa: E402

TARGET = 1.5


def readers(url: str, options: dict, method: str, cache: Path) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a function returning the method's maps [N, H, W] (any float dtype), read as users would."""
    fs, root = open_fs(url, options)
    folder, glob = join(root, "maps", method), join(url, "maps", method, "*.parquet")
    arrow_fs = fs if options else None

    def pyarrow_alone() -> np.ndarray:
        return map_arrays(pq.read_table(folder, filesystem=arrow_fs, columns=["map"]).column("map"))

    def project_table() -> np.ndarray:
        return read_maps_table(url, method, options, columns=["map"]).column("map").combine_chunks() \
            .to_numpy_ndarray()

    def project_pandas() -> np.ndarray:
        return np.stack(read_maps(url, method, options, columns=["map"])["map"])

    def pandas() -> np.ndarray:
        import pandas as pd

        frame = pd.read_parquet(folder, filesystem=arrow_fs, columns=["map"], dtype_backend="pyarrow")
        return map_arrays(pa.chunked_array(frame["map"].array._pa_array))

    def polars() -> np.ndarray:
        import polars as pl

        return pl.read_parquet(glob, columns=["map"], storage_options=_polars_options(options)) \
            .get_column("map").to_numpy()

    def polars_via_pyarrow() -> np.ndarray:
        import polars as pl

        return pl.read_parquet(folder, columns=["map"], use_pyarrow=True, pyarrow_options={"filesystem": arrow_fs}) \
            .get_column("map").to_numpy()

    def duckdb() -> np.ndarray:
        import duckdb as ddb

        con = ddb.connect()
        if options:
            con.register_filesystem(fs)
        return map_arrays(con.sql(f"select map from read_parquet('{glob}')").to_arrow_table().column("map"))

    def hf_datasets() -> np.ndarray:
        return map_arrays(hf_dataset().with_format("arrow")["map"])

    def hf_datasets_processes() -> np.ndarray:  # a process per core fills the cache, as pyarrow uses a thread per core
        return map_arrays(hf_dataset(columns=["map"], num_proc=os.cpu_count()).with_format("arrow")["map"])

    def hf_datasets_numpy() -> np.ndarray:
        return hf_dataset().with_format("numpy")["map"][:]  # datasets 5 gives a lazy Column: [:] reads it

    def hf_dataset(**kwargs):
        import datasets

        datasets.disable_progress_bars()
        return datasets.load_dataset("parquet", data_files=glob, split="train", cache_dir=str(cache / str(time.time())),
                                     storage_options=copy.deepcopy(options) or None, **kwargs)

    def ray_data() -> np.ndarray:
        import ray

        ds = ray.data.read_parquet(folder, filesystem=arrow_fs).select_columns(["map"])
        return map_arrays(pa.concat_tables(ray.get(ds.to_arrow_refs())).column("map"))

    def xarray_zarr() -> np.ndarray:
        import xarray as xr

        opened = xr.open_zarr(join(url, "zarr", method), storage_options=options or None, consolidated=True)
        return opened["maps"].where(opened["committed"]).values

    return {"pyarrow alone": pyarrow_alone, "storage.read_maps_table": project_table,
            "storage.read_maps (pandas)": project_pandas, "pandas": pandas, "polars": polars,
            "polars (use_pyarrow=True)": polars_via_pyarrow, "DuckDB": duckdb,
            "HF datasets (arrow format)": hf_datasets, "HF datasets (arrow, num_proc)": hf_datasets_processes,
            "HF datasets (numpy format)": hf_datasets_numpy,
            "Ray Data": ray_data, "xarray (zarr copy)": xarray_zarr}


def _polars_options(options: dict) -> dict | None:
    if not options:
        return None
    endpoint = options.get("client_kwargs", {}).get("endpoint_url")
    return {"aws_access_key_id": options["key"], "aws_secret_access_key": options["secret"],
            "aws_endpoint_url": endpoint, "aws_region": "us-east-1", "aws_allow_http": "true"}


def _in_row_order(maps: np.ndarray) -> np.ndarray:
    """The rows sorted by a fingerprint of their values (readers may return files in any order); the
    fingerprint uses at most 1024 pixels per map, so that large maps do not cost gigabytes of float64."""
    flat = maps.reshape(len(maps), -1)
    pixels = flat[:, ::max(1, flat.shape[1] // 1024)]
    weights = np.random.default_rng(0).standard_normal(pixels.shape[1])
    return maps[np.argsort(pixels.astype(np.float64) @ weights, kind="stable")]


@contextlib.contextmanager
def ray_running(name: str) -> Iterator[None]:
    """A local Ray instance while Ray Data is timed, and none otherwise: HF's ``num_proc`` forks, and
    a child forked from a Ray driver inherits Ray's signal handlers and threads (seen with Ray 2.60:
    the pool's children crashed on SIGTERM and the driver hung in ``ray.shutdown``)."""
    if not name.startswith("Ray"):
        yield
        return
    import ray

    from jobs.runtime.cluster import start_local_ray  # on loopback, as the jobs start theirs

    start_local_ray(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                    logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def time_readers(url: str, options: dict, method: str, expected: np.ndarray, repeats: int = 3) -> None:
    """Print each reader's best time of ``repeats`` and its ratio to pyarrow alone; each result is
    checked against ``expected`` (the maps in shard order) before it counts."""
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as cache:
        funcs = readers(url, options, method, Path(cache))
        best: dict[str, float] = {}
        for name, read in funcs.items():
            times = []
            with ray_running(name):
                for _ in range(repeats):
                    start = time.perf_counter()
                    maps = read()
                    times.append(time.perf_counter() - start)
                    if not isinstance(maps, np.ndarray):  # a lazy result would leave its reading out of the time
                        raise TypeError(f"{name} returned {type(maps).__name__}, not a numpy array")
            if not np.array_equal(_in_row_order(np.asarray(maps, np.float16)), _in_row_order(expected)):
                raise AssertionError(f"{name} read other maps than were written")
            best[name] = min(times)
        base = best["pyarrow alone"]
        mb = expected.nbytes / 1e6
        for name, seconds in best.items():
            verdict = "" if name == "pyarrow alone" else (" (met)" if seconds <= TARGET * base else " (NOT MET)")
            print(f"  {name:>28}: {seconds * 1e3:8.1f} ms, {mb / seconds:7.1f} MB/s, "
                  f"{seconds / base:5.2f}x pyarrow{verdict}")


def write_and_time(name: str, url: str, options: dict, method: str, records, shard_size: int, repeats: int) -> None:
    """Write ``records`` as a map dataset at ``url`` (Parquet shards and zarr), then time the readers."""
    from benchmarks.bench_storage import shards_of
    from storage import MapStore

    store = MapStore(url, options)
    store.ensure_zarr(method, n=len(records), shape=records.shape, shard_size=shard_size)
    for k, shard in enumerate(shards_of(records, shard_size)):
        store.write_shard(f"{k:06d}", k, method, shard)
    store.finish_zarr(method, len(records))
    print(f"\n== {name}: {len(records)} maps of one method into numpy [N, H, W], best of {repeats} "
          f"(target <= {TARGET}x pyarrow) ==")
    time_readers(url, options, method, records.maps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="maps (Fashion-MNIST test images)")
    parser.add_argument("--size", type=int, default=28, help="map height and width (28: as computed; "
                        "otherwise the 28x28 maps resized bilinearly)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS run")
    args = parser.parse_args()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from benchmarks.bench_storage import compute_maps, storage_targets, upsample

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"pyarrow {pa.__version__}")
    maps, _, origin = compute_maps(args.n, ["gradient"], train=False)
    records = maps["gradient"] if args.size == 28 else upsample(maps["gradient"], args.size)
    resized = "" if args.size == 28 else f" (computed at 28x28, resized to {args.size}x{args.size})"
    print(f"{args.n} gradient maps {args.size}x{args.size}{resized} of {origin}, in shards of {args.shard_size}, "
          f"{records.maps.nbytes / 1e6:.0f} MB as float16")
    warnings.filterwarnings("ignore", message="Consolidated metadata")
    tmp = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    try:
        with storage_targets(tmp, "bench-readers", not args.no_s3) as targets:
            for name, url, options in targets:
                write_and_time(name, url, options, "gradient", records, args.shard_size, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
