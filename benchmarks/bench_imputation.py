"""How fast ROAD's noisy linear imputation is: 10,000 Fashion-MNIST test images at several removed fractions.

    python benchmarks/bench_imputation.py [--images 10000] [--threads 1]

Pixels are removed in a random order per image (the solver's cost depends on how many pixels are
removed and how they cluster; MoRF orders of real maps cluster more, which costs no more than this).
Prints, per fraction, the seconds for all images (best of ``--repeats``) and per 1000 images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribution.evaluation import noisy_linear_imputation  # noqa: E402
from storage.sources import load_arrays, open_source  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    source = open_source("fashion-mnist", split="test")
    images, _, _ = load_arrays(source, source.list()[: args.images])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.286).div(0.353)
    n, _, height, width = x.shape
    rng = np.random.default_rng(0)
    order = np.argsort(rng.random((n, height * width)), axis=1)
    print(f"{n} images of {height}x{width}, noise 0.01, {args.threads} thread(s), best of {args.repeats}")
    for fraction in (float(f) for f in args.fractions.split(",")):
        removed = np.zeros((n, height * width), bool)
        np.put_along_axis(removed, order[:, : int(round(fraction * height * width))], True, axis=1)
        mask = torch.from_numpy(removed.reshape(n, height, width))
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            noisy_linear_imputation(x, mask, 0.01, seed=0, fallback=[0.0])
            best = min(best, time.perf_counter() - start)
        print(f"  {100 * fraction:3.0f} % removed: {best:6.2f} s ({1000 * best / n:.3f} s per 1000 images)")


if __name__ == "__main__":
    main()
