"""attribution.reduce: each reduction from [B, C, H, W] to [B, H, W], on a map whose answers are known."""

from __future__ import annotations

import pytest
import torch

from attribution.base import AttributionError
from attribution.reduce import REDUCTIONS, reduce_map


def _maps() -> torch.Tensor:
    """Two 2-channel 1 x 2 maps: pixel 0 is led by a negative channel, pixel 1 by a positive one."""
    return torch.tensor([[[[-3.0, 1.0]], [[2.0, -4.0]]],
                         [[[0.5, 0.0]], [[-0.25, 0.0]]]])


@pytest.mark.parametrize("how, expected", [
    ("signed_max_abs", [[[-3.0, -4.0]], [[0.5, 0.0]]]),  # the sign of the largest magnitude is kept
    ("max_abs", [[[3.0, 4.0]], [[0.5, 0.0]]]),
    ("sum_abs", [[[5.0, 5.0]], [[0.75, 0.0]]]),
])
def test_each_reduction_on_known_values(how: str, expected: list) -> None:
    reduced = reduce_map(_maps(), how)
    assert reduced.shape == (2, 1, 2)
    assert torch.equal(reduced, torch.tensor(expected))


def test_the_default_is_the_papers_signed_max_abs() -> None:
    assert torch.equal(reduce_map(_maps()), REDUCTIONS["signed_max_abs"](_maps()))


def test_a_wrong_shape_or_name_is_one_clear_error() -> None:
    with pytest.raises(AttributionError, match=r"\[B, C, H, W\], got \(2, 1, 2\)"):
        reduce_map(torch.zeros(2, 1, 2))
    with pytest.raises(AttributionError, match="unknown reduction 'mean'; choose one of signed_max_abs, max_abs, sum_abs"):
        reduce_map(_maps(), "mean")
