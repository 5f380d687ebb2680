"""Compute attribution maps for a whole dataset on a Ray cluster, exactly once, resumably.

    python -m jobs.attribute                     # Fashion-MNIST test split, the shipped ResNet-8
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

Labels are stored as the model's class indices where the source's class names match the model's
(storage.sources.classes); files under the source that are not samples are counted and listed in
the summary and run.json. run.json always ends "complete", "incomplete", "failed" or "interrupted"
(Ctrl-C or SIGTERM: jobs.runtime.stopping), with the reason; "running" is left only by a driver that was killed.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from jobs.runtime.cli import (DEFAULT_CHECKPOINT, JobError, checkpoint_or_default, job_parser, positive_int, ray_flags,
                      reduction, run_main, source_flags, source_format, source_format_help, source_policy_of,
                      storage_options_from, trust_flags, trust_of, worker_flags)
from jobs.mapping.methods import build_methods, parse_method_specs

DEFAULT_OUTPUT = "outputs/maps/fashion-mnist"
DEFAULT_METHODS = "pathway gradient"
EXAMPLES = 12


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.attribute", __doc__, [ray_flags(), worker_flags("1 on CPUs"), source_flags(),
                                                         trust_flags()])
    p.add_argument("--source", default="fashion-mnist", help="dataset name or URL, in any format --source-format "
                   "names (detected from what the URL holds)")
    p.add_argument("--source-format", default=None, metavar="FORMAT", type=source_format, help=source_format_help())
    p.add_argument("--split", default="test", help="the source's split to map (fixed for an output)")
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint URL (default {DEFAULT_CHECKPOINT}, the shipped ResNet-8)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="map dataset URL (local path or s3://...)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="space-separated [label=]name[:key=value,...], e.g. "
                   "'pathway pathway_integrated=pathway:scores=integrated gradient'")
    p.add_argument("--reduction", default="signed_max_abs", type=reduction, help="channels -> one value per pixel")
    p.add_argument("--target", default="predicted", choices=("predicted", "label"), help="class to explain")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="only the first N samples of the source (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="samples per forward/backward pass on a worker (memory, not results: maps do not depend on it)")
    p.add_argument("--shard-size", type=positive_int, default=512, help="samples per shard (fixed for an output)")
    p.add_argument("--recompute-changed", action="store_true",
                   help="recompute the shards of samples whose source file changed or was deleted since they were "
                        "mapped (without it they are reported and kept)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (samples, shards new / changed / committed, methods, what would run) and "
                        "write nothing: no lease, run.json, plan or zarr, and no Ray")
    return p.parse_args(argv)


def write_examples(output: str, options: dict[str, Any], source: Any, methods: Sequence[str], spec: Any,
                   shard_id: str) -> list[str]:
    """A PNG grid of the first maps of each method over the images as the model saw them, next to the
    outputs; from one committed shard (its records and tables only, whatever the dataset's size)."""
    from jobs.reporting.plots import map_grid
    from storage.io.fs import join, redact_url
    from storage.io.location import Location
    from storage.maps.reader import join_with_source, read_shard
    from storage.maps.tables import EXAMPLES_PATH

    frames = {m: read_shard(output, m, shard_id, options, columns=["sample_id", "target", "map"]).head(EXAMPLES)
              for m in methods}
    first = next(iter(frames.values()))
    if first.empty:
        return []
    joined = join_with_source(first, source, spec)
    names = spec.class_names
    titles = [f"{sid.split('/')[-1]}\n{names[t] if t < len(names) else t}" for sid, t in zip(first.sample_id, first.target)]
    maps = {m: [frame.set_index("sample_id").loc[sid, "map"] for sid in first.sample_id] for m, frame in frames.items()}
    Location(output, options).put(EXAMPLES_PATH, map_grid(list(joined["image"]), maps, titles))
    return [redact_url(join(output, EXAMPLES_PATH))]


def examples_or_warning(output: str, options: dict[str, Any] | None, source: Any, methods: Sequence[str], spec: Any,
                        shard_id: str, run_record: dict[str, Any]) -> list[str]:
    """The example PNG, or a warning (stderr and run.json) when it cannot be drawn: pictures never
    fail a job whose shards are committed (a source file deleted since it was mapped, say)."""
    from storage.io.fs import StorageError, redact_text

    try:
        return write_examples(output, options, source, methods, spec, shard_id)
    except (StorageError, OSError, ValueError, KeyError, TypeError) as err:
        warning = f"no example maps drawn: {' '.join(redact_text(str(err)).split())[:500]}"
        print(f"warning: {warning}", file=sys.stderr)
        run_record.setdefault("warnings", []).append(warning)
        return []


def kept_examples(store: Any, previous_run: dict[str, Any], methods: Sequence[str]) -> list[str]:
    """The example PNG an earlier run drew, when a run that computed nothing can keep it: it drew
    the same methods and the file is still there (one request). Drawing it again would read and
    plot the same first shard, and importing matplotlib and drawing cost most of a no-op rerun
    (1.7 s of 4.4 s on the 10 M-row benchmark; benchmarks/RESULTS.md)."""
    from storage.maps.tables import EXAMPLES_PATH

    pngs = list(previous_run.get("examples") or [])
    if not pngs or list(previous_run.get("examples_methods") or []) != list(methods):
        return []
    return pngs if store.where.exists(EXAMPLES_PATH) else []


def finish_outputs(store: Any, plan: Any, committed: dict[str, dict[str, dict]]) -> None:
    """End of a run: index the commit records (so the next run reads them in one request), trim the
    zarr arrays to the planned rows and consolidate their metadata."""
    from storage.maps.manifest import index_commits

    for name, records in committed.items():
        index_commits(store.where, name, records)
        store.finish_zarr(name, plan.planned_rows)


def known_format(config: dict[str, Any] | None, args: argparse.Namespace) -> str | None:
    """The format an earlier run of this output found for the same source and split: a rerun need
    not detect it again (detection lists the source's first folders, requests on S3)."""
    from storage.io.fs import redact_url

    config = config or {}  # run.json stores the source redacted: compare like with like
    same = redact_url(config.get("source") or "") == redact_url(args.source) and config.get("split") == args.split
    return config.get("source_format") if same else None


#: Files under a source that are not samples, listed in run.json (all are counted).
SKIPPED_LISTED = 1000


def run(args: argparse.Namespace) -> int:
    """The job; run.json ends "complete", "incomplete" or "failed" with the reason, whatever happens."""
    from jobs.mapping.binding import carried_forward
    from storage.io.lease import Lease, LeaseLost
    from storage.maps.manifest import now
    from storage.maps.writer import MapStore
    from storage.io.outputs import MAP_DATASET, check_apart, check_output
    from storage.sources import source_location
    from storage.maps.versions import check_format

    options = storage_options_from(args.storage_options)
    # Refused before anything is written (no lease, no run.json, no folder): bad method labels, an
    # output holding what this job does not write (/, a home folder), an output inside the source.
    parse_method_specs(args.methods)
    check_output(args.output, MAP_DATASET, options)
    check_apart(args.output, {"--source": source_location(args.source)})
    store = MapStore(args.output, options)
    prior = check_format(store.where)  # an output of another format is refused before anything is written
    if args.dry_run:  # reads only (jobs.mapping.preview): no lease, no run.json, no plan, no zarr
        return attribute(args, options, store, carried_forward(prior, now()))
    with Lease(store.where, purpose="jobs.attribute") as lease:  # one driver per output, failures recorded under it
        record = carried_forward(prior, now())
        try:
            return attribute(args, options, store, record, lease)
        except BaseException as err:
            if not isinstance(err, LeaseLost):  # a taken-over output is the other driver's to record
                record_failure(store, record, err, prior, args)
            raise


def record_failure(store: Any, record: dict[str, Any], err: BaseException, prior: dict[str, Any] | None,
                   args: argparse.Namespace | None = None) -> None:
    """Write run.json with status "failed" (or "interrupted") and the reason. A run that failed before it wrote its own
    record (a refused configuration, a missing checkpoint) leaves an existing output's record as it
    was, its attempt added to the history, since the output itself is unchanged. A store that
    refuses the write too is left as it is (the original error is what gets reported)."""
    from jobs.runtime.cli import redacted
    from storage.io.fs import StorageError
    from storage.maps.manifest import now

    from jobs.runtime.stopping import as_interrupted, signal_name

    if isinstance(err, KeyboardInterrupt):  # Ctrl-C or SIGTERM: what was committed is kept, a rerun resumes
        stop = as_interrupted(err, getattr(err, "detail", ""))
        reason = f"interrupted by {signal_name(stop.signum)}" + (f": {stop.detail}" if stop.detail else "")
    else:
        reason = " ".join(redacted(str(err), args).split()) or type(err).__name__  # never a credential in run.json
    failure = {"status": "interrupted" if isinstance(err, KeyboardInterrupt) else "failed", "reason": reason[:2000],
               "failed_at": now()}
    if "attempt" not in record and prior:
        record = {**prior, "history": [*prior.get("history", []), {"started_at": record.get("started_at"), **failure}]}
    else:
        record.update(failure)
    try:
        store.write_run(record)
    except (StorageError, OSError, ValueError, TypeError):
        pass


def attribute(args: argparse.Namespace, options: dict[str, Any], store: Any, run_record: dict[str, Any],
              lease: Any = None) -> int:
    from jobs.mapping import binding
    from jobs.mapping.map_checks import map_quality, quality_lines
    from models.preprocess import describe
    from storage.checkpoints import load_checkpoint_with_digest
    from storage.io.fs import redact_text, redact_url
    from storage.maps.manifest import now
    from storage.maps.plan import listed_samples
    from storage.maps.tables import FORMAT_VERSION
    from storage.sources import match_labels, open_source
    from workers.tasks import JobConfig, plan_shard_tasks, source_listing

    specs = parse_method_specs(args.methods)
    checkpoint = checkpoint_or_default(args.checkpoint)
    started, start_clock = now(), time.perf_counter()
    # Fail before any scheduling when the model, the methods, the source or the output are unusable.
    model, spec, checkpoint_sha256 = load_checkpoint_with_digest(checkpoint, options,
                                                                 trust_code=trust_of(args))
    built = build_methods(model, specs)
    params = {label: method.params for label, method in built.items()}
    policy = source_policy_of(args)
    source = open_source(args.source, split=args.split, storage_options=options,
                         kind=args.source_format or known_format(run_record.get("config"), args), policy=policy)
    labels = match_labels(source.classes, source.label_kind, spec.class_names, source.intrinsic_indices)
    if args.target == "label" and not labels.labels_are_model_classes:
        raise JobError(f"--target label: {redact_url(source.url)} has no labels" if labels.kind == "none" else
                       f"--target label: {labels.warning}; rename the classes to the model's, or use --target predicted")
    config = JobConfig(source=args.source, checkpoint=checkpoint, output=args.output, methods=tuple(specs),
                       split=args.split, batch_size=args.batch_size, reduction=args.reduction, target=args.target,
                       device=args.device, storage_options=options, deterministic=not args.nondeterministic,
                       source_format=source.kind, source_classes=tuple(source.classes), label_map=labels.label_map,
                       allow_paths=policy.allow_paths, max_image_pixels=policy.max_image_pixels,
                       trust_code=trust_of(args))
    # Bound to its configuration: a run that would mix maps of two configurations is refused here,
    # before it writes anything; a new method label joins the output.
    bound, added = binding.check(run_record.get("fingerprint"),
                                 binding.fingerprint(config, spec, checkpoint_sha256, params, FORMAT_VERSION),
                                 redact_url(args.output))
    if args.dry_run:
        from jobs.mapping.preview import print_plan

        return print_plan(args, store, source, config, labels, added if run_record.get("fingerprint") else
                          config.labels, spec.input_size)
    if run_record.get("fingerprint") and added:
        print(f"adding {', '.join(added)} to {redact_url(args.output)} (its other methods stay as they are)")
    # Row-addressable sources are planned as row ranges from their files' footers or headers (nothing
    # per sample, and only as far as --limit needs); the others are listed sample by sample.
    listing = source_listing(store, source, args.limit)
    skipped = source.skipped()
    warnings = [redact_text(w) for w in (labels.warning,) if w]
    run_record.update({"attempt": uuid.uuid4().hex[:12], "fingerprint": bound,
                       "config": binding.merged_config(run_record.get("config"), config.public_dict()),
                       "method_params": {**run_record.get("method_params", {}), **params}, "model": spec.to_dict(),
                       "preprocessing": describe(spec), "labels": labels.to_dict(), "started_at": started,
                       "source": {"url": redact_url(source.url), "format": source.kind,
                                  "label_kind": source.label_kind,
                                  "samples": listed_samples(listing)},
                       "skipped_files": {"count": len(skipped),
                                         "files": [{"path": redact_url(f.path), "reason": redact_text(f.reason)}
                                                   for f in skipped[:SKIPPED_LISTED]]},
                       "warnings": warnings, "status": "running"})
    store.write_run(run_record)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    published = store.repair()  # tables of shards an earlier attempt committed but did not publish
    if published:
        print(f"published {len(published)} committed tables an interrupted run left in _pending/")

    planned = plan_shard_tasks(store, listing, args.shard_size, config.labels, spec.input_size,
                               listing_complete=not args.limit, recompute_changed=args.recompute_changed)
    if planned.changes:
        changes = planned.changes
        run_record["source_changes"] = {"changed": changes.changed, "deleted": changes.deleted,
                                        "examples": list(changes.examples),
                                        "recomputed_shards": list(planned.recomputed)}
        if planned.recomputed:
            print(f"{redact_text(changes.describe())}: recomputing those {len(planned.recomputed)} shards")
        else:
            warning = (f"{redact_text(changes.describe())}; their maps are of the files as they were: rerun with "
                       "--recompute-changed")
            print(f"warning: {warning}", file=sys.stderr)
            run_record.setdefault("warnings", []).append(warning)
    print(f"{planned.listed} samples in {len(planned.plan.shards)} shards ({planned.new_shards} new); "
          f"{planned.committed_shards} already committed, {len(planned.tasks)} to do; "
          f"methods: {', '.join(config.labels)}")
    print(f"{source.kind} source {redact_url(source.url)}; images {run_record['preprocessing']['geometry']}; "
          f"labels: {labels.describe}")

    results: list[dict] = []
    if planned.tasks:
        from jobs.runtime.cluster import check_workers_import, check_workers_reach, start_ray

        start_ray(args.ray_address)
        check_workers_import(spec.arch, config.trust_code)
        check_workers_reach([source.url, checkpoint, args.output], options)
        from jobs.mapping.actor_pool import run_shards

        results = run_shards(planned.tasks, config, args, store)

    if lease is not None:
        lease.check()  # another driver took the output over: it finishes it, this one stops here
    # What planning read is still true when nothing ran (a no-op rerun: on S3 each read lists every record).
    committed = {name: store.committed(name) for name in config.labels} if planned.tasks else planned.committed
    finish_outputs(store, planned.plan, committed)
    missing = {name: [s.shard_id for s in planned.plan.shards if s.shard_id not in committed[name]]
               for name in config.labels}
    samples = sum(r["n_samples"] for name in config.labels for r in committed[name].values())
    errors = sum(r["n_errors"] for name in config.labels for r in committed[name].values())
    seconds = time.perf_counter() - start_clock
    complete = not any(missing.values())
    pngs = []
    if complete and planned.plan.shards:
        pngs = (kept_examples(store, run_record, config.labels) if not planned.tasks else []) or \
            examples_or_warning(args.output, options, source, config.labels, spec,
                                planned.plan.shards[0].shard_id, run_record)
    kinds = errors_by_kind(args.output, options, config.labels[0]) if errors else {}
    quality = map_quality(args.output, options, {label: list(built[label].detail_schema) for label in config.labels}
                          ) if samples else {}  # degenerate maps, Grad-CAM layers
    run_record.update(status="complete" if complete else "incomplete", finished_at=now(), seconds=seconds,
                      maps=samples, errors=errors, errors_by_kind=kinds, examples=pngs,
                      examples_methods=list(config.labels) if pngs else [],
                      degenerate_maps=quality.get("degenerate", {}), grad_cam_layers=quality.get("grad_cam", {}))
    run_record["warnings"] = list(dict.fromkeys([*run_record.get("warnings", []), *quality.get("warnings", [])]))
    if not complete:
        run_record["reason"] = f"{sum(map(len, missing.values()))} (method, shard) pairs not committed; rerun to finish"
    if lease is not None:
        lease.check()
    store.write_run(run_record)
    print_summary(results, samples, errors, seconds, redact_url(args.output), pngs, missing, args.storage_options)
    for line in quality_lines(quality):
        print(line)
    for warning in quality.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if kinds:
        print(f"error rows of {config.labels[0]} by kind: {', '.join(f'{k} {n}' for k, n in kinds.items())} "
              f"(storage.read_errors({redact_url(args.output)!r}) has each reason)")
    print_skipped(skipped, redact_url(source.url))
    return 0 if complete else 1


def print_summary(results: list[dict], samples: int, errors: int, seconds: float, output: str,
                  pngs: list[str], missing: dict[str, list[str]], options_text: str | None = None) -> None:
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
    method = next(iter(missing), "pathway")  # missing holds every method of the run, in order
    from jobs.runtime.hints import read_hint

    print(f"read them with: {read_hint(output, method, options_text)}")


def errors_by_kind(output: str, options: dict[str, Any], method: str) -> dict[str, int]:
    """How many committed error rows of ``method`` each kind (read, decode, preprocess, label, attribution) has."""
    from storage.maps.reader import read_errors

    kinds = read_errors(output, method, options).kind.fillna("unknown")
    return {str(k): int(n) for k, n in kinds.value_counts().sort_index().items()}


def print_skipped(skipped: Sequence[Any], url: str, shown: int = 5) -> None:
    """Files under the source that are not samples: how many, and the first few with why."""
    from storage.io.fs import redact_text, redact_url

    if not skipped:
        return
    print(f"{len(skipped)} files under {url} are not samples (listed in run.json skipped_files):")
    for f in skipped[:shown]:
        print(f"  {redact_url(f.path)}: {redact_text(f.reason)}")
    if len(skipped) > shown:
        print(f"  ... and {len(skipped) - shown} more")


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.attribute", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
