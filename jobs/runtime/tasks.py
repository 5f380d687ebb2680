"""Where a job's tasks run: Ray's tasks, or this process (``--in-process``).

The evaluation jobs (perturbation, sanity, ROAR, the strategy clusters) put their inputs once, submit
one task per unit and collect the results; :class:`RayTasks` does that on a Ray cluster, and
:class:`HereTasks` in the job's own process, with no Ray started or imported: a small run, a laptop,
a debugger. Both keep the contract the jobs rely on:

- ``remote(fn, **options)`` returns something whose ``.remote(*args)`` gives a reference (or
  ``num_returns`` references); a reference passed to another task is its value there;
- a task that raised one of the runner's transient errors runs again, ``max_retries`` times at most;
  any other error is the task's failure, raised by :meth:`get` wrapped so that its cause is kept
  (``err.cause``, as Ray's ``RayTaskError`` keeps it);
- a task sees its arguments as a Ray worker does (:func:`as_sent`): a copy of small objects, and the
  large buffers (numpy arrays) read-only, so a task that would change an input fails here as it fails
  there, and cannot change the driver's copy or the next task's;
- a task runs with ``num_cpus`` torch threads (at least one), as on a Ray worker (Ray sets
  ``OMP_NUM_THREADS`` to a task's CPUs), so that its numbers are those it computes on Ray; the job's
  own count is restored.

Here a task runs when it is submitted, so the runner (jobs.runtime.runner) commits each unit before
it submits the next: a stopped run keeps every unit it finished.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any


class TaskFailed(Exception):
    """A task of :class:`HereTasks` raised ``cause``: its text is the cause's, as a Ray task error's is."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class HereRef:
    """The outcome of one task run here: its value, or the error it raised."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: TaskFailed | None = None) -> None:
        self.value, self.error = value, error

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def as_sent(value: Any) -> Any:
    """``value`` through pickle's protocol 5 with its out-of-band buffers read-only, as Ray's object store
    hands a task its arguments: small parts copied, large arrays shared but not writable, nothing copied twice."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[b.raw().toreadonly() for b in buffers])


def _resolved(value: Any) -> Any:
    """A task's argument as the task sees it: a reference's value (its error, if it failed)."""
    return value.result() if isinstance(value, HereRef) else value


class HereTask:
    """``fn`` as a task of this process (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], *, max_retries: int = 0, retry_exceptions: Sequence[type] = (),
                 num_cpus: float | None = 1, num_returns: int = 1, **_ignored: Any) -> None:
        self.fn, self.retries, self.transient = fn, max(0, int(max_retries)), tuple(retry_exceptions)
        self.threads = max(1, int(num_cpus or 1))
        self.num_returns = num_returns

    def remote(self, *args: Any, **kwargs: Any) -> HereRef | tuple[HereRef, ...]:
        try:
            args, kwargs = as_sent(([_resolved(a) for a in args], {k: _resolved(v) for k, v in kwargs.items()}))
            value = self._call(args, kwargs)
        except TaskFailed as err:  # an argument's task failed: so does this one, with the same cause
            return self._refs(error=err)
        except Exception as err:  # noqa: BLE001 - a task's failure is reported by the runner, as on Ray
            return self._refs(error=TaskFailed(err))
        if self.num_returns == 1:
            return HereRef(value)
        return tuple(HereRef(v) for v in value)

    def _call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        from models.training import cpu_threads

        for attempt in range(self.retries + 1):
            try:
                with cpu_threads(self.threads):
                    return self.fn(*args, **kwargs)
            except self.transient:
                if attempt == self.retries:
                    raise

    def _refs(self, error: TaskFailed) -> HereRef | tuple[HereRef, ...]:
        refs = tuple(HereRef(error=error) for _ in range(self.num_returns))
        return refs[0] if self.num_returns == 1 else refs


class HereTasks:
    """Tasks in this process; never imports Ray."""

    in_process = True
    errors: tuple[type[BaseException], ...] = (TaskFailed,)

    def start(self, address: str | None) -> None:
        """Nothing to start."""

    def put(self, value: Any) -> Any:
        return value

    def resources(self) -> dict[str, float]:
        """This machine's CPUs and GPUs, as a local Ray would count them (jobs.runtime.cluster.plan_workers)."""
        import torch

        return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}

    def remote(self, fn: Callable[..., Any], **options: Any) -> HereTask:
        return HereTask(fn, **options)

    def get(self, refs: Any) -> Any:
        if isinstance(refs, list):
            return [_resolved(r) for r in refs]
        return _resolved(refs)

    def wait(self, refs: list[Any]) -> tuple[list[Any], list[Any]]:
        """Every task here has finished when it was submitted: the first is ready."""
        return refs[:1], refs[1:]


class RayTasks:
    """Ray's tasks, on the Ray the job starts or joins (jobs.runtime.cluster.start_ray)."""

    in_process = False

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        import ray

        return (ray.exceptions.RayError,)

    def start(self, address: str | None) -> None:
        from jobs.runtime.cluster import start_ray

        start_ray(address)

    def put(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def resources(self) -> dict[str, float]:
        """The cluster's resources (Ray must be started)."""
        import ray

        return ray.cluster_resources()

    def remote(self, fn: Callable[..., Any], **options: Any) -> Any:
        import ray

        return ray.remote(fn).options(**options)

    def get(self, refs: Any) -> Any:
        import ray

        return ray.get(refs)

    def wait(self, refs: list[Any]) -> tuple[list[Any], list[Any]]:
        import ray

        return ray.wait(refs, num_returns=1)


def tasks_for(in_process: bool) -> HereTasks | RayTasks:
    """The backend of a job run with ``--in-process`` or without."""
    return HereTasks() if in_process else RayTasks()
