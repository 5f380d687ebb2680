"""ROAD's noisy linear imputation, checked against what it is defined to be (not against itself).

Every check runs in float64 through numpy/scipy only (no torch kernels), so the tolerances
are float64 rounding of a well-conditioned sparse solve and hold on any CPU.
"""

import numpy as np
import pytest
import torch

from attribution.evaluation.imputation import (EvaluationError, linear_imputation, noisy_linear_imputation,
                                               replace)
from attribution.evaluation.removal import remove_top, removed_mask

WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6,
           (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def neighbour_mean(image: np.ndarray, y: int, x: int) -> np.ndarray:
    """The definition, pixel by pixel: the weighted mean of the in-image neighbours [C]."""
    height, width, _ = image.shape
    total, weight = 0.0, 0.0
    for (dy, dx), w in WEIGHTS.items():
        if 0 <= y + dy < height and 0 <= x + dx < width:
            total = total + w * image[y + dy, x + dx]
            weight += w
    return total / weight


def random_case(seed: int, batch: int = 4, size: tuple[int, int] = (9, 11), channels: int = 3,
                fraction: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(batch, *size, channels))
    removed = rng.random((batch, *size)) < fraction
    removed[:, 0, 0] = False  # at least one kept pixel per image
    return pixels, removed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_imputed_pixel_is_the_weighted_mean_of_its_neighbours(seed):
    pixels, removed = random_case(seed)
    out = linear_imputation(pixels, removed)
    np.testing.assert_array_equal(out[~removed], pixels[~removed])  # kept pixels are untouched, bit for bit
    for b, y, x in zip(*np.nonzero(removed)):
        np.testing.assert_allclose(out[b, y, x], neighbour_mean(out[b], y, x), rtol=0, atol=1e-12)


def test_a_linear_ramp_is_reproduced_exactly_inside_the_image():
    """Symmetric weights make the stencil exact on linear functions away from the border."""
    yy, xx = np.mgrid[0:12, 0:10].astype(np.float64)
    ramp = np.stack([0.3 * yy - 0.2 * xx + 1.0, -yy + 2.0 * xx], axis=-1)[None]
    removed = np.zeros((1, 12, 10), bool)
    removed[0, 2:9, 3:8] = True
    removed[0, 5, 1] = True
    out = linear_imputation(ramp, removed)
    np.testing.assert_allclose(out, ramp, rtol=0, atol=1e-12)


def test_batch_channels_and_chunks_do_not_change_an_image():
    pixels, removed = random_case(3, batch=7)
    whole = linear_imputation(pixels, removed)
    for chunk in (1, 3):
        np.testing.assert_allclose(linear_imputation(pixels, removed, chunk=chunk), whole, rtol=0, atol=1e-12)
    for i in range(7):  # one image at a time, one channel at a time
        for c in range(3):
            alone = linear_imputation(pixels[i:i + 1, :, :, c:c + 1], removed[i:i + 1])
            np.testing.assert_allclose(alone[0, :, :, 0], whole[i, :, :, c], rtol=0, atol=1e-12)


def test_a_fully_removed_image_takes_the_fallback():
    pixels, removed = random_case(4, batch=2)
    removed[1] = True
    with pytest.raises(EvaluationError, match="fallback"):
        linear_imputation(pixels, removed)
    out = linear_imputation(pixels, removed, fallback=[0.1, 0.2, 0.3])
    np.testing.assert_array_equal(out[1], np.broadcast_to([0.1, 0.2, 0.3], out[1].shape))
    np.testing.assert_array_equal(out[0], linear_imputation(pixels[:1], removed[:1])[0])


def test_noise_is_seeded_per_image_with_the_requested_std():
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.normal(size=(6, 2, 40, 40)))
    removed = torch.from_numpy(rng.random((6, 40, 40)) < 0.5)
    clean = noisy_linear_imputation(images, removed, noise=0.0)
    noisy = noisy_linear_imputation(images, removed, noise=[0.05, 0.2], seed=[11, 12, 13, 14, 15, 16])
    again = noisy_linear_imputation(images[2:3], removed[2:3], noise=[0.05, 0.2], seed=[13])
    torch.testing.assert_close(again, noisy[2:3], rtol=0, atol=1e-12)  # the batch does not matter
    mask = removed[:, None].expand_as(images)
    assert torch.equal(noisy[~mask], images[~mask])
    residual = (noisy - clean).permute(1, 0, 2, 3)[mask.permute(1, 0, 2, 3)].reshape(2, -1)
    # ~4800 draws per channel: the sample std is within 3 % of sigma with overwhelming probability.
    np.testing.assert_allclose(residual.std(dim=1).numpy(), [0.05, 0.2], rtol=0.03)
    assert abs(float(residual[1].mean())) < 0.2 * 4 / np.sqrt(residual.shape[1])
    other = noisy_linear_imputation(images, removed, noise=[0.05, 0.2], seed=[11, 12, 99, 14, 15, 16])
    assert not torch.equal(other[2], noisy[2]) and torch.equal(other[3], noisy[3])


def test_uint8_images_are_rounded_and_clipped_and_mean_fill_is_a_plain_write():
    images = torch.full((2, 1, 6, 6), 250, dtype=torch.uint8)
    images[:, :, :, :3] = 3
    removed = torch.zeros(2, 6, 6, dtype=torch.bool)
    removed[:, 2:4, 2:4] = True
    out = noisy_linear_imputation(images, removed, noise=30.0, seed=0)
    assert out.dtype == torch.uint8 and bool((out[:, :, 2:4, 2:4] != images[:, :, 2:4, 2:4]).any())
    assert torch.equal(out[~removed[:, None]], images[~removed[:, None]])
    filled = replace(images, removed, [77.4], "mean")
    assert torch.equal(filled[removed[:, None]], torch.full((8,), 77, dtype=torch.uint8))
    with pytest.raises(EvaluationError, match="imputation"):
        replace(images, removed, [0.0], "black")


def test_remove_top_with_nli_removes_exactly_the_ranked_pixels():
    rng = np.random.default_rng(7)
    images = torch.from_numpy(rng.normal(size=(3, 2, 8, 8)))
    maps = torch.from_numpy(rng.normal(size=(3, 8, 8)))
    mask = removed_mask(maps, 0.25, "top")
    assert mask.sum(dim=(1, 2)).tolist() == [16, 16, 16]
    out = remove_top(images, maps, 0.25, [0.0, 0.0], imputation="nli", noise=0.0)
    expected = linear_imputation(images.permute(0, 2, 3, 1).numpy(), mask.numpy())
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), expected, rtol=0, atol=1e-12)
    kar = removed_mask(maps, 0.25, "top", keep=True)
    assert torch.equal(kar, ~mask)
