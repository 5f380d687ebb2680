"""jobs.analyze at scale: a synthetic map dataset with a planted corner pattern in class 0, written with
the project's own MapStore, then the job on a local Ray; prints the time and whether the planted maps
are one cluster (precision / recall of the cluster holding most of them).

Run: ``python benchmarks/bench_analyze.py --maps 100000 --shard-size 5000 [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import analyze  # noqa: E402
from storage.maps.writer import MapRecords, MapStore  # noqa: E402


def write(url: str, n: int, shard_size: int, size: int) -> set[str]:
    """Maps of two classes: class 0 a centre blob, every 8th a corner mark instead; class 1 a bar."""
    store, marked = MapStore(url), set()
    for s, lo in enumerate(range(0, n, shard_size)):
        rng = np.random.default_rng(s)
        idx = np.arange(lo, min(n, lo + shard_size))
        labels = idx % 2
        maps = rng.normal(0, 0.05, (len(idx), size, size)).astype(np.float32)
        corner = (labels == 0) & (idx % 8 == 0)
        maps[labels == 1, size // 2 - 2:size // 2 + 2, 4:size - 4] += 1.0
        maps[(labels == 0) & ~corner, size // 4:3 * size // 4, size // 4:3 * size // 4] += 1.0
        maps[corner, :4, -4:] += 3.0
        ids = [f"b/{i:08d}" for i in idx]
        marked |= {ids[j] for j in np.flatnonzero(corner)}
        store.write_shard(f"{s:06d}", None, "pathway", MapRecords(ids, labels, maps))
    return marked


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--maps", type=int, default=100_000)
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--max-per-class", type=int, default=2000)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    import pandas as pd

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-analyze-"))
    url = str(work / "maps")
    t0 = time.perf_counter()
    marked = write(url, args.maps, args.shard_size, args.size)
    t1 = time.perf_counter()
    assert analyze.main([url, "--max-per-class", str(args.max_per_class), "--no-progress"]) == 0
    t2 = time.perf_counter()
    table = pd.read_parquet(work / "maps" / "_analysis" / "pathway" / "clusters" / "class-0000.parquet")
    hit = table.assign(hit=table.sample_id.isin(marked)).groupby("cluster").hit.agg(["sum", "size"])
    best = hit["sum"].idxmax()
    print(f"{args.maps} maps ({args.size}x{args.size}) in {args.maps // args.shard_size} shards: written in "
          f"{t1 - t0:.1f} s, analyzed in {t2 - t1:.1f} s; planted cluster precision "
          f"{hit.loc[best, 'sum'] / hit.loc[best, 'size']:.3f}, recall {hit.loc[best, 'sum'] / len(marked):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
