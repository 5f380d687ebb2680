"""attribution.gradcam: Grad-CAM against a hand computation, and its choice of layer in models it has not seen."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attribution import AttributionError, get
from attribution.gradcam import find_gradcam_layer


def hand_grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k alpha_k A_k), alpha_k = spatial mean of d y_t / d A_k, on an out-of-place copy."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    name = next(n for n, m in model.named_modules() if m is layer)
    saved = {}
    handle = clone.get_submodule(name).register_forward_hook(lambda m, a, out: saved.setdefault("A", out))
    logits = clone(x)
    handle.remove()
    acts = saved["A"]
    (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * acts).sum(dim=1, keepdim=True)).detach()


@pytest.mark.parametrize("layer", ["relu3", "conv3", "conv2"])
def test_grad_cam_equals_hand_computation(tiny_net, tiny_images, layer):
    # conv2 is followed by an in-place ReLU: Grad-CAM must still see conv2's own output.
    targets = torch.tensor([0, 1, 2, 3])
    method = get("grad_cam", tiny_net, layer=layer)
    hand = hand_grad_cam(tiny_net, tiny_net.get_submodule(layer), tiny_images, targets)
    assert hand.abs().max() > 0
    torch.testing.assert_close(method.layer_maps(tiny_images, targets), hand, rtol=1e-4, atol=1e-6)
    maps = method.attribute(tiny_images, targets)
    assert maps.shape == (4, 1, 8, 8) and bool((maps >= 0).all())
    expected = F.interpolate(hand, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_grad_cam_auto_layer_on_tiny_net_and_resnet18(tiny_net, tiny_images, resnet18):
    # tiny net: relu is called twice, pool and gap are pooling, so the last candidate is relu3
    assert find_gradcam_layer(tiny_net, tiny_images) == "relu3"
    method = get("grad_cam", tiny_net)
    targets = torch.tensor([0, 1, 2, 3])
    named = get("grad_cam", tiny_net, layer="relu3").attribute(tiny_images, targets)
    torch.testing.assert_close(method.attribute(tiny_images, targets), named)
    assert method.resolved_layer == "relu3" and method.params["layer"] == "auto"
    # ResNet-18: layer4 is 1 x 1 at 32 px, so layer3; at 64 px layer4 is 2 x 2
    assert find_gradcam_layer(resnet18, torch.zeros(1, 3, 32, 32)) == "layer3"
    assert find_gradcam_layer(resnet18, torch.zeros(1, 3, 64, 64)) == "layer4"


def test_grad_cam_auto_layer_on_vgg_style_net():
    # like torchvision's VGG: features end in a max pool, then an adaptive pool that may upsample
    torch.manual_seed(0)
    model = nn.Sequential()
    features = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    features += [nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    model.add_module("features", nn.Sequential(*features))
    model.add_module("avgpool", nn.AdaptiveAvgPool2d(7))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(4 * 49, 3))
    assert find_gradcam_layer(model.eval(), torch.zeros(1, 3, 16, 16)) == "features.4"


def test_grad_cam_layer_errors(tiny_net, tiny_images):
    with pytest.raises(AttributionError, match="runs 2 times"):
        get("grad_cam", tiny_net, layer="relu").attribute(tiny_images)
    with pytest.raises(AttributionError, match="4-D"):
        get("grad_cam", tiny_net, layer="fc").attribute(tiny_images)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with pytest.raises(AttributionError, match="layer="):
        get("grad_cam", mlp).attribute(torch.randn(2, 3, 2, 2))


# --------------------------------------------------------------------------- SmoothGrad


def test_a_layer_with_a_1x1_map_is_refused_naming_the_option(tiny_net):
    # At 2 x 2 px inputs conv3 sees the pooled 1 x 1 map: upsampled, Grad-CAM would be a constant.
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    with pytest.raises(AttributionError, match=r"layer 'conv3' has a 1 x 1 feature map .*layer='<module name>'") as err:
        get("grad_cam", tiny_net, layer="conv3").attribute(x)
    assert "\n" not in str(err.value)


def test_a_coarse_map_warns_and_the_layer_and_resolution_are_details(tiny_net):
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))  # conv3: 2 x 2
    method = get("grad_cam", tiny_net)
    with pytest.warns(UserWarning, match=r"'relu3' gives a 2 x 2 map .*coarser than 4 x 4"):
        _, details = method.attribute(x, return_details=True)
    assert list(details.layer) == ["relu3", "relu3"] and details.layer_size.tolist() == [[2, 2], [2, 2]]
    _, details = method.attribute(torch.randn(2, 3, 8, 8), return_details=True)  # 4 x 4: no warning
    assert details.layer_size.tolist() == [[4, 4], [4, 4]]
