import math

import pytest
import torch

from attribution.evaluation.removal import (
    EvaluationError, ranking, remove, remove_bottom, remove_count, remove_ranked, remove_top,
)

FILL = (0.5, -1.0, 2.0)


def _images(batch: int = 3, channels: int = 3, size: int = 10) -> torch.Tensor:
    # Values far from the fill, so every replaced entry is visible.
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0)) + 10.0


def _maps(batch: int = 3, size: int = 10) -> torch.Tensor:
    return torch.randn(batch, size, size, generator=torch.Generator().manual_seed(1))


def _replaced(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """[B, H*W] mask of pixels changed in all channels (and none changed in only some)."""
    changed = before != after
    assert torch.equal(changed.all(dim=1), changed.any(dim=1)), "a pixel was replaced in some channels only"
    return changed.all(dim=1).reshape(before.shape[0], -1)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.25, 0.5, 0.99, 1.0])
def test_remove_top_replaces_exactly_the_top_pixels_with_the_channel_means(fraction):
    images, maps = _images(), _maps()
    out = remove_top(images, maps, fraction, FILL)
    n = math.floor(fraction * 100 + 0.5)
    mask = _replaced(images, out)
    assert mask.sum(dim=1).tolist() == [n] * 3
    flat = maps.reshape(3, -1)
    for b in range(3):
        if 0 < n < 100:  # every removed pixel outranks every kept one
            assert flat[b][mask[b]].min() > flat[b][~mask[b]].max()
    for c, value in enumerate(FILL):
        assert torch.all(out[:, c].reshape(3, -1)[mask] == value)
    assert torch.equal(out.reshape(3, 3, -1).transpose(1, 2)[~mask], images.reshape(3, 3, -1).transpose(1, 2)[~mask])
    assert torch.all(images >= 10.0), "the input was modified"


def test_ties_break_by_raster_index():
    maps = torch.zeros(2, 4, 5)
    maps[1, 3, 4] = 1.0  # one clear winner, the rest tie
    maps[1, 0, 0] = -0.0  # -0.0 ties with 0.0
    assert ranking(maps)[0].tolist() == list(range(20))
    assert ranking(maps)[1].tolist() == [19, *range(19)]
    assert ranking(maps, "bottom")[0].tolist() == list(range(19, -1, -1))
    out = remove_top(torch.ones(2, 1, 4, 5), maps, 0.15, [0.0])  # round(3.0) = 3 pixels
    assert _replaced(torch.ones(2, 1, 4, 5), out)[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert _replaced(torch.ones(2, 1, 4, 5), out)[1].nonzero().flatten().tolist() == [0, 1, 19]


def test_ranking_is_the_same_on_every_call_and_batch_independent():
    maps = torch.randint(0, 3, (5, 6, 6)).float()  # many ties
    full = ranking(maps)
    assert torch.equal(full, ranking(maps.clone()))
    for b in range(5):
        assert torch.equal(ranking(maps[b:b + 1])[0], full[b])
    images = _images(5, 2, 6)
    out = remove_top(images, maps, 0.3, [0.0, 1.0])
    for b in range(5):
        assert torch.equal(remove_top(images[b:b + 1], maps[b:b + 1], 0.3, [0.0, 1.0])[0], out[b])


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.9])
def test_kar_replaces_the_complement_and_lerf_the_bottom(fraction):
    images, maps = _images(), _maps()
    top = _replaced(images, remove_top(images, maps, fraction, FILL))
    kar = _replaced(images, remove_top(images, maps, fraction, FILL, keep=True))
    assert torch.equal(kar, ~top)
    lerf = _replaced(images, remove_bottom(images, maps, fraction, FILL))
    n = math.floor(fraction * 100 + 0.5)
    assert lerf.sum(dim=1).tolist() == [n] * 3
    flat = maps.reshape(3, -1)
    for b in range(3):
        assert flat[b][lerf[b]].max() < flat[b][~lerf[b]].min()
    # LeRF of n pixels is KAR of the top (N - n): the same pixels are replaced.
    assert torch.equal(lerf, _replaced(images, remove(images, maps, 1 - n / 100, FILL, keep=True)))


def test_remove_ranked_and_integer_images():
    images = torch.full((2, 3, 2, 2), 200, dtype=torch.uint8)
    order = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]])
    out = remove_ranked(images, order, 1, [72.9, 116.3, 103.5])  # integer images take the rounded mean
    assert out.dtype == torch.uint8
    assert out[0, :, 1, 1].tolist() == [73, 116, 104] and out[1, :, 0, 0].tolist() == [73, 116, 104]
    assert int((out != 200).sum()) == 6


def test_remove_count_rounds_half_up():
    assert [remove_count(f, 784) for f in (0.0, 0.01, 0.1, 0.5, 1.0)] == [0, 8, 78, 392, 784]
    assert remove_count(0.5, 5) == 3 and remove_count(0.1, 5) == 1


def test_bad_inputs_name_the_problem():
    images, maps = _images(), _maps()
    with pytest.raises(EvaluationError, match="fraction"):
        remove_top(images, maps, 1.5, FILL)
    with pytest.raises(EvaluationError, match="reduce_map"):
        remove_top(images, maps[:, None], 0.1, FILL)
    with pytest.raises(EvaluationError, match="do not match"):
        remove_top(images, maps[:2], 0.1, FILL)
    with pytest.raises(EvaluationError, match="per-channel"):
        remove_top(images, maps, 0.1, [0.0, 0.0])
    with pytest.raises(EvaluationError, match="NaN"):
        remove_top(images, maps.masked_fill(maps > 1, float("nan")), 0.1, FILL)
    with pytest.raises(EvaluationError, match="order"):
        ranking(maps, "middle")
