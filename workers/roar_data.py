"""The images a ROAR / KAR cell trains and evaluates on: pixels removed by rank, or the removal
mask alone (the leakage control), built once per (method, t, input, fill) and shared by the
cell's seeds.

Ranking: by the magnitude ``|map|`` of the stored map. The paper's maps (``signed_max_abs``)
carry a sign that says for or against the target; ROAR asks which pixels matter, whichever
way, so the sign is dropped. ``max_abs`` / ``sum_abs`` maps and the controls are non-negative,
so for them this is the map as stored. Ties go to the lower raster index
(:func:`attribution.evaluation.removal.ranking`).

Fill: ``mean`` writes the per-channel mean of the training images (uint8, rounded), so a
removed pixel is ~0 after the model's normalization; ``nli`` imputes removed pixels from their
kept neighbours (ROAD, :mod:`attribution.evaluation.imputation`) in pixel units, with noise of
std ``noise x std_c x 255`` (``noise`` in model-input units, as ROAD and jobs.perturb give it),
seeded per sample id, then rounded to uint8.

Mask input: a uint8 image that is 255 where pixels were removed and 0 elsewhere, in every
channel: no pixel of the image survives, only *where* the method removed them. If a model
learns the class from that as well as ROAR's model does from the remaining pixels, ROAR's
accuracy says nothing about the removed pixels' information.

Tested by tests/workers/test_roar.py and tests/jobs/test_roar.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attribution.evaluation.removal import remove_count, removed_mask
from attribution.evaluation.imputation import replace

NONE = "none"  # the unmodified baseline: no pixel removed (one cell per seed)
PIXELS, MASK = "pixels", "mask"
CHUNK = 1024  # images per removal step: bounds the [chunk, H*W] int64 ranking's memory


@dataclass(frozen=True)
class Removal:
    """How a cell removes pixels: the fraction, ROAR or KAR, what the model then sees, and the fill."""

    fraction: float
    keep: bool = False  # KAR: keep the top fraction, remove the rest
    input: str = PIXELS  # "pixels": the image with the pixels filled; "mask": the removal mask alone
    fill: str = "mean"  # "mean" or "nli" (pixels only)
    mean: tuple[float, ...] = (0.0,)  # per-channel train mean, pixel units 0..255
    noise: tuple[float, ...] = (0.0,)  # nli noise std per channel, pixel units

    def apply(self, images: torch.Tensor, removed: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """uint8 ``[B, H, W, C]`` images with the ``removed`` ``[B, H, W]`` pixels removed (or the mask image)."""
        if self.input == MASK:
            return (removed[..., None].to(torch.uint8) * 255).expand(*removed.shape, images.shape[-1]).contiguous()
        x = images.permute(0, 3, 1, 2)
        out = replace(x, removed, list(self.mean), self.fill, list(self.noise), list(seeds))
        return out.permute(0, 2, 3, 1).contiguous()


def channel_mean(images: np.ndarray) -> list[float]:
    """Per-channel mean of uint8 ``[N, H, W, C]`` images, in pixel units (0..255)."""
    return [float(v) for v in images.reshape(-1, images.shape[-1]).mean(axis=0, dtype=np.float64)]


def pixel_noise(noise: float, spec_std: Sequence[float]) -> tuple[float, ...]:
    """ROAD's noise std given in model-input units, per channel in uint8 pixel units."""
    return tuple(float(noise) * float(s) * 255.0 for s in spec_std)


def removed_images(images: np.ndarray, maps: np.ndarray, removal: Removal, seeds: Sequence[int]) -> np.ndarray:
    """``images`` (uint8 ``[N, H, W, C]``) with the top ``removal.fraction`` of each image's pixels by
    ``|maps|`` (``[N, H, W]``) removed as ``removal`` says (KAR: all but those). Works in chunks;
    returns a new uint8 array, ``images`` is left as it was."""
    if images.shape[0] != maps.shape[0] or images.shape[1:3] != maps.shape[1:3]:
        raise ValueError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}: "
                         "need one [H, W] map per image at the image's resolution")
    out = np.empty_like(images)
    for start in range(0, images.shape[0], CHUNK):
        x = torch.from_numpy(np.array(images[start:start + CHUNK]))  # a writable copy
        m = torch.from_numpy(np.asarray(maps[start:start + CHUNK], dtype=np.float32)).abs()
        removed = removed_mask(m, removal.fraction, "top", removal.keep)
        out[start:start + CHUNK] = removal.apply(x, removed, seeds[start:start + CHUNK]).numpy()
    return out


def remove_pixels(images: np.ndarray, maps: np.ndarray, fraction: float, fill: Sequence[float],
                  keep: bool = False) -> np.ndarray:
    """Mean fill of the top ``fraction`` by ``|maps|`` (KAR with ``keep``): :func:`removed_images`' simplest case."""
    return removed_images(images, maps, Removal(fraction, keep, mean=tuple(fill)), [0] * images.shape[0])


def removed_per_image(height: int, width: int, fraction: float, keep: bool) -> int:
    """How many pixels of each image a cell replaces (ROAR: round(t * H * W); KAR: the rest)."""
    count = remove_count(fraction, height * width)
    return height * width - count if keep else count


class RandomRemoval:
    """A fresh random mask on every read of a training batch (ROAR's ``random`` control without a
    fixed per-image mask a model could memorize): ``models.training`` calls it per batch with its
    own seeded generator, so a retrain still repeats exactly."""

    def __init__(self, removal: Removal) -> None:
        self.removal = removal

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size, height, width, _ = batch.shape
        scores = torch.rand((size, height, width), generator=generator)
        removed = removed_mask(scores, self.removal.fraction, "top", self.removal.keep)
        seeds = torch.randint(0, 2**31 - 1, (size,), generator=generator).tolist()
        return self.removal.apply(batch, removed, seeds)


def cell_images(method: str, removal: Removal | None, images: np.ndarray, maps: np.ndarray | None,
                seeds: Sequence[int]) -> np.ndarray:
    """The images one split of a cell sees: unmodified for the baseline, else :func:`removed_images`."""
    if method == NONE or removal is None:
        return images
    if maps is None:
        raise ValueError(f"cell {method}: maps are needed to remove pixels")
    return removed_images(images, maps, removal, seeds)


def describe(removal: Removal | None) -> dict[str, Any]:
    """The removal as plain data, for a cell's result record."""
    if removal is None:
        return {"input": PIXELS, "fill": "-"}
    return {"input": removal.input, "fill": removal.fill if removal.input == PIXELS else "-"}
