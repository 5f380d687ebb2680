"""Control "attributions" for ROAR (Hooker et al. 2019): maps that ignore the model.

* ``random``: uniform noise, a random pixel ranking that is fixed per sample;
* ``sobel``: the image's edge magnitude, a model-free prior on where the evidence is;
* ``blur_gradient``: the gradient's magnitude blurred with a Gaussian of ``sigma`` pixels. Not
  model-free: it is the control for smoothness. ROAR and ROAD are known to reward spatially blurry
  maps (arXiv 2304.13836); a blurred gradient whose spatial autocorrelation matches another
  method's (:func:`attribution.evaluation.smoothness.match_sigma`) tells whether that method scores
  by where it points or by how smooth it is.

All return ``[B, 1, H, W]`` and share the interface and registry of the real methods; the first
two never depend on the model, which may be None.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attribution, AttributionError
from .registry import register

__all__ = ["BlurredGradient", "RandomControl", "SobelControl", "gaussian_blur", "sobel_magnitude"]


class ModelFreeAttribution(Attribution):
    """A map computed from the pixels (and the sample's seed) alone: ``model`` may be None.

    With a model, ``attribute`` still resolves and reports targets like every method (a given
    ``target`` is validated against it), but the map does not depend on them.
    """

    needs_model = False

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__(model)


@register("random")
class RandomControl(ModelFreeAttribution):
    """Uniform [0, 1) noise per pixel: a random ranking, the ROAR reference line.

    Sample i's noise comes from a CPU ``torch.Generator`` seeded with its seed (from
    ``sample_ids``, else a hash of its pixels), so the map is the same on every device
    and in every batch.
    """

    seeded = True

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        maps = torch.empty((len(seeds), 1, height, width), dtype=torch.float32)
        for i, seed in enumerate(seeds):
            maps[i].uniform_(generator=torch.Generator().manual_seed(seed))
        return maps.to(device=inputs.device, dtype=inputs.dtype)


_CHANNEL_REDUCTIONS = ("l2", "sum", "max")


def sobel_magnitude(images: torch.Tensor, channel_reduction: str = "l2") -> torch.Tensor:
    """Sobel edge magnitude of ``images`` [B, C, H, W] as [B, 1, H, W].

    Per channel c, ``gx_c`` and ``gy_c`` are the 3 x 3 Sobel responses (kernels
    [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8 and its transpose: a unit step gives 1/2
    on each of its two sides), with replicate padding so the image border is no edge.
    Channels are combined as:

    * ``l2`` (default): ``sqrt(sum_c gx_c^2 + gy_c^2)``, the norm of the colour image's
      spatial gradient (rotation invariant, every channel counts);
    * ``sum``: ``sum_c sqrt(gx_c^2 + gy_c^2)``;
    * ``max``: ``max_c sqrt(gx_c^2 + gy_c^2)``.
    """
    if channel_reduction not in _CHANNEL_REDUCTIONS:
        raise AttributionError(
            f"unknown channel_reduction {channel_reduction!r}; choose one of {', '.join(_CHANNEL_REDUCTIONS)}"
        )
    channels = images.shape[1]
    x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)  # [2C, 1, 3, 3]: gx_c, gy_c
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, kernels, groups=channels)  # [B, 2C, H, W]
    squared = grads.square().unflatten(1, (channels, 2)).sum(dim=2)  # [B, C, H, W]
    if channel_reduction == "l2":
        out = squared.sum(dim=1, keepdim=True).sqrt()
    elif channel_reduction == "sum":
        out = squared.sqrt().sum(dim=1, keepdim=True)
    else:
        out = squared.sqrt().amax(dim=1, keepdim=True)
    return out.to(images.dtype)


@register("sobel")
class SobelControl(ModelFreeAttribution):
    """Edge magnitude of the image (:func:`sobel_magnitude`), computed on the model's
    input as given (normalized pixels, if the inputs are normalized)."""

    def __init__(self, model: nn.Module | None = None, channel_reduction: str = "l2") -> None:
        super().__init__(model)
        if channel_reduction not in _CHANNEL_REDUCTIONS:
            raise AttributionError(
                f"unknown channel_reduction {channel_reduction!r}; choose one of {', '.join(_CHANNEL_REDUCTIONS)}"
            )
        self.channel_reduction = channel_reduction

    @property
    def params(self) -> dict[str, Any]:
        return {"channel_reduction": self.channel_reduction}

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return sobel_magnitude(inputs, self.channel_reduction)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``maps`` [B, C, H, W] blurred per channel by a normalized Gaussian of std ``sigma`` pixels.

    Separable, truncated at ``ceil(3 sigma)`` and reflect-padded (replicate where the map is
    smaller than the kernel), so a constant map stays constant and the border is not darkened.
    ``sigma = 0`` returns the maps unchanged.
    """
    sigma = float(sigma)
    if not sigma >= 0 or sigma != sigma or sigma == float("inf"):
        raise AttributionError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if sigma == 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    x = maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                   groups=channels)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                   groups=channels)
    return out.to(maps.dtype)


@register("blur_gradient")
class BlurredGradient(Attribution):
    """The smoothness control: ``|d y_t / d x|`` reduced to its largest channel magnitude per pixel
    (``max_abs``, what ROAR ranks a ``signed_max_abs`` gradient map by), then Gaussian-blurred with
    ``sigma`` pixels (:func:`gaussian_blur`). It points where the gradient points, only smoother."""

    def __init__(self, model: nn.Module | None, sigma: float = 1.0) -> None:
        super().__init__(model)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 <= sigma < float("inf")):
            raise AttributionError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
        self.sigma = float(sigma)

    @property
    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        from .baselines import Gradient

        gradient = Gradient(self.model)._attribute(inputs, targets, seeds)
        return gaussian_blur(gradient.abs().amax(dim=1, keepdim=True), self.sigma)
