"""After attribution the model behaves exactly as before, and bad input gets a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attribution import AttributionError, get
from attribution.pathway import PathwayGrad
from models.tv import models as tv_models
from tests.nets import hooks_left


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return tv_models.resnet18(num_classes=10)


@pytest.mark.parametrize("scores", ["taylor", "integrated", "random", "greedy"])
def test_model_is_unchanged(resnet: nn.Module, scores: str) -> None:
    resnet.train()  # a model in training mode comes back in training mode
    resnet.layer1.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    resnet.eval()
    before = resnet(x)
    resnet.train()
    PathwayGrad(resnet, scores=scores, steps=2 if scores in ("integrated", "greedy") else None).attribute(x)
    assert resnet.training and all(m.training for m in resnet.modules())
    assert hooks_left(resnet) == 0
    assert all(p.grad is None for p in resnet.parameters()), "parameter gradients were computed"
    assert [p.requires_grad for p in resnet.layer1.parameters()] == [False] * len(list(resnet.layer1.parameters()))
    assert all(p.requires_grad for p in resnet.layer4.parameters())
    for key, value in resnet.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed (BatchNorm statistics must not update)"
    resnet.eval()
    assert torch.equal(resnet(x), before)


def test_frozen_model_still_works(resnet: nn.Module) -> None:
    resnet.eval().requires_grad_(False)
    maps = PathwayGrad(resnet).attribute(torch.randn(2, 3, 32, 32))
    assert maps.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"percentile": 100.0}, "percentile"),
        ({"percentile": -1.0}, "percentile"),
        ({"scores": "magic"}, "unknown scores"),
        ({"steps": 3}, "steps applies"),
        ({"scores": "greedy", "steps": 0}, "steps"),
    ],
)
def test_bad_parameters(resnet: nn.Module, kwargs: dict, message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        PathwayGrad(resnet, **kwargs)


@pytest.mark.parametrize(
    ("inputs", "target", "message"),
    [
        (torch.randn(3, 32, 32), None, r"\[B, C, H, W\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), None, "floating point"),
        (torch.randn(0, 3, 32, 32), None, "empty batch"),
        (torch.randn(2, 3, 32, 32), [1, 2, 3], "3 entries for a batch of 2"),
        (torch.randn(2, 3, 32, 32), 10, "out of range"),
        (torch.randn(2, 3, 32, 32), -1, "negative"),
        (torch.randn(2, 3, 32, 32), [0.5, 1.0], "integer class"),
    ],
)
def test_bad_inputs(resnet: nn.Module, inputs, target, message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        PathwayGrad(resnet).attribute(inputs, target=target)
    assert hooks_left(resnet) == 0


def test_model_not_returning_logits() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(AttributionError, match=r"logits \[B, K\]"):
        PathwayGrad(model).attribute(torch.randn(2, 3, 8, 8))


def test_unknown_method_lists_the_known_ones(resnet: nn.Module) -> None:
    with pytest.raises(AttributionError, match="choose one of .*pathway"):
        get("pathway-grad", resnet)
