"""Model specs, architectures and preprocessing."""

from __future__ import annotations

import json

import pytest
import torch

from models import (
    ModelError,
    ModelSpec,
    available_archs,
    build_model,
    fashion_mnist_spec,
    imagenet_spec,
)
from tests.nets import relu_call_shapes


def test_fashion_mnist_spec_defaults() -> None:
    spec = fashion_mnist_spec()
    assert spec.arch == "resnet8" and spec.num_classes == 10 and spec.in_channels == 1
    assert spec.input_size == (28, 28)
    assert spec.mean == pytest.approx((0.2860,), abs=1e-3) and spec.std == pytest.approx((0.3530,), abs=1e-3)
    assert spec.class_names[0] == "T-shirt/top" and spec.class_names[-1] == "Ankle boot"


def test_spec_json_round_trip() -> None:
    spec = fashion_mnist_spec()
    data = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(data) == spec
    assert isinstance(data["input_size"], list) and isinstance(data["mean"], list)


def test_spec_default_class_names() -> None:
    spec = ModelSpec("resnet8", 3, 1, (28, 28), (0.5,), (0.25,))
    assert spec.class_names == ["0", "1", "2"]


@pytest.mark.parametrize("changes, match", [
    ({"num_classes": 0}, "num_classes"),
    ({"in_channels": 3}, "one value per input channel"),
    ({"std": (0.0,)}, "std"),
    ({"input_size": (28,)}, "input_size"),
    ({"class_names": ["a", "b"]}, "class_names"),
])
def test_spec_rejects_inconsistent_fields(changes: dict, match: str) -> None:
    data = {**fashion_mnist_spec().to_dict(), **changes}
    with pytest.raises(ModelError, match=match):
        ModelSpec.from_dict(data)


def test_from_dict_names_missing_and_unknown_fields() -> None:
    data = fashion_mnist_spec().to_dict()
    with pytest.raises(ModelError, match="missing.*arch"):
        ModelSpec.from_dict({k: v for k, v in data.items() if k != "arch"})
    with pytest.raises(ModelError, match="unknown.*colour"):
        ModelSpec.from_dict({**data, "colour": 1})


@pytest.mark.parametrize("arch, size, first_conv", [
    ("resnet18", 32, "conv1"),
    ("vgg11_bn", 32, "features.0"),
    ("densenet121", 32, "features.conv0"),
    ("efficientnet_b0", 32, "features.0.0"),
])
def test_torchvision_arch_with_one_channel(arch: str, size: int, first_conv: str) -> None:
    spec = ModelSpec(arch, 7, 1, (size, size), (0.5,), (0.25,))
    # On the meta device: the real structure and shapes, without initializing VGG's 130 M weights.
    with torch.device("meta"):
        model = build_model(spec).eval()
        assert model.get_submodule(first_conv).in_channels == 1
        assert model(torch.empty(2, 1, size, size)).shape == (2, 7)
        assert relu_call_shapes(model, torch.empty(1, 1, size, size), "all"), "the attribution method finds neurons"


def test_resnet50_has_49relu_call_shapes() -> None:
    model = build_model(imagenet_spec("resnet50", input_size=(64, 64))).eval()
    assert len(relu_call_shapes(model, torch.randn(1, 3, 64, 64))) == 49


def test_unknown_arch_and_too_small_input_are_clear_errors() -> None:
    with pytest.raises(ModelError, match="unknown arch 'resnet9'.*resnet8.*timm:<name>.*package.module:"):
        build_model(ModelSpec("resnet9", 10, 1, (28, 28), (0.5,), (0.25,)))
    with pytest.raises(ModelError, match="vgg16.*28x28"):
        build_model(ModelSpec("vgg16", 10, 1, (28, 28), (0.5,), (0.25,)))


def test_pretrained_resnet8_is_refused() -> None:
    with pytest.raises(ModelError, match="no pretrained weights"):
        build_model(fashion_mnist_spec(), pretrained=True)


def test_every_torchvision_classifier_is_an_arch() -> None:
    archs = available_archs()
    assert {"resnet8", "resnet18", "resnet50", "vgg16_bn", "densenet121", "convnext_tiny", "vit_b_16"} <= set(archs)


def test_timm_models_are_archs() -> None:
    pytest.importorskip("timm")
    spec = ModelSpec("timm:resnet10t", 4, 1, (32, 32), (0.5,), (0.25,))
    model = build_model(spec).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    with pytest.raises(ModelError, match="timm cannot build 'no_such_net'"):
        build_model(ModelSpec("timm:no_such_net", 4, 1, (32, 32), (0.5,), (0.25,)))


MYNETS = """
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make(num_classes: int):
    return SmallNet(num_classes, width=4)
"""


@pytest.fixture
def mynets(tmp_path, monkeypatch):
    """A user's own model module on the import path."""
    (tmp_path / "mynets_reg.py").write_text(MYNETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mynets_reg"


def test_an_import_path_builds_the_users_class_or_factory_with_arch_kwargs(mynets: str) -> None:
    spec = ModelSpec(f"{mynets}:SmallNet", 10, 1, (28, 28), (0.3,), (0.3,), arch_kwargs={"num_classes": 10, "width": 16})
    model = build_model(spec, trust_code=[mynets])
    assert type(model).__name__ == "SmallNet" and model.conv.out_channels == 16
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    made = build_model(spec.replace(arch=f"{mynets}:make", arch_kwargs={"num_classes": 10}), trust_code=mynets)
    assert made.conv.out_channels == 4
    with pytest.raises(ModelError, match=r"returns shape \(1, 3\).*expected \(1, 10\)"):
        build_model(spec.replace(arch_kwargs={"num_classes": 3}), trust_code=[mynets])


@pytest.mark.parametrize("arch, match", [
    ("no_such_module_xyz:Net", "cannot import 'no_such_module_xyz'.*PYTHONPATH.*--working-dir"),
    ("os:system", "the standard library"),
    ("subprocess:run", "the standard library"),
    ("torch.hub:load", "function defined in 'torch.hub' itself"),
    ("numpy:ndarray", "not an nn.Module"),
    ("mynets_reg:Missing", "has no 'Missing'"),
    ("bad path:x", "not an import path"),
])
def test_import_paths_that_are_not_model_code_are_refused(mynets: str, arch: str, match: str) -> None:
    trusted = [arch.partition(":")[0].replace(" ", "_")]  # refused even when the operator trusts the module
    with pytest.raises(ModelError, match=match):
        build_model(ModelSpec(arch, 10, 1, (28, 28), (0.3,), (0.3,)), trust_code=trusted)


def test_arch_kwargs_must_be_plain_data() -> None:
    with pytest.raises(ModelError, match="arch_kwargs must be plain JSON"):
        ModelSpec("resnet8", 10, 1, (28, 28), (0.3,), (0.3,), arch_kwargs={"act": torch.nn.ReLU})


def test_old_spec_dicts_without_arch_kwargs_still_load() -> None:
    data = fashion_mnist_spec().to_dict()
    del data["arch_kwargs"]
    assert ModelSpec.from_dict(data) == fashion_mnist_spec()


def test_imagenet_spec_has_names_without_download() -> None:
    spec = imagenet_spec("resnet18")
    assert spec.num_classes == 1000 and len(spec.class_names) == 1000 and spec.class_names[0] == "tench"
