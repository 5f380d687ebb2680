"""Per-sample similarity of an original map and a randomized one (Adebayo et al. 2018).

Both maps are first divided by their own max |.| (so they lie in [-1, 1]; an all-zero
map stays zero). Four scores per sample, each 1.0 for identical maps:

* ``spearman_abs``: Spearman rank correlation of |map| (average ranks for ties);
* ``spearman``: Spearman rank correlation of the signed map;
* ``ssim``: structural similarity of the normalized signed maps, with the standard
  Wang et al. settings (Gaussian window, sigma 1.5, population covariance) and
  ``data_range`` 2 when either map has a negative value (range [-1, 1]), else 1 ([0, 1]);
* ``hog_pearson``: Pearson correlation of HOG features of the normalized maps. HOG uses
  9 unsigned orientations, a 7 x 7 grid of cells (4 px cells at 28 x 28, 32 px at
  224 x 224, so both sizes see the same coarse layout), 2 x 2 cells per block, L2-Hys.
  Unsigned orientations make it blind to a global sign flip.

A score that is undefined (a constant map) is NaN, never a made-up 0.
"""

from __future__ import annotations

import warnings
from typing import Union

import numpy as np
import torch

from .errors import EvaluationError

__all__ = ["HOG_CELLS", "METRICS", "compare", "hog_features", "hog_pearson", "normalize", "pearson_rows",
           "spearman", "ssim"]

ArrayLike = Union[np.ndarray, torch.Tensor]
METRICS = ("spearman_abs", "spearman", "ssim", "hog_pearson")
HOG_CELLS = 7  # cells per image side


def _as_maps(maps: ArrayLike, what: str) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3:
        raise EvaluationError(f"{what} must have shape [B, H, W], got {arr.shape}; "
                              "reduce [B, C, H, W] maps with attribution.reduce_map first")
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{what} holds NaN or inf values")
    return arr


def normalize(maps: ArrayLike) -> np.ndarray:
    """Divide each map [B, H, W] by its max |.|; all-zero maps stay zero."""
    arr = _as_maps(maps, "maps")
    scale = np.abs(arr).reshape(arr.shape[0], -1).max(axis=1)
    scale[scale == 0] = 1.0
    return arr / scale[:, None, None]


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a and b [B, N]; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denom
    r[denom == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Spearman rank correlation per sample of maps [B, H, W] (average ranks for ties)."""
    x, y = _as_maps(a, "a"), _as_maps(b, "b")
    if x.shape != y.shape:
        raise EvaluationError(f"maps to compare differ in shape: {x.shape} vs {y.shape}")
    flat = (x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1))
    from scipy.stats import rankdata  # scipy and scikit-image load on use: jobs import this package to start

    return pearson_rows(rankdata(flat[0], axis=1), rankdata(flat[1], axis=1))


def ssim(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """SSIM per sample of max-|.|-normalized maps [B, H, W] (settings in the module docstring)."""
    from skimage.metrics import structural_similarity

    x, y = normalize(a), normalize(b)
    if x.shape != y.shape:
        raise EvaluationError(f"maps to compare differ in shape: {x.shape} vs {y.shape}")
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        data_range = 2.0 if (x[i].min() < 0 or y[i].min() < 0) else 1.0
        out[i] = structural_similarity(x[i], y[i], data_range=data_range, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False)
    return out


def hog_features(maps: ArrayLike, cells: int = HOG_CELLS) -> np.ndarray:
    """HOG descriptors [B, F] of max-|.|-normalized maps (parameters in the module docstring)."""
    from skimage.feature import hog

    x = normalize(maps)
    height, width = x.shape[1:]
    cell = (height // cells, width // cells)
    if min(cell) < 2:
        raise EvaluationError(f"maps of {height} x {width} px are too small for {cells} HOG cells per side "
                              f"(need >= {2 * cells} px)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-zero map divides 0 by 0 in the block norm
        return np.stack([hog(m, orientations=9, pixels_per_cell=cell, cells_per_block=(2, 2),
                             block_norm="L2-Hys", feature_vector=True) for m in x])


def hog_pearson(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pearson correlation per sample of the HOG features of two map batches."""
    fa, fb = hog_features(a), hog_features(b)
    if fa.shape != fb.shape:
        raise EvaluationError(f"maps to compare differ in shape: {fa.shape} vs {fb.shape}")
    return pearson_rows(np.nan_to_num(fa), np.nan_to_num(fb))


def compare(original: ArrayLike, randomized: ArrayLike) -> dict[str, np.ndarray]:
    """All four scores per sample, ``{metric: float64 array [B]}`` with keys :data:`METRICS`."""
    x, y = normalize(original), normalize(randomized)
    if x.shape != y.shape:
        raise EvaluationError(f"original {x.shape} and randomized {y.shape} maps differ in shape")
    return {
        "spearman_abs": spearman(np.abs(x), np.abs(y)),
        "spearman": spearman(x, y),
        "ssim": ssim(x, y),
        "hog_pearson": hog_pearson(x, y),
    }
