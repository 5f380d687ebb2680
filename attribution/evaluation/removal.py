"""Pixel removal by relevance rank: shared by ROAR / KAR and MoRF / LeRF pixel perturbation.

A *ranking* lists each image's pixels most relevant first by its single-channel map value
(signed: reduce with ``"max_abs"`` first to rank by magnitude). Ties are broken by the
pixel's raster index (row-major ``h * W + w``), lower index first, so a ranking never
depends on the device, the sort backend or the rest of the batch.

Removing a pixel replaces it in every channel: by default with the per-channel dataset mean
``fill``, given in the same units as the images (e.g. about 0 for standardized inputs), or with
ROAD's noisy linear imputation (``imputation="nli"``, :mod:`.imputation`).
``round`` here means round half up: ``count = floor(fraction * H * W + 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import EvaluationError
from .imputation import DEFAULT_NOISE, Fill, Seeds, fill_tensor, replace

__all__ = ["ORDERS", "EvaluationError", "check_images", "check_maps", "fill_tensor", "mask_first", "ranking",
           "remove", "remove_bottom", "remove_count", "remove_ranked", "remove_top", "removed_mask"]

ORDERS = ("top", "bottom")


def check_maps(maps: torch.Tensor) -> torch.Tensor:
    """Finite float maps [B, H, W], or a clear error (the ranking's input)."""
    if not isinstance(maps, torch.Tensor):
        raise EvaluationError(f"maps must be a torch.Tensor [B, H, W], got {type(maps).__name__}")
    if maps.dim() != 3:
        raise EvaluationError(
            f"maps must have shape [B, H, W] (one value per pixel), got {tuple(maps.shape)}; "
            "reduce [B, C, H, W] maps with attribution.reduce_map(maps, 'max_abs') first")
    if not maps.is_floating_point():
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise EvaluationError("maps hold NaN or inf values; a ranking needs finite relevance scores")
    return maps


def ranking(maps: torch.Tensor, order: str = "top") -> torch.Tensor:
    """Flat pixel indices [B, H*W] per image, most relevant first (``order="top"``).

    ``order="bottom"`` is the exact reverse (least relevant first), so the bottom ``n``
    pixels are always the complement of the top ``H*W - n``: LeRF removes what KAR keeps.
    Ties: lower raster index ranks higher (a stable descending sort).
    """
    maps = check_maps(maps)
    if order not in ORDERS:
        raise EvaluationError(f"order must be one of {ORDERS}, got {order!r}")
    flat = maps.reshape(maps.shape[0], -1)
    # A stable sort keeps equal values in index order; +0.0 turns -0.0 into 0.0 so they tie.
    idx = torch.sort(flat + 0.0, dim=1, descending=True, stable=True).indices
    return idx if order == "top" else idx.flip(1)


def remove_count(fraction: float, num_pixels: int) -> int:
    """How many pixels a fraction means: round half up of ``fraction * num_pixels``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise EvaluationError(f"fraction must be a number in [0, 1], got {fraction!r}")
    return min(num_pixels, int(math.floor(fraction * num_pixels + 0.5)))


def mask_first(order: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask [B, N] that is True at the first ``count`` indices of each row of ``order``."""
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :count], True)


def remove_ranked(images: torch.Tensor, order: torch.Tensor, count: int, fill: Fill, *, imputation: str = "mean",
                  noise: float | Sequence[float] = DEFAULT_NOISE, seed: Seeds = 0) -> torch.Tensor:
    """Replace the first ``count`` pixels of each row of ``order`` [B, H*W], in all channels, with
    ``fill`` or by ``imputation="nli"`` (``noise`` and per-image ``seed`` as in :mod:`.imputation`).

    Returns a new tensor; ``images`` is left as it was.
    """
    check_images(images)
    batch, _, height, width = images.shape
    if order.shape != (batch, height * width):
        raise EvaluationError(f"order must have shape [B, H*W] = {[batch, height * width]}, got {list(order.shape)}")
    mask = mask_first(order.to(images.device), count).reshape(batch, height, width)
    return replace(images, mask, fill, imputation, noise, seed)


def check_images(images: torch.Tensor) -> None:
    """An image batch must be [B, C, H, W]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise EvaluationError(f"images must be a tensor [B, C, H, W], got {shape}; "
                              "permute channel-last arrays with .permute(0, 3, 1, 2)")


def check_pair(images: torch.Tensor, maps: torch.Tensor) -> None:
    """One [H, W] map per image."""
    check_images(images)
    maps = check_maps(maps)
    if maps.shape != (images.shape[0], *images.shape[2:]):
        raise EvaluationError(
            f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}; "
            "need one [H, W] map per image")


def removed_mask(maps: torch.Tensor, fraction: float, order: str = "top", keep: bool = False) -> torch.Tensor:
    """Boolean [B, H, W]: the pixels :func:`remove` replaces (ROAR's mask-only control trains on it)."""
    maps = check_maps(maps)
    idx = ranking(maps, order)
    count = remove_count(fraction, idx.shape[1])
    if keep:
        idx, count = idx.flip(1), idx.shape[1] - count
    return mask_first(idx, count).reshape(maps.shape)


def remove(images: torch.Tensor, maps: torch.Tensor, fraction: float, fill: Fill, order: str = "top",
           keep: bool = False, *, imputation: str = "mean", noise: float | Sequence[float] = DEFAULT_NOISE,
           seed: Seeds = 0) -> torch.Tensor:
    """Replace ``round(fraction * H * W)`` pixels per image, ranked by ``maps``, with ``fill`` (or
    by ``imputation="nli"``).

    ``order="top"`` removes the most relevant pixels (ROAR, MoRF), ``"bottom"`` the least
    relevant (LeRF). ``keep=True`` keeps those pixels and replaces all the others instead
    (KAR with ``order="top"``).
    """
    check_pair(images, maps)
    mask = removed_mask(maps, fraction, order, keep).to(images.device)
    return replace(images, mask, fill, imputation, noise, seed)


def remove_top(images: torch.Tensor, maps: torch.Tensor, fraction: float, fill: Fill, keep: bool = False, *,
               imputation: str = "mean", noise: float | Sequence[float] = DEFAULT_NOISE, seed: Seeds = 0
               ) -> torch.Tensor:
    """ROAR / MoRF: replace the top ``fraction`` of pixels; ``keep=True`` is KAR (replace the rest)."""
    return remove(images, maps, fraction, fill, "top", keep, imputation=imputation, noise=noise, seed=seed)


def remove_bottom(images: torch.Tensor, maps: torch.Tensor, fraction: float, fill: Fill, *,
                  imputation: str = "mean", noise: float | Sequence[float] = DEFAULT_NOISE, seed: Seeds = 0
                  ) -> torch.Tensor:
    """LeRF: replace the bottom (least relevant) ``fraction`` of pixels."""
    return remove(images, maps, fraction, fill, "bottom", imputation=imputation, noise=noise, seed=seed)
