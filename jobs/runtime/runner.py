"""One runner for every job's units of work: attribution shards, perturbation and sanity tasks, ROAR cells.

Every job on Ray schedules its work as *units* with stable keys, and a :class:`Runner` gives them
the same lifecycle, whatever executes them:

- **resume**: the units the output already holds (``done``) are skipped, and the plan line says
  ``N units, K already done, M to compute``;
- **retries**: a unit that failed transiently runs again, :func:`unit_retries` times at most
  (``$PATHWAY_SHARD_RETRIES``, default 3; a job's own flag may override it): a lost worker, or a
  store that kept failing past its request budget (an ``OSError``); anything else is a failure;
- **progress**: one :class:`jobs.runtime.progress.Progress` (the same bar or lines for every job);
- **failures**: each failed unit is one line (``<unit> <key> failed: <why>``) as it fails, and
  :meth:`Runner.stop_if_failed` ends the job with exit 1 and one line, ``the job stopped with K of
  N <unit>s committed: <why>``;
- **stopping**: Ctrl-C and SIGTERM (jobs.runtime.stopping) stop the loop, saying what is kept.

Two backends feed it: :meth:`Runner.run_tasks` runs tasks (the evaluation's units, at most
``max_running`` at once) on Ray, or in this process for a run with ``--in-process``
(jobs.runtime.tasks: the same retries, arguments and thread counts, no Ray imported), and
:meth:`Runner.run_rows` consumes result rows: those of a Ray Data actor pool (attribution, where a
model replica per actor matters; Ray Data retries its blocks under the same policy,
jobs.mapping.actor_pool), or those of the one replica of a run without Ray (``jobs.attribute
--in-process``: jobs.mapping.in_process, which retries a shard itself).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from jobs.runtime.cli import JobStopped

#: Times a unit that failed transiently runs again (``$PATHWAY_SHARD_RETRIES``).
DEFAULT_RETRIES = 3
RETRIES_ENV = "PATHWAY_SHARD_RETRIES"
#: Exceptions of a Ray task that count as transient (beside a lost worker, which Ray always retries):
#: I/O that kept failing past storage.io.retry's budget. A bug or a bad input fails at once.
TRANSIENT = (OSError,)
#: Failures named in the stop line; the rest were each a line of their own.
SHOWN = 3


def unit_retries(override: int | None = None) -> int:
    """How many times a unit that failed transiently is retried: ``override`` (a job's flag) if given,
    else ``$PATHWAY_SHARD_RETRIES`` (default 3)."""
    if override is not None:
        return max(0, int(override))
    try:
        return max(0, int(os.environ.get(RETRIES_ENV, DEFAULT_RETRIES)))
    except ValueError:
        return DEFAULT_RETRIES


def transient(err: BaseException) -> bool:
    """Whether a unit's failure was transient every time it was tried: a shard's TransientShardFailure
    (its text survives Ray's wrapping), or a task's :data:`TRANSIENT` exception."""
    from workers.attributor import TransientShardFailure

    return (isinstance(err, TransientShardFailure) or f"{TransientShardFailure.__name__}: " in str(err)
            or isinstance(getattr(err, "cause", None), TRANSIENT))


class Runner:
    """One job's units: which are left, running them, and saying how it went (see the module docstring).

    ``keys`` are every unit of the job, ``done`` those already committed; ``unit`` names one in
    messages ("shard", "cell"); ``committed`` (optional) counts this run's units committed so far
    from the store, for a backend whose results arrive after their commit (Ray Data); ``in_process``:
    the tasks run in this process (jobs.runtime.tasks.HereTasks), else on Ray."""

    def __init__(self, job: str, unit: str, keys: Iterable[str], done: Iterable[str] = (), *, no_bar: bool = False,
                 samples_total: int | None = None, retries: int | None = None,
                 committed: Callable[[], int] | None = None, in_process: bool = False) -> None:
        from jobs.runtime.tasks import tasks_for

        self.tasks = tasks_for(in_process)
        self.job, self.unit, self.no_bar, self.samples_total = job, unit, no_bar, samples_total
        self.keys = list(dict.fromkeys(keys))
        self.done = set(done) & set(self.keys)
        self.todo = [k for k in self.keys if k not in self.done]
        self.retries = unit_retries(retries)
        self.failures: list[tuple[str | None, str]] = []
        self.finished = 0
        self._committed = committed
        self.progress: Any = None

    # -- the plan ---------------------------------------------------------------------------------
    def plan_line(self) -> str:
        """``12 cells, 4 already done, 8 to compute`` (``... to compute in this process`` with ``--in-process``)."""
        where = " in this process" if self.tasks.in_process and self.todo else ""
        return f"{len(self.keys)} {self.unit}s, {len(self.done)} already done, {len(self.todo)} to compute{where}"

    def task_options(self) -> dict[str, Any]:
        """Ray task options of the retry policy (``ray.remote(fn).options(**runner.task_options())``), and
        the driver's settings that its workers read (jobs.runtime.cluster.worker_options)."""
        from jobs.runtime.cluster import worker_options

        return {"max_retries": self.retries, "retry_exceptions": list(TRANSIENT), **worker_options()}

    def start(self, address: str | None) -> None:
        """Start or join the job's Ray (``address``: ``--ray-address``); nothing for a run in this process."""
        self.tasks.start(address)

    def put(self, value: Any) -> Any:
        """``value`` put once for many tasks (``ray.put``; itself in this process)."""
        return self.tasks.put(value)

    def remote(self, fn: Callable[..., Any], **resources: Any) -> Any:
        """``fn`` as a task under the retry policy, with ``resources`` (num_cpus, num_gpus, num_returns)."""
        return self.tasks.remote(fn, **self.task_options(), **resources)

    # -- the backends -----------------------------------------------------------------------------
    def run_tasks(self, units: Sequence[Any], key: Callable[[Any], str], submit: Callable[[Any], Any],
                  on_result: Callable[[Any, Any], None], *, max_running: int | None = None,
                  settled: Callable[[Any], None] | None = None) -> None:
        """Submit every unit not done (``submit(unit)`` returns a reference from :meth:`remote`), at most
        ``max_running`` at once; ``on_result(unit, value)`` commits each result as it arrives,
        ``settled(unit)`` is called once a unit ended either way (to free what only it needed). Failed
        units are recorded."""
        pending = [u for u in units if key(u) not in self.done]
        if self.tasks.in_process:
            max_running = 1  # a task here runs as it is submitted: commit each before the next runs
        running: dict[Any, Any] = {}
        with self._loop():
            while pending or running:
                while pending and (max_running is None or len(running) < max_running):
                    unit = pending.pop(0)
                    running[submit(unit)] = unit
                ready, _ = self.tasks.wait(list(running))
                for ref in ready:
                    unit = running.pop(ref)
                    if settled is not None:
                        settled(unit)
                    try:
                        value = self.tasks.get(ref)
                    except self.tasks.errors as err:
                        self._failed(key(unit), err)
                    else:
                        on_result(unit, value)
                        self.finished += 1
                    self.progress.update(1)
                    self._check()

    def run_rows(self, rows: Iterable[dict], count: Callable[[dict], tuple[int, int]],
                 on_row: Callable[[dict], None] | None = None,
                 failures: tuple[type[BaseException], ...] | None = None) -> None:
        """Consume result rows (one per unit); ``count(row)`` is its (samples, errors). The rows stop
        at the first failure, which is recorded: a Ray error (a Ray Data pipeline), or one of
        ``failures`` (the rows of a run without Ray)."""
        if failures is None:
            import ray

            failures = (ray.exceptions.RayError,)
        with self._loop():
            try:
                for row in rows:
                    if on_row is not None:
                        on_row(row)
                    self.finished += 1
                    samples, errors = count(row)
                    self.progress.update(1, samples=samples, errors=errors)
                    self._check()
            except failures as err:
                self._failed(None, err)

    # -- the report -------------------------------------------------------------------------------
    def committed(self) -> int:
        """This run's units committed so far (from the store where the job can tell)."""
        if self._committed is not None:
            return self._committed()
        return self.finished

    def kept(self) -> str:
        """``3 of 8 cells committed`` (of this run's units)."""
        return f"{self.committed()} of {len(self.todo)} {self.unit}s committed"

    def stop_line(self) -> str:
        """The one line a job that had failures stops with: what is kept, then why."""
        def shown(item: tuple[str | None, str]) -> str:
            return item[1] if item[0] is None else f"{self.unit} {item[0]}: {item[1]}"

        reasons = "; ".join(shown(f) for f in self.failures[:SHOWN])
        more = len(self.failures) - SHOWN
        line = f"the job stopped with {self.kept()}: {reasons}"
        if more > 0:
            line += f"; {more} more {self.unit}s failed (listed above)"
        return line if "rerun" in line else f"{line}; rerun to resume"

    def stop_if_failed(self) -> None:
        """End the job (:class:`JobStopped`: exit 1, one line) when any unit failed."""
        if self.failures:
            raise JobStopped(self.stop_line())

    # -- inside ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _loop(self) -> Iterator[None]:
        """The progress of the loop, and a stop request turned into what is kept."""
        from jobs.runtime.progress import Progress
        from jobs.runtime.stopping import as_interrupted

        self.progress = Progress(self.job, len(self.todo), self.unit, no_bar=self.no_bar,
                                 samples_total=self.samples_total)
        try:
            with self.progress:
                yield
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (jobs.runtime.stopping): say what is kept
            raise as_interrupted(err, f"{self.kept()}; rerun to resume") from None

    def _check(self) -> None:
        from jobs.runtime.stopping import check

        check()  # a stop that a Ray call swallowed

    def _failed(self, key: str | None, err: BaseException) -> None:
        """Record a unit's failure, in one line; a failure that followed a stop request is the stop."""
        from jobs.runtime.stopping import as_interrupted, requested
        from workers.attributor import failure_line

        if requested():  # the worker stopped with the job (Ctrl-C reaches the whole process group)
            raise as_interrupted(err, f"{self.kept()}; rerun to resume") from None
        reason = failure_line(err)
        if transient(err):
            reason += f" (the {self.unit} was tried {self.retries + 1} times)"
        self.failures.append((key, reason))
        if key is not None:
            self.progress.write(f"{self.job}: {self.unit} {key} failed: {reason}")
