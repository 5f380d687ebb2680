"""Pixel perturbation curves (Samek et al. 2017): MoRF, LeRF and a random reference line.

For each fraction k, the top (MoRF), bottom (LeRF) or randomly chosen (random) ``k`` of
each image's pixels are replaced with the per-channel mean (see :mod:`.removal`), and the
score is the relative drop of the softmax probability of the target class::

    drop_k = (p_0 - p_k) / p_0 = 1 - exp(log p_k - log p_0)      (computed in log space)

Sign convention: positive means the probability fell. A good map gives a high MoRF curve
(large area) and a low LeRF curve; the random curve lies between. The target is the class
the model predicts for the unperturbed image unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torch import nn

from ..base import check_logits, eval_mode, parse_target
from .removal import (EvaluationError, Fill, check_images, check_maps, fill_tensor, mask_first, ranking,
                      remove_count)

__all__ = ["DEFAULT_FRACTIONS", "PERTURBATION_ORDERS", "auc", "perturbation_curve", "random_ranking",
           "relative_drops"]

#: 0, then 1..10 % in 1 % steps, then 20..100 % in 10 % steps. The leading 0 (drop 0 by
#: definition) anchors the area under the curve at the origin.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, *(i / 100 for i in range(1, 11)), *(i / 10 for i in range(2, 11)))
PERTURBATION_ORDERS = ("morf", "lerf", "random")
Seeds = Union[int, Sequence[int], torch.Tensor]


def random_ranking(batch: int, height: int, width: int, seed: Seeds = 0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """A random pixel order per image [B, H*W], from a CPU generator seeded per image.

    ``seed`` is one int (image ``i`` gets ``seed + i``) or one seed per image (e.g. from
    sample ids, which makes the order independent of the batch). Same result on any device.
    """
    if isinstance(seed, bool):
        raise EvaluationError(f"seed must be an int or one int per image, got {seed!r}")
    if isinstance(seed, int):
        seeds = [seed + i for i in range(batch)]
    else:
        seeds = [int(s) for s in (seed.tolist() if isinstance(seed, torch.Tensor) else seed)]
        if len(seeds) != batch:
            raise EvaluationError(f"seed has {len(seeds)} entries for a batch of {batch}; give one per image")
    n = height * width
    order = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return order.to(device) if device is not None else order


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    values = [float(f) for f in fractions]
    if not values:
        raise EvaluationError("fractions is empty; give e.g. DEFAULT_FRACTIONS")
    if any(not 0.0 <= f <= 1.0 for f in values):
        raise EvaluationError(f"fractions must lie in [0, 1], got {values}")
    return values


@torch.no_grad()
def relative_drops(model: nn.Module, images: torch.Tensor, maps: torch.Tensor | None,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, fill: Fill = 0.0, order: str = "morf",
                   target: None | int | Sequence[int] | torch.Tensor = None, seed: Seeds = 0) -> torch.Tensor:
    """Per-image relative probability drops [B, len(fractions)] (float64, on the CPU).

    ``images`` are model inputs [B, C, H, W] and ``fill`` the per-channel mean in the same
    units; ``maps`` [B, H, W] rank the pixels (ignored, and may be None, for
    ``order="random"``). The model runs in eval mode; every module's flag is restored.
    Per-image values let a distributed job sum drops and counts over shards.
    """
    if order not in PERTURBATION_ORDERS:
        raise EvaluationError(f"order must be one of {PERTURBATION_ORDERS}, got {order!r}")
    check_images(images)
    if not images.is_floating_point():
        raise EvaluationError(f"images must be float model inputs, got {images.dtype}; preprocess them first")
    batch, _, height, width = images.shape
    fracs = _check_fractions(fractions)
    if order == "random":
        idx = random_ranking(batch, height, width, seed, images.device)
    else:
        if maps is None:
            raise EvaluationError(f"order={order!r} needs maps [B, H, W]; only order='random' works without")
        maps = check_maps(maps)
        if maps.shape != (batch, height, width):
            raise EvaluationError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}")
        idx = ranking(maps, "top" if order == "morf" else "bottom").to(images.device)
    fill_t = fill_tensor(fill, images)
    targets = parse_target(target, batch, images.device)
    out = torch.empty((batch, len(fracs)), dtype=torch.float64)
    with eval_mode(model):
        logp0 = torch.log_softmax(check_logits(model(images), batch).double(), dim=1)
        if targets is None:
            targets = logp0.argmax(dim=1)
        if bool((targets >= logp0.shape[1]).any()):
            raise EvaluationError(f"target class {int(targets.max())} is out of range for {logp0.shape[1]} classes")
        base = logp0.gather(1, targets[:, None]).squeeze(1)
        for j, fraction in enumerate(fracs):
            count = remove_count(fraction, height * width)
            if count == 0:  # nothing removed: the unperturbed pass, so exactly 0 on every CPU
                out[:, j] = 0.0
                continue
            mask = mask_first(idx, count).reshape(batch, 1, height, width)
            logp = torch.log_softmax(model(torch.where(mask, fill_t, images)).double(), dim=1)
            out[:, j] = (-torch.expm1(logp.gather(1, targets[:, None]).squeeze(1) - base)).cpu()
    return out


def perturbation_curve(model: nn.Module, images: torch.Tensor, maps: torch.Tensor | None,
                       fractions: Sequence[float] = DEFAULT_FRACTIONS, fill: Fill = 0.0, order: str = "morf",
                       target: None | int | Sequence[int] | torch.Tensor = None, seed: Seeds = 0) -> np.ndarray:
    """Mean over images of (p_0 - p_k) / p_0 at each fraction: a float64 array [len(fractions)].

    See :func:`relative_drops` for the arguments.
    """
    drops = relative_drops(model, images, maps, fractions, fill, order, target, seed)
    return drops.mean(dim=0).numpy()


def auc(fractions: Sequence[float], values: Sequence[float] | np.ndarray) -> float:
    """Area under a curve by the trapezoid rule over the fraction axis (fractions ascending).

    With :data:`DEFAULT_FRACTIONS` the area spans [0, 1]; a curve on a shorter range is
    not rescaled, so compare areas over the same schedule only.
    """
    x = np.asarray(_check_fractions(fractions), dtype=np.float64)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if y.shape != x.shape:
        raise EvaluationError(f"values has {y.size} entries for {x.size} fractions")
    if np.any(np.diff(x) <= 0):
        raise EvaluationError(f"fractions must be strictly increasing for an area, got {x.tolist()}")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
