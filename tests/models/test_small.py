"""ResNet-8: the small CIFAR / Fashion-MNIST-sized network the attribution jobs explain."""

from __future__ import annotations

import torch
from torch import nn

from models import ModelSpec, build_model, fashion_mnist_spec
from models.small import ResNet8
from tests.models.relu_calls import relu_call_shapes


def test_resnet8_structure() -> None:
    model = build_model(fashion_mnist_spec()).eval()
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    # 3x3 stem; stages at 16/32/64 channels with stride 1/2/2; one block each.
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [1, 1, 1]
    calls = relu_call_shapes(model, x)
    assert calls == [(4, 16, 28, 28)] * 3 + [(4, 32, 14, 14)] * 2 + [(4, 64, 7, 7)] * 2
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 120_000


def test_resnet8_takes_32px_rgb() -> None:
    spec = ModelSpec("resnet8", 10, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    assert build_model(spec).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_blocks_reuse_one_inplace_relu() -> None:
    """Like torchvision's ResNets: the attribution method must count ReLU calls, not modules."""
    model = ResNet8(num_classes=10, in_channels=1)
    block = model.layer1[0]
    assert isinstance(block.relu, nn.ReLU) and block.relu.inplace
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 4  # stem + one per block, 7 calls
