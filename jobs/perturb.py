"""Pixel perturbation (Samek et al. 2017): MoRF and LeRF curves per method, with a random reference, on Ray.

    python -m jobs.perturb --maps outputs/maps/fashion-mnist          # maps written by jobs.attribute
    python -m jobs.perturb --limit 256 --methods "pathway gradient"   # no map dataset: maps computed here
    python -m jobs.perturb --maps s3://bucket/maps/r50 --fill train --ray-address auto

docs/design.md §2. For every image, its single-channel map ranks the pixels; the top (MoRF) or
bottom (LeRF) k % of pixels are replaced, in all channels, by the per-channel dataset mean,
and the score is the relative drop (p_0 - p_k) / p_0 of the softmax probability of the
class the map explains (the stored ``target``; the predicted class when maps are computed
here). Pixels are ranked by |map| (``--rank abs``, default): the sign of a gradient-type map
(gradient, guided backprop, pathway) says which way the class score moves, not whether the
pixel supports the class, so a signed ranking puts strongly relevant pixels with negative
values at the LeRF end (default model, 128 images: gradient MoRF / LeRF areas 0.47 / 0.80
signed, 0.74 / 0.54 by |map|). ``--rank signed`` ranks by the signed map, which suits
contribution maps (gradient x input, integrated gradients). k runs over 0, 1..10 % and
20..100 % (``--fractions``). A random pixel order, seeded per sample id, is the reference
line ("random"); it scores the predicted class.

Fill (``--fill``): ``spec`` (default) uses the model spec's normalization mean, which
jobs.train takes from the train split, so it is 0 in model-input units; ``train`` averages
up to 10,000 images of the source's train split (for models normalized with other
statistics, e.g. ImageNet's).

Work: one Ray task per (method, shard of ``--shard-size`` samples), plus one random task
per shard; each returns per-image drops and the driver averages. Outputs, under
``--output`` (default ``<maps>/eval/perturbation``, or ``outputs/eval/perturbation``):
``perturbation.parquet|csv`` (method, order, fraction, mean_drop, std_drop, n_images),
``auc.json|csv`` (area under each curve, trapezoid over the fraction axis) and
``perturbation.png`` (MoRF and LeRF panels). Exit 1 with one line on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.cli import (JobError, build_methods, checkpoint_or_default, job_parser, parse_method_specs, positive_int,
                      ray_flags, reduction, run_main, storage_options_from)

DEFAULT_METHODS = "pathway gradient"
DEFAULT_OUTPUT = "outputs/eval/perturbation"
DEFAULT_LIMIT = 256
RANDOM = "random"


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions must be numbers in [0, 1], got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values) or np.any(np.diff(values) <= 0):
        raise argparse.ArgumentTypeError(f"--fractions must be increasing numbers in [0, 1], got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from attribution.evaluation import DEFAULT_FRACTIONS

    p = job_parser("python -m jobs.perturb", __doc__, [ray_flags()])
    p.add_argument("--maps", default=None, help="map dataset URL written by jobs.attribute (source, split, "
                   "checkpoint and methods come from its run.json); without it maps are computed here")
    p.add_argument("--methods", default=None, help="with --maps: stored method names (default all); without: "
                   f"[label=]name[:key=value,...] items (default {DEFAULT_METHODS!r})")
    p.add_argument("--source", default=None, help="dataset name or URL (default: the maps' source, else fashion-mnist)")
    p.add_argument("--split", default=None, help="default: the maps' split, else test")
    p.add_argument("--checkpoint", default=None, help="default: the maps' checkpoint, else the embedded default")
    p.add_argument("--limit", type=positive_int, default=None,
                   help=f"first N samples (default: every stored map; {DEFAULT_LIMIT} when computing maps)")
    p.add_argument("--fractions", type=_fractions, default=list(DEFAULT_FRACTIONS),
                   help="increasing pixel fractions in [0, 1], comma- or space-separated")
    p.add_argument("--fill", default="spec", choices=("spec", "train"), help="per-channel mean: see above")
    p.add_argument("--reduction", default="signed_max_abs", type=reduction,
                   help="channel reduction of maps computed here (as jobs.attribute)")
    p.add_argument("--rank", default="abs", choices=("abs", "signed"), help="rank pixels by |map| or the signed map")
    p.add_argument("--shard-size", type=positive_int, default=64, help="samples per Ray task")
    p.add_argument("--seed", type=int, default=0, help="added to each sample's seed for the random order")
    p.add_argument("--output", default=None, help="output folder URL (see above)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- Ray task


def perturb_shard(payload: dict[str, Any], x: Any, maps: np.ndarray | None, targets: np.ndarray | None,
                  method: Any, sample_ids: list[str], fractions: list[float], fill: list[float], reduction: str,
                  seed: int, rank: str = "abs") -> dict[str, np.ndarray]:
    """Per-image drops [n, F] for one method's shard: {"morf": ..., "lerf": ...}, or {"random": ...}
    when ``method`` is None and ``maps`` is None. Maps are computed here when only ``method`` is given."""
    import torch

    from attribution.evaluation import relative_drops
    from jobs.eval_common import compute_maps, rebuild_model, sample_seeds

    torch.set_num_threads(1)
    model = rebuild_model(payload)
    target = None if targets is None else torch.tensor(np.array(targets))
    if maps is None and method is None:
        seeds = [s + seed for s in sample_seeds(sample_ids)]
        return {RANDOM: relative_drops(model, x, None, fractions, fill, RANDOM, target, seeds).numpy()}
    if maps is None:
        maps = compute_maps(method.build(model), x, target, sample_ids, reduction)
    m = torch.tensor(np.array(maps, dtype=np.float32))
    m = m.abs() if rank == "abs" else m
    return {order: relative_drops(model, x, m, fractions, fill, order, target).numpy() for order in ("morf", "lerf")}


# --------------------------------------------------------------------------- inputs


def stored_inputs(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Maps, targets and ids from a jobs.attribute dataset, plus where its images and model live."""
    from storage.fs import StorageNotFound, join
    from storage.reader import read_maps, read_run
    from workers.tasks import stored_methods

    try:
        run = read_run(args.maps, options or None)
    except StorageNotFound:
        raise JobError(f"--maps {args.maps}: no map dataset there (no run.json); write one with "
                       f"`python -m jobs.attribute --output {args.maps}` or leave --maps out") from None
    config = run.get("config", {})
    stored = [m.label for m in stored_methods(config)]
    methods = args.methods.split() if args.methods else stored
    unknown = [m for m in methods if m not in stored]
    if unknown:
        raise JobError(f"--methods {' '.join(unknown)}: not in the map dataset {args.maps}, "
                       f"which holds {', '.join(stored) or 'no methods'}")
    frames = {m: read_maps(args.maps, m, options or None, columns=["sample_id", "target", "map"]) for m in methods}
    common = set.intersection(*(set(f.sample_id) for f in frames.values()))
    ids = [s for s in frames[methods[0]].sample_id if s in common][: args.limit]
    if not ids:
        raise JobError(f"--maps {args.maps}: no sample has a committed map of every method "
                       f"({', '.join(methods)}); finish the jobs.attribute run first")
    indexed = {m: f.drop_duplicates("sample_id").set_index("sample_id").loc[ids] for m, f in frames.items()}
    return {"source": args.source or config.get("source"), "split": args.split or config.get("split", "test"),
            "checkpoint": args.checkpoint or config.get("checkpoint"), "methods": methods, "ids": ids,
            "maps": {m: np.stack(f["map"].to_numpy()).astype(np.float32) for m, f in indexed.items()},
            "targets": {m: f["target"].to_numpy().astype(np.int64) for m, f in indexed.items()},
            "output": args.output or join(args.maps, "eval/perturbation")}


def run(args: argparse.Namespace) -> int:
    import ray
    from tqdm import tqdm

    from jobs.cluster import start_ray
    from jobs.eval_common import chunks, fill_value, load_samples, model_payload
    from models.preprocess import preprocess
    from storage.checkpoints import load_checkpoint
    from storage.sources import open_source

    start = time.perf_counter()
    options = storage_options_from(args.storage_options)
    if args.maps:
        inputs = stored_inputs(args, options)
        specs = None
    else:
        specs = {spec.label: spec for spec in parse_method_specs(args.methods or DEFAULT_METHODS)}
        inputs = {"source": args.source or "fashion-mnist", "split": args.split or "test",
                  "checkpoint": args.checkpoint, "methods": list(specs), "ids": None,
                  "output": args.output or DEFAULT_OUTPUT}
    checkpoint = checkpoint_or_default(inputs["checkpoint"])
    model, spec = load_checkpoint(checkpoint, options or None)
    if specs is not None:
        build_methods(model, list(specs.values()))  # bad parameters fail here, before any scheduling
    source = open_source(inputs["source"], split=inputs["split"], storage_options=options or None)
    images, _, ids = load_samples(source, args.limit or DEFAULT_LIMIT, inputs["ids"])
    keep = None
    if inputs["ids"] is not None and len(ids) != len(inputs["ids"]):  # unreadable images: keep rows aligned
        position = {s: i for i, s in enumerate(inputs["ids"])}
        keep = [position[s] for s in ids]
    x = preprocess(spec, images)
    fill = fill_value(args.fill, spec, inputs["source"], options)
    methods = inputs["methods"]
    print(f"{len(ids)} samples from {source.url} ({inputs['split']}), methods: {', '.join(methods)}; "
          f"{len(args.fractions)} fractions, fill {[round(v, 4) for v in fill]} (--fill {args.fill})")

    start_ray(args.ray_address)
    task = ray.remote(num_cpus=1)(perturb_shard)
    payload = ray.put(model_payload(model, spec))
    pending: dict[Any, tuple[str, int]] = {}
    for lo, hi in chunks(len(ids), args.shard_size):
        x_ref, shard_ids = ray.put(x[lo:hi]), ids[lo:hi]
        rows = slice(lo, hi) if keep is None else keep[lo:hi]
        for label in methods:
            if specs is None:
                maps, targets, method = inputs["maps"][label][rows], inputs["targets"][label][rows], None
            else:
                maps, targets, method = None, None, specs[label]
            ref = task.remote(payload, x_ref, maps, targets, method, shard_ids, args.fractions, fill,
                              args.reduction, args.seed, args.rank)
            pending[ref] = (label, lo)
        # The random order explains no class: it scores the predicted class.
        ref = task.remote(payload, x_ref, None, None, None, shard_ids, args.fractions, fill, args.reduction,
                          args.seed)
        pending[ref] = (RANDOM, lo)

    drops: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    with tqdm(total=len(ids) * (len(methods) + 1), unit="image", desc="perturb", disable=args.no_progress,
              dynamic_ncols=True) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            label, lo = pending.pop(done[0])
            for order, values in ray.get(done[0]).items():
                drops.setdefault((label, order), {})[lo] = values
                bar.update(values.shape[0] if order != "lerf" else 0)
    table = summarize(drops, args.fractions, [*methods, RANDOM])
    outputs = write_outputs(inputs["output"], options, table, args, fill, checkpoint, inputs, len(ids))
    print_summary(table, args.fractions, outputs, time.perf_counter() - start)
    return 0


# --------------------------------------------------------------------------- outputs


def summarize(drops: dict[tuple[str, str], dict[int, np.ndarray]], fractions: Sequence[float],
              methods: Sequence[str]) -> Any:
    """Long table: one row per (method, order, fraction), methods in the given order, with the mean
    drop over images (shards concatenated in sample order)."""
    import pandas as pd

    rows = []
    for (label, order), shards in sorted(drops.items(), key=lambda item: list(methods).index(item[0][0])):
        values = np.concatenate([shards[k] for k in sorted(shards)], axis=0)
        for j, fraction in enumerate(fractions):
            column = values[:, j]
            rows.append({"method": label, "order": order, "fraction": float(fraction),
                         "mean_drop": float(column.mean()), "std_drop": float(column.std()),
                         "n_images": int(column.shape[0])})
    return pd.DataFrame(rows)


def areas(table: Any, fractions: Sequence[float]) -> Any:
    """Area under every (method, order) curve."""
    import pandas as pd

    from attribution.evaluation import auc

    rows = []
    for (label, order), group in table.groupby(["method", "order"], sort=False):
        curve = group.sort_values("fraction")
        value = auc(fractions, curve["mean_drop"].to_numpy()) if len(fractions) > 1 else float("nan")
        rows.append({"method": label, "order": order, "auc": value, "n_images": int(curve["n_images"].iloc[0])})
    return pd.DataFrame(rows)


def write_outputs(output: str, options: dict[str, Any], table: Any, args: argparse.Namespace, fill: list[float],
                  checkpoint: str, inputs: dict[str, Any], n: int) -> list[str]:
    from jobs.eval_common import write_file, write_table
    from jobs.plots import perturbation_curves

    auc_table = areas(table, args.fractions)
    summary = {"config": {"maps": args.maps, "source": inputs["source"], "split": inputs["split"],
                          "checkpoint": checkpoint, "methods": inputs["methods"], "fractions": args.fractions,
                          "fill": fill, "fill_mode": args.fill, "rank": args.rank, "seed": args.seed, "samples": n},
               "auc": {m: {o: a for o, a in zip(g["order"], g["auc"])} for m, g in auc_table.groupby("method")}}
    paths = write_table(output, "perturbation", table, options)
    paths += write_table(output, "auc", auc_table, options)
    paths.append(write_file(output, "auc.json", (json.dumps(summary, indent=2) + "\n").encode(), options))
    paths.append(write_file(output, "perturbation.png", perturbation_curves(table), options))
    return paths


def print_summary(table: Any, fractions: Sequence[float], paths: list[str], seconds: float) -> None:
    auc_table = areas(table, fractions)
    print(f"\narea under the curve (mean relative drop of the explained class' probability; "
          f"{int(table.n_images.max())} images, {seconds:.1f} s):")
    wide = auc_table.pivot(index="method", columns="order", values="auc").loc[list(dict.fromkeys(auc_table.method))]
    for method, row in wide.iterrows():
        cells = "  ".join(f"{o}={row[o]:.4f}" for o in ("morf", "lerf", RANDOM) if o in row and not np.isnan(row[o]))
        print(f"  {method:24s} {cells}")
    print("outputs: " + ", ".join(paths))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.perturb", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
