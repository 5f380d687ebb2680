"""Job benchmark: the Ray attribution job against the same computation in a plain loop, and commit cost.

1. Throughput (maps/s, one map per sample and method) of the same shards of Fashion-MNIST test images:
   - in-process: ``ShardAttributor(config).process_shard`` over every shard, no Ray, with all CPU
     threads and with one thread (one "device");
   - Ray: ``jobs.mapping.actor_pool.run_shards`` (Ray Data ``map_batches`` over an ``ActorPoolStrategy``),
     1 actor (all threads) and N actors (threads split between them, as the job does). Ray itself
     is started before the clock (``ray.init`` costs ~4 s once per job); actor start-up
     (imports, model load) is inside it, as the in-process figures include building the worker.
   Targets: Ray with 1 worker >= 0.85 x in-process; N workers >= 0.8 N x one device, on N devices.
2. Commit overhead: time inside ``MapStore.write_shard`` (Parquet + zarr rows + commit record) per
   shard against the compute, to local disk and to S3 (SeaweedFS on loopback, started here).

No trained model ships with the project: a ResNet-8 is trained here for one epoch on 2000
Fashion-MNIST images (seconds), unless ``--checkpoint`` is given. Figures are wall-clock on this
machine; on a CPU shared with other processes they are noisy: rerun before trusting a ratio.

The default size is the README's default job (all 10,000 Fashion-MNIST test images), so the
fixed start-up of a Ray job (actor process, imports, model) weighs as it does in that job.

Run: ``python benchmarks/bench_job.py [--n 10000] [--shard-size 250] [--workers 2] [--repeat 2] [--no-s3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from attribution import MethodSpec  # noqa: E402
from jobs import attribute  # noqa: E402
from jobs.mapping import actor_pool  # noqa: E402
from jobs.mapping.planning import plan_run  # noqa: E402
from storage.maps.sink import MapSink  # noqa: E402
from storage.sources import load_arrays, open_source  # noqa: E402
from workers.attributor import ShardAttributor  # noqa: E402
from workers.shard_source import ShardSource  # noqa: E402
from workers.tasks import JobConfig  # noqa: E402

METHODS = ("pathway", "gradient")


def train_checkpoint(directory: Path) -> str:
    from models import fashion_mnist_spec
    from models.training import train_classifier
    from storage.checkpoints import save_checkpoint

    source = open_source("fashion-mnist", split="train")
    images, labels, _ = load_arrays(source, source.list()[:2000])
    model, _ = train_classifier(fashion_mnist_spec(), images, labels, epochs=1, batch_size=100, lr=0.05, seed=0,
                                device="cpu", progress=False)
    path = str(directory / "resnet8.pt")
    save_checkpoint(path, model.cpu(), fashion_mnist_spec())
    return path


def prepare(output: str, checkpoint: str, n: int, shard_size: int, batch_size: int, options: dict | None = None):
    """The driver's part, as the job does it (jobs.mapping.planning.plan_run); returns (tasks, config)."""
    source, sink = open_source("fashion-mnist"), MapSink(output, options)
    planned = plan_run(ShardSource(source, sink.where), sink, source.list()[:n], shard_size, METHODS, (28, 28))
    config = JobConfig(source="fashion-mnist", checkpoint=checkpoint, output=output,
                       methods=tuple(MethodSpec(m) for m in METHODS), batch_size=batch_size, device="cpu",
                       storage_options=options or {})
    return planned.tasks, config


def in_process(output: str, checkpoint: str, args: argparse.Namespace, threads: int,
               options: dict | None = None) -> dict:
    """The plain loop, with write_shard timed separately."""
    tasks, config = prepare(output, checkpoint, args.n, args.shard_size, args.batch_size, options)
    old = torch.get_num_threads()
    start = time.perf_counter()
    worker = ShardAttributor(config, threads=threads)
    built = time.perf_counter() - start
    writes: list[float] = []
    write_shard = worker.sink.store.write_shard

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return write_shard(*a, **k)
        finally:
            writes.append(time.perf_counter() - t)

    worker.sink.store.write_shard = timed
    samples = 0
    for task in tasks:
        samples += worker.process_shard(task).samples
    seconds = time.perf_counter() - start
    torch.set_num_threads(old)
    return {"samples": samples, "seconds": seconds, "build": built, "write": sum(writes), "shards": len(tasks)}


def with_ray(output: str, checkpoint: str, args: argparse.Namespace, workers: int) -> dict:
    tasks, config = prepare(output, checkpoint, args.n, args.shard_size, args.batch_size)
    job_args = attribute.parse_args(["--workers", str(workers), "--device", "cpu", "--no-progress"])
    start = time.perf_counter()
    results = actor_pool.run_shards(tasks, config, job_args)
    seconds = time.perf_counter() - start
    busy: dict[str, float] = {}
    for r in results:
        busy[str(r["worker"])] = busy.get(str(r["worker"]), 0.0) + float(r["seconds"])
    return {"samples": sum(int(r["samples"]) for r in results), "seconds": seconds, "busy": busy}


def rate(result: dict) -> float:
    return result["samples"] * len(METHODS) / result["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000, help="samples (Fashion-MNIST test images)")
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="actors for the scaling run")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--repeat", type=int, default=2, help="rounds of all runs; the best of each is shown")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 commit-overhead run")
    args = p.parse_args()

    import ray

    cpus = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="bj", dir="/tmp"))
    try:
        checkpoint = args.checkpoint or train_checkpoint(tmp)
        print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs, torch {torch.__version__}, "
              f"ray {ray.__version__}; {args.n} samples x {len(METHODS)} methods ({', '.join(METHODS)}), "
              f"shards of {args.shard_size}, batch {args.batch_size}")
        from jobs.runtime.cluster import start_local_ray  # on loopback, as the jobs start theirs

        start_local_ray(num_cpus=cpus, num_gpus=0, include_dashboard=False,
                        _temp_dir=tempfile.mkdtemp(prefix="r", dir="/tmp"), log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        best: dict[str, dict] = {}
        runs = {"all": lambda out: in_process(out, checkpoint, args, threads=cpus),
                "one": lambda out: in_process(out, checkpoint, args, threads=1),
                "ray1": lambda out: with_ray(out, checkpoint, args, workers=1),
                "rayn": lambda out: with_ray(out, checkpoint, args, workers=args.workers)}
        for round_ in range(args.repeat):  # interleaved rounds, best of each: other load comes and goes
            for name, fn in runs.items():
                result = fn(str(tmp / f"{name}-{round_}"))
                if name not in best or rate(result) > rate(best[name]):
                    best[name] = result
        ray.shutdown()
        local_all, local_one, ray1, rayn = best["all"], best["one"], best["ray1"], best["rayn"]

        s3 = None
        if not args.no_s3:
            from tests.servers import seaweedfs

            with seaweedfs(tmp / "seaweedfs") as server:
                os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
                s3 = in_process(server.url("bench-job"), checkpoint, args, threads=cpus,
                                options=server.storage_options)

        print(f"\n1. throughput (maps/s, best of {args.repeat}; wall clock, worker start-up included)")
        print(f"  {'run':<40} {'maps/s':>9} {'seconds':>8}  note")
        rows = [(f"in-process, {cpus} threads", local_all, f"worker built in {local_all['build']:.1f} s"),
                ("in-process, 1 thread (one device)", local_one, ""),
                (f"Ray, 1 worker x {cpus} threads", ray1, f"busy {sum(ray1['busy'].values()):.1f} s"),
                (f"Ray, {args.workers} workers x {max(1, cpus // args.workers)} thread(s)", rayn,
                 f"busy {', '.join(f'{b:.1f}' for b in rayn['busy'].values())} s")]
        for name, result, note in rows:
            print(f"  {name:<40} {rate(result):>9.1f} {result['seconds']:>8.1f}  {note}")
        r1 = rate(ray1) / rate(local_all)
        rn = rate(rayn) / rate(local_one)
        print(f"\n  Ray 1 worker / in-process:               {r1:.3f}  (target >= 0.85)")
        print(f"  Ray {args.workers} workers / in-process one device:  {rn:.3f}  "
              f"(target >= {0.8 * args.workers:.1f} on {args.workers} devices)")
        print(f"  Ray {args.workers} workers / Ray 1 worker:           {rate(rayn) / rate(ray1):.3f}")
        steady = ray1["samples"] * len(METHODS) / sum(ray1["busy"].values())
        compute = local_all["samples"] * len(METHODS) / (local_all["seconds"] - local_all["build"])
        print(f"  steady state (actor start-up excluded): Ray 1 worker {steady:.1f} maps/s while busy, "
              f"in-process {compute:.1f}: {steady / compute:.2f}; start-up + scheduling "
              f"{ray1['seconds'] - sum(ray1['busy'].values()):.1f} s per job")
        if cpus <= args.workers:
            print(f"  note: this machine has {cpus} CPU cores and no GPU. Here a 'device' is one core: the "
                  f"{args.workers}-worker run splits the same {cpus} cores that 1 worker already uses with "
                  f"{cpus} threads, so against 1 worker it can only be ~1.0x; the scaling figure is against "
                  f"one single-threaded worker. Real device scaling needs one GPU per worker.")

        print("\n2. commit overhead (MapStore.write_shard: Parquet + zarr rows + commit record, all methods)")
        for name, result in [("local disk", local_all)] + ([("S3 (SeaweedFS, loopback)", s3)] if s3 else []):
            compute = result["seconds"] - result["build"] - result["write"]
            per = result["write"] / result["shards"]
            print(f"  {name:<26} {per * 1000:7.1f} ms per shard of {args.shard_size} "
                  f"({result['write']:.2f} s write vs {compute:.2f} s compute: "
                  f"{100 * result['write'] / (result['write'] + compute):.1f} % of shard time)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
