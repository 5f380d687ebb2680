"""How smooth a map is, and the blur that makes one method's maps as smooth as another's.

ROAR and ROAD reward spatially blurry maps (arXiv 2304.13836): removing a blob changes an image
less predictably than removing scattered pixels, whatever the model used. To tell a method's
ROAR score from its smoothness, the ``blur_gradient`` control (attribution.controls) blurs the
gradient until its maps are exactly as autocorrelated as the method's; :func:`match_sigma` picks
that sigma.

Definition. A map is compared by what ROAR ranks, ``|map|`` per pixel. Each map is standardized
(zero mean, unit variance over its pixels); its autocorrelation at lag l is the mean product of
standardized values l pixels apart, horizontally and vertically pooled; the map's smoothness is
the mean over lags 1..``max_lag`` (radially averaged along the two axes), and a set's smoothness
is the mean over its maps. A constant map (no variance) is skipped. White noise scores ~0, a map
blurred by a wide Gaussian approaches 1.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import EvaluationError

__all__ = ["DEFAULT_MAX_LAG", "autocorrelation", "match_sigma", "smoothness"]

DEFAULT_MAX_LAG = 2


def _as_maps(maps: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).to(torch.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or min(x.shape[-2:]) < 2:
        raise EvaluationError(f"maps must be [N, H, W] (or [N, 1, H, W]) with H, W >= 2, got {tuple(x.shape)}")
    return x


def autocorrelation(maps: np.ndarray | torch.Tensor, max_lag: int = DEFAULT_MAX_LAG) -> torch.Tensor:
    """Per map [N]: the mean autocorrelation of ``|map|`` at lags 1..``max_lag`` (module docstring);
    NaN for a constant map."""
    x = _as_maps(maps).abs()
    if not 1 <= max_lag < min(x.shape[-2:]):
        raise EvaluationError(f"max_lag must be in 1..{min(x.shape[-2:]) - 1} for {tuple(x.shape[-2:])} maps, "
                              f"got {max_lag}")
    centered = x - x.mean(dim=(-2, -1), keepdim=True)
    std = centered.square().mean(dim=(-2, -1)).sqrt()
    z = centered / std.clamp_min(1e-300)[:, None, None]
    lags = []
    for lag in range(1, max_lag + 1):
        horizontal = (z[..., :, lag:] * z[..., :, :-lag]).flatten(1)
        vertical = (z[..., lag:, :] * z[..., :-lag, :]).flatten(1)
        lags.append(torch.cat([horizontal, vertical], dim=1).mean(dim=1))
    out = torch.stack(lags).mean(dim=0)
    return torch.where(std > 0, out, torch.full_like(out, float("nan")))


def smoothness(maps: np.ndarray | torch.Tensor, max_lag: int = DEFAULT_MAX_LAG) -> float:
    """The set's smoothness: the mean of :func:`autocorrelation` over its non-constant maps."""
    values = autocorrelation(maps, max_lag)
    values = values[~values.isnan()]
    if values.numel() == 0:
        raise EvaluationError("every map is constant: smoothness is undefined")
    return float(values.mean())


def match_sigma(source: np.ndarray | torch.Tensor, target: float, max_lag: int = DEFAULT_MAX_LAG,
                max_sigma: float = 8.0, tolerance: float = 1e-3) -> dict[str, float]:
    """The Gaussian sigma (pixels) that makes ``source`` maps (|.|, then blurred) as smooth as
    ``target`` (:func:`smoothness` of the reference maps), by bisection on [0, ``max_sigma``].

    Smoothness rises with sigma, so bisection finds the one crossing. A target at or below the
    unblurred source's smoothness gives sigma 0 (the source is already as smooth), one above what
    ``max_sigma`` reaches gives ``max_sigma``; ``reached`` says which smoothness the answer has.
    """
    from attribution.controls import gaussian_blur

    x = _as_maps(source).abs()[:, None]

    def at(sigma: float) -> float:
        return smoothness(gaussian_blur(x, sigma), max_lag)

    low, high = 0.0, float(max_sigma)
    base, top = at(low), at(high)
    if target <= base:
        return {"sigma": 0.0, "target": float(target), "reached": base, "unblurred": base}
    if target >= top:
        return {"sigma": high, "target": float(target), "reached": top, "unblurred": base}
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if at(middle) < target:
            low = middle
        else:
            high = middle
    sigma = 0.5 * (low + high)
    return {"sigma": sigma, "target": float(target), "reached": at(sigma), "unblurred": base}
