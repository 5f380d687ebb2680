"""Compute attribution maps for a whole dataset on a Ray cluster, exactly once, resumably.

    python -m jobs.attribute                     # Fashion-MNIST test split, the shipped ResNet-8
    python -m jobs.attribute --source s3://bucket/imagenet-val --checkpoint s3://bucket/r50.pt \\
        --output s3://bucket/maps/r50 --methods "pathway:percentile=70 gradient" --workers 8
    ray job submit --working-dir . -- python -m jobs.attribute ...

Reads top to bottom like a Ray batch-inference job (:func:`attribute`):

1. open the model, the methods and the source (:func:`open_run`; every refusal happens here) and
   list the source (cheap: no decoding; ``workers.shard_source.ShardSource``);
2. plan shards once, stored under the output, and append shards for new samples only
   (``jobs.mapping.planning.plan_run``, which also starts the sink: ``storage.maps.sink.MapSink``);
3. skip shards whose commit record exists;
4. run the shards: ``run_shards`` (``jobs.mapping.actor_pool``) maps ``ShardAttributor`` over them on
   a Ray Data actor pool; each actor holds one model replica on one device and turns a shard into
   committed Parquet + zarr output (read -> predict -> sink write: ``workers.attributor``). With
   ``--in-process``, one replica in this process does the same, without Ray (``jobs.mapping.in_process``);
5. commit the sink (commit records indexed, zarr trimmed and consolidated), then write run.json
   (``jobs.mapping.record``) and the example PNG (``jobs.mapping.examples``);
6. a summary. Exit status 0 means every planned shard is committed for every method.

Labels are stored as the model's class indices where the source's class names match the model's
(storage.sources.classes); files under the source that are not samples are counted and listed in
the summary and run.json. run.json always ends "complete", "incomplete", "failed" or "interrupted"
(Ctrl-C or SIGTERM: jobs.runtime.stopping), with the reason; "running" is left only by a driver that was killed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobs.runtime.cli import (DEFAULT_CHECKPOINT, JobError, check_in_process, checkpoint_or_default, job_parser,
                              positive_int, ray_flags, reduction, run_main, source_flags, source_format,
                              source_format_help, source_policy_of, storage_options_from, trust_flags, trust_of,
                              worker_flags)
from jobs.mapping.methods import build_methods, parse_method_specs

DEFAULT_OUTPUT = "outputs/maps/fashion-mnist"
DEFAULT_METHODS = "pathway gradient"


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


def known_format(config: dict[str, Any] | None, args: argparse.Namespace) -> str | None:
    """The format an earlier run of this output found for the same source and split: a rerun need
    not detect it again (detection lists the source's first folders, requests on S3)."""
    from storage.io.fs import redact_url

    config = config or {}  # run.json stores the source redacted: compare like with like
    same = redact_url(config.get("source") or "") == redact_url(args.source) and config.get("split") == args.split
    return config.get("source_format") if same else None


def run(args: argparse.Namespace) -> int:
    """The job; run.json ends "complete", "incomplete" or "failed" with the reason, whatever happens."""
    from jobs.mapping.record import carried_forward, failed
    from storage.io.lease import Lease, LeaseLost
    from storage.io.outputs import check_apart, check_output
    from storage.maps.manifest import now
    from storage.maps.sink import MapSink
    from storage.maps.versions import MAP_DATASET, check_format
    from storage.sources import source_location

    options = storage_options_from(args.storage_options)
    # Refused before anything is written (no lease, no run.json, no folder): bad method labels, an
    # output holding what this job does not write (/, a home folder), an output inside the source.
    parse_method_specs(args.methods)
    check_in_process(args, "one model replica")
    check_output(args.output, MAP_DATASET, options)
    check_apart(args.output, {"--source": source_location(args.source)})
    sink = MapSink(args.output, options)
    prior = check_format(sink.where)  # an output of another format is refused before anything is written
    if args.dry_run:  # reads only (jobs.mapping.preview): no lease, no run.json, no plan, no zarr
        return attribute(args, options, sink, carried_forward(prior, now()))
    with Lease(sink.where, purpose="jobs.attribute") as lease:  # one driver per output, failures recorded under it
        record = carried_forward(prior, now())
        try:
            return attribute(args, options, sink, record, lease)
        except BaseException as err:
            if not isinstance(err, LeaseLost):  # a taken-over output is the other driver's to record
                sink.fail(failed(record, err, prior, args))
            raise


@dataclass(frozen=True)
class Opened:
    """What step 1 opened: the model's spec and methods, the source, its labels, the job's config, and
    the output's binding (the fingerprint to keep, and the method labels this run adds)."""

    spec: Any
    params: dict[str, dict[str, Any]]
    details: dict[str, list[str]]  # each method's declared details (map_checks)
    source: Any
    labels: Any
    config: Any
    bound: dict[str, Any]
    added: list[str]


def open_run(args: argparse.Namespace, options: dict[str, Any], record: dict[str, Any]) -> Opened:
    """Load the model, build the methods, open the source and match its labels, and check the output's
    binding: every way the run can be refused fails here, before any scheduling or writing."""
    from jobs.mapping.record import check, fingerprint
    from storage.checkpoints import load_checkpoint_with_digest
    from storage.io.fs import redact_url
    from storage.maps.tables import FORMAT_VERSION
    from storage.sources import match_labels, open_source
    from workers.tasks import JobConfig

    specs = parse_method_specs(args.methods)
    checkpoint = checkpoint_or_default(args.checkpoint)
    model, spec, checkpoint_sha256 = load_checkpoint_with_digest(checkpoint, options, trust_code=trust_of(args))
    built = build_methods(model, specs)
    policy = source_policy_of(args)
    source = open_source(args.source, split=args.split, storage_options=options,
                         kind=args.source_format or known_format(record.get("config"), args), policy=policy)
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
    params = {label: method.params for label, method in built.items()}
    # Bound to its configuration: a run that would mix maps of two configurations is refused here,
    # before it writes anything; a new method label joins the output.
    bound, added = check(record.get("fingerprint"), fingerprint(config, spec, checkpoint_sha256, params, FORMAT_VERSION),
                         redact_url(args.output))
    return Opened(spec, params, {label: list(method.detail_schema) for label, method in built.items()}, source,
                  labels, config, bound, added)


def attribute(args: argparse.Namespace, options: dict[str, Any], sink: Any, run_record: dict[str, Any],
              lease: Any = None) -> int:
    """Open the source, plan, skip what is committed, run the shards, commit the sink, summarize."""
    from jobs.mapping import record
    from jobs.mapping.examples import examples_or_warning, kept_examples
    from jobs.mapping.map_checks import map_quality, quality_lines
    from jobs.mapping.planning import plan_run
    from storage.io.fs import redact_text, redact_url
    from storage.maps.manifest import now
    from storage.maps.plan import listed_samples
    from workers.shard_source import ShardSource

    started, start_clock = now(), time.perf_counter()
    job = open_run(args, options, run_record)  # 1. the model, the methods and the source; refusals
    config, source, spec = job.config, job.source, job.spec
    shards = ShardSource(source, sink.where)
    if args.dry_run:
        from jobs.mapping.preview import print_plan

        return print_plan(args, sink, shards, config, job.labels, job.added if run_record.get("fingerprint") else
                          config.labels, spec.input_size)
    if run_record.get("fingerprint") and job.added:
        print(f"adding {', '.join(job.added)} to {redact_url(args.output)} (its other methods stay as they are)")
    # Row-addressable sources are planned as row ranges from their files' footers or headers (nothing
    # per sample, and only as far as --limit needs); the others are listed sample by sample.
    listing = shards.listing(args.limit)
    warnings = [redact_text(w) for w in (job.labels.warning,) if w]
    record.started(run_record, bound=job.bound, config=config, params=job.params, spec=spec, labels=job.labels,
                   source=source, samples=listed_samples(listing), warnings=warnings, started_at=started)
    sink.write_run(run_record)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    published = sink.repair()  # tables of shards an earlier attempt committed but did not publish
    if published:
        print(f"published {len(published)} committed tables an interrupted run left in _pending/")
    # 2. plan (stored under the output, extended by new samples) and 3. skip what is committed
    planned = plan_run(shards, sink, listing, args.shard_size, config.labels, spec.input_size,
                       listing_complete=not args.limit, recompute_changed=args.recompute_changed)
    report_plan(planned, run_record, config.labels)
    print(f"{source.kind} source {redact_url(source.url)}; images {run_record['preprocessing']['geometry']}; "
          f"labels: {job.labels.describe}")

    results: list[dict] = []
    if planned.tasks and args.in_process:  # 4. the shards in this process, on one replica
        from jobs.mapping.in_process import run_shards_here

        results = run_shards_here(planned.tasks, config, args, sink.store)
    elif planned.tasks:  # 4. the shards on a Ray Data actor pool
        from jobs.runtime.cluster import check_workers_import, check_workers_reach, start_ray

        start_ray(args.ray_address)
        check_workers_import(spec.arch, config.trust_code)
        check_workers_reach([source.url, config.checkpoint, args.output], options)
        from jobs.mapping.actor_pool import run_shards

        results = run_shards(planned.tasks, config, args, sink.store)

    if lease is not None:
        lease.check()  # another driver took the output over: it finishes it, this one stops here
    # 5. commit the sink; what planning read is still true when nothing ran (a no-op rerun)
    committed = sink.commit(planned.plan, config.labels, None if planned.tasks else planned.committed)
    missing = {name: [s.shard_id for s in planned.plan.shards if s.shard_id not in committed[name]]
               for name in config.labels}
    samples = sum(r["n_samples"] for name in config.labels for r in committed[name].values())
    errors = sum(r["n_errors"] for name in config.labels for r in committed[name].values())
    seconds = time.perf_counter() - start_clock
    complete = not any(missing.values())
    pngs = []
    if complete and planned.plan.shards:
        pngs = (kept_examples(sink, run_record, config.labels) if not planned.tasks else []) or \
            examples_or_warning(args.output, options, source, config.labels, spec,
                                planned.plan.shards[0].shard_id, run_record)
    kinds = errors_by_kind(args.output, options, config.labels[0]) if errors else {}
    quality = map_quality(args.output, options, {label: job.details[label] for label in config.labels}
                          ) if samples else {}  # degenerate maps, Grad-CAM layers
    record.finished(run_record, methods=config.labels, missing=missing, maps=samples, errors=errors, seconds=seconds,
                    errors_by_kind=kinds, examples=pngs, quality=quality)
    if lease is not None:
        lease.check()
    sink.write_run(run_record)
    # 6. the summary
    print_summary(results, samples, errors, seconds, redact_url(args.output), pngs, missing, args.storage_options)
    for line in quality_lines(quality):
        print(line)
    for warning in quality.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if kinds:
        print(f"error rows of {config.labels[0]} by kind: {', '.join(f'{k} {n}' for k, n in kinds.items())} "
              f"(storage.read_errors({redact_url(args.output)!r}) has each reason)")
    print_skipped(source.skipped(), redact_url(source.url))
    return 0 if complete else 1


def report_plan(planned: Any, run_record: dict[str, Any], methods: Sequence[str]) -> None:
    """Say what the plan holds and what this run does; record changed source files (and warn where
    their shards are kept)."""
    from jobs.mapping.record import warn
    from storage.io.fs import redact_text

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
            warn(run_record, warning)
    print(f"{planned.listed} samples in {len(planned.plan.shards)} shards ({planned.new_shards} new); "
          f"{planned.committed_shards} already committed, {len(planned.tasks)} to do; "
          f"methods: {', '.join(methods)}")


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
