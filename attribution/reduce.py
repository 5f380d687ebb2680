"""Reductions from a per-channel map [B, C, H, W] to one value per pixel [B, H, W]."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import AttributionError


def signed_max_abs(maps: torch.Tensor) -> torch.Tensor:
    """Per pixel, the channel value of largest magnitude, sign kept (the paper's choice)."""
    index = maps.abs().argmax(dim=1, keepdim=True)
    return maps.gather(1, index).squeeze(1)


def max_abs(maps: torch.Tensor) -> torch.Tensor:
    """Per pixel, the largest magnitude over channels."""
    return maps.abs().amax(dim=1)


def sum_abs(maps: torch.Tensor) -> torch.Tensor:
    """Per pixel, the sum of magnitudes over channels."""
    return maps.abs().sum(dim=1)


REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "signed_max_abs": signed_max_abs,
    "max_abs": max_abs,
    "sum_abs": sum_abs,
}


def reduce_map(maps: torch.Tensor, how: str = "signed_max_abs") -> torch.Tensor:
    """Reduce [B, C, H, W] maps to [B, H, W] with the named reduction."""
    if maps.dim() != 4:
        raise AttributionError(f"maps must have shape [B, C, H, W], got {tuple(maps.shape)}")
    try:
        return REDUCTIONS[how](maps)
    except KeyError:
        raise AttributionError(
            f"unknown reduction {how!r}; choose one of {', '.join(REDUCTIONS)}"
        ) from None
