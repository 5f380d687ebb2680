"""The attribution worker: one model replica on one device turns a shard into committed output.

Ray Data runs :class:`ShardAttributor` as an actor pool (``map_batches(ShardAttributor,
compute=ActorPoolStrategy(...))``); each input row is one shard of the plan. The same class
runs in-process too (benchmarks, tests), so the computation is identical with and without Ray.

Per shard: decode the next batch in a background thread while the device computes the
current one, compute every requested method's maps, reduce them to [H, W], and write the
shard through :class:`storage.maps.writer.MapStore`, whose commit record comes last. The output
depends only on the shard, so a retried shard rewrites the same bytes.

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
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

import attribution
from models.determinism import deterministic_kernels
from models.preprocess import preprocess
from models.training import resolve_device
from storage.checkpoints import load_checkpoint
from storage.maps.writer import MapRecords, MapStore
from storage.maps.plan import Shard, read_segment
from storage.io.retry import is_transient
from storage.sources import NO_LABEL, Sample, SampleError, SampleRef, model_policy, open_source

from .allocator import keep_freed_memory
from .tasks import JobConfig, ShardTask, block_tasks
from .identity import worker_name

#: How a declared detail's dtype is stored (storage.maps.tables.detail_type).
_KINDS = {torch.int64: "int64", torch.float64: "float64", torch.bool: "bool", attribution.TEXT: "string"}


def column_kinds(schemas: Sequence[Mapping[str, attribution.Detail]]) -> dict[str, str]:
    """The detail columns of an output's tables: the union of its methods' declared details, in
    order of first appearance; a detail that is a scalar for one method and a list for another
    (a global threshold beside per-layer ones) is a list column."""
    kinds: dict[str, str] = {}
    for schema in schemas:
        for name, detail in schema.items():
            listed = detail.per_sample == "list" or kinds.get(name, "").startswith("list<")
            kinds[name] = f"list<{_KINDS[detail.dtype]}>" if listed else _KINDS[detail.dtype]
    return kinds

log = logging.getLogger(__name__)


def _numpy(values: Any) -> np.ndarray:
    """A detail's values as numpy: tensors copied to the CPU, text details (numpy arrays of str) as they are."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=object)


def _import_ahead(modules: Sequence[str]) -> None:
    """Import what the first shard will need while it decodes and computes.

    Imports are Python work that runs beside torch's kernels (which release the GIL); done
    inline, captum's and zarr's made a fresh worker's first shard ~0.4 s slower than the rest.
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
    """Holds one model replica and the methods built around it; ``__call__`` processes shards."""

    def __init__(self, config: dict[str, Any] | JobConfig, threads: int | None = None) -> None:
        self.config = config if isinstance(config, JobConfig) else JobConfig.from_dict(config)
        self.worker = worker_name()  # node id and pid: two nodes on one host stay apart (the device follows)
        self._segments: dict[str, dict[int, Shard]] = {}
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._on_compute_thread(self._load, threads)

    def _on_compute_thread(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the worker's one compute thread.

        torch's CPU kernels use OpenMP, and libgomp keeps one thread team per thread that
        calls it. Ray Data builds the actor on one thread and calls it on another, so two teams
        competed for the cores and elementwise ops ran up to 1.7x slower (a whole shard 1.3x;
        benchmarks/RESULTS.md). One thread for every torch call keeps one team.
        """
        return self._compute_thread.submit(fn, *args).result()

    def _load(self, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(self.config.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        # For the actor's lifetime (it owns its process): set before the model touches the GPU.
        self._settings = contextlib.ExitStack()
        self._settings.enter_context(deterministic_kernels(self.device, self.config.deterministic))
        options = self.config.storage_options or {}  # the driver's exactly ({}: none, not this node's env)
        self.model, self.spec = load_checkpoint(self.config.checkpoint, options, map_location=self.device,
                                                trust_code=self.config.trust_code)
        self.model.to(self.device).eval()
        self.source = open_source(self.config.source, split=self.config.split, storage_options=options,
                                  kind=self.config.source_format, classes=self.config.source_classes,
                                  policy=model_policy(self.config.source_policy, self.spec))  # JPEGs drafted to the input
        self.store = MapStore(self.config.output, options)
        self.methods = {spec.label: spec.build(self.model) for spec in self.config.methods}
        self.kinds = column_kinds([method.detail_schema for method in self.methods.values()])
        self.worker = f"{self.worker}:{self.device}"
        lazy = {module for part in (self.store, *self.methods.values()) for module in part.lazy_imports}
        threading.Thread(target=_import_ahead, args=(sorted(lazy),), daemon=True, name="import-ahead").start()

    # -- Ray Data entry point: a row per block of shards, a summary row per shard -------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        results = [self._process_uncommitted(task) for row in rows for task in block_tasks(row, self._segment_shards)]
        return {key: np.array([getattr(r, key) for r in results]) for key in ShardResult.__dataclass_fields__}

    def _segment_shards(self, segment: str) -> dict[int, Shard]:
        """A plan segment's shards by index, read once per actor (the last two segments are kept:
        blocks run in plan order, so an actor rarely goes back to an earlier one)."""
        if segment not in self._segments:
            try:
                shards = read_segment(self.store.where, segment)
            except Exception as err:  # noqa: BLE001 - reported as one line naming the segment
                raise self._failed(f"shard plan {segment} could not be read", err) from err
            while len(self._segments) >= 2:
                self._segments.pop(next(iter(self._segments)))
            self._segments[segment] = {shard.index: shard for shard in shards}
        return self._segments[segment]

    def _process_uncommitted(self, task: ShardTask) -> ShardResult:
        """The shard for the methods that have not finished it yet. A block of several shards is one
        Ray task, retried whole (its actor died, a shard failed transiently): the retry skips the
        shards the first attempt finished instead of computing them again. One that died between its
        commit record and its publication is written again (the same bytes), which finishes it."""
        try:
            pending = tuple(m for m in task.methods if not self.store.is_finished(m, task.shard_id))
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
        start = time.perf_counter()
        parts: dict[str, list[tuple[list[Sample], torch.Tensor, attribution.Details]]] = {m: [] for m in task.methods}
        errors: list[SampleError] = []
        refs = task.sample_refs(self.source)
        for samples, bad in self._decoded_batches(refs):
            errors.extend(bad)
            if samples:
                computed, failed = self._compute(samples, task.methods)
                errors.extend(failed)
                for name in task.methods:
                    parts[name].extend(computed[name])
        sample_ids = [r.sample_id for r in refs]
        for name in task.methods:
            self.store.write_shard(task.shard_id, task.index, name, self._records(name, parts[name]), errors,
                                   sample_ids=sample_ids)
        mapped = sum(len(samples) for samples, _, _ in parts[task.methods[0]]) if task.methods else 0
        return ShardResult(task.shard_id, mapped, len(errors), time.perf_counter() - start, self.worker)

    # -- reading, overlapped with compute ------------------------------------------------
    def _decode(self, refs: Sequence[SampleRef]) -> tuple[list[Sample], list[SampleError]]:
        samples, errors = [], []
        for item in self.source.read(refs):
            if isinstance(item, Sample):
                item = self._labelled(item)
            (errors if isinstance(item, SampleError) else samples).append(item)
        return samples, errors

    def _labelled(self, sample: Sample) -> Sample | SampleError:
        """The sample with its label as the model's class index where the driver matched names; with
        ``target="label"``, an error row when it has no label the model knows."""
        label_map = self.config.label_map
        if label_map is not None and 0 <= sample.label < len(label_map):
            sample.label = label_map[sample.label]
        if self.config.target == "label" and not 0 <= sample.label < self.spec.num_classes:
            why = "has no label" if sample.label == NO_LABEL else \
                f"has label {sample.label}, which is not a class of the model ({self.spec.num_classes} classes)"
            return SampleError(sample.sample_id, f"{sample.sample_id} {why}; --target label needs one", "label")
        return sample

    def _decoded_batches(self, refs: Sequence[SampleRef]) -> Iterator[tuple[list[Sample], list[SampleError]]]:
        """Batches of decoded samples; the next batch decodes while the caller computes."""
        size = self.config.batch_size
        chunks = [refs[i : i + size] for i in range(0, len(refs), size)]
        pending = self._decoder.submit(self._decode, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            current = pending.result()
            pending = self._decoder.submit(self._decode, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield current

    # -- computing -----------------------------------------------------------------------
    def _inputs(self, samples: Sequence[Sample]) -> tuple[list[Sample], torch.Tensor | None, list[SampleError]]:
        """Preprocess (any sizes and modes, models.preprocess); a sample the model cannot take becomes an
        error row."""
        try:
            return list(samples), preprocess(self.spec, [s.image for s in samples], self.device), []
        except Exception:  # noqa: BLE001 - isolate the offending samples below
            pass
        good, tensors, errors = [], [], []
        for sample in samples:
            try:
                tensors.append(preprocess(self.spec, [sample.image], self.device))
                good.append(sample)
            except Exception as err:  # noqa: BLE001 - recorded per sample
                errors.append(SampleError(sample.sample_id, f"cannot preprocess {sample.sample_id} (image of shape "
                                                            f"{tuple(sample.image.shape)}): {type(err).__name__}: "
                                                            f"{err}"[:500], "preprocess"))
        return good, (torch.cat(tensors) if tensors else None), errors

    def _compute(self, samples: list[Sample], methods: Sequence[str]
                 ) -> tuple[dict[str, list[tuple[list[Sample], torch.Tensor, attribution.Details]]], list[SampleError]]:
        """Maps and details of every method for a batch, as (samples, maps, details) parts; a sample
        that fails alone becomes an error row."""
        good, x, errors = self._inputs(samples)
        if x is None:
            return {name: [] for name in methods}, errors
        try:
            return {name: [part] for name, part in self._attribute(methods, good, x).items()}, errors
        except Exception as batch_error:  # noqa: BLE001 - find out whether one sample is to blame
            parts: dict[str, list] = {name: [] for name in methods}
            failures = []
            for i, sample in enumerate(good):
                try:
                    computed = self._attribute(methods, [sample], x[i : i + 1])
                except Exception as err:  # noqa: BLE001
                    failures.append(SampleError(sample.sample_id, f"attribution of {sample.sample_id} failed: "
                                                                  f"{type(err).__name__}: {err}"[:500], "attribution"))
                    continue
                for name in methods:
                    parts[name].append(computed[name])
            if len(failures) == len(good):
                raise batch_error  # every sample fails alone: not the data's fault
            return parts, errors + failures

    def _attribute(self, methods: Sequence[str], samples: Sequence[Sample], x: torch.Tensor
                   ) -> dict[str, tuple[list[Sample], torch.Tensor, attribution.Details]]:
        """Each method's reduced maps [B, H, W] and declared details for one batch."""
        ids = [s.sample_id for s in samples]
        targets = torch.tensor([s.label for s in samples], device=self.device) if self.config.target == "label" else None
        out = {}
        for name in methods:
            maps, details = self.methods[name].attribute(x, target=targets, sample_ids=ids, return_details=True)
            out[name] = (list(samples), attribution.reduce_map(maps.float(), self.config.reduction).cpu(), details)
        return out

    def _records(self, name: str, parts: list[tuple[list[Sample], torch.Tensor, attribution.Details]]) -> MapRecords:
        """One shard's rows of one method, whatever details the method declares."""
        height, width = self.spec.input_size
        declared = self.methods[name].detail_schema
        samples = [s for part, _, _ in parts for s in part]
        maps = torch.cat([m for _, m, _ in parts]) if parts else torch.zeros(0, height, width)
        details = {key: np.concatenate([_numpy(d[key]) for _, _, d in parts]) if parts
                   else np.zeros((0,) if declared[key].per_sample == "scalar" else (0, 0)) for key in declared}
        return MapRecords([s.sample_id for s in samples], [s.label for s in samples], maps,
                          params=self.methods[name].params, details=details, detail_types=self.kinds)
