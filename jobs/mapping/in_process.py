"""The pending shards of a run in the driver's own process (``jobs.attribute --in-process``): no Ray.

For a run that needs no cluster: a few thousand images on a laptop, a notebook, a debugger (a
breakpoint in a method stops the job itself, not an actor). Starting a local Ray and an actor costs
seconds of CPU before the first map (benchmarks/RESULTS.md); this run costs neither.

The shards go through the same :class:`workers.attributor.ShardAttributor` as on the actor pool
(built from the same config dict, with the same seams: ShardSource -> Predictor -> MapSink and the
same commit records), so the output holds the same bytes and a rerun either way resumes the other's.
They also go through the same job runner: its progress, retry policy and failure line. A shard
that failed transiently runs again, up to the runner's retries, after a backoff like Ray Data's;
any other failure stops the job in one line.

Tested by tests/jobs/mapping/test_in_process.py.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

#: Seconds before a shard that failed transiently runs again, doubled per try and times 1-2 at
#: random: Ray Data's backoff for the actor pool's retries (jobs.mapping.actor_pool).
BACKOFF_SECONDS = 2.0


def run_shards_here(tasks: Sequence[Any], config: Any, args: argparse.Namespace, store: Any = None) -> list[dict]:
    """Process the pending shards on one model replica in this process, through the job runner;
    returns one summary per finished shard. When a shard fails, the job stops with a line saying
    how many of the shards are committed and why."""
    from jobs.mapping.actor_pool import shard_counts, shard_runner
    from jobs.runtime.cluster import plan_workers
    from jobs.runtime.tasks import HereTasks
    from workers.attributor import ShardAttributor, ShardFailed
    from workers.tasks import block_rows

    results: list[dict] = []
    runner = shard_runner(tasks, args, store, results)
    sizing = plan_workers(HereTasks().resources(), args.device, 1)  # one replica, every CPU its thread
    worker = ShardAttributor(config.to_dict(), threads=sizing.threads)
    try:
        rows = block_rows(tasks, len(tasks))  # a row per shard: a retry runs that shard again, no more
        runner.run_rows(shard_results(worker, rows, runner.retries), shard_counts, results.append,
                        failures=(ShardFailed,))
    finally:
        worker.close()
    runner.stop_if_failed()
    return results


def shard_results(worker: Any, rows: Sequence[dict], retries: int) -> Iterator[dict]:
    """The summary rows of ``worker`` (a ShardAttributor) over block ``rows``, each given as the batch
    of one row that Ray Data would hand it; a row that fails transiently runs again, ``retries``
    times at most, before its failure stops the rows."""
    import numpy as np

    from workers.attributor import TransientShardFailure

    for row in rows:
        batch = {key: np.array([value]) for key, value in row.items()}
        for attempt in range(retries + 1):
            try:
                out = worker(batch)
                break
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the shard in hand ends and commits before the
                worker.close()  # stop line counts what is kept
                raise
            except TransientShardFailure:
                if attempt == retries:
                    raise
                time.sleep(BACKOFF_SECONDS * 2 ** attempt * (1 + random.random()))
        yield from (dict(zip(out, values)) for values in zip(*out.values()))
