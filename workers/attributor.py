"""The attribution worker: one model replica on one device turns a shard into committed output.

Ray Data runs :class:`ShardAttributor` as an actor pool (``map_batches(ShardAttributor,
compute=ActorPoolStrategy(...))``); each input row is one shard of the plan. The same class
runs in-process too (benchmarks, tests), so the computation is identical with and without Ray.

Per shard: decode the next batch in a background thread while the device computes the
current one, compute every requested method's maps, reduce them to [H, W], and write the
shard through :class:`storage.maps.MapStore`, whose commit record comes last. The output
depends only on the shard, so a retried shard rewrites the same bytes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

import attribution
from attribution.pathway import PathwayGrad
from models.determinism import deterministic_kernels
from models.preprocess import preprocess
from models.training import resolve_device
from storage.checkpoints import load_checkpoint
from storage.maps import MapRecords, MapStore
from storage.sources import Sample, SampleError, SampleRef, open_source

from .allocator import keep_freed_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobConfig:
    """Everything a worker needs, as plain data (it travels to Ray actors and into run.json)."""

    source: str
    checkpoint: str
    output: str
    methods: dict[str, dict[str, Any]]  # label -> parameters
    split: str = "test"
    batch_size: int = 64
    reduction: str = "signed_max_abs"
    target: str = "predicted"  # or "label"
    device: str = "auto"
    storage_options: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = True  # CUDA: deterministic kernels, so a retried shard rewrites the same bytes
    method_names: dict[str, str] = field(default_factory=dict)  # label -> registry name, where they differ

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass
class ShardResult:
    shard_id: str
    samples: int
    errors: int
    seconds: float
    worker: str


class ShardAttributor:
    """Holds one model replica and the methods built around it; ``__call__`` processes shards."""

    def __init__(self, config: dict[str, Any], threads: int | None = None) -> None:
        self.config = JobConfig(**config)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
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
        options = self.config.storage_options or None
        self.model, self.spec = load_checkpoint(self.config.checkpoint, options, map_location=self.device)
        self.model.to(self.device).eval()
        self.source = open_source(self.config.source, split=self.config.split, storage_options=options)
        self.store = MapStore(self.config.output, options)
        self.methods = {label: attribution.get(self.config.method_names.get(label, label), self.model, **params)
                        for label, params in self.config.methods.items()}
        self.worker = f"{self.worker}:{self.device}"
        lazy = {module for part in (self.store, *self.methods.values()) for module in part.lazy_imports}
        threading.Thread(target=_import_ahead, args=(sorted(lazy),), daemon=True, name="import-ahead").start()

    # -- Ray Data entry point: one row per shard -----------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [
            self.process_shard(int(index), str(shard_id), json.loads(str(refs)), json.loads(str(methods)))
            for index, shard_id, refs, methods in zip(batch["shard_index"], batch["shard_id"], batch["refs"], batch["methods"])
        ]
        return {key: np.array([getattr(r, key) for r in results]) for key in ShardResult.__dataclass_fields__}

    def process_shard(self, shard_index: int, shard_id: str, refs: Sequence[Sequence[Any]],
                      methods: Sequence[str] | None = None) -> ShardResult:
        """Compute, write and commit one shard for the given methods (default: all)."""
        return self._on_compute_thread(self._process_shard, shard_index, shard_id, refs, methods)

    def _process_shard(self, shard_index: int, shard_id: str, refs: Sequence[Sequence[Any]],
                       methods: Sequence[str] | None) -> ShardResult:
        start = time.perf_counter()
        methods = list(methods or self.methods)
        sample_refs = [SampleRef(str(sample_id), locator) for sample_id, locator in refs]
        columns: dict[str, list] = {name: [] for name in methods}
        errors: list[SampleError] = []
        for samples, bad in self._decoded_batches(sample_refs):
            errors.extend(bad)
            if samples:
                computed, failed = self._compute(samples, methods)
                errors.extend(failed)
                for name in methods:
                    columns[name].extend(computed[name])
        for name in methods:
            self.store.write_shard(shard_id, shard_index, name, self._records(name, columns[name]), errors,
                                   sample_ids=[r.sample_id for r in sample_refs])
        count = sum(len(columns[methods[0]][i]["sample_ids"]) for i in range(len(columns[methods[0]])))
        return ShardResult(shard_id, count, len(errors), time.perf_counter() - start, self.worker)

    # -- reading, overlapped with compute ------------------------------------------------
    def _decode(self, refs: Sequence[SampleRef]) -> tuple[list[Sample], list[SampleError]]:
        samples, errors = [], []
        for item in self.source.read(refs):
            (errors if isinstance(item, SampleError) else samples).append(item)
        return samples, errors

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
        """Preprocess; a sample the model cannot take (wrong channels, ...) becomes an error."""
        shapes = {s.image.shape for s in samples}
        if len(shapes) == 1:
            try:
                return list(samples), preprocess(self.spec, np.stack([s.image for s in samples]), self.device), []
            except Exception:  # noqa: BLE001 - isolate the offending samples below
                pass
        good, tensors, errors = [], [], []
        for sample in samples:
            try:
                tensors.append(preprocess(self.spec, sample.image[None], self.device))
                good.append(sample)
            except Exception as err:  # noqa: BLE001 - recorded per sample
                errors.append(SampleError(sample.sample_id, f"preprocessing failed: {err}"))
        return good, (torch.cat(tensors) if tensors else None), errors

    def _compute(self, samples: list[Sample], methods: Sequence[str]) -> tuple[dict[str, list[dict]], list[SampleError]]:
        """Maps of every method for a batch; a sample that fails alone becomes an error row."""
        good, x, errors = self._inputs(samples)
        if x is None:
            return {name: [] for name in methods}, errors
        try:
            return {name: [row] for name, row in self._attribute(methods, good, x).items()}, errors
        except Exception as batch_error:  # noqa: BLE001 - find out whether one sample is to blame
            per_sample: dict[str, list[dict]] = {name: [] for name in methods}
            failures = []
            for i, sample in enumerate(good):
                try:
                    rows = self._attribute(methods, [sample], x[i : i + 1])
                except Exception as err:  # noqa: BLE001
                    failures.append(SampleError(sample.sample_id, f"attribution failed: {type(err).__name__}: {err}"))
                    continue
                for name in methods:
                    per_sample[name].append(rows[name])
            if len(failures) == len(good):
                raise batch_error  # every sample fails alone: not the data's fault
            return per_sample, errors + failures

    def _attribute(self, methods: Sequence[str], samples: Sequence[Sample], x: torch.Tensor) -> dict[str, dict[str, Any]]:
        """One forward pass for predictions and targets, then each method's maps and extras."""
        ids = [s.sample_id for s in samples]
        labels = torch.tensor([s.label for s in samples])
        with torch.no_grad():
            logits = self.model(x)
        predicted = logits.argmax(1)
        targets = labels.to(self.device) if self.config.target == "label" else predicted
        common = {"sample_ids": ids, "labels": labels.numpy(), "predicted": predicted.cpu().numpy(),
                  "targets": targets.cpu().numpy(),
                  "logit_before": logits.gather(1, targets[:, None]).squeeze(1).float().cpu().numpy()}
        rows = {}
        for name in methods:
            method, row = self.methods[name], dict(common)
            if isinstance(method, PathwayGrad):
                maps, details = method.attribute(x, target=targets, sample_ids=ids, return_details=True)
                row.update(kept_fraction=details.kept_fraction.cpu().numpy(),
                           threshold=details.threshold.cpu().numpy() if details.threshold.dim() == 1 else None,
                           logit_after=details.pruned_logit.float().cpu().numpy(),
                           still_predicts=details.prediction_kept.cpu().numpy())
            else:
                maps = method.attribute(x, target=targets, sample_ids=ids)
            row["maps"] = attribution.reduce_map(maps.float(), self.config.reduction).cpu().numpy()
            rows[name] = row
        return rows

    def _records(self, name: str, parts: list[dict[str, Any]]) -> MapRecords:
        height, width = self.spec.input_size
        keys = ("sample_ids", "labels", "targets", "predicted", "maps", "kept_fraction", "threshold",
                "logit_before", "logit_after", "still_predicts")
        merged: dict[str, Any] = {}
        for key in keys:
            values = [p.get(key) for p in parts]
            if key == "sample_ids":
                merged[key] = [s for v in values for s in v]
            elif key == "maps":
                merged[key] = np.concatenate(values) if values else np.zeros((0, height, width), np.float32)
            elif not values or any(v is None for v in values):
                merged[key] = None if values or key not in ("labels", "targets", "predicted") else np.zeros(0, np.int64)
            else:
                merged[key] = np.concatenate(values)
        return MapRecords(params=self.methods[name].params, **merged)
