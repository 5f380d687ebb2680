"""Scale benchmark: how the driver's own work grows with samples and shards (issue: driver work that
scales with shards, not samples).

Each stage runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is the stage's own:

1. A Parquet source of N rows of one encoded 28 px PNG each (dictionary-encoded, so building it is
   cheap), in files of 1 M rows: the time and peak RSS of a first run's planning (open, list, write
   the plan), of a no-op rerun's planning once every shard is committed (as the job does it: the
   plan, the zarr arrays, the committed set, the tasks), and of ``--limit 1000``.
2. The committed set at K shards x 2 methods, locally and on S3 (SeaweedFS on loopback): the time
   to read it from the commit records alone, and after the end-of-run index (one segment).
3. A whole no-op rerun of ``python -m jobs.attribute`` over the largest Parquet source with every
   shard committed, locally and on S3 (:func:`bench_noop_rerun` says how the committed state is made).
4. A CSV index of N rows (1 M by default): a first plan by ranges of its rows, the plan's size and a
   no-op rerun, against a plan sample by sample; the same for WebDataset tars of N samples (200 k).
5. A folder of F files, planned, then 1 % new files: what a rerun pays to find them (open, stamped
   listing, plan extended, changes checked) against a plain ``fs.find`` of the folder.

Run: ``python benchmarks/bench_scale.py [--rows 1000000,10000000] [--shards 1000,5000,20000]
[--index-rows 1000000] [--tar-samples 200000] [--files 50000] [--no-s3]``. It prints each figure with the growth it shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale_sources import index_source, parquet_source, webdataset_source  # noqa: E402

STAGE = r"""
import json, resource, sys, time
start = time.perf_counter()
sys.path.insert(0, {root!r})
from storage.maps.writer import MapStore
from storage.maps.plan import update_plan
from storage.sources import RowRange, open_source
from jobs.mapping.planning import plan_run
from storage.maps.sink import MapSink
from workers.shard_source import ShardSource
args = json.loads(sys.argv[1])
imported = time.perf_counter()
out = {{"imports_s": imported - start}}
store = MapStore(args["output"])
if args["stage"] == "list":  # every sample listed one by one (the samples form)
    out["samples"] = len(open_source(args["source"]).list())
elif args["stage"] == "plan":  # a first run's planning: open, list, write the plan (or sample by sample)
    source = open_source(args["source"])
    listing = source.list(args.get("limit")) if args.get("samples") else ShardSource(source, store.where).listing(args.get("limit"))
    plan, _ = update_plan(store.where, listing, 512)
    sizes = {{rel: store.where.fs.size(store.where.path(rel)) for rel in store.where.find("_plan", ".parquet")}}
    ids = sum(size for rel, size in sizes.items() if rel.startswith("_plan/ids-"))
    out.update(samples=plan.samples, shards=len(plan.shards), plan_mb=(sum(sizes.values()) - ids) / 2**20,
               ids_mb=ids / 2**20)
elif args["stage"] == "open":  # open a Parquet source (maybe on S3), plan it, read a shard: the RSS it adds
    def status(key):
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    source = open_source(args["source"], storage_options=args.get("options") or None)
    files = source.row_files()
    refs = source.row_refs(RowRange(files[-1].name, 0, 64, files[-1].id_format))
    read = sum(1 for s in source.read(refs) if hasattr(s, "image"))
    out.update(files=len(files), read=read, added_mb=status("VmHWM") - base)
elif args["stage"] == "rerun":  # a rerun's planning, as the job does it: plan, zarr, committed set, tasks
    shards = ShardSource(open_source(args["source"]), store.where)
    planned = plan_run(shards, MapSink(args["output"]), shards.listing(), 512, ["pathway", "gradient"], (28, 28))
    out.update(samples=planned.listed, tasks=len(planned.tasks))
out["seconds"] = time.perf_counter() - imported
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def stage(**args: object) -> dict:
    script = STAGE.format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          check=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(xs: list[float], ys: list[float]) -> str:
    """How ``ys`` grows from the first point to the last, as a ratio to how ``xs`` does."""
    if len(xs) < 2 or ys[0] <= 0:
        return ""
    return f"x{ys[-1] / ys[0]:.1f} for x{xs[-1] / xs[0]:.0f} the size"


def commit_everything(output: Path, methods: tuple[str, ...] = ("pathway", "gradient")) -> int:
    """Commit records for every planned shard, then the end-of-run index, as a finished run leaves
    them (records only: the rerun being measured reads records, not maps)."""
    from storage.io.location import Location
    from storage.maps.manifest import index_commits, read_commits, write_commit
    from storage.maps.plan import read_plan

    where = Location(str(output))
    shards, _ = read_plan(where)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda job: write_commit(where, {"method": job[0], "shard_id": job[1].shard_id,
                                                      "shard_index": job[1].index, "n_samples": job[1].size,
                                                      "n_errors": 0, "files": []}),
                      [(m, s) for m in methods for s in shards]))
    for method in methods:
        index_commits(where, method, {s: r for (_, s), r in read_commits(where, method).items()})
    return len(shards)


def bench_sources(rows: list[int], tmp: Path, per_sample_up_to: int) -> None:
    print("\n== Parquet source of N rows (28 px PNG each): first plan, no-op rerun, --limit 1000 ==")
    print("(seconds after imports; importing the job's modules, torch included, is shown apart; RSS is the peak)")
    results = []
    for n in rows:
        folder = tmp / f"parquet-{n}"
        t = time.perf_counter()
        parquet_source(folder / "data", n)
        built = time.perf_counter() - t
        planned = stage(stage="plan", source=str(folder / "data"), output=str(folder / "out"))
        shards = commit_everything(folder / "out")
        rerun = stage(stage="rerun", source=str(folder / "data"), output=str(folder / "out"))
        assert rerun["tasks"] == 0 and rerun["samples"] == n, rerun
        limited = stage(stage="plan", source=str(folder / "data"), output=str(folder / "limited"), limit=1000)
        results.append((n, planned, rerun, limited))
        print(f"{n:>10,} rows, {shards} shards (built in {built:.1f} s; imports {planned['imports_s']:.1f} s): "
              f"first plan {planned['seconds']:5.2f} s / {planned['peak_rss_mb']:5.0f} MB; no-op rerun "
              f"{rerun['seconds']:5.2f} s / {rerun['peak_rss_mb']:5.0f} MB; --limit 1000 {limited['seconds']:5.2f} s"
              f" / {limited['peak_rss_mb']:5.0f} MB")
        if n <= per_sample_up_to:
            listed = stage(stage="list", source=str(folder / "data"), output=str(folder / "unused"))
            print(f"{'':>10}  for comparison, listing it sample by sample: {listed['seconds']:5.2f} s / "
                  f"{listed['peak_rss_mb']:5.0f} MB")
    if len(results) > 1:
        xs = [r[0] for r in results]
        print("growth: first plan " + growth(xs, [r[1]["seconds"] for r in results]) + "; no-op rerun "
              + growth(xs, [r[2]["seconds"] for r in results]) + "; peak RSS of the plan "
              + growth(xs, [r[1]["peak_rss_mb"] for r in results]) + "; --limit 1000 "
              + growth(xs, [r[3]["seconds"] for r in results]))


def bench_index(rows: list[int], tmp: Path) -> None:
    print("\n== CSV index of N rows: a first plan by ranges of its rows, against sample by sample ==")
    for n in rows:
        folder = tmp / f"index-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        index_source(folder / "train.csv", n)
        size = (folder / "train.csv").stat().st_size / 2**20
        ranges = stage(stage="plan", source=str(folder / "train.csv"), output=str(folder / "ranges"))
        commit_everything(folder / "ranges")
        rerun = stage(stage="rerun", source=str(folder / "train.csv"), output=str(folder / "ranges"))
        assert rerun["tasks"] == 0 and rerun["samples"] == n, rerun
        samples = stage(stage="plan", source=str(folder / "train.csv"), output=str(folder / "samples"), samples=True)
        print(f"{n:>10,} rows ({size:.0f} MB): by ranges, first plan {ranges['seconds']:5.2f} s / "
              f"{ranges['peak_rss_mb']:5.0f} MB, plan {ranges['plan_mb']:.2f} MB + id index {ranges['ids_mb']:.2f} MB, "
              f"no-op rerun {rerun['seconds']:5.2f} s"
              f" / {rerun['peak_rss_mb']:5.0f} MB; sample by sample, first plan {samples['seconds']:5.2f} s / "
              f"{samples['peak_rss_mb']:5.0f} MB, plan {samples['plan_mb']:.2f} MB")


def bench_webdataset(samples: list[int], tmp: Path) -> None:
    print("\n== WebDataset tars of N samples: a first plan by byte spans of their samples, against sample by sample ==")
    for n in samples:
        folder = tmp / f"wds-{n}"
        webdataset_source(folder / "data", n)
        ranges = stage(stage="plan", source=str(folder / "data"), output=str(folder / "ranges"))
        samples_form = stage(stage="plan", source=str(folder / "data"), output=str(folder / "samples"), samples=True)
        print(f"{n:>10,} samples in 4 tars: by ranges, first plan {ranges['seconds']:5.2f} s / "
              f"{ranges['peak_rss_mb']:5.0f} MB, plan {ranges['plan_mb']:.2f} MB + id index {ranges['ids_mb']:.2f} MB; "
              f"sample by sample, first plan "
              f"{samples_form['seconds']:5.2f} s / {samples_form['peak_rss_mb']:5.0f} MB, plan "
              f"{samples_form['plan_mb']:.2f} MB")


def bench_noop_rerun(source: Path, targets: list[tuple[str, str, dict]], repeats: int = 3) -> None:
    """A whole no-op rerun of ``python -m jobs.attribute`` over the 10 M-row source, every shard committed.

    The first shard is computed for real (``--limit 512``: the examples PNG draws from it); the plan
    is then extended to every row and the other shards' commit records are written as a finished
    run leaves them (records and the end-of-run index: computing 10 M maps here would take days).
    The rerun itself is the unmodified job, timed from its start to its exit, imports included.
    """
    import resource

    from storage.io.location import Location
    from storage.maps.manifest import index_commits, read_commits, write_commit
    from storage.maps.writer import MapStore
    from storage.maps.plan import read_plan, update_plan
    from storage.sources import open_source
    from workers.shard_source import ShardSource

    print("\n== a no-op rerun of the whole job, every shard committed (2 methods) ==")
    for name, url, options in targets:
        output = f"{url}/noop-rerun"
        flags = ["--source", str(source), "--output", output, "--shard-size", "512", "--no-progress",
                 "--methods", "pathway gradient"] + (["--storage-options", json.dumps(options)] if options else [])
        job = [sys.executable, "-m", "jobs.attribute", *flags]
        subprocess.run([*job, "--limit", "512"], cwd=ROOT, check=True, capture_output=True, timeout=1800)
        store = MapStore(output, options or None)
        update_plan(store.where, ShardSource(open_source(str(source)), store.where).listing(), 512)
        shards, _ = read_plan(store.where)
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda job: write_commit(store.where, {
                "method": job[0], "shard_id": job[1].shard_id, "shard_index": job[1].index,
                "n_samples": job[1].size, "n_errors": 0, "files": []}),
                [(m, s) for m in ("pathway", "gradient") for s in shards[1:]]))
        for method in ("pathway", "gradient"):
            index_commits(Location(output, options or None), method,
                          {s: r for (_, s), r in read_commits(store.where, method).items()})
        prepared = time.perf_counter() - t
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        times = []
        for _ in range(repeats):  # the first run follows tens of thousands of fresh writes: it varies most
            t = time.perf_counter()
            done = subprocess.run(job, cwd=ROOT, capture_output=True, text=True, timeout=1800)
            times.append(time.perf_counter() - t)
            summary = [line for line in done.stdout.splitlines() if "already committed" in line]
            assert done.returncode == 0 and summary and ", 0 to do" in summary[0], done.stdout + done.stderr
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"{name:>26}: {len(shards)} shards x 2 methods (records written in {prepared:.0f} s): no-op rerun "
              f"best {min(times):5.2f} s of {', '.join(f'{x:.2f}' for x in times)}, exit 0, driver peak RSS "
              f"{rss / 1024:.0f} MB{'' if rss > before else ' (or less: an earlier stage peaked higher)'}")


def bench_source_memory(targets: list[tuple[str, str, dict]], files: int = 16, mb_per_file: int = 32) -> None:
    """The memory a Parquet source of large files costs a process: open it, plan it, read 64 rows of
    its last file (each file ``mb_per_file`` MB of 128 px noise PNGs, ~16 KB each, stored uncompressed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.io.fs import join, open_fs

    print(f"\n== a Parquet source of {files} files x {mb_per_file} MB: the peak RSS that opening it, planning "
          "it and reading a shard add ==")
    from tests.helpers import png_bytes

    rng = np.random.default_rng(0)
    pngs = [png_bytes(rng.integers(0, 256, (128, 128, 1), np.uint8)) for _ in range(64)]  # ~16 KB of noise each
    rows = mb_per_file * 2**20 // len(pngs[0])
    for name, url, options in targets:
        fs, root = open_fs(f"{url}/big-parquet", options or None)
        for k in range(files):
            blobs = pa.array([pngs[i % len(pngs)] for i in range(rows)], pa.binary())
            sink = pa.BufferOutputStream()
            pq.write_table(pa.table({"image": blobs, "label": pa.array(np.arange(rows) % 10)}), sink,
                           row_group_size=256, compression="none", use_dictionary=False)
            if not url.startswith("s3://"):
                os.makedirs(root, exist_ok=True)
            fs.pipe_file(join(root, f"test-{k:05d}.parquet"), sink.getvalue().to_pybytes())
        out = stage(stage="open", source=f"{url}/big-parquet", options=options, output=f"{url}/unused")
        print(f"{name:>26}: {out['files']} files, {out['read']} rows read: +{out['added_mb']:.0f} MB peak RSS "
              f"(target on S3 <= 100 MB)")


def bench_committed(shards: list[int], targets: list[tuple[str, str, dict]]) -> None:
    from storage.io.location import Location
    from storage.maps.manifest import index_commits, read_commits, write_commit

    print("\n== the committed set of K shards x 2 methods: from the records alone, and after the index ==")
    for name, url, options in targets:
        for k in shards:
            where = Location(f"{url}/committed-{k}", options)
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=32) as pool:  # as 32 workers committing at once would
                list(pool.map(lambda job: write_commit(where, {"method": job[0], "shard_id": f"{job[1]:06d}",
                                                              "shard_index": job[1], "n_samples": 512,
                                                              "n_errors": 0, "files": []}),
                              [(m, i) for m in ("pathway", "gradient") for i in range(k)]))
            written = time.perf_counter() - t
            t = time.perf_counter()
            assert len(read_commits(Location(where.url, options))) == 2 * k
            cold = time.perf_counter() - t
            for method in ("pathway", "gradient"):
                index_commits(where, method, {s: r for (m, s), r in read_commits(where, method).items()})
            t = time.perf_counter()
            assert len(read_commits(Location(where.url, options))) == 2 * k
            indexed = time.perf_counter() - t
            print(f"{name:>26} {k:>6} shards: records alone {cold:6.2f} s, after the index {indexed:5.2f} s "
                  f"(writing {2 * k} records took {written:.1f} s)")


def bench_folder(files: int, targets: list[tuple[str, str, dict]]) -> None:
    """What a rerun pays to find 1 % new files in a planned folder (open the source, list it with
    stamps, extend the plan, check for changes) against a plain listing of the same folder."""
    from storage.io.fs import join, open_fs
    from storage.maps.writer import MapStore
    from storage.maps.plan import update_plan
    from storage.maps.plan_changes import source_changes
    from storage.sources import open_source
    from workers.shard_source import ShardSource

    print(f"\n== a folder of {files:,} files, planned, then 1 % new files: finding them vs a plain listing ==")
    for name, url, options in targets:
        folder, output = f"{url}/folder", f"{url}/folder-out"
        fs, root = open_fs(folder, options or None)
        names = [f"class{i % 10}/{i:07d}.png" for i in range(files + files // 100)]
        if not url.startswith("s3://"):
            for n in {n.split("/")[0] for n in names}:
                os.makedirs(join(root, n), exist_ok=True)
        fs.pipe({join(root, n): b"x" for n in names[:files]})
        store = MapStore(output, options or None)
        update_plan(store.where, open_source(folder, storage_options=options or None).list(), 512)  # the first run
        fs.pipe({join(root, n): b"x" for n in names[files:]})
        best: dict[str, float] = {}
        for _ in range(3):
            fs.invalidate_cache()
            t = time.perf_counter()
            plain = fs.find(root, detail=False)
            best["plain"] = min(best.get("plain", 1e9), time.perf_counter() - t)
            fs.invalidate_cache()
            t = time.perf_counter()
            listing = ShardSource(open_source(folder, storage_options=options or None, kind="folder"), store.where).listing()
            listed = time.perf_counter() - t
            plan, new = update_plan(store.where, listing, 512)  # the first repeat appends the new shard(s)
            changes = source_changes(plan, listing)
            best["rerun"] = min(best.get("rerun", 1e9), time.perf_counter() - t)
            best["listed"] = min(best.get("listed", 1e9), listed)
        assert len(listing) == len(plain) == len(names) and not changes
        print(f"{name:>26}: plain fs.find {best['plain']:.2f} s; finding the new files {best['rerun']:.2f} s "
              f"({best['rerun'] / best['plain']:.2f}x; target <= 1.5x), of which opening and listing the source "
              f"{best['listed']:.2f} s ({best['listed'] / best['plain']:.2f}x); best of 3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000000,10000000")
    parser.add_argument("--per-sample-up-to", type=int, default=1_000_000,
                        help="also list sources up to this many rows sample by sample, for comparison")
    parser.add_argument("--index-rows", default="1000000", help="rows of the CSV index sources (empty: none)")
    parser.add_argument("--tar-samples", default="200000", help="samples of the WebDataset sources (empty: none)")
    parser.add_argument("--shards", default="1000,5000,20000")
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--no-source-memory", dest="source_memory", action="store_false",
                        help="skip the memory of opening a Parquet source of 16 x 32 MB files")
    parser.add_argument("--no-noop-rerun", dest="noop_rerun", action="store_false",
                        help="skip the whole-job no-op rerun over the largest source")
    args = parser.parse_args()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"load {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = [int(x) for x in args.rows.split(",") if x]
    bench_sources(rows, tmp, args.per_sample_up_to)
    bench_index([int(x) for x in args.index_rows.split(",") if x], tmp)
    bench_webdataset([int(x) for x in args.tar_samples.split(",") if x], tmp)
    from benchmarks.bench_storage import storage_targets

    with storage_targets(tmp, "scale", not args.no_s3) as targets:
        if args.files:
            bench_folder(args.files, targets)
        if args.source_memory:
            bench_source_memory(targets)
        if args.noop_rerun and rows:
            bench_noop_rerun(tmp / f"parquet-{rows[-1]}" / "data", targets)
        bench_committed([int(x) for x in args.shards.split(",") if x], targets)


if __name__ == "__main__":
    main()
