"""Preprocessing from the model's spec: uint8 [N, H, W, C] -> normalized float [N, C, H, W]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ModelError, ModelSpec, denormalize, fashion_mnist_spec, preprocess


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
    with pytest.raises(ModelError, match=r"\[N, H, W, 1\]"):
        preprocess(spec, np.zeros((2, 28, 28, 3), np.uint8))
