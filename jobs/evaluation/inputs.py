"""What an evaluation job (jobs.perturb, jobs.sanity, jobs.roar) reads: a map dataset's config, the
samples and their labels as the model numbers its classes, and the fill value of removed pixels.

Methods are named ``[label=]name[:key=value,...]`` (jobs.mapping.methods.parse_method_specs).

Tested by tests/jobs/evaluation/test_subsets.py, tests/jobs/test_perturb.py and tests/jobs/test_sanity.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.runtime.cli import JobError


def stored_config(run: dict[str, Any], url: str) -> tuple[dict[str, Any], list[Any]]:
    """A map dataset's run.json config and its methods (MethodSpecs), checked field by field: a dataset
    someone else wrote is untrusted data, so a field of the wrong type is one line naming it."""
    import reprlib

    from workers.tasks import stored_methods

    config = run.get("config") or {}
    for key, flag in (("source", "--source"), ("split", "--split"), ("checkpoint", "--checkpoint")):
        value = config.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise JobError(f"{url}: its run.json field config.{key} is {reprlib.repr(value)}, not a name or URL; "
                           f"pass {flag}, or use a map dataset written by jobs.attribute")
    try:
        methods = list(stored_methods(config))
        for spec in methods:
            if not isinstance(spec.label, str) or not isinstance(spec.params, dict):
                raise TypeError(spec.label)
    except (TypeError, ValueError, KeyError, AttributeError):
        raise JobError(f"{url}: its run.json field config.methods is not a list of methods "
                       f"({reprlib.repr(config.get('methods'))}); use a map dataset written by jobs.attribute"
                       ) from None
    return config, methods


def model_labels(source: Any, spec: Any, labels: np.ndarray) -> np.ndarray:
    """The source's labels as the model's class indices, as jobs.attribute stores them
    (storage.sources.match_labels): an image folder numbers its classes in sorted name order,
    which is rarely the model's, and every accuracy against unmapped labels is near 0. Where the
    names do not match, the labels stay the source's and a warning says accuracies mean nothing."""
    from storage.sources import match_labels

    match = match_labels(source.classes, source.label_kind, spec.class_names, source.intrinsic_indices)
    if match.warning:
        print(f"warning: {match.warning}", file=sys.stderr)
    labels = np.asarray(labels, dtype=np.int64)
    if match.label_map is None:
        return labels
    lut = np.asarray(match.label_map, dtype=np.int64)
    known = (labels >= 0) & (labels < lut.size)
    return np.where(known, lut[np.clip(labels, 0, lut.size - 1)], labels)


def load_samples(source: Any, limit: int | None, ids: Sequence[str] | None = None, seed: int = 0,
                 spec: Any = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images, labels and ids of a seeded, class-stratified subset of ``limit`` samples in source
    order (jobs.evaluation.subsets: a first-N subset of a class-sorted source holds one or two classes), or of
    ``ids``, in that order. Where the source cannot tell labels without decoding, all its samples
    are decoded to choose. With the model's ``spec`` the labels are its class indices (:func:`model_labels`)."""
    from jobs.evaluation.subsets import ref_labels, stratified_indices
    from storage.sources import load_arrays

    refs = source.list()
    if ids is not None:
        by_id = {r.sample_id: r for r in refs}
        missing = [s for s in ids if s not in by_id]
        if missing:
            raise JobError(f"{len(missing)} map sample ids are not in source {source.url} (e.g. {missing[:3]}); "
                           "were the maps computed on another source or split?")
        refs = [by_id[s] for s in ids]
    elif limit and limit < len(refs):
        known = ref_labels(source, refs)
        if known is None:
            images, labels, got = load_arrays(source, refs)
            keep = stratified_indices(labels, limit, seed)
            if not got:
                raise JobError(f"no readable samples in {source.url}; check --source / --split")
            labels = labels if spec is None else model_labels(source, spec, labels)
            return images[keep], labels[keep], [got[i] for i in keep]
        refs = [refs[i] for i in stratified_indices(known, limit, seed)]
    images, labels, got = load_arrays(source, refs)
    if not got:
        raise JobError(f"no readable samples in {source.url}; check --source / --split")
    return images, (labels if spec is None else model_labels(source, spec, labels)), got


def fill_value(mode: str, spec: Any, source_url: str, options: dict[str, Any], samples: int = 10_000,
               policy: Any = None) -> list[float]:
    """The per-channel dataset mean in model-input (normalized) units.

    ``spec``: the model spec's normalization mean, i.e. 0 after normalization. jobs.train sets
    that mean from the train split, so for its checkpoints this *is* the train-split mean.
    ``train``: the mean of (up to ``samples`` evenly spaced) images of the source's train split,
    for models whose normalization comes from elsewhere (e.g. ImageNet statistics). ``policy``: the
    operator's :class:`storage.sources.SourcePolicy` (--allow-paths, --max-image-pixels).
    """
    if mode == "spec":
        return [0.0] * spec.in_channels
    if mode != "train":
        raise JobError(f"--fill must be 'spec' or 'train', got {mode!r}")
    from models.preprocess import preprocess
    from storage.sources import load_arrays, open_source

    source = open_source(source_url, split="train", storage_options=options, policy=policy)
    refs = source.list()
    if not refs:
        raise JobError(f"source {source_url!r} has no train split to take the mean of; use --fill spec")
    step = max(1, len(refs) // samples)
    images, _, _ = load_arrays(source, refs[::step][:samples])
    x = preprocess(spec, images)
    return [float(v) for v in x.double().mean(dim=(0, 2, 3))]
