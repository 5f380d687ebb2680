"""Seeded, class-stratified subsets for every ``--*-limit`` of the evaluation jobs (perturb, sanity, ROAR).

A "first N" subset of a class-sorted source (an image folder lists class by class) holds one or
two classes: accuracies, chance levels and verdicts computed on it describe those classes only
(issue #27). A stratified subset keeps each class's share of the split (largest remainder, so the
sizes add up exactly), picks the members of each class with a seeded generator, and keeps source
order. The run header states how the subset was drawn and warns when it is still imbalanced
(largest class above twice 1/K: the split itself is imbalanced, or holds fewer classes than the model).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

#: A subset whose largest class holds more than this many times 1/K of it is reported as imbalanced.
IMBALANCE_FACTOR = 2.0


def stratified_indices(labels: Sequence[int] | np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Sorted positions of a subset of ``limit`` samples that keeps each label's share of ``labels``.

    Each label gets ``floor(limit * share)`` places, and the places left go to the largest
    remainders (ties: the smaller label); within a label the members are drawn by ``seed``. All
    positions when ``limit`` is None or not below the number of samples."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    if limit is None or limit >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (limit / n)
    take = np.floor(exact).astype(np.int64)
    order = sorted(range(classes.size), key=lambda i: (-(exact[i] - take[i]), classes[i]))
    for i in order[: limit - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False) for c, k in zip(classes, take) if k]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def subset_record(labels: Sequence[int] | np.ndarray, num_classes: int | None, total: int, limit: int | None,
                  seed: int = 0, what: str = "samples") -> dict[str, Any]:
    """What the run header says about a subset: how it was drawn, its size, the classes it holds and
    whether it is imbalanced (largest class above ``IMBALANCE_FACTOR`` x 1/K, K the model's classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.unique(labels, return_counts=True)[1] if labels.size else np.zeros(0, np.int64)
    k = int(num_classes or len(counts) or 1)
    share = float(counts.max() / labels.size) if labels.size else 0.0
    drawn = limit is not None and limit < total
    record: dict[str, Any] = {
        "what": what, "subset": f"stratified by class, seed {seed}" if drawn else "all",
        "limit": limit, "seed": seed if drawn else None, "of": int(total), "size": int(labels.size),
        "classes_present": int(len(counts)), "num_classes": k, "largest_class_share": share,
        "imbalanced": bool(labels.size and share > IMBALANCE_FACTOR / k)}
    record["warning"] = (f"the {what} are imbalanced: the largest class holds {100 * share:.0f} % of "
                         f"{labels.size} ({len(counts)} of {k} classes present; above {IMBALANCE_FACTOR:g} x 1/{k}), "
                         "so accuracies and verdicts describe few classes" if record["imbalanced"] else None)
    return record


def describe(record: dict[str, Any]) -> str:
    """The subset in one header line."""
    how = (f"a {record['subset']} subset of {record['size']} of {record['of']}" if record["seed"] is not None
           else f"all {record['size']}")
    return (f"{record['what']}: {how} ({record['classes_present']} of {record['num_classes']} classes, largest "
            f"{100 * record['largest_class_share']:.0f} %)")


def announce(record: dict[str, Any]) -> None:
    """Print the header line, and the imbalance warning on stderr."""
    print(describe(record))
    if record.get("warning"):
        print(f"warning: {record['warning']}", file=sys.stderr)


def ref_labels(source: Any, refs: Sequence[Any]) -> np.ndarray | None:
    """Labels of ``refs`` known without decoding an image (IDX label files, class folders), or None."""
    try:
        from storage.sources.folder import ImageFolderSource
        from storage.sources.idx import IDXSource
    except ImportError:  # pragma: no cover - the names moved
        return None
    if isinstance(source, IDXSource):
        labels = source._labels()
        return np.asarray([labels[int(r.locator)] for r in refs], dtype=np.int64)
    if isinstance(source, ImageFolderSource):
        index = source._class_index
        return np.asarray([index.get(str(r.locator).split("/", 1)[0], -1) if "/" in str(r.locator) else -1
                           for r in refs], dtype=np.int64)
    return None
