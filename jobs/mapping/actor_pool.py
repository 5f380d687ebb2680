"""The pending shards of a run on a Ray Data actor pool: one model replica per actor.

``run_shards`` is step 4 of :mod:`jobs.attribute`: ``from_items(blocks).map_batches(ShardAttributor,
compute=ActorPoolStrategy(...))``, a progress bar over the results, transient failures retried by
Ray Data a bounded number of times, and any other failure stopping the job in one line. A block is
one row naming a plan segment and runs of shard indices (``workers.tasks.block_rows``): the actor
reads those shards' samples from the plan, so what the driver puts into Ray is at most
``MAX_TASK_BLOCKS`` short rows (plus one per segment a block crosses), whatever the shards hold.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from jobs.runtime.cli import JobStopped

#: Ray Data blocks the tasks are cut into, at most. ``from_items`` costs ~1.7 ms per block before
#: anything runs (33 s for 20 k one-task blocks on 2 cores; benchmarks/RESULTS.md), and each block
#: is one actor task, so up to this many tasks get one block each (the finest balancing and
#: retries), and more share blocks. A retried block skips the shards it already committed.
MAX_TASK_BLOCKS = 1024


def task_blocks(tasks: int) -> int:
    """The blocks ``tasks`` shard tasks are cut into."""
    return max(1, min(tasks, MAX_TASK_BLOCKS))


#: Times Ray Data runs a shard again after it failed transiently (``$PATHWAY_SHARD_RETRIES``).
DEFAULT_SHARD_RETRIES = 3


def shard_retries() -> int:
    """How many times a shard that failed transiently is retried (``$PATHWAY_SHARD_RETRIES``, default 3)."""
    try:
        return max(0, int(os.environ.get("PATHWAY_SHARD_RETRIES", DEFAULT_SHARD_RETRIES)))
    except ValueError:
        return DEFAULT_SHARD_RETRIES


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
    """Process the pending shards on an actor pool; returns one summary per finished shard. When a shard
    fails, the job stops with a line saying how many of the shards are committed (read from ``store``:
    Ray Data hands results back later than shards commit) and why."""
    import gc

    import ray

    from jobs.runtime.cluster import size_workers
    from jobs.runtime.progress import Progress
    from jobs.runtime.stopping import as_interrupted, check, requested
    from workers.attributor import ShardAttributor, TransientShardFailure, failure_line
    from workers.tasks import block_rows

    sizing = size_workers(args.device, args.workers)
    retries = shard_retries()
    retry_transient_shards(ray.data.DataContext.get_current(), retries)
    rows = block_rows(tasks, task_blocks(len(tasks)))  # a few short rows per block; workers read the plan
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardAttributor,
        fn_constructor_kwargs={"config": config.to_dict(), "threads": sizing.threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=sizing.workers),
        num_gpus=sizing.gpus,
        num_cpus=sizing.cpus,
    )  # Ray Data restarts dead actors and retries their shards by default (and transient failures, above)
    results = []
    failure = None

    def kept() -> str:
        return f"{committed_tasks(store, tasks, len(results))} of {len(tasks)} shards committed; rerun to resume"

    try:
        with Progress("attribute", len(tasks), "shard", no_bar=args.no_progress,
                      samples_total=sum(t.samples for t in tasks)) as progress:
            for row in dataset.iter_rows():
                results.append(row)
                progress.update(1, samples=int(row["samples"]), errors=int(row["errors"]))
                check()  # a stop that a Ray call swallowed
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (jobs.runtime.stopping): say what is kept, and stop
        raise as_interrupted(err, kept()) from None
    except ray.exceptions.RayError as err:  # a worker failed, not because of a sample: stop, in one line
        if requested():  # the worker stopped with the job (Ctrl-C reaches the whole process group)
            raise as_interrupted(err, kept()) from None
        failure = failure_line(err)
        if f"{TransientShardFailure.__name__}: " in str(err):
            failure += f" (the shard was tried {retries + 1} times)"
    if failure is not None:
        del dataset
        gc.collect()  # the failed execution's frames hold its actor pool, and the pool its CPUs and GPUs
        raise JobStopped(f"the job stopped with {committed_tasks(store, tasks, len(results))} of {len(tasks)} shards "
                         f"committed: {failure}")
    return results


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
