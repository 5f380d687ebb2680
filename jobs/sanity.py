"""Sanity checks (Adebayo et al. 2018): cascading model-parameter randomization, per method, on Ray.

    python -m jobs.sanity                                   # default ResNet-8 on Fashion-MNIST, 32 samples
    python -m jobs.sanity --limit 128 --methods "gradient pt=pathway:scores=taylor" --output s3://bucket/sanity
    python -m jobs.sanity --randomize reset --group module  # Quantus' MPRT: reset_parameters(), module by module
    python -m jobs.sanity --limit 8 --in-process            # a quick look, without Ray

docs/design.md §2. The model's parameterized blocks are randomized from the logits down to the
first layer, one step at a time (``attribution.evaluation.cascade``: for ResNet-8 ``fc,
layer3.0, layer2.0, layer1.0, bn1, conv1``); each step re-draws every weight and bias of
its modules from N(0, ``--std``) (``--randomize normal``, the reference's) or re-initializes
them with their ``reset_parameters()`` (``--randomize reset``, Quantus'), seeded per module
name, so step k holds step k-1's draws. After each step every method's maps of the same
samples, for the class the *original* model predicts, are compared with the original maps:
Spearman of |map|, signed Spearman, SSIM and HOG Pearson
(``attribution.evaluation.similarity.compare``). Step 0 ("original") recomputes the maps
without randomization: 1.0 for a deterministic method.

Spread: the whole cascade is repeated for ``--draws`` randomization seeds (``--seed`` ..
``--seed + draws - 1``, default 3 draws). A step's ``mean`` is the mean over draws of the mean
over samples, ``sd_draws`` the standard deviation of those per-draw means (how much one draw
of random weights moves the curve), ``std`` the spread over samples and draws. Methods whose
curves differ by less than ``sd_draws`` cannot be told apart at that step.

Methods are ``[label=]name[:key=value,...]``. Default: pathway with taylor and with
integrated scores, gradient, gradient x input, integrated gradients, guided backprop and
Grad-CAM. Integration steps are small by default so the CPU default run stays short
(pathway integrated: 4 steps, integrated gradients: 16); raise them on a GPU.

Work: one unit per (method, draw, step) recomputes the maps and compares them with the original
ones (one Ray task per method computes those; Ray passes them by reference), run by the job runner
(jobs.runtime.runner: its progress, retries and failure lines). Each unit's scores are stored at
once as ``units/<key>.npz`` under the output, bound to this configuration (jobs.evaluation.units:
a rerun with other settings is refused, more --draws add units), so a stopped run resumes with
the same command. Outputs, under
``--output`` (default ``outputs/eval/sanity``): ``sanity.parquet|csv`` (method, step,
step_name, metric, mean, sd_draws, std, n: samples with a defined score, draws),
``sanity_draws.parquet|csv`` (the per-draw means), ``sanity.json`` (config, steps and their
modules) and ``sanity.png`` (one panel per metric, one line per method, a band of +- sd over draws).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.runtime.cli import (check_in_process, checkpoint_or_default, job_parser, non_negative_float, positive_int,
                              ray_flags, reduction, run_main, source_flags, source_policy_of, storage_options_from,
                              trust_flags, trust_of)
from jobs.mapping.methods import build_methods, parse_method_specs

DEFAULT_METHODS = ("pathway_taylor=pathway:scores=taylor pathway_integrated=pathway:scores=integrated,steps=4 "
                   "gradient gradient_x_input integrated_gradients:n_steps=16 guided_backprop grad_cam")
DEFAULT_OUTPUT = "outputs/eval/sanity"
#: What this job writes under --output (storage.io.outputs.check_output refuses a folder holding anything else).
OUTPUT_NAMES = ("sanity.*", "sanity_draws.*", "units")
ORIGINAL = "original"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.sanity", __doc__, [ray_flags(), trust_flags(), source_flags()])
    p.add_argument("--checkpoint", default=None, help="model checkpoint URL (default: the shipped ResNet-8, "
                   "models/weights/resnet8-fashion-mnist.pt)")
    p.add_argument("--source", default="fashion-mnist", help="dataset name or URL")
    p.add_argument("--split", default="test", help="the source's split to take the samples from")
    p.add_argument("--limit", type=positive_int, default=32, help="a seeded, class-stratified subset of N samples of the split (jobs.evaluation.subsets)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="space-separated [label=]name[:key=value,...]")
    p.add_argument("--reduction", default="signed_max_abs", type=reduction,
                   help="channel reduction of the maps (as jobs.attribute)")
    p.add_argument("--group", default="block", choices=("block", "module"), help="one step per block or module")
    p.add_argument("--randomize", default="normal", choices=("normal", "reset"),
                   help="normal: redraw from N(0, --std); reset: each module's reset_parameters() (Quantus)")
    p.add_argument("--std", type=non_negative_float, default=0.1,
                   help="std of the re-drawn weights and biases (normal)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw of random weights")
    p.add_argument("--draws", type=positive_int, default=3, help="independent draws of random weights (>= 3 for a spread)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="output folder URL")
    args = p.parse_args(argv)
    return args


# --------------------------------------------------------------------------- Ray tasks


def original_maps(payload: dict[str, Any], x: Any, targets: np.ndarray, method: Any, sample_ids: list[str],
                  reduction: str) -> np.ndarray:
    """One method's maps [N, H, W] on the unrandomized model."""
    import torch

    from jobs.evaluation.payload import compute_maps, rebuild_model

    torch.set_num_threads(1)
    model = rebuild_model(payload)
    return compute_maps(method.build(model), x, torch.tensor(np.array(targets)), sample_ids, reduction)


def step_scores(payload: dict[str, Any], x: Any, targets: np.ndarray, method: Any, sample_ids: list[str],
                reduction: str, steps: list, step: int, std: float, seed: int, originals: np.ndarray,
                mode: str = "normal") -> dict[str, np.ndarray]:
    """Similarity per sample {metric: [N]} of the maps after randomizing steps 0..step-1 (none for step 0)."""
    import torch

    from attribution.evaluation import compare, randomized
    from jobs.evaluation.payload import compute_maps, rebuild_model

    torch.set_num_threads(1)
    model = rebuild_model(payload)
    if step > 0:
        model = randomized(model, step - 1, std=std, seed=seed, steps=steps, mode=mode).eval()
    maps = compute_maps(method.build(model), x, torch.tensor(np.array(targets)), sample_ids, reduction)
    return compare(originals, maps)


# --------------------------------------------------------------------------- driver


def run(args: argparse.Namespace) -> int:
    import torch

    from attribution.evaluation import METRICS, cascade
    from jobs.evaluation.inputs import load_samples
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
    specs = parse_method_specs(args.methods)
    check_output(args.output, OutputKind("jobs.sanity", OUTPUT_NAMES), options)
    check_apart(args.output, {"--source": source_location(args.source)})  # before anything is written or computed
    checkpoint = checkpoint_or_default(args.checkpoint)
    model, spec = load_checkpoint(checkpoint, options, trust_code=trust_of(args))
    model.eval()
    build_methods(model, specs)  # bad parameters fail here, before any scheduling
    source = open_source(args.source, split=args.split, storage_options=options,
                         policy=model_policy(source_policy_of(args), spec))  # decoded as the attribute job's workers
    images, labels, ids = load_samples(source, args.limit, spec=spec)
    subset = subset_record(labels, spec.num_classes, len(source.list()), args.limit, what="samples")
    announce(subset)
    x = preprocess(spec, images)
    with torch.no_grad():
        targets = model(x).argmax(1).numpy()
    steps = [(name, list(modules)) for name, modules in cascade(model, example=x[:1], group=args.group)]
    names = [ORIGINAL] + [name for name, _ in steps]
    how = f"re-drawn from N(0, {args.std})" if args.randomize == "normal" else "reset (reset_parameters)"
    print(f"{len(ids)} samples from {redact_url(source.url)} ({args.split}); {len(specs)} methods x {len(names)} steps "
          f"({', '.join(names)}); weights {how}, {args.draws} draws from seed {args.seed}")

    units = plan_units([m.label for m in specs], args.draws, args.seed, len(names), ids)
    store = UnitStore(args.output, options, "jobs.sanity", unit_settings(args, specs, model, names))
    store.bind()  # before anything is computed: units of another configuration are never mixed in
    stored = store.load_done(list(units))
    runner = Runner("sanity", "step", list(units), stored, no_bar=args.no_progress, in_process=args.in_process)
    print(f"{runner.plan_line()} -> {redact_url(args.output)}")
    scores = {units[key]: arrays for key, arrays in stored.items()}
    if runner.todo:
        runner.start(args.ray_address)
        first, later = runner.remote(original_maps, num_cpus=1), runner.remote(step_scores, num_cpus=1)
        payload, x_ref = runner.put(model_payload(model, spec, trust_of(args))), runner.put(x)
        by_label, originals = {m.label: m for m in specs}, {}

        def submit(key: str) -> Any:
            label, draw, step = units[key]
            method = by_label[label]
            if label not in originals:  # one task per method, only where some of its steps are left
                originals[label] = first.remote(payload, x_ref, targets, method, ids, args.reduction)
            return later.remote(payload, x_ref, targets, method, ids, args.reduction, steps, step, args.std,
                                args.seed + draw, originals[label], args.randomize)

        def commit(key: str, value: dict[str, np.ndarray]) -> None:
            store.put(key, value)
            scores[units[key]] = value

        runner.run_tasks(list(units), lambda key: key, submit, commit)
        runner.stop_if_failed()
    per_draw = draw_means(scores, [m.label for m in specs], names, METRICS, args.draws)
    table = summarize(per_draw)
    paths = write_outputs(args, options, table, per_draw, checkpoint, steps, len(ids), METRICS, subset)
    print_summary(table, names, paths, time.perf_counter() - start)
    return 0


def plan_units(labels: Sequence[str], draws: int, seed: int, steps: int, ids: list[str]
               ) -> dict[str, tuple[str, int, int]]:
    """{key: (method, draw, step)} of every unit. Step 0 randomizes nothing (one draw of it is enough);
    a later step's key names the seed of its random weights, so that more --draws add units; every
    key names the samples."""
    from jobs.evaluation.units import samples_digest, unit_key

    units, samples = {}, samples_digest(ids)
    for label in labels:
        for draw in range(draws):
            for step in range(1 if draw else 0, steps):
                when = ("original",) if step == 0 else (f"seed{seed + draw}", f"step{step}")
                units[unit_key(label, *when, samples)] = (label, draw, step)
    return units


def unit_settings(args: argparse.Namespace, specs: Sequence[Any], model: Any, names: Sequence[str]) -> dict[str, Any]:
    """What determines a unit's scores but its seed and samples (in its key): jobs.evaluation.units binds
    the output to it."""
    from jobs.evaluation.units import model_sha256
    from storage.io.fs import redact_url

    return {"source": redact_url(args.source), "split": args.split, "model_sha256": model_sha256(model),
            "reduction": args.reduction, "group": args.group, "steps": list(names),
            "randomize": args.randomize, "std": args.std,
            "methods": {m.label: {"name": m.name, "params": m.params} for m in specs}}


def draw_means(scores: dict[tuple[str, int, int], dict[str, np.ndarray]], methods: Sequence[str],
               names: Sequence[str], metrics: Sequence[str], draws: int) -> Any:
    """One row per (method, step, metric, draw): the mean, sum of squares and count of the finite
    per-sample scores (NaN scores, from constant maps, are left out). Step 0 has one draw."""
    import pandas as pd

    rows = []
    for label in methods:
        for step, name in enumerate(names):
            for draw in range(draws if step else 1):
                for metric in metrics:
                    values = np.asarray(scores[(label, draw, step)][metric], dtype=np.float64)
                    finite = values[np.isfinite(values)]
                    rows.append({"method": label, "step": step, "step_name": name, "metric": metric, "draw": draw,
                                 "mean": float(finite.mean()) if finite.size else float("nan"),
                                 "sum_sq": float(np.square(finite).sum()), "n": int(finite.size)})
    return pd.DataFrame(rows)


def summarize(per_draw: Any) -> Any:
    """One row per (method, step, metric): mean over draws of the per-draw means, their sd over draws
    (ddof 1; NaN with one draw), the std over every finite per-sample score, n (fewest samples with
    a defined score in one draw) and the number of draws."""
    import pandas as pd

    rows = []
    for (label, step, name, metric), group in per_draw.groupby(["method", "step", "step_name", "metric"], sort=False):
        means, counts = group["mean"].to_numpy(), group["n"].to_numpy()
        total = counts.sum()
        pooled = float(np.sum(means * counts) / total) if total else float("nan")
        spread = float(np.sqrt(max(0.0, group["sum_sq"].sum() / total - pooled ** 2))) if total else float("nan")
        finite = means[np.isfinite(means)]
        rows.append({"method": label, "step": int(step), "step_name": name, "metric": metric,
                     "mean": float(finite.mean()) if finite.size else float("nan"),
                     "sd_draws": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                     "std": spread, "n": int(counts.min()), "draws": int(len(group))})
    return pd.DataFrame(rows)


def write_outputs(args: argparse.Namespace, options: dict[str, Any], table: Any, per_draw: Any, checkpoint: str,
                  steps: list, n: int, metrics: Sequence[str], subset: dict[str, Any] | None = None) -> list[str]:
    from jobs.evaluation.outputs import write_file, write_table
    from jobs.reporting.plots import sanity_curves
    from storage.io.fs import redact_url

    config = {"checkpoint": redact_url(checkpoint), "source": redact_url(args.source), "split": args.split,
              "samples": n, "subset": subset,
              "methods": args.methods, "reduction": args.reduction, "group": args.group,
              "randomize": args.randomize, "std": args.std, "seed": args.seed, "draws": args.draws,
              "steps": [{"step": i + 1, "name": s, "modules": m} for i, (s, m) in enumerate(steps)]}
    paths = write_table(args.output, "sanity", table, options)
    paths += write_table(args.output, "sanity_draws", per_draw.drop(columns="sum_sq"), options)
    paths.append(write_file(args.output, "sanity.json", (json.dumps(config, indent=2) + "\n").encode(), options))
    paths.append(write_file(args.output, "sanity.png", sanity_curves(table, metrics), options))
    return paths


def print_summary(table: Any, names: Sequence[str], paths: list[str], seconds: float) -> None:
    from storage.io.fs import redact_url

    print(f"\nSpearman |map| vs the original maps, mean +- sd over draws ({seconds:.1f} s):")
    rows = table[table.metric == "spearman_abs"]
    print("  " + " " * 20 + " ".join(f"{n[:13]:>13s}" for n in names))
    for method in dict.fromkeys(rows.method):
        mine = rows[rows.method == method].sort_values("step")
        print(f"  {method:20s}" + " ".join(f"{m:6.3f}+-{0.0 if np.isnan(sd) else sd:5.3f}"
                                            for m, sd in zip(mine["mean"], mine["sd_draws"])))
    print("outputs: " + ", ".join(redact_url(p) for p in paths))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.sanity", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
