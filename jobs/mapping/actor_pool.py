"""The pending shards of a run on a Ray Data actor pool: one model replica per actor.

``run_shards`` is step 4 of :mod:`jobs.attribute`: ``from_items(blocks).map_batches(ShardAttributor,
compute=ActorPoolStrategy(...))``, its result rows consumed by the job runner (jobs.runtime.runner: the
progress, the retry policy, the failure line every job shares); transient failures are retried by
Ray Data a bounded number of times, and any other failure stops the job in one line. A block is
one row naming a plan segment and runs of shard indices (``workers.tasks.block_rows``): the actor
reads those shards' samples from the plan, so what the driver puts into Ray is at most
``MAX_TASK_BLOCKS`` short rows (plus one per segment a block crosses), whatever the shards hold.

Tested by tests/jobs/test_attribute_faults.py and tests/jobs/runtime/test_runner.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

#: Ray Data blocks the tasks are cut into, at most. ``from_items`` has a cost per block before
#: anything runs (measured in benchmarks/RESULTS.md, "Scale": 20 k one-task blocks), and each block
#: is one actor task, so up to this many tasks get one block each (the finest balancing and
#: retries), and more share blocks. A retried block skips the shards it already committed.
MAX_TASK_BLOCKS = 1024


def task_blocks(tasks: int) -> int:
    """The blocks ``tasks`` shard tasks are cut into."""
    return max(1, min(tasks, MAX_TASK_BLOCKS))


def retry_transient_shards(context: Any, retries: int) -> None:
    """Have Ray Data run a shard again, ``retries`` times at most, when it failed because the store kept
    failing transiently past each request's retry budget (the worker raises TransientShardFailure).

    Ray 2.60 offers two ways. ``DataContext.actor_task_retry_on_errors`` hands the exception classes
    to Ray Core as ``retry_exceptions``; Ray Data sets ``max_task_retries=-1`` on its actors, so those
    retries are unbounded unless ``max_task_retries`` is set, which would also cap the retries of
    shards whose actor died (a lost worker or node must stay recoverable however often it happens).
    ``retried_map_errors`` / ``max_map_retries`` instead retry the map task inside its actor with
    exponential backoff (2, 4, 8 s... times a random factor), bounded on their own, for exceptions
    whose "Class: message" text matches: only TransientShardFailure does, so a permanent failure
    (access denied, a missing bucket, a bug) still stops the job at once. A retried shard rewrites
    the same bytes, so retrying one that got halfway is safe.
    """
    from workers.attributor import TransientShardFailure

    context.retried_map_errors = [f"{TransientShardFailure.__name__}: shard "]
    context.max_map_retries = retries


def run_shards(tasks: Sequence[Any], config: Any, args: argparse.Namespace, store: Any = None) -> list[dict]:
    """Process the pending shards on an actor pool through the job runner (jobs.runtime.runner: its
    progress, retry policy and failure line); returns one summary per finished shard. When a shard
    fails, the job stops with a line saying how many of the shards are committed (read from ``store``:
    Ray Data hands results back later than shards commit) and why."""
    import gc

    import ray

    from jobs.runtime.cluster import size_workers, worker_options
    from workers.attributor import ShardAttributor
    from workers.tasks import block_rows

    results: list[dict] = []
    runner = shard_runner(tasks, args, store, results)
    rows = block_rows(tasks, task_blocks(len(tasks)))  # a few short rows per block; workers read the plan
    sizing = size_workers(args.device, args.workers, units=len(rows))  # no worker without a block to run
    retry_transient_shards(ray.data.DataContext.get_current(), runner.retries)
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardAttributor,
        fn_constructor_kwargs={"config": config.to_dict(), "threads": sizing.threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=sizing.workers),
        num_gpus=sizing.gpus,
        num_cpus=sizing.cpus,
        **worker_options(),
    )  # Ray Data restarts dead actors and retries their shards by default (and transient failures, above)
    runner.run_rows(dataset.iter_rows(), shard_counts, results.append)
    if runner.failures:
        del dataset
        gc.collect()  # the failed execution's frames hold its actor pool, and the pool its CPUs and GPUs
        runner.stop_if_failed()
    return results


def shard_runner(tasks: Sequence[Any], args: argparse.Namespace, store: Any, results: list[dict]) -> Any:
    """The job runner of a run's pending shards, on the actor pool or in-process (jobs.mapping.in_process):
    progress in shards and samples, and a count of what is committed read from ``store`` (else the
    ``results`` so far)."""
    from jobs.runtime.runner import Runner

    return Runner("attribute", "shard", [t.shard_id for t in tasks], no_bar=args.no_progress,
                  samples_total=sum(t.samples for t in tasks),
                  committed=lambda: committed_tasks(store, tasks, len(results)))


def shard_counts(row: dict) -> tuple[int, int]:
    """A shard's summary row as the runner counts it: (samples, errors)."""
    return int(row["samples"]), int(row["errors"])


def committed_tasks(store: Any, tasks: Sequence[Any], fallback: int) -> int:
    """How many of ``tasks`` have every method committed, or ``fallback`` where the store cannot say."""
    from storage.io.fs import StorageError

    if store is None:
        return fallback
    try:
        committed = {name: store.committed(name) for name in {m for task in tasks for m in task.methods}}
    except (StorageError, OSError):
        return fallback
    return sum(all(task.shard_id in committed[m] for m in task.methods) for task in tasks)
