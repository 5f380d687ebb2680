"""Turn raw uint8 images into the tensor a model expects, and back for plotting.

Preprocessing belongs to the model (its :class:`ModelSpec`), not to the data reader: readers hand
out uint8 ``[H, W, C]`` images in L, LA, RGB or RGBA (C = 1, 2, 3, 4; storage.sources.images), of
any size, and every job calls :func:`preprocess`, which

1. composites transparent pixels on ``spec.background`` (a gray level in [0, 1]);
2. converts the channels to ``spec.in_channels``: RGB -> L with the ITU-R 601-2 luma weights
   (0.299, 0.587, 0.114, as Pillow's ``convert("L")``), L -> RGB by repeating the channel;
3. brings the image to ``spec.input_size`` by ``spec.resize``: ``plain`` (bilinear, antialiased, to
   (H, W) whatever the aspect ratio) or ``center_crop`` (shorter side to ``spec.resize_size``, as
   torchvision's ``Resize(int)`` computes the longer side, then the center (H, W) as ``CenterCrop``);
4. normalizes with ``spec.mean`` / ``spec.std`` (pixels scaled to [0, 1]).

Maps are computed on this tensor, so they are ``spec.input_size``; :func:`model_view` gives the
image as the model saw it (steps 1-3) to lay a map over.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.registry import ModelError, ModelSpec

#: ITU-R 601-2 luma weights, as Pillow's convert("L") uses them.
LUMA = (0.299, 0.587, 0.114)
#: Float pixels converted at once: bounds memory for huge images (one 5600 x 5600 RGB image is 376 MB).
_CHUNK_VALUES = 64 * 1024 * 1024

Images = np.ndarray | torch.Tensor | Sequence[np.ndarray]


def preprocess(spec: ModelSpec, images: Images, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images -> the normalized float32 model input ``[N, spec.in_channels, H, W]`` (steps 1-4
    of the module docstring).

    ``images`` is ``[N, H, W, C]`` (numpy or torch; ``[N, H, W]`` for one channel), or a sequence of
    ``[H, W, C]`` arrays of any sizes and channel counts. ``device`` moves the uint8 data before
    converting, so the float work runs there.
    """
    return normalize(spec, prepare(spec, images, device))


def normalize(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] ``[N, C, H, W]`` -> normalized with the spec's mean and std (in place)."""
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def prepare(spec: ModelSpec, images: Images, device: torch.device | str | None = None) -> torch.Tensor:
    """Steps 1-3: float32 pixels in [0, 1], ``[N, spec.in_channels, H, W]`` at the model's input size."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return _prepare_batch(spec, _as_uint8_tensor(spec, images), device)
    images = list(images)
    h, w = spec.input_size
    out = torch.empty(len(images), spec.in_channels, h, w, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
            raise ModelError(f"image {i} must be a uint8 numpy array [H, W, C], got "
                             f"{type(image).__name__} {getattr(image, 'shape', '')}")
        groups.setdefault(image.shape, []).append(i)
    for indices in groups.values():  # images of one shape are converted together
        batch = np.stack([images[i] for i in indices]) if len(indices) > 1 else images[indices[0]][None]
        out[indices] = _prepare_batch(spec, _as_uint8_tensor(spec, batch), device)
    return out


def model_view(spec: ModelSpec, images: Images) -> list[np.ndarray]:
    """Each image as the model saw it (steps 1-3, before normalization): uint8 ``[H, W, C]`` at the
    model's input size and channels, on the CPU."""
    x = prepare(spec, images, "cpu")
    pixels = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return [np.ascontiguousarray(p) for p in pixels.numpy()]


def _as_uint8_tensor(spec: ModelSpec, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (np.frombuffer, mmap) are fine: x is only read
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        x = images
    else:
        raise ModelError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise ModelError(f"images must be uint8 pixels in [0, 255], got dtype {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4 or not 1 <= x.shape[-1] <= 4 or min(x.shape[1:3], default=0) < 1:
        raise ModelError(f"images must be [N, H, W, C] with C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) and H, W >= 1, "
                         f"for arch {spec.arch!r}; got shape {tuple(x.shape)}")
    return x


def _prepare_batch(spec: ModelSpec, x: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """[N, H, W, C] uint8 of one shape -> [N, in_channels, h, w] float in [0, 1], in bounded chunks."""
    n, height, width, channels = x.shape
    _check_channels(spec, channels)
    step = max(1, _CHUNK_VALUES // max(1, height * width * max(channels, spec.in_channels)))
    if n <= step:
        return _prepare_chunk(spec, x, device)
    return torch.cat([_prepare_chunk(spec, x[i:i + step], device) for i in range(0, n, step)])


def _check_channels(spec: ModelSpec, channels: int) -> None:
    color = channels - (1 if channels in (2, 4) else 0)
    if color != spec.in_channels and {color, spec.in_channels} != {1, 3}:
        raise ModelError(f"cannot convert {channels}-channel images to the {spec.in_channels} input channels of "
                         f"arch {spec.arch!r}: only L, LA, RGB and RGBA convert (to 1 or 3 channels)")


def _prepare_chunk(spec: ModelSpec, x: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] in (2, 4):  # composite on the background: c * a + bg * (1 - a)
        alpha = x[:, -1:]
        x = x[:, :-1].mul(alpha).add_((1.0 - alpha).mul_(spec.background))
    if x.shape[1] == 3 and spec.in_channels == 1:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    x = _fit(spec, x)
    if x.shape[1] == 1 and spec.in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return _standard_layout(x)


def _standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides. A one-channel permute looks channels-last to torch (strides
    (HW, 1, W, 1)), and convolutions round differently for it; one layout for every input keeps a
    sample's map independent of how its batch was put together."""
    n, c, h, w = x.shape
    return x if x.stride() == (c * h * w, h * w, w, 1) else x.clone(memory_format=torch.contiguous_format)


def _fit(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Resize (and crop) ``[N, C, H, W]`` to ``spec.input_size`` by ``spec.resize``."""
    height, width = x.shape[-2:]
    target = spec.input_size
    if x.shape[0] == 0:
        return x.new_zeros((0, x.shape[1], *target))
    if spec.resize == "center_crop":
        shorter = spec.resize_size or max(target)
        if width <= height:
            size = (int(shorter * height / width), shorter)
        else:
            size = (shorter, int(shorter * width / height))
        x = _resize(x, size)
        top, left = int(round((size[0] - target[0]) / 2.0)), int(round((size[1] - target[1]) / 2.0))
        return x[:, :, top:top + target[0], left:left + target[1]]
    return _resize(x, target)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def decode_size(spec: ModelSpec) -> tuple[int, int]:
    """The smallest (height, width) an image must have for step 3 to shrink it rather than enlarge it:
    ``plain`` needs ``spec.input_size``; ``center_crop`` needs its shorter side at ``resize_size``, and
    (S, S) asks exactly that of either orientation. Sources decode JPEGs no smaller than this
    (``SourcePolicy.decode_size``, ``Image.draft``), so decoding skips pixels the resize would drop."""
    if spec.resize == "center_crop":
        shorter = spec.resize_size or max(spec.input_size)
        return shorter, shorter
    height, width = spec.input_size
    return height, width


def describe(spec: ModelSpec) -> dict[str, object]:
    """The preprocessing of ``spec`` in words and numbers (for run.json and job summaries)."""
    h, w = spec.input_size
    if spec.resize == "center_crop":
        geometry = f"shorter side to {spec.resize_size or max(h, w)} px, then the center {h}x{w}"
    else:
        geometry = f"resized to {h}x{w} (aspect ratio not kept)"
    return {"input_size": [h, w], "channels": spec.in_channels, "resize": spec.resize,
            "resize_size": spec.resize_size, "background": spec.background, "geometry": geometry,
            "modes": f"alpha composited on gray {spec.background:g}; "
                     + ("RGB -> L by ITU-R 601-2 luma" if spec.in_channels == 1 else "L -> RGB by repetition"),
            "interpolation": "bilinear, antialiased", "mean": list(spec.mean), "std": list(spec.std)}


def denormalize(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Invert the normalization of :func:`preprocess`: float ``[N, C, H, W]`` -> pixels in
    [0, 1], same layout (clamped, ready for ``imshow`` after a permute)."""
    if x.ndim != 4 or x.shape[1] != spec.in_channels:
        raise ModelError(f"expected [N, {spec.in_channels}, H, W], got shape {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp_(0.0, 1.0)
