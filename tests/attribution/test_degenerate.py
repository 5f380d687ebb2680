"""Degenerate maps are flagged where they are made (issue #27): attribution.base.degenerate_reasons for any
method's all-zero map, attribution.pathway.pruned_everything for a pathway with every neuron pruned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution import get
from attribution.base import degenerate_reasons
from attribution.pathway import pruned_everything
from tests.nets import make_tiny_net


def zero_head(seed: int = 0) -> torch.nn.Module:
    """The tiny net with its last layer zeroed, as torchvision's ViT-B/16 starts: every logit is 0."""
    net = make_tiny_net(seed)
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()
    return net


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("scores", ["taylor", "integrated", "greedy"])
def test_a_zero_head_prunes_everything_and_says_so(images, scores):
    maps, details = get("pathway", zero_head(), scores=scores).attribute(images, return_details=True)
    assert details.kept_fraction.tolist() == [0.0, 0.0, 0.0]
    assert (maps == 0).all()
    assert list(details.degenerate) == ["all neuron scores are zero: every neuron pruned"] * 3


def test_a_working_net_has_no_degenerate_pathway(images):
    maps, details = get("pathway", make_tiny_net()).attribute(images, return_details=True)
    assert (details.kept_fraction > 0).all() and maps.abs().amax(dim=(1, 2, 3)).min() > 0
    assert list(details.degenerate) == ["", "", ""]


@pytest.mark.parametrize("name", ["gradient", "gradient_x_input", "integrated_gradients", "grad_cam"])
def test_any_methods_all_zero_map_is_flagged(images, name):
    maps, details = get(name, zero_head()).attribute(images, return_details=True)
    assert (maps == 0).all()
    assert list(details.degenerate) == ["all-zero map"] * 3


def test_reasons_prefer_the_methods_own():
    maps = torch.zeros(3, 1, 2, 2)
    maps[1, 0, 0, 0] = 1.0
    assert list(degenerate_reasons(maps)) == ["all-zero map", "", "all-zero map"]
    own = np.array(["", "", "kept fraction 0: every neuron pruned"], dtype=object)
    assert list(degenerate_reasons(maps, own)) == ["all-zero map", "", "kept fraction 0: every neuron pruned"]


def test_pruned_everything_tells_zero_scores_from_a_high_threshold():
    kept = torch.tensor([0.0, 0.0, 0.3])
    thresholds = torch.tensor([[0.0], [0.5], [0.0]], dtype=torch.float64)
    assert list(pruned_everything(kept, thresholds)) == [
        "all neuron scores are zero: every neuron pruned", "kept fraction 0: every neuron pruned", ""]
