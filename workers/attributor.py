"""The attribution worker: one model replica on one device turns a shard into committed output.

Ray Data runs :class:`ShardAttributor` as an actor pool (``map_batches(ShardAttributor,
compute=ActorPoolStrategy(...))``, ``jobs.mapping.actor_pool``); each input row is a block of shards
of the plan (``workers.tasks.block_rows``). The same class runs in-process too (benchmarks, tests),
so the computation is identical with and without Ray.

A shard is three seams in a row: read (:class:`workers.shard_source.ShardSource`: the shard's
samples in decoded batches, the next one decoding while the device computes the current one) ->
predict (:class:`workers.predictor.Predictor`: every requested method's maps, reduced to [H, W], with
their details and error rows; pure) -> write (:class:`storage.maps.sink.MapSink`: Parquet, zarr
rows, the commit record last). The output depends only on the shard, so a retried shard rewrites
the same bytes.

No sample can fail a shard: one that cannot be read, decoded, preprocessed, labelled (with
``target="label"``) or attributed becomes an error row with the reason and its kind, and a shard
whose every sample is bad commits with zero maps. What is not the data's fault (the store refuses
a request, every sample of a batch fails attribution alone, a write fails) raises
:class:`ShardFailed`, whose one-line message names the shard and the cause; the job stops there.
When the cause is transient (the store kept throttling, failing or dropping connections past the
retry budget of :mod:`storage.io.retry`), it raises :class:`TransientShardFailure` instead, which Ray
Data retries a bounded number of times (``jobs.mapping.actor_pool.run_shards``) before the job stops.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from models.determinism import deterministic_kernels
from models.training import resolve_device
from storage.checkpoints import load_checkpoint
from storage.io.retry import is_transient
from storage.maps.sink import MapSink
from storage.sources import SampleError, model_policy, open_source

from .allocator import keep_freed_memory
from .identity import worker_name
from .predictor import Part, Predictor
from .shard_source import ShardSource
from .tasks import JobConfig, ShardTask

log = logging.getLogger(__name__)

#: What a fresh worker's first shard would otherwise import inline, imported ahead in the background
#: (:func:`_import_ahead`): zarr for the first write, and captum for the methods built on it (by
#: registry name); each import's cost is in benchmarks/RESULTS.md ("zarr's import", "captum's import").
IMPORT_AHEAD = ("storage.maps.zarr_maps",)
IMPORT_AHEAD_BY_METHOD = {name: ("captum.attr",) for name in ("gradient_x_input", "integrated_gradients", "grad_cam")}


def _import_ahead(modules: Sequence[str]) -> None:
    """Import what the first shard will need while it decodes and computes.

    Imports are Python work that runs beside torch's kernels (which release the GIL); done
    inline, captum's and zarr's made a fresh worker's first shard slower than the rest
    (benchmarks/RESULTS.md, "The distributed job").
    A failure here is left for the real import to report.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - reported where the module is really needed
            log.debug("importing %s ahead failed", module, exc_info=True)


class ShardFailed(RuntimeError):
    """A shard failed for a reason that is not its data's; the message is one line naming the shard."""


class TransientShardFailure(ShardFailed):
    """A shard failed because the store kept failing transiently past the retry budget: the same shard
    may well pass a little later, so Ray Data retries it (a bounded number of times) before the job
    stops. Only this class is retried; any other :class:`ShardFailed` stops the job at once."""


def failure_line(err: BaseException) -> str:
    """The one-line reason of a worker failure, also from Ray's wrapping of it (which keeps only text)."""
    text = str(err)
    for line in text.splitlines():
        for marker in (f"{TransientShardFailure.__name__}: ", f"{ShardFailed.__name__}: "):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    lines = [line.strip() for line in text.split("The above exception was the direct cause")[0].splitlines()
             if line.strip()]
    return (lines[-1] if lines else f"{type(err).__name__}")[:1000]


@dataclass
class ShardResult:
    shard_id: str
    samples: int
    errors: int
    seconds: float
    worker: str


class ShardAttributor:
    """Holds one model replica and the seams around it; ``__call__`` processes blocks of shards."""

    def __init__(self, config: dict[str, Any] | JobConfig, threads: int | None = None) -> None:
        self.config = config if isinstance(config, JobConfig) else JobConfig.from_dict(config)
        self.worker = worker_name()  # node id and pid: two nodes on one host stay apart (the device follows)
        self._compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._closed = False
        try:
            self._on_compute_thread(self._load, threads)
        except BaseException:
            self._compute_thread.shutdown(wait=False)  # a replica that could not load leaves no thread behind
            raise

    def _on_compute_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the worker's one compute thread.

        torch's CPU kernels use OpenMP, and libgomp keeps one thread team per thread that
        calls it. Ray Data builds the actor on one thread and calls it on another, so two teams
        competed for the cores and elementwise ops ran slower (measured in benchmarks/RESULTS.md,
        "The distributed job", session 2). One thread for every torch call keeps one team.
        """
        return self._compute_thread.submit(fn, *args).result()

    def _load(self, threads: int | None) -> None:
        config = self.config
        # What the replica sets for its process, undone by close() (an actor's process ends with the
        # actor), or here if loading fails; the kernel settings come before the model touches the GPU.
        with contextlib.ExitStack() as settings:
            settings.callback(torch.set_num_threads, torch.get_num_threads())
            if threads:
                torch.set_num_threads(threads)
            self.device = resolve_device(config.device)
            if self.device.type == "cpu":
                keep_freed_memory()
            settings.enter_context(deterministic_kernels(self.device, config.deterministic))
            options = config.storage_options or {}  # the driver's exactly ({}: none, not this node's env)
            model, spec = load_checkpoint(config.checkpoint, options, map_location=self.device,
                                          trust_code=config.trust_code)
            model.to(self.device).eval()
            source = open_source(config.source, split=config.split, storage_options=options,
                                 kind=config.source_format, classes=config.source_classes,
                                 policy=model_policy(config.source_policy, spec))  # JPEGs drafted to the input
            self.sink = MapSink(config.output, options)
            self.shards = ShardSource(source, self.sink.where, label_map=config.label_map, target=config.target,
                                      num_classes=spec.num_classes)
            self.predictor = Predictor(model, spec, config.methods, reduction=config.reduction, target=config.target,
                                       device=self.device)
            self._settings = settings.pop_all()
        self.worker = f"{self.worker}:{self.device}"
        ahead = {*IMPORT_AHEAD, *(m for spec in config.methods for m in IMPORT_AHEAD_BY_METHOD.get(spec.name, ()))}
        threading.Thread(target=_import_ahead, args=(sorted(ahead),), daemon=True, name="import-ahead").start()

    def close(self) -> None:
        """Undo what the replica set for its process (the kernel settings, torch's thread count) and end
        its threads: for a replica in a process that goes on (jobs.mapping.in_process). A shard in hand
        ends first; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._on_compute_thread(self._settings.close)
        self._compute_thread.shutdown()
        self.shards.close()

    # -- Ray Data entry point: a row per block of shards, a summary row per shard -------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        results = [self._process_unfinished(task) for row in rows for task in self._tasks(row)]
        return {key: np.array([getattr(r, key) for r in results]) for key in ShardResult.__dataclass_fields__}

    def _tasks(self, row: dict[str, Any]) -> list[ShardTask]:
        """The block row's read tasks, their shards read from the plan."""
        try:
            return self.shards.tasks(row)
        except Exception as err:  # noqa: BLE001 - reported as one line naming the segment
            raise self._failed(f"shard plan {row['segment']} could not be read", err) from err

    def _process_unfinished(self, task: ShardTask) -> ShardResult:
        """The shard for the methods that have not finished it yet. A block of several shards is one
        Ray task, retried whole (its actor died, a shard failed transiently): the retry skips the
        shards the first attempt finished instead of computing them again. One that died between its
        commit record and its publication is written again (the same bytes), which finishes it."""
        try:
            pending = self.sink.unfinished(task.methods, task.shard_id)
        except Exception as err:  # noqa: BLE001 - reported as one line naming the shard
            raise self._failure(task, err) from err
        if not pending:
            return ShardResult(task.shard_id, 0, 0, 0.0, self.worker)
        return self.process_shard(replace(task, methods=pending))

    def process_shard(self, task: ShardTask) -> ShardResult:
        """Compute, write and commit one shard for the task's methods; :class:`ShardFailed` when that
        fails for a reason that is not the data's (:class:`TransientShardFailure` when the store kept
        failing transiently, which is worth retrying the shard for)."""
        try:
            return self._on_compute_thread(self._process_shard, task)
        except Exception as err:  # noqa: BLE001 - every cause is reported as one line naming the shard
            raise self._failure(task, err) from err

    def _failure(self, task: ShardTask, err: BaseException) -> ShardFailed:
        return self._failed(f"shard {task.shard_id} ({task.samples} samples from {task.first_sample_id!r}) failed", err)

    def _failed(self, what: str, err: BaseException) -> ShardFailed:
        """One line: what failed, on which worker, and why; TransientShardFailure (which Ray Data
        retries) when the cause is transient."""
        failure = TransientShardFailure if is_transient(err) else ShardFailed
        return failure(f"{what} on worker {self.worker}: {type(err).__name__}: {' '.join(str(err).split())}"[:1000])

    def _process_shard(self, task: ShardTask) -> ShardResult:
        """Read -> predict -> write: the shard's batches through the predictor, then each method's rows
        and the shard's error rows through the sink."""
        start = time.perf_counter()
        parts: dict[str, list[Part]] = {m: [] for m in task.methods}
        errors: list[SampleError] = []
        sample_ids, batches = self.shards.read(task, self.config.batch_size)
        for samples, bad in batches:
            errors.extend(bad)
            if samples:
                computed, failed = self.predictor.predict(samples, task.methods)
                errors.extend(failed)
                for name in task.methods:
                    parts[name].extend(computed[name])
        for name in task.methods:
            self.sink.write(task.shard, name, self.predictor.records(name, parts[name]), errors, sample_ids)
        mapped = sum(len(samples) for samples, _, _ in parts[task.methods[0]]) if task.methods else 0
        return ShardResult(task.shard_id, mapped, len(errors), time.perf_counter() - start, self.worker)
