"""ROAR control maps: random noise and Sobel edge magnitude."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attribution.controls as controls
from attribution import AttributionError, available, get
from attribution.base import sample_seeds


class CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def test_registered_with_params(tiny_net):
    assert {"random", "sobel"} <= set(available())
    assert type(get("random", tiny_net)) is controls.RandomControl
    assert type(get("sobel", tiny_net)) is controls.SobelControl
    assert get("random", tiny_net).params == {}
    assert get("sobel", tiny_net).params == {"channel_reduction": "l2"}
    assert get("sobel", tiny_net, channel_reduction="max").params == {"channel_reduction": "max"}
    with pytest.raises(AttributionError):
        get("sobel", tiny_net, channel_reduction="mean")


# --------------------------------------------------------------------------- random


def test_random_is_per_sample_uniform_noise(tiny_images):
    method = controls.RandomControl()
    ids = [5, 6, 7, 8]
    maps = method.attribute(tiny_images, sample_ids=ids)
    assert maps.shape == (4, 1, 8, 8) and maps.dtype == tiny_images.dtype
    assert bool(((maps >= 0) & (maps < 1)).all())
    for i, seed in enumerate(sample_seeds(tiny_images, ids)):
        expected = torch.rand((1, 8, 8), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(maps[i], expected, rtol=0, atol=0)


def test_random_is_deterministic_and_batch_independent(tiny_images):
    method = controls.RandomControl()
    ids = ["a", "b", "c", "d"]
    full = method.attribute(tiny_images, sample_ids=ids)
    assert torch.equal(method.attribute(tiny_images, sample_ids=ids), full)
    order = [3, 1, 0, 2]
    assert torch.equal(method.attribute(tiny_images[order], sample_ids=[ids[i] for i in order]), full[order])
    assert torch.equal(method.attribute(tiny_images[2:3], sample_ids=["c"]), full[2:3])
    # the id decides, not the pixels; without ids the pixels decide
    assert torch.equal(method.attribute(torch.zeros(1, 3, 8, 8), sample_ids=["c"]), full[2:3])
    assert not torch.equal(full[0], full[1])
    no_ids = method.attribute(torch.cat([tiny_images[:1], tiny_images[:1], tiny_images[1:2]]))
    assert torch.equal(no_ids[0], no_ids[1]) and not torch.equal(no_ids[0], no_ids[2])


def test_controls_never_run_the_model(tiny_images):
    model = CountingNet()
    for name in ("random", "sobel"):
        get(name, model).attribute(tiny_images)
        get(name, model).attribute(tiny_images, [0, 1, 2, 3])
    assert model.calls == 0
    with pytest.raises(AttributionError):
        get("random", model).attribute(tiny_images, [0, 1])  # still one target per sample


# --------------------------------------------------------------------------- sobel


def test_sobel_of_a_vertical_step_is_nonzero_only_along_the_edge():
    image = torch.zeros(1, 3, 10, 12)
    image[..., 5:] = 1.0  # step between columns 4 and 5, same in every channel
    edges = controls.sobel_magnitude(image)
    assert edges.shape == (1, 1, 10, 12)
    columns = edges[0, 0]
    assert bool((columns[:, [4, 5]] > 0).all())
    assert bool((columns[:, [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]] == 0).all())  # no border artifacts either
    # kernel scaled by 1/8: a unit step gives 1/2 per channel; l2 over 3 channels gives sqrt(3)/2
    torch.testing.assert_close(columns[:, 4], torch.full((10,), 3**0.5 / 2))
    torch.testing.assert_close(controls.sobel_magnitude(image, "sum")[0, 0, :, 5], torch.full((10,), 1.5))
    torch.testing.assert_close(controls.sobel_magnitude(image, "max")[0, 0, :, 5], torch.full((10,), 0.5))


def test_sobel_matches_a_direct_computation(tiny_images):
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    padded = F.pad(tiny_images, (1, 1, 1, 1), mode="replicate")
    gx = torch.zeros_like(tiny_images)
    gy = torch.zeros_like(tiny_images)
    for dy in range(3):
        for dx in range(3):
            window = padded[..., dy : dy + 8, dx : dx + 8]
            gx += kx[dy, dx] * window
            gy += kx[dx, dy] * window
    expected = (gx**2 + gy**2).sum(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(get("sobel", None).attribute(tiny_images), expected, rtol=1e-5, atol=1e-6)


def test_sobel_depends_only_on_pixels(tiny_net, resnet18, tiny_images):
    a = get("sobel", tiny_net).attribute(tiny_images, [0, 1, 2, 3])
    b = get("sobel", resnet18).attribute(tiny_images, sample_ids=[9, 9, 9, 9])
    assert torch.equal(a, b)
    # translation moves the edges with the image
    shifted = get("sobel", tiny_net).attribute(torch.roll(tiny_images, 2, dims=-1))
    torch.testing.assert_close(shifted[..., 3:-3], torch.roll(a, 2, dims=-1)[..., 3:-3])


@pytest.mark.parametrize("name", ["random", "sobel", "blur_gradient"])
def test_controls_leave_model_unchanged(tiny_net, tiny_images, snapshot, name):
    before = snapshot(tiny_net, tiny_images)
    x = tiny_images.clone()
    get(name, tiny_net).attribute(x)
    assert torch.equal(x, tiny_images) and not x.requires_grad
    before.assert_unchanged(tiny_net)


# --------------------------------------------------------------------------- blur_gradient


def test_blur_gradient_is_the_blurred_gradient_magnitude(tiny_net, images32):
    assert type(get("blur_gradient", tiny_net, sigma=1.5)) is controls.BlurredGradient
    assert get("blur_gradient", tiny_net, sigma=1.5).params == {"sigma": 1.5}
    gradient = get("gradient", tiny_net).attribute(images32, target=[0, 1, 2])
    expected = controls.gaussian_blur(gradient.abs().amax(dim=1, keepdim=True), 1.5)
    blurred = get("blur_gradient", tiny_net, sigma=1.5).attribute(images32, target=[0, 1, 2])
    assert blurred.shape == (3, 1, 32, 32)
    torch.testing.assert_close(blurred, expected)
    unblurred = get("blur_gradient", tiny_net, sigma=0).attribute(images32, target=[0, 1, 2])
    torch.testing.assert_close(unblurred, gradient.abs().amax(dim=1, keepdim=True))


@pytest.mark.parametrize("sigma", [-1, float("nan"), float("inf"), "wide", True])
def test_blur_gradient_refuses_a_bad_sigma(tiny_net, sigma):
    with pytest.raises(AttributionError, match="sigma"):
        get("blur_gradient", tiny_net, sigma=sigma)
