"""Small real models for the tests, and what the attribution methods see of a model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attribution.neurons import NeuronCalls
from models.tv import models as tv_models


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


#: Source text of a user's model class ``Net`` (its module imports ``nn`` from torch), for tests that
#: write a user's module to disk and load it by its import path, as ``--trust-code`` users do.
USER_NET_CLASS = """
class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))
"""


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


def hooks_left(model: nn.Module) -> int:
    """Hooks and replaced ``forward`` methods still on the model."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
        + ("forward" in m.__dict__)
        for m in model.modules()
    )


class BlockNet(nn.Module):
    """A small residual CNN whose ReLUs are written in one of several ways, so that twins with the
    same weights differ only in how they call ReLU. ``style``: ``module`` (one shared in-place
    ``nn.ReLU``), ``functional`` (``F.relu``), ``torch`` (``torch.relu``), ``method``
    (``x.relu()``), ``inplace`` (``F.relu(x, inplace=True)``, ``torch.relu_``, ``x.relu_()``)
    or ``mixed`` (a different one at each call). The block's output adds a skip connection."""

    STYLES = ("module", "functional", "torch", "method", "inplace", "mixed")

    def __init__(self, style: str = "module", classes: int = 5) -> None:
        super().__init__()
        self.style = style
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.relu = nn.ReLU(inplace=True)  # declared always; called only in the "module" style
        self.fc = nn.Linear(8, classes)

    def act(self, x: torch.Tensor, call: int) -> torch.Tensor:
        style = self.style if self.style != "mixed" else ("module", "functional", "method", "inplace")[call % 4]
        if style == "module":
            return self.relu(x)
        if style == "functional":
            return F.relu(x)
        if style == "torch":
            return torch.relu(x)
        if style == "method":
            return x.relu()
        return (lambda t: F.relu(t, inplace=True), torch.relu_, torch.Tensor.relu_)[call % 3](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x), 0)
        h = self.act(self.conv2(h) + h, 1)
        h = self.act(self.conv3(h), 2)
        return self.fc(h.mean(dim=(2, 3)))


def twin(style: str, source: nn.Module) -> BlockNet:
    """A BlockNet of ``style`` with ``source``'s weights and dtype."""
    net = BlockNet(style)
    net.load_state_dict(source.state_dict())
    return net.to(next(source.parameters()).dtype).eval()


def relu_call_shapes(model: torch.nn.Module, x: torch.Tensor, activations: str = "relu") -> list[tuple[int, ...]]:
    """Output shape of every ReLU (or other ``activations``) call, in call order: the neurons the
    attribution method sees."""
    with torch.no_grad(), NeuronCalls(model, activations, allow_partial=True) as relus:
        relus.reset(record=True)
        model(x)
        return [tuple(out.shape) for out in relus.outputs]
