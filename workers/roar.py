"""One ROAR / KAR retrain cell (method x threshold x seed x what the model sees) as a Ray task.

A cell trains the architecture from scratch, with the cell's seed and the checkpoint's recipe,
on train images whose top ``t`` % pixels (by the method's map) were removed, measures test
accuracy on equally modified test images, and writes its result as one small JSON file
``<output>/cells/<name>.json`` (atomically). The file is the commit: a rerun of the job skips
every cell whose file exists with the same settings, and a retried cell (the job runner's retry
policy, jobs.runtime.runner) rewrites the same result.

A cell's ``input`` is ``pixels`` (ROAR: the image with the pixels filled by ``fill``, mean or
nli) or ``mask`` (the leakage control: the binary removal mask alone, same budget). What the
images are is :mod:`workers.roar_data`; they are built once per (method, t, input, fill) by
:func:`prepare` and shared by the seeds.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.registry import ModelSpec
from models.training import train_classifier
from storage.io.fs import join
from storage.io.location import Location
from workers.identity import worker_name
from workers.roar_data import MASK, NONE, PIXELS, RandomRemoval, Removal, cell_images, describe, removed_per_image

CELL_DIR = "cells"
__all__ = ["CELL_DIR", "MASK", "NONE", "PIXELS", "cell_name", "cell_removal", "cell_url", "prepare", "run_cell"]


def cell_name(method: str, t: int, seed: int, input: str = PIXELS, fill: str = "mean") -> str:
    """``<method>-t<t>-s<seed>`` for the baseline, then ``-<fill>`` (ROAR) or ``-mask`` (the control)."""
    stem = f"{method}-t{int(t)}-s{int(seed)}"
    if method == NONE:
        return stem
    return f"{stem}-{MASK}" if input == MASK else f"{stem}-{fill}"


def cell_url(output: str, method: str, t: int, seed: int, input: str = PIXELS, fill: str = "mean") -> str:
    return join(output, CELL_DIR, f"{cell_name(method, t, seed, input, fill)}.json")


def cell_removal(cell: dict[str, Any], config: dict[str, Any]) -> Removal | None:
    """The cell's :class:`Removal` (None for the unmodified baseline)."""
    if cell["method"] == NONE:
        return None
    return Removal(int(cell["t"]) / 100.0, bool(config["kar"]), cell.get("input", PIXELS), cell.get("fill", "mean"),
                   tuple(config["fill"]), tuple(config.get("noise") or (0.0,) * len(config["fill"])))


def prepare(cell: dict[str, Any], config: dict[str, Any], train_images: np.ndarray, train_maps: np.ndarray | None,
            train_seeds: Sequence[int], test_images: np.ndarray, test_maps: np.ndarray | None,
            test_seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The (train, test) images of every cell that shares this cell's method, t, input and fill."""
    import torch

    torch.set_num_threads(int(config.get("threads") or 1))
    removal = cell_removal(cell, config)
    per_read = config.get("per_read") and cell["method"] == "random"
    train = train_images if per_read else cell_images(cell["method"], removal, train_images, train_maps, train_seeds)
    return train, cell_images(cell["method"], removal, test_images, test_maps, test_seeds)


def run_cell(cell: dict[str, Any], config: dict[str, Any], train_x: np.ndarray, train_labels: np.ndarray,
             test_x: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
    """Retrain one cell from scratch on its prepared images (:func:`prepare`) and commit its result
    file; returns the result.

    ``config``: ``spec`` (dict), training recipe (``epochs``, ``batch_size``, ``lr``,
    ``optimizer``, ``schedule``, ``weight_decay``, ``augment``), ``kar``, ``fill`` (the per-channel
    mean), ``noise``, ``per_read``, ``device``, ``threads``, ``deterministic``, ``output``,
    ``storage_options``, ``fingerprint``, ``trust_code`` (the driver's --trust-code).
    """
    method, t, seed = str(cell["method"]), int(cell["t"]), int(cell["seed"])
    start = time.perf_counter()
    keep = bool(config["kar"])
    spec = ModelSpec.from_dict(config["spec"])
    train_labels, test_labels = np.array(train_labels), np.array(test_labels)  # writable (Ray hands out read-only)
    removal = cell_removal(cell, config)
    per_read = bool(config.get("per_read")) and method == "random" and removal is not None
    _model, metrics = train_classifier(
        spec, train_x, train_labels, epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
        lr=float(config["lr"]), seed=seed, device=config.get("device", "auto"), test_images=test_x,
        test_labels=test_labels, progress=False, optimizer=config["optimizer"], schedule=config["schedule"],
        weight_decay=float(config["weight_decay"]), augment=bool(config["augment"]), eval_each_epoch=False,
        num_threads=config.get("threads") or None, deterministic=bool(config.get("deterministic", True)),
        batch_transform=RandomRemoval(removal) if per_read else None, trust_code=tuple(config.get("trust_code") or ()),
    )
    height, width = train_x.shape[1:3]
    result = {
        "method": method, "t": t, "seed": seed, "mode": "kar" if keep else "roar", **describe(removal),
        "per_read": per_read,
        "accuracy": float(metrics["test_accuracy"]), "epochs": int(config["epochs"]),
        "seconds": time.perf_counter() - start, "train_seconds": float(metrics["seconds"]),
        "train_accuracy": float(metrics["train_accuracy"][-1]), "train_loss": float(metrics["train_loss"][-1]),
        "train_samples": int(train_x.shape[0]), "test_samples": int(test_x.shape[0]),
        "removed_per_image": 0 if method == NONE else removed_per_image(height, width, t / 100.0, keep),
        "device": metrics["device"], "num_threads": int(metrics["num_threads"]),
        "host": socket.gethostname(), "pid": os.getpid(), "worker": worker_name(), "fingerprint": config["fingerprint"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    name = cell_name(method, t, seed, result["input"], result["fill"])
    Location(config["output"], config.get("storage_options") or {}).put_json(f"{CELL_DIR}/{name}.json", result)
    return result
