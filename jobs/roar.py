"""ROAR (RemOve And Retrain, Hooker et al. 2019) and KAR over stored maps, one Ray task per retrain.

ROAR needs maps for the train split too. Produce both splits with jobs.attribute, same
checkpoint and methods, then run ROAR::

    python -m jobs.attribute --split train --output outputs/maps/fm-train --methods "pathway gradient"
    python -m jobs.attribute --split test  --output outputs/maps/fm-test  --methods "pathway gradient"
    python -m jobs.roar --train-maps outputs/maps/fm-train --test-maps outputs/maps/fm-test
    python -m jobs.roar ... --train-limit 5000 --epochs 1 --thresholds 10,50,90   # reduced CPU grid

For every method x threshold t (% of pixels) x seed, one Ray task (workers.roar) replaces
the top t % pixels (by |map|, see workers.roar) of every train and test image with the
per-channel train mean, retrains the checkpoint's architecture from scratch with that
seed and the checkpoint's recipe, and reports test accuracy. Controls: ``random`` and
``sobel`` (computed here from the images, no stored maps), and the unmodified
accuracy (method ``none``, t = 0; t = 100 under ``--kar``) per seed. ``--kar`` keeps the
top t % and replaces the rest (use another --output; it is the default).

Outputs under --output (default <test-maps>/eval/roar, or eval/kar):
``cells/<method>-t<t>-s<seed>.json`` (one per finished cell: a rerun skips them),
``results.parquet`` / ``results.csv`` (method, t, seed, accuracy, epochs, seconds, ...),
``roar.png`` (accuracy vs t, mean +- std over seeds) and ``run.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.cli import (JobError, job_parser, positive_float, positive_int, ray_flags, run_main, storage_options_from,
                      worker_flags)

CONTROLS = ("random", "sobel")
DEFAULT_THRESHOLDS = "10,30,50,70,90"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.roar", __doc__, [ray_flags(), worker_flags("one per CPU, 1 thread each")])
    p.add_argument("--train-maps", required=True, help="map dataset of the train split (jobs.attribute --split train)")
    p.add_argument("--test-maps", required=True, help="map dataset of the test split")
    p.add_argument("--output", default=None, help="results URL (default <test-maps>/eval/roar, eval/kar with --kar)")
    p.add_argument("--methods", default=None,
                   help="methods (space/comma separated); default: every method stored for both splits + random sobel")
    p.add_argument("--thresholds", type=_int_list, default=_int_list(DEFAULT_THRESHOLDS), help="t in %%, 1..99")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma-separated list; >= 3 advised")
    p.add_argument("--kar", action="store_true", help="keep the top t %% and replace the rest (Keep And Retrain)")
    p.add_argument("--checkpoint", default=None, help="model whose spec and recipe are retrained (default: the maps')")
    p.add_argument("--epochs", type=positive_int, default=None, help="default: the checkpoint's training epochs")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the checkpoint's")
    p.add_argument("--lr", type=positive_float, default=None, help="default: the checkpoint's")
    p.add_argument("--train-limit", type=positive_int, default=None,
                   help="train on a seeded subset of this size (same for all cells)")
    p.add_argument("--test-limit", type=positive_int, default=None, help="evaluate on the first N test maps")
    p.add_argument("--retries", type=int, default=2, help="Ray retries of a failed cell")
    args = p.parse_args(argv)
    seeds = _int_list(args.seeds)
    args.seeds = list(range(seeds[0])) if len(seeds) == 1 and "," not in args.seeds else seeds
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: need distinct seeds, got {args.seeds}")
    if any(not 0 < t < 100 for t in args.thresholds):
        p.error(f"--thresholds must lie in 1..99 (%), got {args.thresholds}")
    return args


# -- data ------------------------------------------------------------------------------------
def load_split(url: str, methods: Sequence[str], options: dict, limit: int | None, subset_seed: int | None
               ) -> dict[str, Any]:
    """Images, labels, ids and the stored maps ``[N, H, W]`` of ``methods`` for the samples that have
    a map of every method stored in the dataset (controls need none, but use the same samples), in
    source order; ``limit`` keeps a seeded subset (or the first N)."""
    from storage.reader import read_maps, read_run
    from storage.sources import load_arrays, open_source
    from workers.tasks import stored_methods

    run = read_run(url, options or None)
    config = run.get("config") or {}
    rows = read_maps(url, None, options or None, columns=["sample_id", "method"])
    stored = [m.label for m in stored_methods(config)] or sorted(set(rows.method))
    for method in list(methods) or stored[:1]:
        if not (rows.method == method).any():
            raise JobError(f"{url} holds no committed maps of method {method!r}; compute them with "
                           f"python -m jobs.attribute --split {config.get('split', '<split>')} --output {url} "
                           f"--methods {method}")
    per_sample = rows[rows.method.isin(stored)].groupby("sample_id").method.nunique()
    complete = set(per_sample[per_sample == len(stored)].index)
    maps: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        frame = read_maps(url, method, options or None, columns=["sample_id", "map"])
        maps[method] = dict(zip(frame.sample_id, frame["map"]))
    source = open_source(config["source"], split=config.get("split", "test"), storage_options=options or None)
    refs = [r for r in source.list() if r.sample_id in complete]
    if limit and limit < len(refs):
        if subset_seed is None:
            refs = refs[:limit]
        else:
            keep = np.sort(np.random.default_rng(subset_seed).choice(len(refs), size=limit, replace=False))
            refs = [refs[i] for i in keep]
    if not refs:
        raise JobError(f"no sample of {config['source']!r} ({config.get('split')}) has maps in {url} for every "
                       f"stored method {stored}")
    images, labels, ids = load_arrays(source, refs)
    if images.ndim == 3:
        images = images[..., None]
    stacked = {m: np.stack([maps[m][i] for i in ids]).astype(np.float16) for m in methods}
    return {"images": images, "labels": labels, "ids": ids, "maps": stacked, "run": run,
            "source": config["source"], "split": config.get("split")}


def fit_to_maps(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 images to the maps' resolution (the model's input size), as preprocessing would."""
    if images.shape[1:3] == (height, width):
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def control_maps(name: str, images: np.ndarray, ids: Sequence[str], spec: Any) -> np.ndarray:
    """``random`` (seeded by sample id) or ``sobel`` (on the normalized input) maps ``[N, H, W]``."""
    import attribution
    from models.preprocess import preprocess

    method = attribution.get(name, None)
    out = []
    for start in range(0, images.shape[0], 4096):
        x = preprocess(spec, images[start:start + 4096])
        out.append(method.attribute(x, sample_ids=list(ids[start:start + 4096]))[:, 0].float().numpy())
    return np.concatenate(out).astype(np.float32)


# -- cells -----------------------------------------------------------------------------------
def plan_cells(methods: Sequence[str], thresholds: Sequence[int], seeds: Sequence[int], kar: bool) -> list[dict]:
    from workers.roar import NONE

    cells = [{"method": NONE, "t": 100 if kar else 0, "seed": s} for s in seeds]
    return cells + [{"method": m, "t": t, "seed": s} for s in seeds for m in methods for t in thresholds]


def read_cell(where: Any, cell: dict) -> dict | None:
    """A finished cell's result file under the output ``where`` (a Location), or None."""
    from workers.roar import CELL_DIR, cell_name

    data = where.get_optional(f"{CELL_DIR}/{cell_name(cell['method'], cell['t'], cell['seed'])}.json")
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None  # a torn or foreign file: recompute the cell


def run_cells(todo: list[dict], config: dict, arrays: dict, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Submit the pending cells as Ray tasks, at most ``workers`` at once; returns (results, failures)."""
    import ray
    from tqdm import tqdm

    from jobs.cluster import size_workers, start_ray
    from workers.roar import NONE, remote_cell

    start_ray(args.ray_address)
    sizing = size_workers(args.device, args.workers, default_cpu_workers="cpus")
    workers = sizing.workers
    config = {**config, "threads": sizing.threads or None, "device": sizing.device}
    task = remote_cell(sizing.gpus, sizing.cpus, args.retries)
    refs = {k: ray.put(v) for k, v in arrays.items() if not k.endswith("maps")}
    map_refs: dict[str, tuple[Any, Any]] = {}
    pending, running, results, failures = list(todo), {}, [], []
    print(f"{len(todo)} cells on {sizing.describe}")
    with tqdm(total=len(todo), unit="cell", disable=args.no_progress, desc="roar", dynamic_ncols=True) as bar:
        while pending or running:
            while pending and len(running) < workers:
                cell = pending.pop(0)
                method = cell["method"]
                if method != NONE and method not in map_refs:
                    map_refs[method] = (ray.put(arrays["train_maps"][method]), ray.put(arrays["test_maps"][method]))
                train_m, test_m = map_refs.get(method, (None, None))
                ref = task.remote(cell, config, refs["train_images"], refs["train_labels"], refs["test_images"],
                                  refs["test_labels"], train_m, test_m)
                running[ref] = cell
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                cell = running.pop(ref)
                name = f"{cell['method']}-t{cell['t']}-s{cell['seed']}"
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:
                    failures.append(f"{name}: {str(err).strip().splitlines()[-1][:300]}")
                    bar.write(f"cell {name} failed after {args.retries} retries: {failures[-1]}")
                else:
                    results.append(result)
                    bar.set_postfix_str(f"{name}: acc {result['accuracy']:.3f} in {result['seconds']:.1f}s")
                bar.update(1)
    return results, failures


# -- outputs ---------------------------------------------------------------------------------
def summarize(table: Any) -> Any:
    """Mean, std and count of accuracy per (method, t)."""
    grouped = table.groupby(["method", "t"])["accuracy"]
    return grouped.agg(["mean", "std", "count"]).reset_index()


def write_outputs(output: str, options: dict, records: list[dict], kar: bool, title: str,
                  run_record: dict) -> Any:
    import pandas as pd

    from jobs.plots import roar_curves
    from storage.location import Location
    from workers.roar import NONE

    columns = ["method", "t", "seed", "accuracy", "epochs", "seconds", "mode", "train_samples", "test_samples",
               "removed_per_image", "train_accuracy", "device", "num_threads", "finished_at"]
    table = pd.DataFrame(records, columns=columns).sort_values(["method", "t", "seed"]).reset_index(drop=True)
    where = Location(output, options)
    where.put("results.parquet", table.to_parquet(index=False, compression="zstd"))
    where.put("results.csv", table.to_csv(index=False).encode())
    summary = summarize(table)
    where.put("kar.png" if kar else "roar.png", roar_curves(summary, kar, title, controls=CONTROLS, unmodified=NONE))
    where.put_json("run.json", run_record)
    return summary


# -- the job ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from storage.checkpoints import load_checkpoint, load_metrics
    from storage.fs import join
    from storage.location import Location
    from storage.manifest import now
    from storage.reader import read_run
    from workers.roar import channel_mean
    from workers.tasks import stored_methods

    started, clock = now(), time.perf_counter()
    options = storage_options_from(args.storage_options)
    if args.train_maps.rstrip("/") == args.test_maps.rstrip("/"):
        raise JobError("--train-maps and --test-maps are the same dataset; ROAR needs maps of both splits "
                       "(python -m jobs.attribute --split train --output <train-maps>)")
    runs = {k: read_run(u, options or None) for k, u in (("train", args.train_maps), ("test", args.test_maps))}
    stored = {k: [m.label for m in stored_methods(r.get("config") or {})] for k, r in runs.items()}
    if runs["train"]["config"].get("split") == runs["test"]["config"].get("split"):
        print(f"warning: both map datasets are of split {runs['test']['config'].get('split')!r}; "
              "the train maps should come from jobs.attribute --split train", file=sys.stderr)
    common = [m for m in stored["test"] if m in stored["train"] and m not in CONTROLS]
    methods = (args.methods.replace(",", " ").split() if args.methods else common + list(CONTROLS))
    missing = [m for m in methods if m not in CONTROLS and m not in common]
    if missing:
        raise JobError(f"no stored maps of {missing} in both {args.train_maps} (has {stored['train']}) and "
                       f"{args.test_maps} (has {stored['test']}); compute them with jobs.attribute --methods ... "
                       f"or drop them from --methods (controls {list(CONTROLS)} need no maps)")
    stored_methods = [m for m in methods if m not in CONTROLS]
    checkpoint = args.checkpoint or runs["test"]["config"]["checkpoint"]
    _model, spec = load_checkpoint(checkpoint, options or None)
    recipe = load_metrics(checkpoint, options or None)
    output = args.output or join(args.test_maps, "eval", "kar" if args.kar else "roar")

    train = load_split(args.train_maps, stored_methods, options, args.train_limit, subset_seed=0)
    test = load_split(args.test_maps, stored_methods, options, args.test_limit, subset_seed=None)
    height, width = spec.input_size
    for split in (train, test):
        split["images"] = fit_to_maps(split["images"], height, width)
        for m, maps in split["maps"].items():
            if maps.shape[1:] != (height, width):
                raise JobError(f"maps of {m!r} are {maps.shape[1:]} but the model's input is {(height, width)}; "
                               "use the checkpoint the maps were computed with (--checkpoint)")
        for name in methods:
            if name in CONTROLS:
                split["maps"][name] = control_maps(name, split["images"], split["ids"], spec)
    fill = channel_mean(train["images"])
    config = {
        "spec": spec.to_dict(), "kar": args.kar, "fill": fill, "output": output, "storage_options": options,
        "epochs": args.epochs or int(recipe.get("epochs", 4)),
        "batch_size": args.batch_size or int(recipe.get("batch_size", 128)),
        "lr": args.lr or float(recipe.get("lr", 0.1)), "optimizer": recipe.get("optimizer", "sgd"),
        "schedule": str(recipe.get("schedule", "onecycle")).split(" ")[0],
        "weight_decay": float(recipe.get("weight_decay", 5e-4)), "augment": bool(recipe.get("augment", False)),
    }
    settings = {k: v for k, v in config.items() if k not in ("output", "storage_options")}
    settings.update(train_maps=args.train_maps, test_maps=args.test_maps, checkpoint=checkpoint,
                    train_ids=hashlib.sha256("\n".join(train["ids"]).encode()).hexdigest(),
                    test_ids=hashlib.sha256("\n".join(test["ids"]).encode()).hexdigest())
    config["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    config["deterministic"] = not args.nondeterministic  # how, not what: outside the fingerprint

    cells = plan_cells(methods, args.thresholds, args.seeds, args.kar)
    where = Location(output, options)
    finished, stale = {}, 0
    for cell in cells:
        record = read_cell(where, cell)
        if record is not None and record.get("fingerprint") == config["fingerprint"]:
            finished[(cell["method"], cell["t"], cell["seed"])] = record
        stale += record is not None and record.get("fingerprint") != config["fingerprint"]
    if stale:
        print(f"note: {stale} cell files under {output} were computed with other settings (epochs, data, maps...); "
              "they are recomputed and replaced (use another --output to keep them)", file=sys.stderr)
    todo = [c for c in cells if (c["method"], c["t"], c["seed"]) not in finished]
    print(f"ROAR{' (KAR)' if args.kar else ''}: {spec.arch}, {len(train['ids'])} train / {len(test['ids'])} test "
          f"images, methods {methods}, t {args.thresholds} %, seeds {args.seeds}, {config['epochs']} epochs; "
          f"{len(cells)} cells, {len(finished)} already done, {len(todo)} to compute -> {output}")
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; ROAR needs >= 3 to report mean +- std (docs/design.md §2)", file=sys.stderr)

    results, failures = [], []
    if todo:
        arrays = {"train_images": train["images"], "train_labels": train["labels"], "test_images": test["images"],
                  "test_labels": test["labels"], "train_maps": train["maps"], "test_maps": test["maps"]}
        results, failures = run_cells(todo, config, arrays, args)
    records = list(finished.values()) + results
    seconds = time.perf_counter() - clock
    title = f"{'KAR' if args.kar else 'ROAR'}: {spec.arch}, {len(train['ids'])} train imgs, {config['epochs']} ep"
    run_record = {"config": {**{k: v for k, v in vars(args).items() if k != "storage_options"}, "output": output},
                  "settings": settings, "fingerprint": config["fingerprint"], "cells": len(cells),
                  "computed": len(results), "reused": len(finished), "failed": failures,
                  "status": "complete" if not failures else "incomplete", "started_at": started,
                  "finished_at": now(), "seconds": seconds}
    summary = write_outputs(output, options, records, args.kar, title, run_record)
    print_summary(summary, results, len(finished), failures, seconds, output, args.kar)
    return 0 if not failures else 1


def print_summary(summary: Any, results: list[dict], reused: int, failures: list[str], seconds: float,
                  output: str, kar: bool) -> None:
    busy = [r["seconds"] for r in results]
    print(f"\ncomputed {len(results)} cells in {seconds:.1f} s"
          f"{f' (median {float(np.median(busy)):.1f} s per cell)' if busy else ''}; reused {reused}")
    print("test accuracy, mean +- std over seeds:")
    for method, rows in summary.groupby("method", sort=True):
        cells = ", ".join(f"t={int(r.t)}: {r['mean']:.4f} +- {0 if np.isnan(r['std']) else r['std']:.4f} "
                          f"(n={int(r['count'])})" for _, r in rows.iterrows())
        print(f"  {method:>12}: {cells}")
    for failure in failures:
        print(f"  FAILED {failure}; rerun the same command to finish")
    print(f"results: {output}/results.parquet, results.csv, {'kar' if kar else 'roar'}.png")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.roar", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
