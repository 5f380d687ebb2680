"""The evaluations on a local Ray against ``--in-process``: perturbation, sanity, strategy clusters, ROAR.

On a small run the wait is mostly fixed cost: a local Ray, its daemons and Ray Data's actors, and a
worker process per task slot that imports torch. ``--in-process`` runs the same tasks one at a time in
the job's own process (jobs.runtime.tasks). Each run is a fresh ``python -m jobs.<job>`` process into
a fresh output, the two side by side, ``--repeat`` times; the figures are its wall clock and the whole
machine's busy CPU over the run (/proc/stat: Ray's processes are not the job's children; run it on an
otherwise idle machine). The outputs of the two are compared: the same numbers, or the line says not.

Run: ``python benchmarks/bench_in_process_evals.py [--repeat 2]`` (the shipped ResNet-8; inputs are
made first, in-process: maps of 300 train and 200 test Fashion-MNIST images).
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_first_maps import timed_job as job  # the same run, timed on the machine-wide CPU clock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def same_perturbation(a: str, b: str) -> bool:
    import pandas as pd

    return pd.read_parquet(f"{a}/perturbation.parquet").equals(pd.read_parquet(f"{b}/perturbation.parquet"))


def same_sanity(a: str, b: str) -> bool:
    import numpy as np

    names = sorted(os.path.basename(p) for p in glob.glob(f"{a}/units/*.npz"))
    if names != sorted(os.path.basename(p) for p in glob.glob(f"{b}/units/*.npz")):
        return False
    for name in names:
        x, y = np.load(f"{a}/units/{name}"), np.load(f"{b}/units/{name}")
        if sorted(x.files) != sorted(y.files) or not all(np.array_equal(x[k], y[k]) for k in x.files):
            return False
    return bool(names)


def same_analysis(a: str, b: str) -> bool:
    import numpy as np
    import pandas as pd

    base = "_analysis/pathway"
    tables = sorted(os.path.relpath(p, a) for p in glob.glob(f"{a}/{base}/clusters/*.parquet"))
    means = sorted(os.path.relpath(p, a) for p in glob.glob(f"{a}/{base}/means/*.npy"))
    return bool(tables) and all(pd.read_parquet(f"{a}/{t}").equals(pd.read_parquet(f"{b}/{t}")) for t in tables) \
        and all(np.array_equal(np.load(f"{a}/{m}"), np.load(f"{b}/{m}")) for m in means)


def same_cells(a: str, b: str) -> bool:
    import json

    names = sorted(os.path.basename(p) for p in glob.glob(f"{a}/cells/*.json"))
    accuracy = {d: {n: json.load(open(f"{d}/cells/{n}"))["accuracy"] for n in names} for d in (a, b)}
    return bool(names) and accuracy[a] == accuracy[b]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-evals-"))
    maps = {split: str(work / f"maps-{split}") for split in ("train", "test")}
    for split, n in (("train", 300), ("test", 200)):
        job("attribute", ["--split", split, "--limit", str(n), "--shard-size", "100", "--methods", "pathway gradient",
                          "--output", maps[split], "--in-process"])
    runs: dict[str, tuple[Callable[[str], list[str]], Callable[[str, str], bool], Callable[[str], None]]] = {
        "perturb": (lambda out: ["--limit", "40", "--shard-size", "16", "--methods", "gradient pathway", "--fill",
                                 "mean,nli", "--output", out], same_perturbation, lambda out: None),
        "sanity": (lambda out: ["--limit", "8", "--methods", "gradient pathway", "--output", out], same_sanity,
                   lambda out: None),
        "analyze": (lambda out: [out, "--method", "pathway", "--layout", "spectral", "--size", "8"], same_analysis,
                    lambda out: shutil.copytree(maps["test"], out)),
        "roar": (lambda out: ["--train-maps", maps["train"], "--test-maps", maps["test"], "--methods", "pathway random",
                              "--thresholds", "30,70", "--seeds", "2", "--epochs", "1", "--no-mask-control",
                              "--output", out], same_cells, lambda out: None),
    }
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    print("| job | local Ray: wall / machine CPU | --in-process: wall / machine CPU | wall ratio | same results |")
    print("| --- | --- | --- | --- | --- |")
    for name, (argv, same, prepare) in runs.items():
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        equal = True
        for r in range(args.repeat):
            outs = {}
            for here in (False, True):
                out = str(work / f"{name}-{r}-{'here' if here else 'ray'}")
                prepare(out)
                times[here].append(job(name, [*argv(out), *(["--in-process"] if here else [])]))
                outs[here] = out
            equal = equal and same(outs[False], outs[True])
        ray_wall, here_wall = (statistics.median(w for w, _ in times[h]) for h in (False, True))
        ray_cpu, here_cpu = (statistics.median(c for _, c in times[h]) for h in (False, True))
        print(f"| {name} | {ray_wall:.1f} s / {ray_cpu:.1f} s | {here_wall:.1f} s / {here_cpu:.1f} s | "
              f"{ray_wall / here_wall:.2f}x | {'yes' if equal else 'NO'} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
