"""First maps: ``python -m jobs.attribute`` on a small run, on a local Ray against ``--in-process``.

What a user waits for on a small run is mostly fixed cost: starting a local Ray, one actor process
(its imports, the model) and Ray Data's own actors, before the first shard. ``--in-process`` runs the
same worker code in the job's own process (jobs.mapping.in_process). Each run is a fresh
``python -m jobs.attribute`` process into a fresh output, side by side, ``--repeat`` times; the
figures are its wall clock and the whole machine's busy CPU over the run (from /proc/stat: Ray's
daemons and actors are not the job's children, so the job's own rusage would miss them; run it on an
otherwise idle machine). The maps of both runs are compared byte for byte.

Run: ``python benchmarks/bench_first_maps.py [--limit 200 2000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed_job(job: str, args: list[str]) -> tuple[float, float]:
    """(wall seconds, machine busy CPU seconds) of one ``python -m jobs.<job>`` process, with a Ray of its
    own (no $RAY_ADDRESS); exits with its stderr when it fails."""
    command = [sys.executable, "-m", f"jobs.{job}", *args, "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cpu, start = busy_seconds(), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, busy_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, cpu


def one_run(limit: int, in_process: bool, out: str) -> tuple[float, float]:
    """(wall seconds, machine busy CPU seconds) of one attribute job into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    return timed_job("attribute", ["--limit", str(limit), "--output", out, *(["--in-process"] if in_process else [])])


def same_maps(a: str, b: str) -> bool:
    import numpy as np

    from storage.maps.reader import read_maps

    for method in ("pathway", "gradient"):
        x, y = read_maps(a, method), read_maps(b, method)
        if list(x.sample_id) != list(y.sample_id) or not all(np.array_equal(p, q) for p, q in zip(x["map"], y["map"])):
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, nargs="+", default=[200, 2000], help="samples per run")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="first-maps-") as tmp:
        for limit in args.limit:
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(args.repeat):
                for in_process in (False, True):  # side by side, alternating
                    runs[in_process].append(one_run(limit, in_process, os.path.join(tmp, f"out-{in_process}")))
            identical = same_maps(os.path.join(tmp, "out-False"), os.path.join(tmp, "out-True"))
            medians = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                       for k, v in runs.items()}
            (ray_wall, ray_cpu), (here_wall, here_cpu) = medians[False], medians[True]
            print(f"{limit:6d} samples: local Ray {ray_wall:5.1f} s wall, {ray_cpu:5.1f} s CPU | --in-process "
                  f"{here_wall:5.1f} s wall, {here_cpu:5.1f} s CPU | {ray_wall / here_wall:.2f}x faster, "
                  f"{ray_cpu / here_cpu:.2f}x less CPU (medians of {args.repeat}); maps identical: {identical}")


if __name__ == "__main__":
    main()
