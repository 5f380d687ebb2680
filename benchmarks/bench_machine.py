"""Machine probe: how fast this machine is right now at what the test suite spends its time on.

The suite's wall time on the 2-core build machine has moved by 30-40 % between runs of the same tree
an hour apart (benchmarks/RESULTS.md, "Test suite"), while a pure-Python loop kept its speed. Printed
beside a suite run, these figures say whether a slower run is the code or the machine:

1. ``python loop``: 20 M additions in one process (plain CPU speed);
2. ``page fault``: first touch of fresh anonymous memory, per 4 KiB page (what every new process,
   import and tensor allocation pays; a VM whose free memory its host reclaims pays it dearly);
3. ``pipe round trip``: one byte to a second process and back (a wake-up on the other core: what
   Ray's daemons, workers and drivers do on every message);
4. ``import torch + ray.data``: a fresh Python importing what every Ray Data actor of a job imports
   before its first sample (the fixed cost of each job's worker).

Each figure is the median of ``--repeats`` runs. Run: ``python benchmarks/bench_machine.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import statistics
import subprocess
import sys
import time

PAGE = 4096


def python_loop() -> float:
    """Seconds of CPU for 20 M integer additions in the interpreter."""
    start, total = time.process_time(), 0
    for i in range(20_000_000):
        total += i
    return time.process_time() - start


def page_fault(megabytes: int = 256) -> float:
    """Microseconds per first touch of a fresh anonymous 4 KiB page."""
    size = megabytes << 20
    start = time.perf_counter()
    with mmap.mmap(-1, size) as memory:
        for offset in range(0, size, PAGE):
            memory[offset] = 1
    return (time.perf_counter() - start) / (size // PAGE) * 1e6


def pipe_round_trip(trips: int = 20_000) -> float:
    """Microseconds per one-byte round trip to a forked child through two pipes."""
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:
        for _ in range(trips):
            os.read(to_child, 1)
            os.write(to_parent, b"x")
        os._exit(0)
    start = time.perf_counter()
    for _ in range(trips):
        os.write(from_parent, b"x")
        os.read(from_child, 1)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    for fd in (to_child, from_parent, from_child, to_parent):
        os.close(fd)
    return elapsed / trips * 1e6


def actor_imports() -> float:
    """Seconds of CPU (user + system) for a fresh Python to import torch and ray.data."""
    before = os.times()
    subprocess.run([sys.executable, "-c", "import torch, ray.data"], check=True)
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


PROBES = (("python loop", python_loop, "s"), ("page fault", page_fault, "us/page"),
          ("pipe round trip", pipe_round_trip, "us"), ("import torch + ray.data", actor_imports, "s CPU"))


def cpu_model() -> str:
    """The CPU's model name (build machines of one kind have been Intel Xeon and AMD EPYC)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each probe; the median is printed")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {cpu_model()}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for name, probe, unit in PROBES:
        runs = [probe() for _ in range(args.repeats)]
        print(f"{name:>24}: {statistics.median(runs):8.2f} {unit}  (min {min(runs):.2f}, max {max(runs):.2f})")


if __name__ == "__main__":
    main()
