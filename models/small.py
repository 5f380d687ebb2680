"""Small ResNets for 28-32 px inputs (Fashion-MNIST, CIFAR-sized data).

:class:`BasicBlock` is torchvision's residual block, layer for layer (same module names,
so checkpoints match, and the same execution order): a block reuses one in-place
``nn.ReLU`` twice exactly as the ImageNet ResNets do, so the attribution method must treat
each *call* of a ReLU module as its own layer. It is written out here rather than imported
because importing torchvision is slow (it pulls in torch._dynamo; benchmarks/RESULTS.md,
"Figures moved from the code"), paid again by every Ray actor that starts for the default
model; ``tests/models`` checks it against torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn



class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (downsampled) input, then the same ReLU again."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        out += identity
        return self.relu(out)


class ResNet8(nn.Module):
    """ResNet-8: a 3x3 stem conv, three one-block stages (16/32/64 ch, stride 1/2/2), GAP, fc.

    About 78 k parameters; 7 ReLU calls per forward (stem + 2 per block).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(in_channels, w1, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(w1, w1, stride=1)
        self.layer2 = self._stage(w1, w2, stride=2)
        self.layer3 = self._stage(w2, w3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # No zero-init of the residual branches' last BN: on a network this shallow it
        # slows the first epoch down markedly (benchmarks/RESULTS.md, "Figures moved from the code").

    @staticmethod
    def _stage(inplanes: int, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        return nn.Sequential(BasicBlock(inplanes, planes, stride=stride, downsample=downsample))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet8(num_classes: int = 10, in_channels: int = 3) -> ResNet8:
    return ResNet8(num_classes=num_classes, in_channels=in_channels)
