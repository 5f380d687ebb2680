"""Compute attribution maps for a whole dataset on a Ray cluster, exactly once, resumably.

    python -m jobs.attribute                     # Fashion-MNIST test split, ResNet-8 (trained if absent)
    python -m jobs.attribute --source s3://bucket/imagenet-val --checkpoint s3://bucket/r50.pt \\
        --output s3://bucket/maps/r50 --methods "pathway:percentile=70 gradient" --workers 8
    ray job submit --working-dir . -- python -m jobs.attribute ...

Reads top to bottom like a Ray batch-inference job:

1. open the source and list its samples (cheap: no decoding);
2. plan shards once, stored under the output, and append shards for new samples only;
3. skip shards whose commit record exists;
4. ``map_batches(ShardAttributor, compute=ActorPoolStrategy(...))``: each actor holds one
   model replica on one device and turns a shard into committed Parquet + zarr output;
5. write run.json, example PNGs per method, and a summary. Exit status 0 means every
   planned shard is committed for every method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from jobs.cli import build_methods, parse_method_specs
from jobs.train import DEFAULT_OUTPUT as DEFAULT_CHECKPOINT
from jobs.train import JobError, storage_options_from

DEFAULT_OUTPUT = "outputs/maps/fashion-mnist"
DEFAULT_METHODS = "pathway gradient"
EXAMPLES = 12


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.attribute", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default="fashion-mnist", help="dataset name or URL (IDX dir, image folder, Parquet)")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint URL (default {DEFAULT_CHECKPOINT}, trained with jobs.train if absent)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="map dataset URL (local path or s3://...)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="space-separated [label=]name[:key=value,...], e.g. "
                   "'pathway pathway_integrated=pathway:scores=integrated gradient'")
    p.add_argument("--reduction", default="signed_max_abs", choices=("signed_max_abs", "max_abs", "sum_abs"))
    p.add_argument("--target", default="predicted", choices=("predicted", "label"), help="class to explain")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples of the source")
    p.add_argument("--workers", type=int, default=None, help="actors (default: GPUs in the cluster, else 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=512, help="samples per shard (fixed for an output)")
    p.add_argument("--device", default="auto", help="auto: one GPU per actor where there are GPUs, else CPU")
    p.add_argument("--nondeterministic", action="store_true",
                   help="on CUDA, allow cuDNN autotuning and non-deterministic kernels: faster, but a retried shard "
                        "may differ in the last bits (CPU runs are deterministic either way)")
    p.add_argument("--storage-options", default=None, help="fsspec options as JSON or @file (default $STORAGE_OPTIONS)")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def ensure_checkpoint(args: argparse.Namespace, options: dict[str, Any]) -> str:
    """The checkpoint URL; the embedded default is trained first when it does not exist yet."""
    if args.checkpoint:
        return args.checkpoint
    if not os.path.exists(DEFAULT_CHECKPOINT):
        print(f"no checkpoint at {DEFAULT_CHECKPOINT}: training the default model first (python -m jobs.train)")
        from jobs import train

        if train.main(["--output", DEFAULT_CHECKPOINT]) != 0:
            raise JobError("training the default model failed (see above)")
    return DEFAULT_CHECKPOINT


def start_ray(address: str | None) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():  # called in-process (tests, notebooks) with Ray already up: reuse it
        pass
    elif address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False


def run_shards(tasks: list[dict], config: dict[str, Any], args: argparse.Namespace, total_samples: int
               ) -> list[dict]:
    """Process the pending shards on an actor pool; returns one summary per finished shard."""
    import ray
    from tqdm import tqdm

    from workers.attributor import ShardAttributor

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if args.device in ("auto", "cuda") else 0
    # --device cuda asks for a GPU per actor even when the cluster has none yet: an autoscaling
    # cluster (min 0 GPU nodes) starts them for the pending actors.
    gpus = max(gpus, 1) if args.device == "cuda" else gpus
    workers = args.workers or max(1, gpus)
    cpus = int(resources.get("CPU", 1))
    threads = 0 if gpus else max(1, cpus // workers)
    dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        ShardAttributor,
        fn_constructor_kwargs={"config": config, "threads": threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=1 if gpus else 0,
        num_cpus=1 if gpus else threads,
    )  # Ray Data restarts dead actors and retries their shards by default
    results = []
    with tqdm(total=total_samples, unit="sample", disable=args.no_progress, desc="attribute",
              dynamic_ncols=True) as bar:
        for row in dataset.iter_rows():
            results.append(row)
            bar.update(int(row["samples"]) + int(row["errors"]))
    return results


def write_examples(output: str, options: dict[str, Any], source: Any, methods: Sequence[str]) -> list[str]:
    """A PNG grid of the first maps of each method, next to the outputs."""
    from jobs.plots import map_grid
    from storage.fs import join, open_fs, write_bytes_atomic
    from storage.reader import join_with_source, read_maps

    frames = {m: read_maps(output, m, options, columns=["sample_id", "target", "map"]).head(EXAMPLES) for m in methods}
    first = next(iter(frames.values()))
    if first.empty:
        return []
    joined = join_with_source(first, source)
    names = source.classes
    titles = [f"{sid.split('/')[-1]}\n{names[t] if t < len(names) else t}" for sid, t in zip(first.sample_id, first.target)]
    maps = {m: [frame.set_index("sample_id").loc[sid, "map"] for sid in first.sample_id] for m, frame in frames.items()}
    data = map_grid(list(joined["image"]), maps, titles)
    fs, root = open_fs(output, options)
    write_bytes_atomic(fs, join(root.rstrip("/"), "examples.png"), data)
    return [join(output, "examples.png")]


def run(args: argparse.Namespace) -> int:
    from storage.checkpoints import load_checkpoint
    from storage.maps import MapStore
    from storage.manifest import now
    from storage.plan import update_plan
    from storage.sources import open_source
    from workers.attributor import JobConfig

    options = storage_options_from(args.storage_options)
    specs = parse_method_specs(args.methods)
    methods = {label: spec.params for label, spec in specs.items()}
    names = {label: spec.name for label, spec in specs.items() if spec.name != label}
    checkpoint = ensure_checkpoint(args, options)
    started, start_clock = now(), time.perf_counter()  # after any training of the default model
    # Fail before any scheduling when the model, the methods, the source or the output are unusable.
    model, spec = load_checkpoint(checkpoint, options or None)
    params = {label: method.params for label, method in build_methods(model, specs).items()}
    source = open_source(args.source, split=args.split, storage_options=options or None)
    store = MapStore(args.output, options or None)
    config = JobConfig(source=args.source, checkpoint=checkpoint, output=args.output, methods=methods,
                       method_names=names, split=args.split, batch_size=args.batch_size, reduction=args.reduction,
                       target=args.target, device=args.device, storage_options=options,
                       deterministic=not args.nondeterministic)
    run_record = {"config": {k: v for k, v in config.to_dict().items() if k != "storage_options"},
                  "method_params": params, "model": spec.to_dict(), "started_at": started, "status": "running"}
    store.write_run(run_record)

    refs = source.list()[: args.limit] if args.limit else source.list()
    plan, new_shards = update_plan(args.output, refs, args.shard_size, options or None)
    for name in methods:
        store.ensure_zarr(name, plan.total_rows, spec.input_size, plan.shard_size)
    done = {name: set(store.committed(name)) for name in methods}
    tasks = []
    for shard in plan.shards:
        pending = [name for name in methods if shard.shard_id not in done[name]]
        if pending:
            tasks.append({"shard_index": shard.index, "shard_id": shard.shard_id, "methods": json.dumps(pending),
                          "refs": json.dumps([[r.sample_id, r.locator] for r in shard.refs])})
    pending_samples = sum(len(json.loads(t["refs"])) for t in tasks)
    print(f"{len(refs)} samples in {len(plan.shards)} shards ({new_shards} new); "
          f"{len(plan.shards) - len(tasks)} already committed, {len(tasks)} to do; methods: {', '.join(methods)}")

    results: list[dict] = []
    if tasks:
        start_ray(args.ray_address)
        results = run_shards(tasks, config.to_dict(), args, pending_samples)

    committed = {name: store.committed(name) for name in methods}
    missing = {name: [s.shard_id for s in plan.shards if s.shard_id not in committed[name]] for name in methods}
    samples = sum(r["n_samples"] for name in methods for r in committed[name].values())
    errors = sum(r["n_errors"] for name in methods for r in committed[name].values())
    seconds = time.perf_counter() - start_clock
    pngs = write_examples(args.output, options or None, source, list(methods)) if not any(missing.values()) else []
    run_record.update(status="complete" if not any(missing.values()) else "incomplete", finished_at=now(),
                      seconds=seconds, maps=samples, errors=errors, examples=pngs)
    store.write_run(run_record)
    print_summary(results, samples, errors, seconds, args.output, pngs, missing)
    return 0 if not any(missing.values()) else 1


def print_summary(results: list[dict], samples: int, errors: int, seconds: float, output: str,
                  pngs: list[str], missing: dict[str, list[str]]) -> None:
    computed = sum(int(r["samples"]) for r in results)
    print(f"\n{samples} maps and {errors} error rows committed under {output}")
    print(f"this run: {computed} samples in {seconds:.1f} s ({computed / seconds:.1f} samples/s, all methods per sample)")
    per_worker: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for r in results:
        per_worker[str(r["worker"])][0] += int(r["samples"])
        per_worker[str(r["worker"])][1] += float(r["seconds"])
    for worker, (n, busy) in sorted(per_worker.items()):
        print(f"  worker {worker}: {int(n)} samples, {n / busy if busy else 0:.1f} samples/s while busy")
    for name, shards in missing.items():
        if shards:
            print(f"  {name}: {len(shards)} shards not committed (e.g. {shards[:3]}); rerun the same command to finish")
    if pngs:
        print(f"example maps: {', '.join(pngs)}")
    print(f"read them with: storage.read_maps({output!r}, 'pathway')")


def main(argv: Sequence[str] | None = None) -> int:
    from jobs.cli import run_main

    return run_main("jobs.attribute", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
