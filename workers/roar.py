"""One ROAR / KAR retrain cell (method x threshold x seed) as a Ray task.

A cell removes the top ``t`` % pixels of every train and test image (ranked by the
method's map), retrains the architecture from scratch with the cell's seed, measures
test accuracy on the equally modified test split, and writes its result as one small
JSON file ``<output>/cells/<method>-t<t>-s<seed>.json`` (atomically). The file is the
commit: a rerun of the job skips every cell whose file exists with the same settings,
and a retried cell (Ray ``max_retries``) rewrites the same result.

Ranking: by the magnitude ``|map|`` of the stored map. The paper's maps
(``signed_max_abs``) carry a sign that says for or against the target; ROAR asks which
pixels matter, whichever way, so the sign is dropped. ``max_abs`` / ``sum_abs`` maps and
the controls are non-negative, so for them this is the map as stored. Ties go to the
lower raster index (:func:`attribution.evaluation.removal.ranking`).

Pixels are replaced in every channel by the per-channel mean of the training images
(uint8 pixel units, rounded), so a removed pixel is ~0 after the model's normalization.
KAR (``keep=True``) keeps the top ``t`` % and replaces all the others.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attribution.evaluation.removal import remove_count, remove_top
from models.registry import ModelSpec
from models.training import train_classifier
from storage.fs import join
from storage.location import Location

NONE = "none"  # the unmodified baseline: no pixel removed (one cell per seed)
CELL_DIR = "cells"
CHUNK = 4096  # images per removal step: bounds the [chunk, H*W] int64 ranking's memory


def cell_name(method: str, t: int, seed: int) -> str:
    """``<method>-t<t>-s<seed>``: the cell's file stem."""
    return f"{method}-t{int(t)}-s{int(seed)}"


def cell_url(output: str, method: str, t: int, seed: int) -> str:
    return join(output, CELL_DIR, f"{cell_name(method, t, seed)}.json")


def channel_mean(images: np.ndarray) -> list[float]:
    """Per-channel mean of uint8 ``[N, H, W, C]`` images, in pixel units (0..255)."""
    return [float(v) for v in images.reshape(-1, images.shape[-1]).mean(axis=0, dtype=np.float64)]


def remove_pixels(images: np.ndarray, maps: np.ndarray, fraction: float, fill: Sequence[float],
                  keep: bool = False) -> np.ndarray:
    """``images`` (uint8 ``[N, H, W, C]``) with the top ``fraction`` of each image's pixels by
    ``|maps|`` (``[N, H, W]``) replaced by ``fill`` in every channel; ``keep`` replaces the rest.

    Works in chunks; returns a new uint8 array, ``images`` is left as it was.
    """
    if images.shape[0] != maps.shape[0] or images.shape[1:3] != maps.shape[1:3]:
        raise ValueError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}: "
                         "need one [H, W] map per image at the image's resolution")
    out = np.empty_like(images)
    for start in range(0, images.shape[0], CHUNK):
        x = torch.from_numpy(np.array(images[start:start + CHUNK])).permute(0, 3, 1, 2)  # a writable copy
        m = torch.from_numpy(np.asarray(maps[start:start + CHUNK], dtype=np.float32)).abs()
        removed = remove_top(x, m, fraction, list(fill), keep=keep)
        out[start:start + CHUNK] = removed.permute(0, 2, 3, 1).numpy()
    return out


def removed_per_image(height: int, width: int, fraction: float, keep: bool) -> int:
    """How many pixels of each image a cell replaces (ROAR: round(t * H * W); KAR: the rest)."""
    count = remove_count(fraction, height * width)
    return height * width - count if keep else count


def cell_arrays(method: str, t: int, train_images: np.ndarray, test_images: np.ndarray,
                train_maps: np.ndarray | None, test_maps: np.ndarray | None, fill: Sequence[float],
                keep: bool) -> tuple[np.ndarray, np.ndarray]:
    """The train and test images a cell trains and evaluates on (unmodified for the baseline)."""
    if method == NONE:
        return train_images, test_images
    if train_maps is None or test_maps is None:
        raise ValueError(f"cell {method}-t{t}: maps for both splits are needed")
    fraction = t / 100.0
    return (remove_pixels(train_images, train_maps, fraction, fill, keep),
            remove_pixels(test_images, test_maps, fraction, fill, keep))


def run_cell(cell: dict[str, Any], config: dict[str, Any], train_images: np.ndarray, train_labels: np.ndarray,
             test_images: np.ndarray, test_labels: np.ndarray, train_maps: np.ndarray | None,
             test_maps: np.ndarray | None) -> dict[str, Any]:
    """Retrain one cell from scratch and commit its result file; returns the result.

    ``config``: ``spec`` (dict), training recipe (``epochs``, ``batch_size``, ``lr``,
    ``optimizer``, ``schedule``, ``weight_decay``, ``augment``), ``kar``, ``fill``,
    ``device``, ``threads``, ``deterministic``, ``output``, ``storage_options``, ``fingerprint``.
    """
    method, t, seed = str(cell["method"]), int(cell["t"]), int(cell["seed"])
    start = time.perf_counter()
    keep = bool(config["kar"])
    spec = ModelSpec.from_dict(config["spec"])
    train_labels, test_labels = np.array(train_labels), np.array(test_labels)  # writable (Ray hands out read-only)
    train_x, test_x = cell_arrays(method, t, train_images, test_images, train_maps, test_maps,
                                  config["fill"], keep)
    _model, metrics = train_classifier(
        spec, train_x, train_labels, epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
        lr=float(config["lr"]), seed=seed, device=config.get("device", "auto"), test_images=test_x,
        test_labels=test_labels, progress=False, optimizer=config["optimizer"], schedule=config["schedule"],
        weight_decay=float(config["weight_decay"]), augment=bool(config["augment"]), eval_each_epoch=False,
        num_threads=config.get("threads") or None, deterministic=bool(config.get("deterministic", True)),
    )
    height, width = train_images.shape[1:3]
    result = {
        "method": method, "t": t, "seed": seed, "mode": "kar" if keep else "roar",
        "accuracy": float(metrics["test_accuracy"]), "epochs": int(config["epochs"]),
        "seconds": time.perf_counter() - start, "train_seconds": float(metrics["seconds"]),
        "train_accuracy": float(metrics["train_accuracy"][-1]), "train_loss": float(metrics["train_loss"][-1]),
        "train_samples": int(train_x.shape[0]), "test_samples": int(test_x.shape[0]),
        "removed_per_image": 0 if method == NONE else removed_per_image(height, width, t / 100.0, keep),
        "device": metrics["device"], "num_threads": int(metrics["num_threads"]),
        "host": socket.gethostname(), "pid": os.getpid(), "fingerprint": config["fingerprint"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Location(config["output"], config.get("storage_options")).put_json(f"{CELL_DIR}/{cell_name(method, t, seed)}.json",
                                                                       result)
    return result


def remote_cell(num_gpus: float, num_cpus: float, max_retries: int):
    """``run_cell`` as a Ray task: one GPU (or ``num_cpus`` CPUs) each, retried ``max_retries`` times
    when its worker dies or it raises an I/O or runtime error (a bad-input ValueError is not retried)."""
    import ray

    return ray.remote(run_cell).options(num_gpus=num_gpus, num_cpus=num_cpus, max_retries=max_retries,
                                        retry_exceptions=[OSError, RuntimeError])
