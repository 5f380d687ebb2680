"""Smoothness (lag autocorrelation) and the sigma that matches it, on synthetic maps of known blur."""

from __future__ import annotations

import math

import pytest
import torch

from attribution.controls import gaussian_blur
from attribution.evaluation import EvaluationError
from attribution.evaluation.smoothness import autocorrelation, match_sigma, smoothness


def _noise(n: int = 64, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_white_noise_is_near_zero_and_blur_raises_it_monotonically() -> None:
    noise = _noise()
    values = [smoothness(gaussian_blur(noise, s)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert abs(values[0]) < 0.02
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 0.8


def test_a_known_checkerboard_and_a_constant_map() -> None:
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2  # lag 1: -1, lag 2: +1
    assert autocorrelation(checker[None].double(), max_lag=1).item() == pytest.approx(-1.0)
    assert autocorrelation(checker[None].double(), max_lag=2).item() == pytest.approx(0.0)
    assert math.isnan(autocorrelation(torch.ones(1, 8, 8)).item())
    with pytest.raises(EvaluationError, match="every map is constant"):
        smoothness(torch.ones(2, 8, 8))
    with pytest.raises(EvaluationError, match="max_lag"):
        autocorrelation(torch.rand(1, 4, 4), max_lag=4)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_match_sigma_recovers_a_known_blur(sigma: float) -> None:
    reference = gaussian_blur(_noise(seed=1), sigma)  # the "pathway" maps: noise blurred by sigma
    found = match_sigma(_noise(seed=2)[:, 0], smoothness(reference))  # other noise, the "gradient" maps
    assert found["sigma"] == pytest.approx(sigma, rel=0.08)
    assert found["reached"] == pytest.approx(found["target"], abs=2e-3)


def test_match_sigma_at_the_ends_of_the_range() -> None:
    smooth = gaussian_blur(_noise(seed=3), 2.0)
    assert match_sigma(smooth, smoothness(_noise(seed=4)))["sigma"] == 0.0  # already smoother than the target
    found = match_sigma(_noise(seed=5), 0.9999, max_sigma=1.0)
    assert found["sigma"] == 1.0 and found["reached"] < 0.9999


def test_gaussian_blur_keeps_constants_and_mass() -> None:
    flat = torch.full((2, 3, 10, 10), 0.25)
    assert torch.allclose(gaussian_blur(flat, 1.7), flat)
    noise = _noise(4)
    assert torch.equal(gaussian_blur(noise, 0), noise)
    assert gaussian_blur(noise, 10.0).shape == noise.shape  # radius 30 > 28: replicate padding
