"""Pixel perturbation curves (Samek et al. 2017): MoRF, LeRF and a random reference line.

For each fraction k, the top (MoRF), bottom (LeRF) or randomly chosen (random) ``k`` of
each image's pixels are replaced with the per-channel mean, or imputed with ROAD's noisy
linear imputation (``imputation="nli"``, :mod:`.imputation`), and the score is the relative
drop of the softmax probability of the target class::

    drop_k = (p_0 - p_k) / p_0 = 1 - exp(log p_k - log p_0)      (computed in log space)

:func:`perturbation_scores` also returns the class the model predicts for each perturbed
image: the fraction of those that equal the true label is ROAD's accuracy curve (Rong et al.
2022; MoRF: lower is better, LeRF: higher is better).

Sign convention: positive means the probability fell. A good map gives a high MoRF curve
(large area) and a low LeRF curve; the random curve lies between. The target is the class
the model predicts for the unperturbed image unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..base import check_logits, eval_mode, parse_target
from .imputation import DEFAULT_NOISE, IMPUTATIONS, Seeds, fill_tensor, image_seeds, replace
from .removal import EvaluationError, Fill, check_images, check_maps, mask_first, ranking, remove_count

__all__ = ["DEFAULT_FRACTIONS", "PERTURBATION_ORDERS", "PerturbationScores", "auc", "perturbation_curve",
           "perturbation_scores", "random_ranking", "relative_drops"]

#: 0, then 1..10 % in 1 % steps, then 20..100 % in 10 % steps. The leading 0 (drop 0 by
#: definition) anchors the area under the curve at the origin.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, *(i / 100 for i in range(1, 11)), *(i / 10 for i in range(2, 11)))
PERTURBATION_ORDERS = ("morf", "lerf", "random")
Target = None | int | Sequence[int] | torch.Tensor


class PerturbationScores(NamedTuple):
    """Per image and fraction [B, F], on the CPU: the relative probability drop (float64) and the
    class the model predicts for the perturbed image (int64)."""

    drops: torch.Tensor
    predicted: torch.Tensor


def random_ranking(batch: int, height: int, width: int, seed: Seeds = 0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """A random pixel order per image [B, H*W], from a CPU generator seeded per image.

    ``seed`` is one int (image ``i`` gets ``seed + i``) or one seed per image (e.g. from
    sample ids, which makes the order independent of the batch). Same result on any device.
    """
    n = height * width
    order = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s))
                         for s in image_seeds(seed, batch)])
    return order.to(device) if device is not None else order


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    values = [float(f) for f in fractions]
    if not values:
        raise EvaluationError("fractions is empty; give e.g. DEFAULT_FRACTIONS")
    if any(not 0.0 <= f <= 1.0 for f in values):
        raise EvaluationError(f"fractions must lie in [0, 1], got {values}")
    return values


@torch.no_grad()
def perturbation_scores(model: nn.Module, images: torch.Tensor, maps: torch.Tensor | None,
                        fractions: Sequence[float] = DEFAULT_FRACTIONS, fill: Fill = 0.0, order: str = "morf",
                        target: Target = None, seed: Seeds = 0, imputation: str = "mean",
                        noise: float | Sequence[float] = DEFAULT_NOISE) -> PerturbationScores:
    """Per-image relative probability drops and predicted classes, each [B, len(fractions)].

    ``images`` are model inputs [B, C, H, W] and ``fill`` the per-channel mean in the same
    units; ``maps`` [B, H, W] rank the pixels (ignored, and may be None, for
    ``order="random"``). ``seed`` (one int, or one per image, e.g. from sample ids) seeds the
    random order and the imputation noise. The model runs in eval mode; every module's flag is
    restored. Per-image values let a distributed job sum drops and counts over shards.
    """
    if order not in PERTURBATION_ORDERS:
        raise EvaluationError(f"order must be one of {PERTURBATION_ORDERS}, got {order!r}")
    check_images(images)
    if not images.is_floating_point():
        raise EvaluationError(f"images must be float model inputs, got {images.dtype}; preprocess them first")
    batch, _, height, width = images.shape
    fracs = _check_fractions(fractions)
    seeds = image_seeds(seed, batch)
    if order == "random":
        idx = random_ranking(batch, height, width, seeds, images.device)
    else:
        if maps is None:
            raise EvaluationError(f"order={order!r} needs maps [B, H, W]; only order='random' works without")
        maps = check_maps(maps)
        if maps.shape != (batch, height, width):
            raise EvaluationError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}")
        idx = ranking(maps, "top" if order == "morf" else "bottom").to(images.device)
    if imputation not in IMPUTATIONS:
        raise EvaluationError(f"imputation must be one of {IMPUTATIONS}, got {imputation!r}")
    fill_tensor(fill, images)  # a bad fill fails before the first pass
    targets = parse_target(target, batch, images.device)
    drops = torch.empty((batch, len(fracs)), dtype=torch.float64)
    predicted = torch.empty((batch, len(fracs)), dtype=torch.int64)
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
                drops[:, j] = 0.0
                predicted[:, j] = logp0.argmax(dim=1).cpu()
                continue
            mask = mask_first(idx, count).reshape(batch, height, width)
            logp = torch.log_softmax(model(replace(images, mask, fill, imputation, noise, seeds)).double(), dim=1)
            drops[:, j] = (-torch.expm1(logp.gather(1, targets[:, None]).squeeze(1) - base)).cpu()
            predicted[:, j] = logp.argmax(dim=1).cpu()
    return PerturbationScores(drops, predicted)


def relative_drops(model: nn.Module, images: torch.Tensor, maps: torch.Tensor | None,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, fill: Fill = 0.0, order: str = "morf",
                   target: Target = None, seed: Seeds = 0, imputation: str = "mean",
                   noise: float | Sequence[float] = DEFAULT_NOISE) -> torch.Tensor:
    """Per-image relative probability drops [B, len(fractions)] (float64, on the CPU); see
    :func:`perturbation_scores` for the arguments."""
    return perturbation_scores(model, images, maps, fractions, fill, order, target, seed, imputation, noise).drops


def perturbation_curve(model: nn.Module, images: torch.Tensor, maps: torch.Tensor | None,
                       fractions: Sequence[float] = DEFAULT_FRACTIONS, fill: Fill = 0.0, order: str = "morf",
                       target: Target = None, seed: Seeds = 0, imputation: str = "mean",
                       noise: float | Sequence[float] = DEFAULT_NOISE) -> np.ndarray:
    """Mean over images of (p_0 - p_k) / p_0 at each fraction: a float64 array [len(fractions)].

    See :func:`perturbation_scores` for the arguments.
    """
    drops = relative_drops(model, images, maps, fractions, fill, order, target, seed, imputation, noise)
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
