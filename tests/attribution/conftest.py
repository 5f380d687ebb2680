"""Small real models for attribution tests, and a check that a method left the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.tv import models as tv_models


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU idle OpenMP
    threads spinning against other processes make each small op ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyConvNet(nn.Module):
    """A small CNN with biases that reuses one in-place ``nn.ReLU`` like torchvision's blocks.

    Shapes for [B, 3, 8, 8] inputs: conv1 -> [B, 6, 8, 8], conv2 -> [B, 8, 8, 8],
    pool -> [B, 8, 4, 4], conv3 -> [B, 8, 4, 4], GAP -> fc -> [B, classes].
    """

    def __init__(self, classes: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # called twice per forward
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv2(self.relu(self.conv1(x)))))
        x = self.relu3(self.conv3(x))
        return self.fc(self.gap(x).flatten(1))


def make_tiny_net(seed: int = 0, classes: int = 5) -> TinyConvNet:
    torch.manual_seed(seed)
    return TinyConvNet(classes).eval()


def make_resnet18(seed: int = 0) -> nn.Module:
    """torchvision ResNet-18 with 10 classes, for 32 px inputs; BN statistics made non-trivial
    so the network is not positively homogeneous (IG would equal gradient x input)."""
    torch.manual_seed(seed)
    model = tv_models.resnet18(num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture
def tiny_net() -> TinyConvNet:
    return make_tiny_net()


@pytest.fixture
def resnet18() -> nn.Module:
    return make_resnet18()


@pytest.fixture
def tiny_images() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def images32() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


class ModelSnapshot:
    """Everything an attribution method must leave as it found it."""

    def __init__(self, model: nn.Module, probe: torch.Tensor) -> None:
        self.probe = probe.clone()
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.training = [m.training for m in model.modules()]
        self.requires_grad = [p.requires_grad for p in model.parameters()]
        self.inplace = [getattr(m, "inplace", None) for m in model.modules()]
        self.output = _eval_output(model, self.probe)

    def assert_unchanged(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            for attr in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
                "_forward_hooks_with_kwargs",
                "_forward_pre_hooks_with_kwargs",
            ):
                assert not getattr(module, attr, {}), f"{name or 'model'} still has {attr}"
            assert "forward" not in module.__dict__, f"{name or 'model'} still has a replaced forward"
        from torch.nn.modules import module as module_mod

        for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
            assert not getattr(module_mod, attr, {}), f"global {attr} left behind"
        assert [m.training for m in model.modules()] == self.training
        assert [p.requires_grad for p in model.parameters()] == self.requires_grad
        assert all(p.grad is None for p in model.parameters()), "a parameter .grad was populated"
        assert [getattr(m, "inplace", None) for m in model.modules()] == self.inplace
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        for key, value in self.state.items():
            assert torch.equal(state[key], value), f"{key} changed"
        assert torch.equal(_eval_output(model, self.probe), self.output)


def _eval_output(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode output, with every module's own training flag put back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(inputs).clone()
    finally:
        for module, flag in flags:
            module.training = flag


@pytest.fixture
def snapshot():
    """``snapshot(model, probe_inputs)`` -> :class:`ModelSnapshot` with ``assert_unchanged(model)``."""
    return ModelSnapshot
