"""ResNet-8: the small CIFAR / Fashion-MNIST-sized network the attribution jobs explain."""

from __future__ import annotations

import torch
from torch import nn

from models import ModelSpec, build_model, fashion_mnist_spec
from models.small import ResNet8
from tests.nets import relu_call_shapes


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


def test_basic_block_is_torchvisions_layer_for_layer() -> None:
    """Same parameter names (checkpoints load either way), same outputs, same execution order."""
    from models.small import BasicBlock
    from models.tv import models as tv_models

    for inplanes, planes, stride in ((16, 16, 1), (16, 32, 2)):
        downsample = None
        if stride != 1:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        torch.manual_seed(0)
        ours = BasicBlock(inplanes, planes, stride, downsample).eval()
        theirs = tv_models.resnet.BasicBlock(inplanes, planes, stride, downsample).eval()
        theirs.load_state_dict(ours.state_dict())  # strict: the same keys and shapes
        x = torch.randn(2, inplanes, 14, 14)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
        order = {}
        for tag, block in (("ours", ours), ("theirs", theirs)):
            seen: list[str] = []
            handles = [m.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
                       for name, m in block.named_modules() if name]
            block(x)
            for h in handles:
                h.remove()
            order[tag] = seen
        assert order["ours"] == order["theirs"]


def test_default_model_needs_no_torchvision() -> None:
    """Importing the worker path and building ResNet-8 must not import torchvision (0.9 s per actor),
    captum, or torch._dynamo (0.8 s: torch's meta kernels import it; a job worker paid it to load a checkpoint)."""
    import subprocess
    import sys

    code = ("import sys, workers.attributor, attribution; from models import build_model, fashion_mnist_spec; "
            "attribution.get('pathway', build_model(fashion_mnist_spec())); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'captum') or m == 'torch._dynamo'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
