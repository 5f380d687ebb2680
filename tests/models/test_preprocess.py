"""Preprocessing from the model's spec: uint8 [N, H, W, C] -> normalized float [N, C, H, W]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ModelError, ModelSpec, denormalize, fashion_mnist_spec
from models.preprocess import preprocess


def test_preprocess_normalizes_and_lays_out_channels_first() -> None:
    spec = ModelSpec("resnet8", 10, 3, (4, 5), (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    x = preprocess(spec, images)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 5)
    expected = (images.astype(np.float64) / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)
    # tensors work too, and denormalize inverts it
    assert torch.equal(preprocess(spec, torch.from_numpy(images)), x)
    np.testing.assert_allclose(denormalize(spec, x).permute(0, 2, 3, 1).numpy(), images / 255, atol=1e-6)


def test_preprocess_resizes_only_when_needed() -> None:
    spec = ModelSpec("resnet8", 10, 1, (32, 32), (0.0,), (1.0,))
    flat = np.full((3, 28, 28, 1), 128, dtype=np.uint8)
    x = preprocess(spec, flat)
    assert x.shape == (3, 1, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 128 / 255))
    same = preprocess(spec.replace(input_size=(28, 28)), flat)
    assert same.shape == (3, 1, 28, 28)


def test_preprocess_accepts_hw_for_one_channel_and_rejects_bad_input() -> None:
    spec = fashion_mnist_spec()
    assert preprocess(spec, np.zeros((2, 28, 28), np.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(ModelError, match="uint8"):
        preprocess(spec, np.zeros((2, 28, 28, 1), np.float32))
    assert preprocess(spec, np.zeros((2, 28, 28, 3), np.uint8)).shape == (2, 1, 28, 28)  # RGB -> L
    with pytest.raises(ModelError, match=r"\[N, H, W, C\]"):
        preprocess(spec, np.zeros((2, 28, 28, 6), np.uint8))


def rgb_of(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray, 3, axis=-1)


def test_modes_convert_to_the_model_channels(fmnist) -> None:
    """L <-> RGB, and LA / RGBA composited on the spec's background, on real images."""
    images, _ = fmnist
    gray = fashion_mnist_spec()
    color = ModelSpec("resnet8", 10, 3, (28, 28), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = preprocess(gray, images[:4])
    torch.testing.assert_close(preprocess(gray, rgb_of(images[:4])), x, atol=1e-5, rtol=0)  # gray RGB -> same L
    torch.testing.assert_close(preprocess(color, images[:4])[:, 1:2], preprocess(color, rgb_of(images[:4]))[:, 1:2])
    weights = np.array([0.299, 0.587, 0.114])
    rgb = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    luma = (rgb.astype(np.float64) @ weights / 255 - gray.mean[0]) / gray.std[0]
    np.testing.assert_allclose(preprocess(gray, rgb)[:, 0].numpy(), luma, atol=1e-5)
    # half transparent: half way between the pixel and the background (black by default, white here)
    alpha = np.full((4, 28, 28, 1), 128, np.uint8)
    la = np.concatenate([images[:4], alpha], axis=-1)
    for background in (0.0, 1.0):
        spec = gray.replace(background=background)
        expected = (images[:4, :, :, 0] / 255 * 128 / 255 + background * (1 - 128 / 255) - spec.mean[0]) / spec.std[0]
        np.testing.assert_allclose(preprocess(spec, la)[:, 0].numpy(), expected, atol=1e-5)
        rgba = np.concatenate([rgb_of(images[:4]), alpha], axis=-1)
        torch.testing.assert_close(preprocess(spec, rgba), preprocess(spec, la), atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="5"):
        preprocess(gray, np.zeros((1, 8, 8, 5), np.uint8))


def test_mixed_sizes_and_channels_in_one_call(fmnist) -> None:
    """A list of images of different sizes and modes: each converted alone, in order."""
    images, _ = fmnist
    spec = fashion_mnist_spec()
    big = np.kron(images[1], np.ones((3, 3, 1), np.uint8))  # 84 x 84
    mixed = [images[0], rgb_of(big), images[2][:20], np.zeros((1, 1, 1), np.uint8)]
    x = preprocess(spec, mixed)
    assert x.shape == (4, 1, 28, 28)
    for i, image in enumerate(mixed):
        torch.testing.assert_close(x[i:i + 1], preprocess(spec, image[None]), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[0:1], preprocess(spec, images[:1]))


def test_center_crop_is_torchvision_eval_transform() -> None:
    """Shorter side to resize_size, then the center crop: compared with torchvision's transforms v2."""
    from models.tv import transforms as T

    spec = ModelSpec("resnet8", 10, 3, (24, 24), (0.0,) * 3, (1.0,) * 3, resize="center_crop", resize_size=32)
    image = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    got = preprocess(spec, image[None])
    tv = T.Compose([T.Resize(32, antialias=True), T.CenterCrop(24)])
    expected = tv(torch.from_numpy(image).permute(2, 0, 1).float().div(255))[None]
    assert got.shape == expected.shape == (1, 3, 24, 24)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    tall = preprocess(spec, np.ascontiguousarray(image.transpose(1, 0, 2))[None])
    assert tall.shape == (1, 3, 24, 24)
    plain = preprocess(spec.replace(resize="plain", resize_size=None), image[None])
    assert plain.shape == (1, 3, 24, 24) and not torch.allclose(plain, got)


def test_resize_policy_in_the_spec() -> None:
    spec = fashion_mnist_spec()
    old = {k: v for k, v in spec.to_dict().items() if k not in ("resize", "resize_size", "background")}
    assert ModelSpec.from_dict(old) == spec and spec.resize == "plain"  # old checkpoints: the plain resize
    crop = spec.replace(resize="center_crop", resize_size=32)
    assert ModelSpec.from_dict(crop.to_dict()) == crop
    with pytest.raises(ModelError, match="resize must be"):
        spec.replace(resize="squash")
    with pytest.raises(ModelError, match="smaller than the crop"):
        spec.replace(resize="center_crop", resize_size=20)
    with pytest.raises(ModelError, match="background"):
        spec.replace(background=2.0)


def test_model_view_is_what_the_model_saw(fmnist) -> None:
    from models import model_view

    images, _ = fmnist
    spec = fashion_mnist_spec()
    big = np.kron(images[0], np.ones((2, 2, 1), np.uint8))
    seen = model_view(spec, [rgb_of(big)])
    assert seen[0].shape == (28, 28, 1) and seen[0].dtype == np.uint8
    fed = denormalize(spec, preprocess(spec, [rgb_of(big)]))[0, 0].numpy() * 255
    assert np.abs(seen[0][:, :, 0] - fed).max() <= 0.5 + 1e-3  # the model's input, rounded to uint8
    assert np.abs(seen[0].astype(int) - images[0].astype(int)).mean() < 8  # 2x up, then (smoothed) back down


def test_decode_size_is_what_the_resize_needs_before_it_shrinks() -> None:
    """Sources draft JPEGs no smaller than this (storage.sources.images): ``plain`` needs the input
    size, ``center_crop`` the resize size on both sides (the shorter side, whichever it is)."""
    from models.preprocess import decode_size

    def spec(size: tuple[int, int], resize: str = "plain", resize_size: int | None = None) -> ModelSpec:
        return ModelSpec("resnet8", 10, 3, size, (0.5,) * 3, (0.5,) * 3, resize=resize, resize_size=resize_size)

    assert decode_size(spec((28, 56))) == (28, 56)
    assert decode_size(spec((224, 224), "center_crop", 256)) == (256, 256)
    assert decode_size(spec((224, 224), "center_crop")) == (224, 224)
