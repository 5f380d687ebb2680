"""ROAR (RemOve And Retrain, Hooker et al. 2019) and KAR over stored maps, one Ray task per retrain,
with a mask-leakage control and a training-budget check.

ROAR needs maps for the train split too. Produce both splits with jobs.attribute, same
checkpoint and methods, then run ROAR::

    python -m jobs.attribute --split train --output outputs/maps/fm-train --methods "pathway gradient"
    python -m jobs.attribute --split test  --output outputs/maps/fm-test  --methods "pathway gradient"
    python -m jobs.roar --train-maps outputs/maps/fm-train --test-maps outputs/maps/fm-test
    python -m jobs.roar ... --train-limit 20000 --epochs 5 --thresholds 50,90 --fill mean,nli   # a CPU grid
    python -m jobs.roar ... --in-process   # one cell at a time in this process, without Ray

For every method x threshold t (% of pixels) x seed x fill, one Ray task (workers.roar) removes
the top t % pixels (by |map|) of every train and test image, filling them with the per-channel
train mean (``--fill mean``) or ROAD's noisy linear imputation (``--fill nli``, noise std
``--noise`` in model-input units), retrains the checkpoint's architecture from scratch with
that seed and the checkpoint's recipe (``--augment on`` adds random crops after removal), and
reports test accuracy. Controls: ``random`` and ``sobel`` (computed here from the images, no
stored maps; ``--random-per-read`` draws a fresh random mask every time ``random`` reads a
training image, so no fixed pattern can be learned), and the unmodified accuracy (method
``none``, t = 0; t = 100 under ``--kar``) per seed. ``--kar`` keeps the top t % and replaces the
rest (use another --output; it is the default).

Leakage control (on by default, ``--no-mask-control`` to skip): for each method x t x seed also
a retrain on the binary removal mask alone, same budget; each ROAR cell is then valid or "not
valid: the mask leaks the class" (jobs.evaluation.roar_summary says exactly how). Budget check: the
unmodified retrain must land within ``--budget-tolerance`` points (3) of the checkpoint's own
accuracy on the same test images, or the summary says the grid is under-trained. Chance is 1/K
(K: the model's classes); a checkpoint or unmodified retrain within 5 points of it makes every
cell "not valid: the model is at chance on these images". ``--train-limit`` / ``--test-limit``
take seeded, class-stratified subsets (jobs.evaluation.subsets), and labels are the ones the maps store (the
model's class indices, not an image folder's sorted-name order).

Outputs under --output (default <test-maps>/_eval/roar, or _eval/kar):
``cells/<method>-t<t>-s<seed>-<fill|mask>.json`` (one per finished cell: a rerun skips them),
``results.parquet`` / ``results.csv`` (method, t, seed, input, fill, accuracy, epochs, seconds,
...), ``summary.csv`` (per method x t x fill: accuracy and mask-only accuracy, mean and std over
seeds, the test's p-value and the verdict), ``claims.csv`` (the paper's claims over seeds,
jobs.roar_stats), ``roar.png`` (accuracy vs t, one panel per fill,
mask-only dotted, the checkpoint's accuracy and the budget band) and ``run.json`` (with the
budget check).
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

from jobs.runtime.cli import (JobError, check_in_process, choice_list, job_parser, non_negative_float,
                              non_negative_int, positive_float, positive_int, ray_flags, run_main, source_flags,
                              source_policy_of, storage_options_from, trust_flags, trust_of, worker_flags)

CONTROLS = ("random", "sobel")
#: What this job writes under its output (storage.io.outputs.check_output refuses a folder holding anything else).
OUTPUT_NAMES = ("results.*", "summary.csv", "claims.csv", "roar.png", "kar.png", "run.json", "cells")
DEFAULT_THRESHOLDS = "10,30,50,70,90"
FILLS = ("mean", "nli")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.roar", __doc__, [ray_flags(), worker_flags("one per CPU, 1 thread each"),
                                                    trust_flags(), source_flags()])
    p.add_argument("--train-maps", required=True, help="map dataset of the train split (jobs.attribute --split train)")
    p.add_argument("--test-maps", required=True, help="map dataset of the test split")
    p.add_argument("--output", default=None, help="results URL (default <test-maps>/_eval/roar, _eval/kar with --kar)")
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
                   help="train on a seeded, class-stratified subset of this size (same for all cells)")
    p.add_argument("--test-limit", type=positive_int, default=None,
                   help="evaluate on a seeded, class-stratified subset of this size")
    p.add_argument("--fill", type=choice_list(*FILLS), default=["nli"],
                   help="mean, nli or both: fill removed pixels with the train mean or ROAD's noisy linear imputation")
    p.add_argument("--noise", type=non_negative_float, default=0.01,
                   help="nli noise std in model-input units (ROAD's 0.01)")
    p.add_argument("--mask-control", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on the removal mask alone, per method x t x seed (the leakage control)")
    p.add_argument("--mask-skip", default="random",
                   help="methods without a leakage control: random's mask is random per image, so it holds no class "
                        "by construction ('' to train it anyway)")
    p.add_argument("--augment", choices=("recipe", "on", "off"), default="recipe",
                   help="random crops (2 px) after removal: as the checkpoint was trained, or on / off")
    p.add_argument("--random-per-read", action="store_true",
                   help="the random control removes a fresh random mask every time it reads a training image")
    p.add_argument("--budget-tolerance", type=positive_float, default=3.0,
                   help="points the unmodified retrain may lie below the checkpoint before the grid is under-trained")
    p.add_argument("--retries", type=non_negative_int, default=None,
                   help="retries of a cell that failed transiently (a lost worker, I/O); default "
                        "$PATHWAY_SHARD_RETRIES or 3, as every job's units (jobs.runtime.runner)")
    args = p.parse_args(argv)
    try:
        seeds = _int_list(args.seeds)
    except argparse.ArgumentTypeError as err:
        p.error(f"argument --seeds: {err}")
    args.seeds = list(range(seeds[0])) if len(seeds) == 1 and "," not in args.seeds else seeds
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: need distinct seeds, got {args.seeds}")
    if any(not 0 < t < 100 for t in args.thresholds):
        p.error(f"--thresholds must lie in 1..99 (%), got {args.thresholds}")
    return args


# -- data ------------------------------------------------------------------------------------
def load_split(url: str, methods: Sequence[str], options: dict, limit: int | None, subset_seed: int = 0,
               policy: Any = None, num_classes: int | None = None, what: str = "images") -> dict[str, Any]:
    """Images, labels, ids and the stored maps ``[N, H, W]`` of ``methods`` for the samples that have
    a map of every method stored in the dataset (controls need none, but use the same samples), in
    source order, with the labels the maps store (the model's class indices); ``limit`` keeps a seeded,
    class-stratified subset (jobs.evaluation.subsets),
    described in ``subset`` for the run header. The source is opened under
    ``policy`` (the operator's --allow-paths, --max-image-pixels)."""
    from attribution.base import sample_seeds
    from jobs.evaluation.subsets import stratified_indices, subset_record
    from storage.maps.reader import read_maps, read_run
    from storage.sources import load_arrays, open_source
    from workers.tasks import stored_methods

    run = read_run(url, options)
    config = run.get("config") or {}
    rows = read_maps(url, None, options, columns=["sample_id", "method", "label"])
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
        frame = read_maps(url, method, options, columns=["sample_id", "map"])
        maps[method] = dict(zip(frame.sample_id, frame["map"]))
    source = open_source(config["source"], split=config.get("split", "test"), storage_options=options,
                         policy=policy)
    refs = [r for r in source.list() if r.sample_id in complete]
    label_of = dict(zip(rows.sample_id, rows.label))
    total = len(refs)
    refs = [refs[i] for i in stratified_indices([label_of[r.sample_id] for r in refs], limit, subset_seed)]
    if not refs:
        raise JobError(f"no sample of {config['source']!r} ({config.get('split')}) has maps in {url} for every "
                       f"stored method {stored}")
    images, _, ids = load_arrays(source, refs)
    # The labels jobs.attribute stored: the model's class indices (an image folder's own indices follow
    # sorted class names, and the checkpoint's accuracy against them is near 0).
    labels = np.asarray([label_of[i] for i in ids], dtype=np.int64)
    if images.ndim == 3:
        images = images[..., None]
    stacked = {m: np.stack([maps[m][i] for i in ids]).astype(np.float16) for m in methods}
    return {"images": images, "labels": labels, "ids": ids, "maps": stacked, "run": run,
            "source": config["source"], "split": config.get("split"), "seeds": sample_seeds(None, ids, hash="crc32"),
            "subset": subset_record(labels, num_classes, total, limit, subset_seed, what=what)}


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


# -- the job ---------------------------------------------------------------------------------
def checkpoint_accuracy(model: Any, spec: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """The fully trained checkpoint's accuracy on the (unmodified) test images the grid uses."""
    from models.training import cpu_threads, evaluate

    with cpu_threads():
        return evaluate(model.eval(), spec, images, labels, device="cpu")


def checked_recipe(metrics: dict[str, Any], checkpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    """The training recipe a checkpoint's metrics hold, each field checked before it is used: a
    checkpoint is untrusted data, and a bad field is one line naming it and the flag that overrides it."""
    from models.training import OPTIMIZERS, SCHEDULES
    from storage.io.fs import redact_url

    def number(value: Any, kind: type) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and \
            (kind is float or float(value).is_integer()) and 0 < value < float("inf")

    fields = {  # key: (default, check, the flag that overrides it; "" when given, None when there is none)
        "epochs": (4, lambda v: number(v, int), "--epochs" if args.epochs is None else ""),
        "batch_size": (128, lambda v: number(v, int), "--batch-size" if args.batch_size is None else ""),
        "lr": (0.1, lambda v: number(v, float), "--lr" if args.lr is None else ""),
        "weight_decay": (5e-4, lambda v: v == 0 or number(v, float), None),
        "optimizer": ("sgd", lambda v: v in OPTIMIZERS, None),
        "schedule": ("onecycle", lambda v: isinstance(v, str) and v.split(" ")[0] in SCHEDULES, None),
        "augment": (False, lambda v: v in (True, False), "--augment on|off" if args.augment == "recipe" else ""),
    }
    recipe = {}
    for key, (default, check, flag) in fields.items():
        value = metrics.get(key, default)
        if not check(value):
            if flag == "":  # the operator's flag replaces it
                value = default
            else:
                fix = f"pass {flag}" if flag else "retrain the model with jobs.train"
                raise JobError(f"checkpoint {redact_url(checkpoint)}: its recipe field {key!r} is {str(value)[:60]!r}, "
                               f"not a valid {key}; {fix}")
        recipe[key] = value
    recipe["schedule"] = str(recipe["schedule"]).split(" ")[0]
    for key, kind in (("epochs", int), ("batch_size", int), ("lr", float), ("weight_decay", float), ("augment", bool)):
        recipe[key] = kind(recipe[key])
    return recipe


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from jobs.evaluation.inputs import stored_config
    from jobs.evaluation.roar_cells import finished_cells, name_of, plan_cells, run_cells
    from jobs.runtime.runner import Runner
    from jobs.evaluation.roar_summary import budget, chance_levels, print_summary, verdict_lines, write_outputs
    from jobs.evaluation.subsets import announce
    from storage.checkpoints import load_checkpoint, load_metrics
    from storage.io.fs import join
    from storage.io.location import Location
    from storage.maps.manifest import now
    from storage.io.fs import redact_url
    from storage.io.outputs import OutputKind, check_apart, check_output
    from storage.maps.reader import read_run
    from storage.sources import source_location
    from storage.maps.tables import EVAL_DIR
    from workers.roar_data import channel_mean, pixel_noise

    started, clock = now(), time.perf_counter()
    options = storage_options_from(args.storage_options)
    check_in_process(args, "one cell at a time")
    if args.train_maps.rstrip("/") == args.test_maps.rstrip("/"):
        raise JobError("--train-maps and --test-maps are the same dataset; ROAR needs maps of both splits "
                       "(python -m jobs.attribute --split train --output <train-maps>)")
    urls = {"train": args.train_maps, "test": args.test_maps}
    runs, stored = {k: read_run(u, options) for k, u in urls.items()}, {}
    for k, url in urls.items():  # someone else's map datasets are untrusted data: their fields are checked
        runs[k]["config"], specs = stored_config(runs[k], url)
        stored[k] = [m.label for m in specs]
        if not runs[k]["config"].get("source"):
            raise JobError(f"--{k}-maps {url}: its run.json names no source (config.source); use a map dataset "
                           "written by jobs.attribute")
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
    with_maps = [m for m in methods if m not in CONTROLS]
    checkpoint = args.checkpoint or runs["test"]["config"].get("checkpoint")
    if not checkpoint:
        raise JobError(f"--test-maps {args.test_maps}: its run.json names no checkpoint; pass --checkpoint")
    model, spec = load_checkpoint(checkpoint, options, trust_code=trust_of(args))
    recipe = checked_recipe(load_metrics(checkpoint, options), checkpoint, args)
    output = args.output or join(args.test_maps, EVAL_DIR, "kar" if args.kar else "roar")
    # Before anything is written or trained: the output is this job's own, apart from the images.
    check_output(output, OutputKind("jobs.roar", OUTPUT_NAMES), options)
    check_apart(output, {f"the {k} maps' source": source_location(r["config"]["source"])
                         for k, r in runs.items() if r.get("config", {}).get("source")})

    policy = source_policy_of(args)
    train = load_split(args.train_maps, with_maps, options, args.train_limit, policy=policy,
                       num_classes=spec.num_classes, what="train images")
    test = load_split(args.test_maps, with_maps, options, args.test_limit, policy=policy,
                      num_classes=spec.num_classes, what="test images")
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
    augment = recipe["augment"] if args.augment == "recipe" else args.augment == "on"
    config = {
        "spec": spec.to_dict(), "kar": args.kar, "fill": channel_mean(train["images"]), "output": output,
        "storage_options": options, "noise": pixel_noise(args.noise, spec.std), "per_read": args.random_per_read,
        "epochs": args.epochs or recipe["epochs"], "batch_size": args.batch_size or recipe["batch_size"],
        "lr": args.lr or recipe["lr"], "optimizer": recipe["optimizer"], "schedule": recipe["schedule"],
        "weight_decay": recipe["weight_decay"], "augment": augment,
    }
    settings = {k: v for k, v in config.items() if k not in ("output", "storage_options")}
    # Stored in run.json, so without credentials (storage.io.fs.redact_url); equal whatever credentials a URL carries.
    settings.update(train_maps=redact_url(args.train_maps), test_maps=redact_url(args.test_maps),
                    checkpoint=redact_url(checkpoint),
                    train_ids=hashlib.sha256("\n".join(train["ids"]).encode()).hexdigest(),
                    test_ids=hashlib.sha256("\n".join(test["ids"]).encode()).hexdigest())
    config["fingerprint"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    config["deterministic"] = not args.nondeterministic  # how, not what: outside the fingerprint
    config["trust_code"] = list(trust_of(args))  # the operator's grant, for the workers' rebuild

    skip = set(args.mask_skip.replace(",", " ").split()) | ({"random"} if args.random_per_read else set())
    cells = plan_cells(methods, args.thresholds, args.seeds, args.kar, args.fill, args.mask_control, sorted(skip))
    where = Location(output, options)
    finished, stale = finished_cells(where, cells, config["fingerprint"])
    if stale:
        print(f"note: {stale} cell files under {redact_url(output)} were computed with other settings (epochs, data, "
              "maps...); they are recomputed and replaced (use another --output to keep them)", file=sys.stderr)
    runner = Runner("roar", "cell", [name_of(c) for c in cells], finished, no_bar=args.no_progress,
                    retries=args.retries, in_process=args.in_process)
    todo = [c for c in cells if name_of(c) not in finished]
    print(f"ROAR{' (KAR)' if args.kar else ''}: {spec.arch}, {len(train['ids'])} train / {len(test['ids'])} test "
          f"images, methods {methods}, t {args.thresholds} %, seeds {args.seeds}, fill {','.join(args.fill)}, "
          f"mask control {'on' if args.mask_control else 'off'}, {config['epochs']} epochs, augment {augment}; "
          f"{runner.plan_line()} -> {redact_url(output)}")
    for split in (train, test):
        announce(split["subset"])
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; ROAR needs >= 3 to report mean +- std (docs/design.md §2)", file=sys.stderr)
    reference = checkpoint_accuracy(model, spec, test["images"], test["labels"])

    results = []
    if todo:
        arrays = {"train_images": train["images"], "train_labels": train["labels"], "test_images": test["images"],
                  "test_labels": test["labels"], "train_maps": train["maps"], "test_maps": test["maps"],
                  "train_seeds": train["seeds"], "test_seeds": test["seeds"]}
        results = run_cells(todo, config, arrays, args, runner)
    failures = [f"{key}: {reason}" for key, reason in runner.failures]
    records = list(finished.values()) + results
    seconds = time.perf_counter() - clock
    title = f"{'KAR' if args.kar else 'ROAR'}: {spec.arch}, {len(train['ids'])} train imgs, {config['epochs']} ep"
    levels = chance_levels(test["labels"], spec.num_classes)  # chance is 1/K; the majority rate only beside it
    chance = levels["chance"]
    check = budget(pd.DataFrame(records, columns=["method", "accuracy"]), reference, args.budget_tolerance, levels)
    run_record = {"config": {**{k: redact_url(v) if isinstance(v, str) else v for k, v in vars(args).items()
                                if k != "storage_options"}, "output": redact_url(output)},
                  "settings": settings, "fingerprint": config["fingerprint"], "cells": len(cells),
                  "computed": len(results), "reused": len(finished), "failed": failures, "budget": check,
                  "chance": chance, "majority": levels["majority"],
                  "subsets": {"train": train["subset"], "test": test["subset"]},
                  "status": "complete" if not failures else "incomplete", "started_at": started,
                  "finished_at": now(), "seconds": seconds}
    table, verdicts = write_outputs(output, options, records, args.kar, title, run_record, chance, CONTROLS)
    print_summary(table, verdict_lines(verdicts, check, run_record["notes"]) + run_record["claims"], results,
                  len(finished), seconds, redact_url(output), args.kar)
    runner.stop_if_failed()  # exit 1, one line: what is kept and why; the same command resumes
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.roar", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
