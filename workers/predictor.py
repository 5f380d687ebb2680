"""The pure part of the attribution worker: decoded samples in, each method's maps, details and error rows out.

:class:`Predictor` holds a model on a device and the methods built around it. :meth:`Predictor.predict`
takes one batch of decoded samples (images, labels as the model's class indices, ids): it
preprocesses them (``models.preprocess``: any size and mode), computes every requested method's maps,
reduces them to [H, W] and collects the details each method declares; :meth:`Predictor.records`
turns a shard's batches of one method into the rows the sink writes (``storage.maps.writer.MapRecords``).

No I/O and no threads, so it runs the same inside a Ray actor (``workers.attributor``, which reads
the shard and writes it) and in a test (tests/workers/test_predictor.py). A sample the model cannot
take becomes an error row (kind ``preprocess`` or ``attribution``); a batch in which every sample
fails attribution alone is not the data's fault and raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

import attribution
from attribution import MethodSpec
from models.preprocess import preprocess
from storage.maps.writer import MapRecords
from storage.sources import Sample, SampleError

#: How a declared detail's dtype is stored (storage.maps.tables.detail_type).
_KINDS = {torch.int64: "int64", torch.float64: "float64", torch.bool: "bool", attribution.TEXT: "string"}

#: One method's result for one batch: the samples mapped, their reduced maps [B, H, W] on the CPU, the details.
Part = tuple[list[Sample], torch.Tensor, attribution.Details]


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


def _numpy(values: Any) -> np.ndarray:
    """A detail's values as numpy: tensors copied to the CPU, text details (numpy arrays of str) as they are."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=object)


class Predictor:
    """``model`` (with its ``spec``, on ``device``) and the methods of ``specs`` built around it.
    ``target``: "predicted" explains the model's prediction, "label" each sample's label."""

    def __init__(self, model: torch.nn.Module, spec: Any, specs: Sequence[MethodSpec], *,
                 reduction: str = "signed_max_abs", target: str = "predicted",
                 device: torch.device | str = "cpu") -> None:
        self.model, self.spec, self.device = model, spec, torch.device(device)
        self.reduction, self.target = reduction, target
        self.methods = {method.label: method.build(model) for method in specs}
        self.kinds = column_kinds([method.detail_schema for method in self.methods.values()])

    def predict(self, samples: Sequence[Sample], methods: Sequence[str]
                ) -> tuple[dict[str, list[Part]], list[SampleError]]:
        """Each method's parts for a batch, and the error rows of the samples that failed alone."""
        good, x, errors = self._inputs(samples)
        if x is None:
            return {name: [] for name in methods}, errors
        try:
            return {name: [part] for name, part in self._attribute(methods, good, x).items()}, errors
        except Exception as batch_error:  # noqa: BLE001 - find out whether one sample is to blame
            parts: dict[str, list[Part]] = {name: [] for name in methods}
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

    def records(self, name: str, parts: Sequence[Part]) -> MapRecords:
        """One shard's rows of method ``name`` from its batches' parts, whatever details it declares."""
        height, width = self.spec.input_size
        declared = self.methods[name].detail_schema
        samples = [s for part, _, _ in parts for s in part]
        maps = torch.cat([m for _, m, _ in parts]) if parts else torch.zeros(0, height, width)
        details = {key: np.concatenate([_numpy(d[key]) for _, _, d in parts]) if parts
                   else np.zeros((0,) if declared[key].per_sample == "scalar" else (0, 0)) for key in declared}
        return MapRecords([s.sample_id for s in samples], [s.label for s in samples], maps,
                          params=self.methods[name].params, details=details, detail_types=self.kinds)

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

    def _attribute(self, methods: Sequence[str], samples: Sequence[Sample], x: torch.Tensor) -> dict[str, Part]:
        """Each method's reduced maps [B, H, W] and declared details for one batch."""
        ids = [s.sample_id for s in samples]
        targets = torch.tensor([s.label for s in samples], device=self.device) if self.target == "label" else None
        out = {}
        for name in methods:
            maps, details = self.methods[name].attribute(x, target=targets, sample_ids=ids, return_details=True)
            out[name] = (list(samples), attribution.reduce_map(maps.float(), self.reduction).cpu(), details)
        return out
