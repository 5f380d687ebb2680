"""Baseline attribution methods against independent computations on small real models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import attribution.baselines as baselines
import attribution.controls  # noqa: F401 - registers the controls
import attribution.gradcam as gradcam
from attribution import AttributionError, available, get
from attribution.base import sample_seeds
from tests.nets import make_resnet18, make_tiny_net

METHODS = ["gradient", "gradient_x_input", "integrated_gradients", "guided_backprop", "grad_cam", "smoothgrad"]


def autograd_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """d logit_target / d x for one sample, computed alone."""
    x = x[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[0, target], x)
    return grad[0]


def reference_guided_backprop(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Guided backprop by tensor hooks on a copy with out-of-place ReLUs: the gradient
    reaching each ReLU call's output is clamped at 0, then the ReLU's own backward
    applies its [input > 0] mask."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False

    def hook(module, args, output):
        output.register_hook(lambda grad: grad.clamp(min=0))

    handles = [m.register_forward_hook(hook) for m in clone.modules() if isinstance(m, nn.ReLU)]
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clone(x).gather(1, targets[:, None]).sum(), x)
    for handle in handles:
        handle.remove()
    return grad


# --------------------------------------------------------------------------- registry, params


def test_all_methods_are_registered_by_name(tiny_net):
    assert set(METHODS) <= set(available())
    classes = {
        "gradient": baselines.Gradient,
        "gradient_x_input": baselines.GradientXInput,
        "integrated_gradients": baselines.IntegratedGradientsMethod,
        "guided_backprop": baselines.GuidedBackprop,
        "grad_cam": gradcam.GradCAM,
        "smoothgrad": baselines.SmoothGrad,
    }
    for name, cls in classes.items():
        method = get(name, tiny_net)
        assert type(method) is cls and method.name == name


def test_default_params_and_round_trip(tiny_net):
    assert get("integrated_gradients", tiny_net).params == {"n_steps": 50, "method": "riemann_right"}
    assert get("smoothgrad", tiny_net).params == {"n_samples": 50, "noise_level": 0.15}
    assert get("grad_cam", tiny_net).params == {"layer": "auto", "interpolation": "bilinear"}
    for name in METHODS:
        method = get(name, tiny_net)
        assert get(name, tiny_net, **method.params).params == method.params


@pytest.mark.parametrize(
    "name, params",
    [
        ("integrated_gradients", {"n_steps": 0}),
        ("integrated_gradients", {"method": "simpson"}),
        ("integrated_gradients", {"internal_batch_size": 0}),
        ("smoothgrad", {"n_samples": 0}),
        ("smoothgrad", {"noise_level": -0.1}),
        ("grad_cam", {"layer": "no_such_layer"}),
        ("grad_cam", {"interpolation": "cubic"}),
        ("gradient", {"steps": 3}),
    ],
)
def test_bad_params_are_clear_errors(tiny_net, name, params):
    with pytest.raises(AttributionError):
        get(name, tiny_net, **params)


# --------------------------------------------------------------------------- gradient, gradient x input


@pytest.mark.parametrize("make", [make_tiny_net, make_resnet18])
def test_gradient_equals_per_sample_autograd(make):
    model = make()
    x = torch.randn(3, 3, 32, 32) if make is make_resnet18 else torch.randn(3, 3, 8, 8)
    targets = [4, 0, 2]
    maps = get("gradient", model).attribute(x, targets)
    assert maps.shape == x.shape and not maps.requires_grad
    for i, t in enumerate(targets):
        torch.testing.assert_close(maps[i], autograd_gradient(model, x[i], t), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make", [make_tiny_net, make_resnet18])
def test_gradient_is_captums_saliency_bit_for_bit(make):
    """Our one backward pass and Captum's Saliency run the same autograd graph with the same ones as
    the target logits' gradient, so the maps are equal exactly (under ATEN_CPU_CAPABILITY=default too)."""
    import captum.attr

    model = make()
    x = torch.randn(4, 3, 32, 32) if make is make_resnet18 else torch.randn(4, 3, 8, 8)
    targets = torch.tensor([4, 0, 2, 1])
    captums = captum.attr.Saliency(model).attribute(x.clone().requires_grad_(True), target=targets, abs=False)
    assert torch.equal(get("gradient", model).attribute(x, targets), captums.detach())


def test_gradient_x_input_is_gradient_times_input(tiny_net, tiny_images):
    grad = get("gradient", tiny_net).attribute(tiny_images, 1)
    gxi = get("gradient_x_input", tiny_net).attribute(tiny_images, 1)
    torch.testing.assert_close(gxi, grad * tiny_images)


def test_default_target_is_the_predicted_class(tiny_net, tiny_images):
    predicted = tiny_net(tiny_images).argmax(1)
    torch.testing.assert_close(
        get("gradient", tiny_net).attribute(tiny_images), get("gradient", tiny_net).attribute(tiny_images, predicted)
    )


# --------------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_is_the_right_riemann_sum(tiny_net, tiny_images):
    steps, targets = 50, torch.tensor([0, 1, 2, 3])
    maps = get("integrated_gradients", tiny_net).attribute(tiny_images, targets)
    for i in range(len(tiny_images)):
        ramp = [tiny_images[i] * k / steps for k in range(1, steps + 1)]
        mean_grad = sum(autograd_gradient(tiny_net, x, int(targets[i])) for x in ramp) / steps
        torch.testing.assert_close(maps[i], tiny_images[i] * mean_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "method, tolerance", [("riemann_right", 0.05), ("riemann_trapezoid", 0.02), ("gausslegendre", 0.02)]
)
def test_integrated_gradients_completeness(tiny_net, tiny_images, method, tolerance):
    targets = torch.tensor([0, 1, 2, 3])
    maps = get("integrated_gradients", tiny_net, method=method).attribute(tiny_images, targets)
    with torch.no_grad():
        f_x = tiny_net(tiny_images).gather(1, targets[:, None]).squeeze(1)
        f_0 = tiny_net(torch.zeros_like(tiny_images)).gather(1, targets[:, None]).squeeze(1)
    delta = f_x - f_0
    assert delta.abs().min() > 1e-3  # the check means something
    atol = tolerance * delta.abs().max().item()
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), delta, rtol=tolerance, atol=atol)


def test_integrated_gradients_internal_batch_size_changes_nothing(tiny_net, tiny_images):
    whole = get("integrated_gradients", tiny_net, n_steps=7).attribute(tiny_images, 2)
    for size in (1, 4, 9, 100):
        chunked = get("integrated_gradients", tiny_net, n_steps=7, internal_batch_size=size).attribute(tiny_images, 2)
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- guided backprop


def test_guided_backprop_matches_reference_on_resnet18_with_shared_inplace_relu(resnet18, images32):
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in resnet18.modules())
    targets = torch.tensor([3, 7, 0])
    maps = get("guided_backprop", resnet18).attribute(images32, targets)
    reference = reference_guided_backprop(resnet18, images32, targets)
    assert reference.abs().max() > 0
    torch.testing.assert_close(maps, reference, rtol=1e-4, atol=1e-6)
    plain = get("gradient", resnet18).attribute(images32, targets)
    assert not torch.allclose(maps, plain, rtol=0.1, atol=0.1 * plain.abs().max().item())


def test_guided_backprop_matches_reference_on_tiny_net(tiny_net, tiny_images):
    targets = torch.tensor([0, 1, 2, 3])
    maps = get("guided_backprop", tiny_net).attribute(tiny_images, targets)
    torch.testing.assert_close(maps, reference_guided_backprop(tiny_net, tiny_images, targets), rtol=1e-4, atol=1e-7)


class PreActivationSkipNet(nn.Module):
    """The ReLU's input also feeds a skip connection: only the ReLU path may be clamped."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        skip = h * 1.0
        return self.fc((self.conv2(self.relu(h)) + skip).flatten(1))


def test_guided_backprop_clamps_only_the_relu_path():
    # Captum's GuidedBackprop clamps the total gradient of the ReLU's input tensor and
    # gets this net wrong; ours must equal the reference.
    torch.manual_seed(0)
    model = PreActivationSkipNet().eval()
    x, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    maps = get("guided_backprop", model).attribute(x, targets)
    torch.testing.assert_close(maps, reference_guided_backprop(model, x, targets), rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- Grad-CAM


def test_smoothgrad_equals_reference_with_the_per_sample_noise(tiny_net, tiny_images):
    n, level, ids = 6, 0.2, ["a", "b", "c", "d"]
    targets = torch.tensor([3, 2, 1, 0])
    maps = get("smoothgrad", tiny_net, n_samples=n, noise_level=level).attribute(tiny_images, targets, sample_ids=ids)
    for i, seed in enumerate(sample_seeds(tiny_images, ids)):
        x = tiny_images[i]
        sigma = level * (x.max() - x.min())
        generator = torch.Generator().manual_seed(seed)
        noisy = [x + sigma * torch.randn(x.shape, generator=generator) for _ in range(n)]
        expected = sum(autograd_gradient(tiny_net, xn, int(targets[i])) for xn in noisy) / n
        torch.testing.assert_close(maps[i], expected, rtol=1e-4, atol=1e-6)


def test_smoothgrad_is_per_sample_deterministic_and_batch_independent(tiny_net, tiny_images):
    method = get("smoothgrad", tiny_net, n_samples=5)
    ids, targets = [10, 11, 12, 13], torch.tensor([0, 1, 2, 3])
    full = method.attribute(tiny_images, targets, sample_ids=ids)
    torch.testing.assert_close(method.attribute(tiny_images, targets, sample_ids=ids), full, rtol=0, atol=0)
    order = [2, 0, 3, 1]
    shuffled = method.attribute(tiny_images[order], targets[order], sample_ids=[ids[i] for i in order])
    torch.testing.assert_close(shuffled, full[order], rtol=1e-5, atol=1e-7)
    alone = method.attribute(tiny_images[1:2], targets[1:2], sample_ids=[11])
    torch.testing.assert_close(alone[0], full[1], rtol=1e-5, atol=1e-7)
    chunked = get("smoothgrad", tiny_net, n_samples=5, internal_batch_size=8)
    chunked = chunked.attribute(tiny_images, targets, sample_ids=ids)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-7)
    other_ids = method.attribute(tiny_images, targets, sample_ids=[20, 21, 22, 23])
    assert not torch.allclose(other_ids, full)
    # same pixels and no ids: the seed is the pixels' hash, so twice the same image gives twice the same map
    twice = method.attribute(torch.cat([tiny_images[:1], tiny_images[:1]]), 0)
    torch.testing.assert_close(twice[0], twice[1], rtol=1e-5, atol=1e-7)


def test_smoothgrad_without_noise_is_the_gradient(tiny_net, tiny_images):
    smooth = get("smoothgrad", tiny_net, n_samples=3, noise_level=0.0).attribute(tiny_images, 1)
    torch.testing.assert_close(smooth, get("gradient", tiny_net).attribute(tiny_images, 1), rtol=1e-5, atol=1e-7)
