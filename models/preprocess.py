"""Turn raw uint8 images into the tensor a model expects, and back for plotting.

Preprocessing belongs to the model (its :class:`ModelSpec`), not to the data reader:
readers hand out uint8 ``[N, H, W, C]`` arrays, and every job calls :func:`preprocess`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from models.registry import ModelError, ModelSpec


def preprocess(spec: ModelSpec, images: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` (numpy or torch; ``[N, H, W]`` for one channel) -> float32
    ``[N, C, H', W']``, resized to ``spec.input_size`` (bilinear, antialiased; only when
    the size differs) and normalized with ``spec.mean`` / ``spec.std``.

    ``device`` moves the uint8 data before converting, so the float work runs there.
    """
    if isinstance(images, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (np.frombuffer, mmap) are fine: x is only read
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(images))
    else:
        x = images
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise ModelError(f"images must be uint8 pixels in [0, 255], got dtype {x.dtype}")
    if x.ndim == 3 and spec.in_channels == 1:
        x = x.unsqueeze(-1)
    if x.ndim != 4 or x.shape[-1] != spec.in_channels:
        raise ModelError(
            f"images must be [N, H, W, {spec.in_channels}] for arch {spec.arch!r}, got shape {tuple(x.shape)}"
        )
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != spec.input_size and x.shape[0] > 0:
        x = F.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def denormalize(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Invert the normalization of :func:`preprocess`: float ``[N, C, H, W]`` -> pixels in
    [0, 1], same layout (clamped, ready for ``imshow`` after a permute)."""
    if x.ndim != 4 or x.shape[1] != spec.in_channels:
        raise ModelError(f"expected [N, {spec.in_channels}, H, W], got shape {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp_(0.0, 1.0)
