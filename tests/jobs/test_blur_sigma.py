"""jobs.blur_sigma's choice on synthetic maps of a known blur (the full read path runs in the smoke run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution.controls import gaussian_blur
from jobs.blur_sigma import choose, parse_args


def test_choose_recovers_the_blur_of_the_reference_maps() -> None:
    noise = torch.rand((2, 96, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps = {"pathway": gaussian_blur(noise[0], 1.2)[:, 0].numpy().astype(np.float16),  # stored maps are float16
            "gradient": (noise[1, :, 0].numpy() - 0.5).astype(np.float16)}  # signed: |.| is what ROAR ranks
    record = choose(maps, "pathway", "gradient", max_lag=2, max_sigma=8.0)
    assert record["sigma"] == pytest.approx(1.2, rel=0.1)
    assert record["n"] == 96 and record["blurred_smoothness_before"] < 0.05
    assert record["blurred_smoothness_after"] == pytest.approx(record["reference_smoothness"], abs=5e-3)


def test_defaults() -> None:
    args = parse_args(["--maps", "outputs/maps/x"])
    assert (args.reference, args.blurred, args.limit, args.max_lag, args.label) == ("pathway", "gradient", 512, 2,
                                                                                      "blur")
