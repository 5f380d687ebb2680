"""Any PyTorch classifier: functional ReLUs, non-ReLU activations, every torchvision architecture.

The functional twins share their weights with an ``nn.ReLU`` twin, whose maps the per-sample
reference checks (test_pathway.py); in float64 each twin's maps must equal it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attribution import AttributionError, PathwayGrad, get
from attribution.neurons import NeuronCalls
from models.tv import models as tv_models
from tests.attribution.reference import reference_pathway
from tests.nets import BlockNet, hooks_left, twin

#: Input size per architecture on the meta device (shapes only, so any size costs nothing): most
#: take 64 px; these get their native size.
SIZES = {"inception_v3": 299, "vit": 224, "swin": 224, "maxvit": 224}
#: Families whose activations are all ReLUs (also in their SE gates: those are sigmoids).
RELU_ONLY = ("alexnet", "densenet", "googlenet", "inception", "mnasnet", "regnet", "resnet", "resnext",
             "shufflenet", "squeezenet", "vgg", "wide_resnet")


#: Smaller inputs for the representatives' real forward and backward passes: Inception's smallest
#: (75 px), Swin's windows padded, a ViT built for 64 px (4 patches); MaxViT's 7 x 7 grid needs 224.
SMALL = {"inception_v3": 75, "swin": 64, "vit": 64, "maxvit": 224}


def size_of(name: str, sizes: dict[str, int] = SIZES) -> int:
    return next((s for key, s in sizes.items() if name.startswith(key)), 64)


def classification_models() -> list[str]:
    return tv_models.list_models(module=tv_models)


@pytest.fixture(scope="module")
def module_twin() -> BlockNet:
    torch.manual_seed(3)
    return BlockNet("module").double().eval()


@pytest.mark.parametrize("style", [s for s in BlockNet.STYLES if s != "module"])
def test_functional_relu_nets_give_the_maps_of_their_module_twin(module_twin: BlockNet, style: str) -> None:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected, reference = PathwayGrad(module_twin).attribute(x, return_details=True)
    net = twin(style, module_twin)
    maps, details = PathwayGrad(net).attribute(x, return_details=True)
    assert torch.equal(maps, expected)
    assert torch.equal(details.kept_fraction, reference.kept_fraction)
    for i in range(3):  # and the nn.ReLU twin is the per-sample reference's
        ref, _ = reference_pathway(module_twin, x[i : i + 1], int(details.target[i]), 70.0)
        torch.testing.assert_close(maps[i : i + 1], ref, rtol=1e-10, atol=1e-11 * ref.abs().max().item())
    assert hooks_left(net) == 0


class ModuleDenseNet(nn.Module):
    """DenseNet-121 with its one functional ReLU (after ``norm5``) written as a module."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier = densenet.features, densenet.classifier
        self.final_relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final_relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


def test_densenet_prunes_all_121_relu_calls_like_an_all_module_twin() -> None:
    torch.manual_seed(5)
    densenet = tv_models.densenet121(num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    maps, details = PathwayGrad(densenet).attribute(x, return_details=True)
    assert details.neuron_calls.tolist() == [121, 121]
    assert torch.equal(details.neuron_elements, details.activation_elements)
    twin_maps = PathwayGrad(ModuleDenseNet(densenet).eval()).attribute(x)
    torch.testing.assert_close(maps, twin_maps, rtol=1e-10, atol=1e-11 * maps.abs().max().item())


@pytest.mark.parametrize("name", classification_models())
def test_every_torchvision_classifier_has_all_its_activations_found(name: str) -> None:
    """On the meta device (shapes only, no weights): with ``activations='all'`` every elementwise
    activation that runs on the input's data is a neuron; with ``'relu'`` exactly the ReLU-only
    families are covered and the others are told which activations they run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet / Inception init notices
        if name.startswith("regnet"):  # RegNet's init copies data, which meta tensors have not
            model = tv_models.get_model(name, num_classes=10).eval() if name.endswith("400mf") else None
            device = "cpu"
        else:
            with torch.device("meta"):
                model = tv_models.get_model(name, num_classes=10).eval()
            device = "meta"
    if model is None:
        pytest.skip("large RegNets are covered by the 400 MF ones (same blocks, more of them)")
    x = torch.zeros(1, 3, size_of(name), size_of(name), device=device)
    with torch.no_grad(), NeuronCalls(model, "all") as calls:
        calls.reset(record=True)
        model(x)
        calls.check_coverage()
        assert calls.calls > 0 and calls.coverage.fraction == 1.0
    with torch.no_grad(), NeuronCalls(model, "relu") as calls:
        calls.reset(record=True)
        model(x)
        if name.startswith(RELU_ONLY):
            calls.check_coverage()
        else:
            with pytest.raises(AttributionError, match="activations='all'"):
                calls.check_coverage()
    assert hooks_left(model) == 0


REPRESENTATIVES = ["resnet18", "vgg11_bn", "densenet121", "googlenet", "inception_v3", "mobilenet_v2",
                   "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "regnet_x_400mf", "shufflenet_v2_x0_5",
                   "squeezenet1_1", "mnasnet0_5", "alexnet", "swin_t", "vit_b_32", "maxvit_t"]


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_pathway_runs_on_one_classifier_of_every_torchvision_family(name: str, snapshot) -> None:
    torch.manual_seed(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        size = size_of(name, SMALL)
        model = tv_models.get_model(name, num_classes=10, **({"image_size": size} if name.startswith("vit") else {}))
        model.eval()
    with torch.no_grad():  # ViTs start with an all-zero head, whose maps would be zero
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.weight.normal_(0, 0.02)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(6))
    before = snapshot(model, x)
    maps, details = PathwayGrad(model, activations="all").attribute(x, return_details=True)
    assert maps.shape == x.shape and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert torch.equal(details.neuron_elements, details.activation_elements)
    # p = 70 prunes floor(0.7 (n - 1)) + 1 of n neurons, and more on ties at q
    assert (details.kept_fraction <= 0.3 + 1e-4).all()
    before.assert_unchanged(model)


def test_partial_coverage_is_an_error_unless_allowed() -> None:
    torch.manual_seed(7)
    model = tv_models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with pytest.raises(AttributionError, match=r"19 hardswish.*activations='all'.*allow_partial=True"):
        PathwayGrad(model).attribute(x)
    _, details = PathwayGrad(model, allow_partial=True).attribute(x, return_details=True)
    assert details.neuron_calls.tolist() == [14, 14] and details.activation_calls.tolist() == [33, 33]
    assert (details.neuron_elements < details.activation_elements).all()
    assert hooks_left(model) == 0


def test_activation_choice_is_a_stored_parameter() -> None:
    model = BlockNet().eval()
    assert "activations" not in PathwayGrad(model).params  # the paper's ReLU neurons, as before the option
    assert PathwayGrad(model, activations="all").params["activations"] == "all"
    assert PathwayGrad(model, activations=("gelu", "relu")).params["activations"] == ["relu", "gelu"]
    with pytest.raises(AttributionError, match="unknown activations"):
        PathwayGrad(model, activations=("relu", "tanh"))


def test_guided_backprop_guides_functional_relus_like_module_ones(module_twin: BlockNet) -> None:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    expected = get("guided_backprop", module_twin).attribute(x, target=[0, 1, 2])
    assert not torch.allclose(expected, get("gradient", module_twin).attribute(x, target=[0, 1, 2]))
    for style in ("functional", "inplace", "mixed"):
        net = twin(style, module_twin)
        torch.testing.assert_close(get("guided_backprop", net).attribute(x, target=[0, 1, 2]), expected,
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "layer"), [("densenet121", "features"), ("mobilenet_v3_small", "features"),
                                             ("convnext_tiny", "features"), ("googlenet", "inception5b")])
def test_grad_cam_picks_the_last_spatial_feature_map(name: str, layer: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = tv_models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    method = get("grad_cam", model)
    maps = method.attribute(x)
    assert method.resolved_layer == layer and maps.shape == (1, 1, 96, 96)


def test_grad_cam_on_a_vision_transformer_asks_for_a_layer() -> None:
    model = tv_models.vit_b_32(num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    with pytest.raises(AttributionError, match="followed by token sequences.*pass layer="):
        get("grad_cam", model).attribute(x)
    assert get("grad_cam", model, layer="conv_proj").attribute(x).shape == (1, 1, 224, 224)
