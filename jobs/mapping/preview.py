"""``jobs.attribute --dry-run``: what a run would do, from reads alone.

The job plans exactly as a run does (the same listing, the same stored plan, the same commit
records: :func:`jobs.mapping.planning.plan_run` with ``dry_run=True``), so the counts it prints are
the ones the run would print, but it writes nothing: no lease, no run.json, no plan segment, no
zarr arrays, no un-commit of changed shards, and it starts no Ray. A refusal the run would make
(another shard size, another configuration, a foreign output) is made here too.

Tested by tests/jobs/test_inspect.py and tests/jobs/mapping/test_planning.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def print_plan(args: argparse.Namespace, sink: Any, shards: Any, config: Any, labels: Any,
               added: Sequence[str], input_size: tuple[int, int]) -> int:
    """Plan the run without writing and print it; exit status 0 (a plan is not a result).
    ``sink``: the output's ``MapSink``; ``shards``: the source's ``ShardSource``."""
    from jobs.mapping.planning import plan_run
    from storage.io.fs import redact_text, redact_url

    output = redact_url(args.output)
    source = shards.source
    listing = shards.listing(args.limit)
    planned = plan_run(shards, sink, listing, args.shard_size, config.labels, input_size,
                       listing_complete=not args.limit, recompute_changed=args.recompute_changed, dry_run=True)
    plan = planned.plan
    print(f"dry run of jobs.attribute: nothing is written to {output} and no Ray is started")
    print(f"source: {source.kind} {redact_url(source.url)}, {planned.listed} samples listed"
          f"{f' (--limit {args.limit})' if args.limit else ''}; labels: {labels.describe}")
    print(f"plan: {plan.samples} samples in {len(plan.shards)} shards of {plan.shard_size} "
          f"({len(plan.shards) - planned.new_shards} planned already, {planned.new_shards} new); "
          f"{planned.committed_shards} committed for every method")
    if planned.changes:
        action = (f"would recompute those {len(planned.recomputed)} shards" if planned.recomputed else
                  "their maps would be kept (rerun with --recompute-changed to recompute them)")
        print(f"source changes: {redact_text(planned.changes.describe())}; {action}")
    for method in config.labels:
        todo = [t for t in planned.tasks if method in t.methods]
        state = "new in this output" if method in added else "in the output"
        print(f"  {method} ({state}): {len(plan.shards) - len(todo)} shards committed, {len(todo)} to do "
              f"({sum(t.samples for t in todo)} samples)")
    pending = sink.where.find("_pending", ".parquet")
    if pending:
        print(f"{len(pending)} tables an interrupted run left in _pending/ would be published or dropped first")
    if planned.tasks:
        where = "in this process, without Ray" if args.in_process else f"{args.workers or 'default'} workers"
        print(f"would run: {len(planned.tasks)} shards ({planned.pending_samples} samples, methods "
              f"{', '.join(config.labels)}) in batches of {config.batch_size}, {where} "
              f"(--device {config.device}), then write run.json and the example maps")
    else:
        print("would run: nothing; every planned shard is committed for every method")
    return 0
