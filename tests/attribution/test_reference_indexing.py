"""``integrated`` scores against the reference code's indexing (README, "Where this differs").

The authors' code (CAMP-eXplain-AI/PathwayGrad) scores NeuronIntGrad per ReLU *module*, while this
project scores every ReLU *call*. :func:`reference_scores_integrated_per_module` re-implements the
reference's indexing from its description (see tests/attribution/reference.py); it is not their
code. Its ramp is the intended k/m, k = 1..m, not the reference's accumulating 0, .1, .3, .6, ...
(a known bug, documented and not copied), so these tests isolate the indexing:

- where every ReLU module is called once (VGG-style), both codes must agree: same scores and
  thresholds to float64 rounding, identical masks;
- where a module is reused (a residual block calling one ``nn.ReLU`` twice, as torchvision's
  BasicBlock does), the reference makes fewer score entries than calls and never prunes the calls
  past its last entry, while this project prunes every call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attribution.pathway import PathwayGrad
from tests.attribution.reference import (reference_masks_per_module, reference_scores_integrated_per_module,
                                         reference_scores_taylor)

STEPS = 4


class SmallVGG(nn.Module):
    """VGG-style: three Conv2d+ReLU blocks with max-pooling, a two-layer head; one ``nn.ReLU``
    module per call (five), biases everywhere so the net is not positively homogeneous."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(inplace=True),
                                        nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Block(nn.Module):
    """A torchvision-style basic block: one ``relu`` module called twice."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        return self.relu(self.conv2(out) + x)


class TinyResNet(nn.Module):
    """A stem ReLU and two blocks: 3 ``nn.ReLU`` modules, 5 calls, each [B, 4, 8, 8]."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.block1 = Block(4)
        self.block2 = Block(4)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.relu(self.stem(x))))
        return self.fc(x.flatten(1))


def seeded(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls().double().eval()


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def relu_modules(model: nn.Module) -> int:
    return sum(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("percentile", [30.0, 70.0, 90.0])
def test_vgg_style_net_agrees_with_the_reference_indexing(percentile: float) -> None:
    """Every ReLU module is called once, so per-module and per-call indexing are the same: the
    scores agree to float64 rounding, the thresholds too, and the masks exactly."""
    model, x = seeded(SmallVGG, 3), images(3, 8, seed=4)
    method = PathwayGrad(model, percentile=percentile, scores="integrated", steps=STEPS)
    assert method.steps == STEPS
    _, details = method.attribute(x, return_details=True)
    scores = method.neuron_scores(x, target=details.target)
    masks, thresholds = method.masks(x, target=details.target)
    assert len(scores) == len(masks) == relu_modules(model) == 5
    for i in range(x.shape[0]):
        target = int(details.target[i])
        ref = reference_scores_integrated_per_module(model, x[i : i + 1], target, STEPS)
        assert len(ref) == len(scores)
        taylor = reference_scores_taylor(model, x[i : i + 1], target)
        assert any(not torch.allclose(r, t) for r, t in zip(ref, taylor)), "integrated = Taylor: the test proves little"
        for ours, theirs in zip(scores, ref):
            assert ours.dtype == torch.float64
            torch.testing.assert_close(ours[i : i + 1], theirs, rtol=1e-12, atol=1e-14 * float(theirs.max()))
        ref_masks, q = reference_masks_per_module(ref, [m[i : i + 1].shape for m in masks], percentile)
        assert float(thresholds[i]) == pytest.approx(q, rel=1e-12, abs=0)
        for ours, theirs in zip(masks, ref_masks):
            assert torch.equal(ours[i : i + 1].bool(), theirs)
        kept = sum(int(m.sum()) for m in ref_masks) / sum(m.numel() for m in ref_masks)
        assert float(details.kept_fraction[i]) == pytest.approx(kept, abs=1e-6)


def test_reused_relu_module_leaves_later_calls_unpruned_in_the_reference() -> None:
    """3 ReLU modules, 5 calls of 256 neurons each (1280 per sample). The reference indexing makes
    3 score entries (calls 0-2), prunes only those and keeps calls 3-4 whole; this project scores
    and prunes all 5 calls. Entry 2 (block1's second call) is never scaled there, since module 2
    (block2.relu) does not make call 2: it is call 2's plain Taylor score."""
    model, x = seeded(TinyResNet, 5), images(2, 8, seed=6)
    percentile, per_call, calls = 70.0, 4 * 8 * 8, 5
    method = PathwayGrad(model, percentile=percentile, scores="integrated", steps=STEPS)
    _, details = method.attribute(x, return_details=True)
    masks, thresholds = method.masks(x, target=details.target)
    scores = method.neuron_scores(x, target=details.target)
    assert relu_modules(model) == 3
    assert len(masks) == len(scores) == calls and all(m[0].numel() == per_call for m in masks)
    total = calls * per_call
    # Ours: q over all 1280 scores, numpy-style, so exactly floor(1279 * .7) + 1 = 896 pruned (no ties
    # above 0 in float64; dead neurons score 0 and fall at or below q either way).
    pruned = int(np.floor((total - 1) * percentile / 100)) + 1
    for i in range(x.shape[0]):
        target = int(details.target[i])
        kept_calls = [int(m[i].sum()) for m in masks]
        assert sum(kept_calls) == total - pruned == 384
        assert all(k < per_call for k in kept_calls), "ours prunes in every call"
        assert float(details.kept_fraction[i]) == pytest.approx(384 / 1280, abs=1e-7)

        ref = reference_scores_integrated_per_module(model, x[i : i + 1], target, STEPS)
        assert len(ref) == 3 < calls
        # Where module i makes call i (calls 0 and 1) the entry is the per-call integrated score.
        for j in (0, 1):
            torch.testing.assert_close(ref[j], scores[j][i : i + 1], rtol=1e-12, atol=1e-14 * float(ref[j].max()))
        taylor = reference_scores_taylor(model, x[i : i + 1], target)
        torch.testing.assert_close(ref[2], taylor[2], rtol=1e-12, atol=1e-14 * float(taylor[2].max()))
        assert not torch.allclose(scores[2][i : i + 1], ref[2]), "ours integrates call 2"

        ref_masks, q = reference_masks_per_module(ref, [m[i : i + 1].shape for m in masks], percentile)
        ref_kept = [int(m.sum()) for m in ref_masks]
        assert ref_kept[3:] == [per_call, per_call], "the reference never prunes calls 3 and 4"
        ref_pruned = int(np.floor((3 * per_call - 1) * percentile / 100)) + 1  # 537 of the 768 scored
        assert sum(ref_kept[:3]) == 3 * per_call - ref_pruned == 231
        assert sum(ref_kept) / total == pytest.approx((231 + 512) / 1280)  # 58 % kept, not 30 %
        assert q != pytest.approx(float(thresholds[i]), rel=1e-6)
