"""Pixel perturbation (Samek et al. 2017): MoRF and LeRF curves per method, with a random reference, on Ray.

    python -m jobs.perturb --maps outputs/maps/fashion-mnist          # maps written by jobs.attribute
    python -m jobs.perturb --limit 256 --methods "pathway gradient"   # no map dataset: maps computed here
    python -m jobs.perturb --maps s3://bucket/maps/r50 --mean train --ray-address auto
    python -m jobs.perturb --maps outputs/maps/fashion-mnist --fill mean,nli --rank abs,signed
    python -m jobs.perturb --limit 40 --in-process                    # a quick look, without Ray

docs/design.md §2. For every image, its single-channel map ranks the pixels; the top (MoRF) or
bottom (LeRF) k % of pixels are replaced, in all channels, and the score is the relative drop
(p_0 - p_k) / p_0 of the softmax probability of the class the map explains (the stored
``target``; the predicted class when maps are computed here), and ROAD's accuracy: the
fraction of perturbed images still classified as their label. k runs over 0, 1..10 % and
20..100 % (``--fractions``). A random pixel order, seeded per sample id, is the reference
line ("random"); it scores the predicted class.

Fill (``--fill``, one or both, comma-separated): ``mean`` replaces the pixels by the
per-channel dataset mean; ``nli`` imputes them from their neighbours with ROAD's noisy linear
imputation (Rong et al. 2022; noise std ``--noise`` in model-input units), so the filled
region is neither flat nor at a value the class never shows. Ranking (``--rank``, one or
both): ``abs`` ranks by |map|, ``signed`` by the signed map. Measured with both fills
(benchmarks/RESULTS.md): gradient-type maps (gradient, guided backprop, pathway) need ``abs``,
since their sign says which way the class score moves, not whether the pixel matters (signed,
they score below the random order); contribution maps (gradient x input, integrated gradients)
do best ``signed``, since their sign says for or against the class.

The mean (``--mean``): ``spec`` (default) uses the model spec's normalization mean, which
jobs.train takes from the train split, so it is 0 in model-input units; ``train`` averages up
to 10,000 images of the source's train split (for models normalized with other statistics,
e.g. ImageNet's). ``nli`` uses it only for an image with every pixel removed.

Work: one unit per (method, shard of ``--shard-size`` samples), plus one random unit per
shard, run as Ray tasks by the job runner (jobs.runtime.runner: its progress, retries and
failure lines); each returns per-image drops and predictions for every fill and ranking, stored
at once as ``units/<key>.npz`` under the output, bound to this configuration
(jobs.evaluation.units: a rerun with other settings is refused), so a stopped run resumes with
the same command; the driver averages. Outputs, under ``--output`` (default ``<maps>/_eval/perturbation``, or
``outputs/eval/perturbation``): ``perturbation.parquet|csv`` (method, fill, rank, order,
fraction, mean_drop, std_drop, accuracy, n_images), ``auc.json|csv`` (areas under the drop
curve and under ROAD's accuracy curve, trapezoid over the fraction axis) and
``perturbation.png`` (a row per fill and ranking: MoRF, LeRF, ROAD accuracy). Exit 1 with one
line on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.runtime.cli import (JobError, check_in_process, checkpoint_or_default, choice_list, job_parser,
                              non_negative_float, positive_int, ray_flags, reduction, run_main, source_flags,
                              source_policy_of, storage_options_from, trust_flags, trust_of)
from jobs.evaluation.perturbation_tables import NO_RANK, RANDOM, areas, curve_notes, print_summary, summarize
from jobs.mapping.methods import build_methods, parse_method_specs

DEFAULT_METHODS = "pathway gradient"
DEFAULT_OUTPUT = "outputs/eval/perturbation"
#: What this job writes under its output (storage.io.outputs.check_output refuses a folder holding anything else).
OUTPUT_NAMES = ("perturbation.*", "auc.*", "units")
DEFAULT_LIMIT = 256
FILLS = ("mean", "nli")
RANKS = ("abs", "signed")
MEANS = ("spec", "train")


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

    p = job_parser("python -m jobs.perturb", __doc__, [ray_flags(), trust_flags(), source_flags()])
    p.add_argument("--maps", default=None, help="map dataset URL written by jobs.attribute (source, split, "
                   "checkpoint and methods come from its run.json); without it maps are computed here")
    p.add_argument("--methods", default=None, help="with --maps: stored method names; without: [label=]name"
                   f"[:key=value,...] items (default: every stored method with --maps, else {DEFAULT_METHODS!r})")
    p.add_argument("--source", default=None, help="dataset name or URL (default: the maps' source, else fashion-mnist)")
    p.add_argument("--split", default=None, help="the source's split (default: the maps' split, else test)")
    p.add_argument("--checkpoint", default=None,
                   help="model checkpoint URL (default: the maps' checkpoint, else the shipped ResNet-8)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help=f"a seeded, class-stratified subset of N samples (default: every stored map; {DEFAULT_LIMIT} when "
                        "computing maps)")
    p.add_argument("--fractions", type=_fractions, default=list(DEFAULT_FRACTIONS),
                   help="increasing pixel fractions in [0, 1], comma- or space-separated")
    p.add_argument("--fill", default="mean,nli", type=choice_list(*FILLS, *MEANS),
                   help="mean, nli or both: how removed pixels are filled (see above)")
    p.add_argument("--mean", default="spec", choices=MEANS, help="where the per-channel mean comes from: see above")
    p.add_argument("--noise", default=0.01, type=non_negative_float,
                   help="nli: std of the noise added to imputed values, "
                   "in model-input units (ROAD's 0.01)")
    p.add_argument("--reduction", default="signed_max_abs", type=reduction,
                   help="channel reduction of maps computed here (as jobs.attribute)")
    p.add_argument("--rank", default="abs", type=choice_list(*RANKS),
                   help="abs, signed or both: rank pixels by |map| or by the signed map")
    p.add_argument("--shard-size", type=positive_int, default=64, help="samples per Ray task")
    p.add_argument("--seed", type=int, default=0, help="added to each sample's seed for the random order and noise")
    p.add_argument("--output", default=None, help="output folder URL (see above)")
    args = p.parse_args(argv)
    legacy = [f for f in args.fill if f in MEANS]  # --fill spec|train before --fill named the imputation
    if legacy:
        args.mean = legacy[-1]
        args.fill = list(dict.fromkeys("mean" if f in MEANS else f for f in args.fill))
    return args


# --------------------------------------------------------------------------- Ray task


def perturb_shard(payload: dict[str, Any], x: Any, maps: np.ndarray | None, targets: np.ndarray | None,
                  method: Any, sample_ids: list[str], fractions: list[float], fill: list[float], reduction: str,
                  seed: int, ranks: Sequence[str] = ("abs",), fills: Sequence[str] = ("mean",),
                  noise: float = 0.01) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
    """Per-image (drops, predicted classes), each [n, F], for one method's shard, keyed by
    (fill, rank, order) over ``fills`` x ``ranks`` x (morf, lerf); keyed (fill, "-", "random") when
    ``method`` and ``maps`` are None. Maps are computed here when only ``method`` is given."""
    import torch

    from attribution.evaluation import perturbation_scores
    from attribution.base import sample_seeds
    from jobs.evaluation.payload import compute_maps, rebuild_model

    torch.set_num_threads(1)
    model = rebuild_model(payload)
    target = None if targets is None else torch.tensor(np.array(targets))
    seeds = [s + seed for s in sample_seeds(None, sample_ids, hash="crc32")]  # the seeds its results were made with

    def scores(maps_t: Any, order: str, how: str) -> tuple[np.ndarray, np.ndarray]:
        out = perturbation_scores(model, x, maps_t, fractions, fill, order, target, seeds, how, noise)
        return out.drops.numpy(), out.predicted.numpy()

    if maps is None and method is None:
        return {(how, NO_RANK, RANDOM): scores(None, RANDOM, how) for how in fills}
    if maps is None:
        maps = compute_maps(method.build(model), x, target, sample_ids, reduction)
    signed = torch.tensor(np.array(maps, dtype=np.float32))
    ranked = {"abs": signed.abs(), "signed": signed}
    return {(how, rank, order): scores(ranked[rank], order, how)
            for how in fills for rank in ranks for order in ("morf", "lerf")}


# --------------------------------------------------------------------------- inputs


def stored_inputs(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Maps, targets and ids from a jobs.attribute dataset, plus where its images and model live."""
    from jobs.evaluation.inputs import stored_config
    from jobs.evaluation.subsets import stratified_indices
    from storage.io.fs import StorageNotFound, join
    from storage.maps.reader import read_maps, read_run
    from storage.maps.tables import EVAL_DIR

    try:
        run = read_run(args.maps, options)
    except StorageNotFound:
        raise JobError(f"--maps {args.maps}: no map dataset there (no run.json); write one with "
                       f"`python -m jobs.attribute --output {args.maps}` or leave --maps out") from None
    config, stored_specs = stored_config(run, args.maps)
    stored = [m.label for m in stored_specs]
    methods = args.methods.split() if args.methods else stored
    if not methods:
        raise JobError(f"--maps {args.maps}: the map dataset holds no methods; finish its jobs.attribute run first")
    unknown = [m for m in methods if m not in stored]
    if unknown:
        raise JobError(f"--methods {' '.join(unknown)}: not in the map dataset {args.maps}, "
                       f"which holds {', '.join(stored) or 'no methods'}")
    frames = {m: read_maps(args.maps, m, options, columns=["sample_id", "label", "target", "map"])
              for m in methods}
    common = set.intersection(*(set(f.sample_id) for f in frames.values()))
    first = frames[methods[0]].drop_duplicates("sample_id")
    first = first[first.sample_id.isin(common)]
    # A seeded, class-stratified subset (jobs.evaluation.subsets): the first N of a class-sorted source is one class.
    ids = [first.sample_id.iloc[i] for i in stratified_indices(first["label"].to_numpy(), args.limit)]
    total = len(first)
    if not ids:
        raise JobError(f"--maps {args.maps}: no sample has a committed map of every method "
                       f"({', '.join(methods)}); finish the jobs.attribute run first")
    indexed = {m: f.drop_duplicates("sample_id").set_index("sample_id").loc[ids] for m, f in frames.items()}
    return {"source": args.source or config.get("source"), "split": args.split or config.get("split", "test"),
            "checkpoint": args.checkpoint or config.get("checkpoint"), "methods": methods, "ids": ids,
            "maps": {m: np.stack(f["map"].to_numpy()).astype(np.float32) for m, f in indexed.items()},
            "targets": {m: f["target"].to_numpy().astype(np.int64) for m, f in indexed.items()}, "total": total,
            "output": args.output or join(args.maps, EVAL_DIR, "perturbation")}


def run(args: argparse.Namespace) -> int:
    from jobs.evaluation.inputs import fill_value, load_samples
    from jobs.evaluation.payload import model_payload
    from jobs.evaluation.subsets import announce, subset_record
    from jobs.evaluation.units import UnitStore
    from jobs.runtime.runner import Runner
    from models.preprocess import preprocess
    from storage.checkpoints import load_checkpoint
    from storage.io.fs import redact_url
    from storage.io.outputs import OutputKind, check_apart, check_output
    from storage.sources import model_policy, open_source, source_location

    start = time.perf_counter()
    options = storage_options_from(args.storage_options)
    check_in_process(args)
    if args.maps:
        inputs = stored_inputs(args, options)
        specs = None
    else:
        specs = {spec.label: spec for spec in parse_method_specs(args.methods or DEFAULT_METHODS)}
        inputs = {"source": args.source or "fashion-mnist", "split": args.split or "test",
                  "checkpoint": args.checkpoint, "methods": list(specs), "ids": None,
                  "output": args.output or DEFAULT_OUTPUT}
    # Before anything is written or computed: the output is this job's own, apart from the images.
    check_output(inputs["output"], OutputKind("jobs.perturb", OUTPUT_NAMES), options)
    check_apart(inputs["output"], {"--source": source_location(inputs["source"])})
    checkpoint = checkpoint_or_default(inputs["checkpoint"])
    model, spec = load_checkpoint(checkpoint, options, trust_code=trust_of(args))
    if specs is not None:
        build_methods(model, list(specs.values()))  # bad parameters fail here, before any scheduling
    source = open_source(inputs["source"], split=inputs["split"], storage_options=options,
                         policy=model_policy(source_policy_of(args), spec))  # decoded as the attribute job's workers
    images, labels, ids = load_samples(source, args.limit or DEFAULT_LIMIT, inputs["ids"], spec=spec)
    limit = args.limit if inputs["ids"] is not None else args.limit or DEFAULT_LIMIT
    subset = subset_record(labels, spec.num_classes, inputs.get("total") or len(source.list()), limit)
    announce(subset)
    inputs["subset"] = subset
    keep = None
    if inputs["ids"] is not None and len(ids) != len(inputs["ids"]):  # unreadable images: keep rows aligned
        position = {s: i for i, s in enumerate(inputs["ids"])}
        keep = [position[s] for s in ids]
    x = preprocess(spec, images)
    fill = fill_value(args.mean, spec, inputs["source"], options, policy=source_policy_of(args))
    methods = inputs["methods"]
    print(f"{len(ids)} samples from {redact_url(source.url)} ({inputs['split']}), methods: {', '.join(methods)}; "
          f"{len(args.fractions)} fractions, fill {', '.join(args.fill)} (mean {[round(v, 4) for v in fill]}, "
          f"--mean {args.mean}), ranking {', '.join(args.rank)}")

    units = plan_units(ids, args.shard_size, methods)
    store = UnitStore(inputs["output"], options, "jobs.perturb",
                      unit_settings(args, inputs, specs, model, fill))
    store.bind()  # before anything is computed: units of another configuration are never mixed in
    stored = store.load_done([u[0] for u in units])
    runner = Runner("perturb", "task", [u[0] for u in units], stored, no_bar=args.no_progress,
                    in_process=args.in_process)
    print(f"{runner.plan_line()} -> {redact_url(inputs['output'])}")
    results: dict[tuple[str, str, str, str], dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for key, label, lo, _hi in units:
        if key in stored:
            add_unit(results, label, lo, stored[key])
    if runner.todo:
        runner.start(args.ray_address)
        task = runner.remote(perturb_shard, num_cpus=1)
        payload = runner.put(model_payload(model, spec, trust_of(args)))
        x_refs: dict[int, Any] = {}

        def submit(unit: tuple[str, str, int, int]) -> Any:
            _key, label, lo, hi = unit
            if lo not in x_refs:
                x_refs[lo] = runner.put(x[lo:hi])
            rows = slice(lo, hi) if keep is None else keep[lo:hi]
            if label == RANDOM:  # the random order explains no class: it scores the predicted class
                maps, targets, method = None, None, None
            elif specs is None:
                maps, targets, method = inputs["maps"][label][rows], inputs["targets"][label][rows], None
            else:
                maps, targets, method = None, None, specs[label]
            return task.remote(payload, x_refs[lo], maps, targets, method, ids[lo:hi], args.fractions, fill,
                               args.reduction, args.seed, args.rank, args.fill, args.noise)

        def commit(unit: tuple[str, str, int, int], value: dict) -> None:
            arrays = unit_arrays(value)
            store.put(unit[0], arrays)
            add_unit(results, unit[1], unit[2], arrays)

        runner.run_tasks(units, lambda u: u[0], submit, commit)
        runner.stop_if_failed()
    table = summarize(results, args.fractions, [*methods, RANDOM], np.asarray(labels))
    outputs = write_outputs(inputs["output"], options, table, args, fill, checkpoint, inputs, len(ids))
    print_summary(table, args.fractions, outputs, time.perf_counter() - start)
    return 0


# --------------------------------------------------------------------------- units


def plan_units(ids: list[str], shard_size: int, methods: Sequence[str]) -> list[tuple[str, str, int, int]]:
    """(key, method, start, stop) of every unit: each method's shards, then the random order's; a key
    names the method, the shard's first row and its samples."""
    from jobs.evaluation.units import chunks, samples_digest, unit_key

    return [(unit_key(RANDOM_UNIT if label == RANDOM else label, f"{lo:06d}", samples_digest(ids[lo:hi])), label,
             lo, hi) for lo, hi in chunks(len(ids), shard_size) for label in [*methods, RANDOM]]


#: The random order's units are named apart from any method label.
RANDOM_UNIT = "random-order"


def unit_settings(args: argparse.Namespace, inputs: dict[str, Any], specs: dict[str, Any] | None, model: Any,
                  fill: list[float]) -> dict[str, Any]:
    """What determines a unit's curves but its samples (in its key): jobs.evaluation.units binds the output to it."""
    from jobs.evaluation.units import model_sha256
    from storage.io.fs import redact_url

    methods = {label: "stored maps" for label in inputs["methods"]} if specs is None else \
        {label: {"name": s.name, "params": s.params} for label, s in specs.items()}
    return {"maps": redact_url(args.maps) if args.maps else None, "source": redact_url(inputs["source"]),
            "split": inputs["split"], "model_sha256": model_sha256(model), "fractions": args.fractions,
            "fill": args.fill, "mean": fill,
            "noise": args.noise, "rank": args.rank, "seed": args.seed,
            "reduction": args.reduction if specs is not None else None, "methods": methods}


def unit_arrays(value: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """A task's result as a unit file's arrays: ``fill|rank|order|drops`` and ``...|predicted``."""
    arrays = {}
    for (how, rank, order), (drops, predicted) in value.items():
        arrays[f"{how}|{rank}|{order}|drops"], arrays[f"{how}|{rank}|{order}|predicted"] = drops, predicted
    return arrays


def add_unit(results: dict, label: str, lo: int, arrays: dict[str, np.ndarray]) -> None:
    """Put a unit's arrays into ``results`` (keyed (method, fill, rank, order), then by first row)."""
    for name in arrays:
        how, rank, order, what = name.split("|")
        if what == "drops":
            predicted = arrays[f"{how}|{rank}|{order}|predicted"]
            results.setdefault((label, how, rank, order), {})[lo] = (arrays[name], predicted)


# --------------------------------------------------------------------------- outputs


def write_outputs(output: str, options: dict[str, Any], table: Any, args: argparse.Namespace, fill: list[float],
                  checkpoint: str, inputs: dict[str, Any], n: int) -> list[str]:
    from jobs.evaluation.outputs import write_file, write_table
    from jobs.reporting.plots import perturbation_curves
    from storage.io.fs import redact_url

    auc_table = areas(table, args.fractions)
    summary = {"config": {"maps": redact_url(args.maps) if args.maps else None, "source": redact_url(inputs["source"]),
                          "split": inputs["split"], "checkpoint": redact_url(checkpoint), "methods": inputs["methods"],
                          "fractions": args.fractions,
                          "fill": args.fill, "mean": fill, "mean_from": args.mean, "noise": args.noise,
                          "rank": args.rank, "seed": args.seed, "samples": n, "subset": inputs.get("subset")},
               "areas": auc_table.to_dict(orient="records"), "notes": curve_notes(table)}
    paths = write_table(output, "perturbation", table, options)
    paths += write_table(output, "auc", auc_table, options)
    paths.append(write_file(output, "auc.json", (json.dumps(summary, indent=2) + "\n").encode(), options))
    paths.append(write_file(output, "perturbation.png", perturbation_curves(table, summary["notes"]), options))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.perturb", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
