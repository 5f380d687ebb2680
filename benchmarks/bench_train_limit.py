"""What ``jobs.train --limit`` reads of a large image folder: the seeded subset and the statistics'
share (``jobs.train.training_set``) against decoding the whole split, as it did before, side by side.

Run: ``python benchmarks/bench_train_limit.py [--images 60000] [--limit 2000] [--folder DIR]``. The folder
(Fashion-MNIST train images as PNG files in class folders) is written once and reused.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from jobs import train  # noqa: E402
from storage.sources import load_arrays, open_source  # noqa: E402


def write_folder(folder: Path, count: int) -> None:
    """``folder/train/<class>/<i>.png`` for the first ``count`` Fashion-MNIST train images (once)."""
    from PIL import Image

    done = folder / "train" / ".complete"
    if done.exists() and done.read_text() == str(count):
        return
    source = open_source("fashion-mnist", split="train")
    images, labels, _ = load_arrays(source, source.list()[:count])
    for i, (image, label) in enumerate(zip(images, labels)):
        path = folder / "train" / source.classes[int(label)].replace("/", "-") / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(path)
    done.write_text(str(count))


def timed(call) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=60_000)
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--folder", default="/tmp/bench-train-limit")
    args = p.parse_args()
    folder = Path(args.folder)
    write_folder(folder, args.images)

    def fresh():  # each side lists the folder itself (a source keeps its listing)
        return open_source(str(folder), split="train")

    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"{args.images} PNG files, --limit {args.limit}")

    def whole() -> tuple[np.ndarray, np.ndarray]:
        source = fresh()
        images, _labels, _ = load_arrays(source, source.list())
        keep = np.sort(np.random.default_rng(0).choice(len(images), size=args.limit, replace=False))
        return images[keep], images[:: max(1, len(images) // train.STATS_SAMPLES)]

    old_wall, old_cpu, (old_images, old_stats) = timed(whole)
    new_wall, new_cpu, got = timed(lambda: train.training_set(fresh(), args.limit, seed=0))
    same = np.array_equal(old_images, got.images) and np.array_equal(old_stats, got.stats_images)
    decoded = len(np.union1d(train.limit_subset(args.images, args.limit, seed=0),
                             np.arange(0, args.images, train.stats_stride(args.images))))
    print(f"decode the whole split, then subset: {old_wall:6.1f} s wall, {old_cpu:6.1f} s CPU ({args.images} decoded)")
    print(f"training_set (subset + statistics): {new_wall:6.1f} s wall, {new_cpu:6.1f} s CPU ({decoded} decoded)")
    print(f"ratio: {old_wall / new_wall:.2f}x wall; same subset and statistics' images: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
