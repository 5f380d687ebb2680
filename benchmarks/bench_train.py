"""Training benchmark: the default ``python -m jobs.train`` against its targets.

Target: >= 90 % Fashion-MNIST test accuracy in a few CPU minutes on a 2-core machine,
training ResNet-8 from scratch on the full 60k train split with the job's defaults.
This runs the job itself (same code path, same defaults) and prints the figures beside
the targets, plus the machine's load, since a shared CPU makes the time pessimistic.

Run: ``python benchmarks/bench_train.py [--output URL] [-- extra jobs.train args]``.
By default the checkpoint goes to the job's default path, where ``jobs.attribute``
looks for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import train  # noqa: E402

TARGET_ACCURACY = 0.90
TARGET_SECONDS = 5 * 60  # "a few CPU minutes" on 2 cores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=train.DEFAULT_OUTPUT)
    p.add_argument("extra", nargs="*", help="more jobs.train arguments (after --)")
    args = p.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    code = train.main(["--output", args.output, "--no-progress", *args.extra])
    wall = time.perf_counter() - started
    if code != 0:
        return code
    from storage.checkpoints import load_metrics

    m = load_metrics(args.output)
    load_after = os.getloadavg()
    rows = [
        ("test accuracy", f"{m['test_accuracy']:.4f}", f">= {TARGET_ACCURACY:.2f}", m["test_accuracy"] >= TARGET_ACCURACY),
        ("training seconds", f"{m['seconds']:.0f}", f"<= {TARGET_SECONDS}", m["seconds"] <= TARGET_SECONDS),
        ("job wall seconds (load + train + write)", f"{wall:.0f}", "", None),
    ]
    print(f"\nhost: {platform.node()}, {os.cpu_count()} CPUs, {m['num_threads']} torch threads, device {m['device']}; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (other processes share the CPU)")
    print(f"run: {m['arch']}, {m['train_samples']} train images, {m['epochs']} epochs, batch {m['batch_size']}, "
          f"lr {m['lr']} ({m['optimizer']}, {m['schedule']}), seed {m['seed']}")
    print(f"{'figure':42s} {'measured':>10s} {'target':>10s}  ok")
    for name, value, target, ok in rows:
        print(f"{name:42s} {value:>10s} {target:>10s}  {'' if ok is None else ('yes' if ok else 'NO')}")
    print("test accuracy per epoch:", json.dumps([round(a, 4) for _, a in m["test_accuracy_curve"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
