"""The map explorer (jobs.view) on a synthetic output of N samples: time to the first page,
to each filter and sort, and the server's peak RSS, at two sizes (memory must not follow N).

Writes Parquet tables with the project's real schema (storage.maps.tables.map_schema, PathwayGrad's
details, 28x28 float16 maps) in shards of --shard-size under a local temp dir, serves them with
jobs.view in a child process (so its RSS is its own) and times the HTTP API as the page calls it:
one /api/rows, then a /api/map per card of the page. Figures go to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_view.py --samples 100000 1000000
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
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.maps.tables import FORMAT, FORMAT_VERSION, data_path, errors_table, map_schema, parquet_bytes  # noqa: E402

DETAILS = {"target": "int64", "predicted": "int64", "logit": "float64", "threshold": "list<float64>",
           "kept_fraction": "float64", "pruned_logit": "float64", "pruned_predicted": "int64",
           "prediction_kept": "bool", "neuron_calls": "int64", "activation_calls": "int64",
           "neuron_elements": "int64", "activation_elements": "int64"}


def write_output(root: Path, samples: int, shard_size: int, size: int = 28, seed: int = 0) -> None:
    """A map dataset of ``samples`` rows of one method (``pathway``), with random details and maps,
    and an errors table per shard (every 1000th sample an error) plus a run record."""
    rng = np.random.default_rng(seed)
    schema = map_schema(size, size, DETAILS)
    for shard in range((samples + shard_size - 1) // shard_size):
        start, stop = shard * shard_size, min(samples, (shard + 1) * shard_size)
        ids = [f"{i:08d}" for i in range(start, stop)]
        err = [i for i in ids if int(i) % 1000 == 999]
        ok = [i for i in ids if int(i) % 1000 != 999]
        n, sid = len(ok), f"{shard:06d}"
        label = rng.integers(0, 10, n)
        predicted = np.where(rng.random(n) < 0.9, label, rng.integers(0, 10, n))
        maps = rng.standard_normal((n, size, size)).astype(np.float16)
        flat = pa.array(maps.ravel(), pa.float16())
        columns = {
            "sample_id": pa.array(ok), "shard_id": pa.array([sid] * n), "method": pa.array(["pathway"] * n),
            "params": pa.array(['{"percentile":70.0,"scores":"taylor"}'] * n), "label": pa.array(label),
            "target": pa.array(predicted), "predicted": pa.array(predicted), "logit": pa.array(rng.normal(5, 2, n)),
            "threshold": pa.array([[float(x)] for x in rng.random(n)], pa.list_(pa.float64())),
            "kept_fraction": pa.array(rng.uniform(0.2, 0.4, n)), "pruned_logit": pa.array(rng.normal(4, 2, n)),
            "pruned_predicted": pa.array(predicted), "prediction_kept": pa.array(rng.random(n) < 0.8),
            "neuron_calls": pa.array([7] * n), "activation_calls": pa.array([7] * n),
            "neuron_elements": pa.array([9000] * n), "activation_elements": pa.array([9000] * n),
            "map": pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, size), size),
        }
        table = pa.table(columns, schema=schema)
        for kind, t in (("maps", table), ("errors", errors_table(err, ["decode: synthetic"] * len(err), sid,
                                                                  "pathway", ["decode"] * len(err)))):
            path = root / data_path(kind, "pathway", sid)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(parquet_bytes(t))
    (root / "_meta").mkdir(parents=True, exist_ok=True)
    (root / "_meta/run.json").write_text(json.dumps({
        "format": {"name": FORMAT, "version": FORMAT_VERSION}, "status": "complete",
        "config": {"methods": [{"name": "pathway", "label": "pathway", "params": {}}], "source": "synthetic"}}))


def get(base: str, path: str, **query: object) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{base}{path}?{urlencode(query)}", timeout=120) as res:
        body = json.loads(res.read())
    return time.perf_counter() - t0, body


def page(base: str, **query: object) -> tuple[float, int]:
    """One gallery page as the browser loads it: the rows, then each card's map."""
    t0 = time.perf_counter()
    _, body = get(base, "/api/rows", limit=24, **query)
    for row in body["rows"]:
        get(base, "/api/map", method=row["method"], shard_id=row["shard_id"], sample_id=row["sample_id"])
    return time.perf_counter() - t0, body["total"]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(root: Path) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "jobs.view", str(root), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "STORAGE_OPTIONS": "{}"})
    try:
        t0 = time.perf_counter()
        line = proc.stdout.readline()
        base = line.split(" at ")[1].split()[0].rstrip("/")
        started = time.perf_counter() - t0
        results = {"start": started}
        results["first page"], total = page(base)
        results["rows"] = total
        cases = {"filter incorrect": {"correct": "incorrect"}, "filter incorrect, page 2": {"correct": "incorrect",
                                                                                          "offset": 24},
                 "filter label=3": {"label": 3},
                 "filter label=3 & incorrect": {"label": 3, "correct": "incorrect"},
                 "sort kept_fraction desc": {"sort": "kept_fraction", "order": "desc"},
                 "sort logit, page 100": {"sort": "logit", "offset": 2400},
                 "incorrect by pruned_logit": {"correct": "incorrect", "sort": "pruned_logit"},
                 "errors kind=decode": None}
        for name, query in cases.items():
            if query is None:
                t1 = time.perf_counter()
                get(base, "/api/errors", kind="decode", limit=50)
                results[name] = time.perf_counter() - t1
            else:
                results[name], _ = page(base, **query)
        _, first = get(base, "/api/rows", limit=1)
        t1 = time.perf_counter()  # a card's sample page: its rows (from the card's shard) and its error rows
        get(base, "/api/sample", sample_id=first["rows"][0]["sample_id"], shard_id=first["rows"][0]["shard_id"])
        results["sample page (rows and errors)"] = time.perf_counter() - t1
        results["peak RSS MiB"] = peak_rss_mib(proc.pid)
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def duckdb_times(root: Path) -> dict:
    """The same filters and sorts in DuckDB over the glob (local disk only: DuckDB reads s3:// through
    its httpfs extension, which it downloads), for the choice between it and pyarrow.dataset."""
    import duckdb

    glob = f"read_parquet('{root}/maps/*/*.parquet')"
    cols = "sample_id, shard_id, method, label, target, predicted, logit, kept_fraction, pruned_logit"
    queries = {"count incorrect": f"SELECT count(*) FROM {glob} WHERE label >= 0 AND predicted <> label",
               "sort kept_fraction desc": f"SELECT {cols} FROM {glob} ORDER BY kept_fraction DESC, method, sample_id "
                                          "LIMIT 24",
               "incorrect by pruned_logit": f"SELECT {cols} FROM {glob} WHERE label >= 0 AND predicted <> label "
                                            "ORDER BY pruned_logit, method, sample_id LIMIT 24"}
    con = duckdb.connect()
    out = {}
    for name, sql in queries.items():
        t0 = time.perf_counter()
        con.execute(sql).fetchall()
        out[f"duckdb {name}"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--keep", default=None, help="write the outputs under this folder and keep them (reused when there)")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for n in args.samples:
        with tempfile.TemporaryDirectory(prefix="bench-view-") as tmp:
            root = Path(args.keep) / f"view-{n}-{args.shard_size}" if args.keep else Path(tmp)
            t0 = time.perf_counter()
            if not (root / "_meta/run.json").exists():
                write_output(root, n, args.shard_size)
            print(f"\n{n} samples in shards of {args.shard_size} (ready in {time.perf_counter() - t0:.0f} s)")
            for name, value in {**measure(root), **duckdb_times(root)}.items():
                print(f"  {name}: {value:.2f}" if isinstance(value, float) else f"  {name}: {value}", flush=True)

if __name__ == "__main__":
    main()
