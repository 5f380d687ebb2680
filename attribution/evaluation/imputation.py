"""How removed pixels are filled: the per-channel mean, or ROAD's noisy linear imputation.

* ``mean``: every removed pixel takes the per-channel dataset mean (Samek et al. 2017; Hooker
  et al. 2019). Cheap, but the filled region is a flat patch whose *shape* is visible, so a
  classifier can read the removal mask itself (on Fashion-MNIST it draws the silhouette).
* ``nli``: noisy linear imputation (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation
  Strategy for Attribution Methods", ROAD). Each removed pixel takes the weighted mean of its
  8 neighbours inside the image, ``v_i = sum_j w_ij v_j / sum_j w_ij`` with ``w = 1/6`` for the
  four edge neighbours and ``1/12`` for the four diagonal ones, where a kept neighbour
  contributes its value and a removed one its own unknown. That is one sparse, symmetric,
  positive definite system per image (a graph Laplacian with the kept pixels as boundary),
  solved exactly for all channels at once; then Gaussian noise of std ``noise`` is added to every
  imputed value, so the filled region carries no exact smoothness signature either.

The system is singular only where an image has no kept pixel at all (the 8-neighbour grid is
connected, so any other connected region of removed pixels touches a kept one): such an image
takes ``fallback`` (the per-channel mean) plus the noise.

Batched: all images of a chunk form one block-diagonal system (one SuperLU factorization in
natural order, which keeps a raster grid's band structure); its time on Fashion-MNIST is in
benchmarks/RESULTS.md, "Figures moved from the code".

Noise is drawn per image from ``numpy.random.default_rng([seed, n_removed])`` with the image's
own seed (one int per image, e.g. from its sample id), so it never depends on the batch, and
two fractions of the same image get different noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from .errors import EvaluationError

__all__ = ["DEFAULT_NOISE", "IMPUTATIONS", "Fill", "Seeds", "fill_tensor", "image_seeds", "linear_imputation",
           "noisy_linear_imputation", "replace"]

Fill = Union[torch.Tensor, Sequence[float], float]
Seeds = Union[int, Sequence[int], torch.Tensor]
IMPUTATIONS = ("mean", "nli")
#: ROAD's default noise std, in the units of the images given (model inputs in Quantus and the reference).
DEFAULT_NOISE = 0.01
CHUNK = 256  # images per factorization: bigger blocks gain nothing and cost memory

# (dy, dx, weight): edge neighbours weigh twice the diagonal ones; the eight weights sum to 1.
_NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
               (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))


def image_seeds(seed: Seeds, batch: int) -> list[int]:
    """One seed per image: ``seed + i`` for an int, else the given per-image seeds (checked)."""
    if isinstance(seed, bool):
        raise EvaluationError(f"seed must be an int or one int per image, got {seed!r}")
    if isinstance(seed, int):
        return [seed + i for i in range(batch)]
    seeds = [int(s) for s in (seed.tolist() if isinstance(seed, torch.Tensor) else seed)]
    if len(seeds) != batch:
        raise EvaluationError(f"seed has {len(seeds)} entries for a batch of {batch}; give one per image")
    return seeds


def fill_tensor(fill: Fill, images: torch.Tensor) -> torch.Tensor:
    """The per-channel fill as [1, C, 1, 1] in the images' dtype and device (rounded for integer images)."""
    channels = images.shape[1]
    value = torch.as_tensor(fill, dtype=torch.float64).reshape(-1)
    if value.numel() == 1:
        value = value.expand(channels)
    if value.numel() != channels:
        raise EvaluationError(
            f"fill has {value.numel()} values for images with {channels} channels; "
            "give the per-channel dataset mean, one value per channel")
    if not bool(torch.isfinite(value).all()):
        raise EvaluationError(f"fill must be finite, got {value.tolist()}")
    if not images.is_floating_point():
        value = value.round()
    return value.to(device=images.device, dtype=images.dtype).reshape(1, channels, 1, 1)


def _system(pixels: np.ndarray, removed: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """The block-diagonal system ``A v = b`` of a chunk: pixels [B, H, W, C] float64, removed [B, H, W].

    Returns A (n x n, n removed pixels in raster order over the chunk), b (n x C) and the flat
    indices of the removed pixels into ``pixels.reshape(-1, C)``.
    """
    batch, height, width, channels = pixels.shape
    flat = removed.reshape(-1)
    index = np.flatnonzero(flat)
    n = index.size
    variable = np.full(flat.size, -1, dtype=np.int64)
    variable[index] = np.arange(n)
    image, pixel = np.divmod(index, height * width)
    row, col = np.divmod(pixel, width)
    values = pixels.reshape(-1, channels)
    diagonal = np.zeros(n)
    rhs = np.zeros((n, channels))
    rows, cols, weights = [], [], []
    unknowns = np.arange(n)
    for dy, dx, weight in _NEIGHBOURS:
        ny, nx = row + dy, col + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        me = unknowns[inside]
        neighbour = image[inside] * (height * width) + ny[inside] * width + nx[inside]
        diagonal[me] += weight
        other = variable[neighbour]
        unknown = other >= 0
        rows.append(me[unknown])
        cols.append(other[unknown])
        weights.append(np.full(int(unknown.sum()), -weight))
        rhs[me[~unknown]] += weight * values[neighbour[~unknown]]  # each (me, offset) pair occurs once
    rows.append(unknowns)
    cols.append(unknowns)
    weights.append(diagonal)
    import scipy.sparse as sp  # scipy loads on use: jobs import this package to start

    matrix = sp.csc_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return matrix, rhs, index


def linear_imputation(pixels: np.ndarray, removed: np.ndarray, fallback: Sequence[float] | None = None,
                      chunk: int = CHUNK) -> np.ndarray:
    """The noise-free imputation: ``pixels`` [B, H, W, C] float64 with the ``removed`` [B, H, W]
    pixels solved for (a new array). Images with every pixel removed take ``fallback`` per channel
    (an error without one: their system has no solution)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    if pixels.ndim != 4 or removed.shape != pixels.shape[:3]:
        raise EvaluationError(f"need pixels [B, H, W, C] and a removed mask [B, H, W], got {pixels.shape} "
                              f"and {removed.shape}")
    out = pixels.copy()
    whole = removed.reshape(removed.shape[0], -1).all(axis=1)
    if whole.any():
        if fallback is None:
            raise EvaluationError("an image has every pixel removed: linear imputation has nothing to "
                                  "interpolate from; give fallback (the per-channel mean)")
        out[whole] = np.asarray(fallback, dtype=np.float64).reshape(1, 1, -1)
    solvable = removed & ~whole[:, None, None]
    from scipy.sparse.linalg import splu  # scipy loads on use: jobs import this package to start

    for start in range(0, pixels.shape[0], max(1, chunk)):
        part = solvable[start:start + chunk]
        if not part.any():
            continue
        matrix, rhs, index = _system(pixels[start:start + chunk], part)
        solution = splu(matrix, permc_spec="NATURAL").solve(rhs)
        view = out[start:start + chunk].reshape(-1, pixels.shape[-1])  # a view: writes land in out
        view[index] = solution
    return out


def noisy_linear_imputation(images: torch.Tensor, removed: torch.Tensor, noise: float | Sequence[float] = DEFAULT_NOISE,
                            seed: Seeds = 0, fallback: Fill | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """ROAD's imputation of the ``removed`` pixels ([B, H, W] or [B, 1, H, W] bool) of ``images``
    [B, C, H, W]: linear interpolation from the kept neighbours, plus N(0, noise²) per value.

    ``noise`` is one std or one per channel, in the images' units. Integer (uint8) images are
    imputed in float64, rounded and clipped to 0..255. Returns a new tensor on the images' device.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise EvaluationError(f"images must be a tensor [B, C, H, W], got "
                              f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    batch, channels, height, width = images.shape
    mask = removed.reshape(batch, height, width) if removed.numel() == batch * height * width else None
    if mask is None:
        raise EvaluationError(f"removed must be [B, H, W] = {[batch, height, width]}, got {list(removed.shape)}")
    sigma = np.broadcast_to(np.asarray(noise, dtype=np.float64).reshape(-1), (channels,))
    if not (np.isfinite(sigma).all() and (sigma >= 0).all()):
        raise EvaluationError(f"noise must be finite and >= 0, got {noise!r}")
    mask_np = mask.detach().to("cpu", torch.bool).numpy()
    pixels = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    back = None if fallback is None else fill_tensor(fallback, images.to(torch.float64)).reshape(-1).cpu().numpy()
    out = linear_imputation(pixels, mask_np, back, chunk)
    if sigma.any():
        counts = mask_np.reshape(batch, -1).sum(axis=1)
        for i, (s, count) in enumerate(zip(image_seeds(seed, batch), counts)):
            if count:
                draws = np.random.default_rng([s & 0xFFFFFFFFFFFFFFFF, int(count)]).standard_normal((int(count), channels))
                out[i][mask_np[i]] += draws * sigma
    result = torch.from_numpy(out).permute(0, 3, 1, 2)
    if not images.is_floating_point():
        result = result.round().clamp(0, 255)
    return result.to(device=images.device, dtype=images.dtype).contiguous()


def replace(images: torch.Tensor, removed: torch.Tensor, fill: Fill, imputation: str = "mean",
            noise: float | Sequence[float] = DEFAULT_NOISE, seed: Seeds = 0) -> torch.Tensor:
    """``images`` [B, C, H, W] with the ``removed`` [B, H, W] pixels filled, in every channel.

    ``imputation="mean"`` writes ``fill`` (the per-channel mean); ``"nli"`` imputes them
    (:func:`noisy_linear_imputation`, with ``fill`` where a whole image is removed).
    """
    if imputation not in IMPUTATIONS:
        raise EvaluationError(f"imputation must be one of {IMPUTATIONS}, got {imputation!r}")
    value = fill_tensor(fill, images)
    if imputation == "mean":
        batch, _, height, width = images.shape
        return torch.where(removed.reshape(batch, 1, height, width).to(images.device), value, images)
    return noisy_linear_imputation(images, removed, noise, seed, value.reshape(-1).tolist())
