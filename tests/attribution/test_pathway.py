"""PathwayGrad against a per-sample reference written from the algorithm, on small real models.

What "batched equals per-sample" means (attribution/pathway.py) decides how each test compares:

- float64 (scores and thresholds in float64 too): the batched map *is* the per-sample map, so
  maps are compared at float64 precision (:func:`assert_maps_equal`) and masks exactly.
- float32: a neuron whose score lies within float32 rounding of q may fall on either side of it
  in a batch and alone, since kernels (and their rounding) depend on batch shape and CPU. The
  float32 tests check exactly that (:func:`check_float32_against_reference`), never "maps close".
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from attribution import get
from attribution.pathway import PathwayGrad
from models.tv import models as tv_models
from tests.attribution.reference import (reference_map, reference_pathway,
                                        reference_scores_taylor, reference_thresholds)

#: float64 maps of a batch and of each sample alone differ only by float64 rounding of the same
#: masks' gradients: ~1e-15 relative per op, ~1e-13 after a deep net. 1e-10 leaves room for any
#: CPU's kernels while a single flipped neuron (>= 1e-7 of the map range, measured) fails it.
RTOL64, ATOL64 = 1e-10, 1e-11
#: float32 maps computed with the same masks differ by float32 rounding only: at most 1.6e-6 of the
#: map's range measured on ResNet-18/50 and VGG, under native, avx2 and default (portable) kernels.
RTOL32, ATOL32 = 1e-4, 1e-5
#: Two float32 computations of the same scores (batched vs alone, or two CPUs) differ by rounding,
#: which scales with the terms summed, not with the score: a neuron's gradient sums thousands of
#: terms that cancel, so near q a score can move by 7e-3 of q (VGG-11, measured). Relative to the
#: sample's largest score the rounding is at most 1.2e-6 (all archs, native/avx2/default kernels).
SCORE_ATOL32 = 1e-4  # of the sample's largest score
THRESHOLD_RTOL32 = 1e-4  # |q_batch - q_alone| / q: measured at most 1.2e-5


class SharedReluNet(nn.Module):
    """Small CNN that reuses one in-place ReLU module, like torchvision's ResNet blocks."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = nn.functional.max_pool2d(self.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def tiny_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 9), nn.ReLU(), nn.Linear(9, 4))


@pytest.fixture(scope="module")
def shared_net() -> nn.Module:
    """float64, so that batched and per-sample maps must be equal, not close."""
    torch.manual_seed(1)
    return SharedReluNet().double().eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(2)
    return tv_models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet18_64(resnet18: nn.Module) -> nn.Module:
    return copy.deepcopy(resnet18).double()


def images(batch: int, size: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)


@functools.lru_cache(maxsize=1)
def torchvision_model(arch: str, dtype: torch.dtype) -> nn.Module:
    """Built once per (arch, dtype) in a row (VGG's init of 138 M weights takes seconds)."""
    torch.manual_seed(15)
    return getattr(tv_models, arch)(num_classes=10).eval().to(dtype)


def assert_maps_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float64 maps equal to float64 rounding."""
    assert actual.dtype == expected.dtype == torch.float64
    scale = expected.abs().max().item()
    assert scale > 0, "reference map is all zeros: the test would prove nothing"
    torch.testing.assert_close(actual, expected, rtol=RTOL64, atol=ATOL64 * scale)


def assert_maps_close32(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 maps of the same masks, equal to float32 rounding."""
    scale = expected.abs().max().item()
    assert scale > 0, "reference map is all zeros: the test would prove nothing"
    torch.testing.assert_close(actual, expected, rtol=RTOL32, atol=ATOL32 * scale)


def check_float32_against_reference(model: nn.Module, x: torch.Tensor, percentile: float = 70.0) -> int:
    """Batched float32 PathwayGrad vs the per-sample float32 reference, as far as float32 allows.

    Per sample: (1) the batched scores equal the reference's to float32 rounding; (2) so do the
    thresholds; (3) the batched masks are exactly score > q; (4) where batched and reference
    masks differ, the neuron's score lies within the two computations' rounding of q; and
    (5) the reference map computed with the batched masks equals the batched map to float32
    rounding. Returns the number of flipped neurons (for the caller to bound).
    """
    method = PathwayGrad(model, percentile=percentile)
    maps, details = method.attribute(x, return_details=True)
    masks, thresholds = method.masks(x, target=details.target)
    scores = method.neuron_scores(x, target=details.target)
    flips = 0
    for i in range(x.shape[0]):
        target = int(details.target[i])
        ref = reference_scores_taylor(model, x[i : i + 1], target)
        q_ref = float(reference_thresholds(ref, percentile)[0])
        ref_scores = torch.cat([s.flatten() for s in ref])
        batch_scores = torch.cat([s[i].flatten() for s in scores])
        batch_masks = torch.cat([m[i].flatten() for m in masks]).bool()
        q = float(thresholds[i])
        rounding = (batch_scores - ref_scores).abs()
        assert rounding.max() <= SCORE_ATOL32 * ref_scores.max(), "(1) scores differ by more than rounding"
        assert abs(q - q_ref) <= THRESHOLD_RTOL32 * q_ref, f"(2) threshold {q} vs reference {q_ref}"
        assert torch.equal(batch_masks, batch_scores > q), "(3) masks are not score > q"
        flipped = batch_masks != (ref_scores > q_ref)
        distance = (ref_scores[flipped] - q_ref).abs()
        assert torch.all(distance <= rounding[flipped] + abs(q - q_ref)), "(4) a neuron far from q flipped"
        flips += int(flipped.sum())
        expected, _ = reference_map(model, x[i : i + 1], target, [m[i : i + 1] for m in masks])
        assert_maps_close32(maps[i : i + 1], expected)  # (5)
        kept = batch_masks.double().mean().item()
        assert details.kept_fraction[i].item() == pytest.approx(kept, abs=1e-6)
    return flips


ARCHS = [("resnet18", 32), ("resnet50", 64), ("vgg11", 32), ("vgg16_bn", 32)]


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("percentile", [30.0, 70.0, 95.0])
def test_batched_equals_per_sample_reference(shared_net: nn.Module, percentile: float, per_layer: bool) -> None:
    x = images(6)
    maps, details = PathwayGrad(shared_net, percentile=percentile, per_layer=per_layer).attribute(x, return_details=True)
    for i in range(6):
        target = int(details.target[i])
        expected, kept = reference_pathway(shared_net, x[i : i + 1], target, percentile, per_layer)
        assert_maps_equal(maps[i : i + 1], expected)
        assert details.kept_fraction[i].item() == pytest.approx(kept, abs=1e-6)


@pytest.mark.parametrize("percentile", [30.0, 70.0, 90.0])
@pytest.mark.parametrize(("arch", "size"), ARCHS)
def test_float64_batched_maps_equal_per_sample_maps(arch: str, size: int, percentile: float) -> None:
    """In float64 (scores and thresholds included) a batch changes nothing: masks are the
    per-sample reference's, bit for bit, and maps equal its maps to float64 rounding."""
    model = torchvision_model(arch, torch.float64)
    x = images(2, size=size, seed=15)
    method = PathwayGrad(model, percentile=percentile)
    maps, details = method.attribute(x, return_details=True)
    masks, thresholds = method.masks(x, target=details.target)
    for i in range(2):
        target = int(details.target[i])
        scores = reference_scores_taylor(model, x[i : i + 1], target)
        assert scores[0].dtype == torch.float64
        q = reference_thresholds(scores, percentile)[0]
        assert float(thresholds[i]) == pytest.approx(q, rel=1e-12, abs=0)
        for batch_mask, score in zip(masks, scores):
            assert torch.equal(batch_mask[i : i + 1].bool(), score > q)
        expected, kept = reference_pathway(model, x[i : i + 1], target, percentile, scores=scores)
        assert_maps_equal(maps[i : i + 1], expected)
        assert details.kept_fraction[i].item() == pytest.approx(kept, abs=1e-6)


@pytest.mark.parametrize(("arch", "size"), ARCHS)
def test_float32_masks_differ_only_within_rounding_of_the_threshold(arch: str, size: int) -> None:
    flips = check_float32_against_reference(torchvision_model(arch, torch.float32),
                                            images(2, size=size, seed=15, dtype=torch.float32))
    assert flips <= 10, f"{flips} neurons flipped: far more than float32 rounding explains (0-4 measured)"


def test_map_does_not_depend_on_the_rest_of_the_batch(resnet18_64: nn.Module) -> None:
    x = images(5, size=32, seed=3)
    method = PathwayGrad(resnet18_64)
    together = method.attribute(x)
    shuffled = method.attribute(x[[4, 2, 0, 3, 1]])
    alone = method.attribute(x[2:3])
    assert_maps_equal(shuffled[1:2], together[2:3])
    assert_maps_equal(alone, together[2:3])


def test_float32_batch_is_within_rounding_of_each_sample_alone(resnet18: nn.Module) -> None:
    """The float32 counterpart: the reference runs each sample alone, as a batch of one."""
    check_float32_against_reference(resnet18, images(5, size=32, seed=3, dtype=torch.float32))


def test_kept_fraction_is_one_minus_p_without_ties(resnet18: nn.Module) -> None:
    x = images(2, size=32, seed=4, dtype=torch.float32)
    maps, details = PathwayGrad(resnet18, percentile=70.0).attribute(x, return_details=True)
    neurons = sum(s.numel() for s in reference_scores_taylor(resnet18.eval(), x[:1].requires_grad_(), 0))
    pruned = int(np.floor(0.7 * (neurons - 1))) + 1  # ranks 0..floor(pos) are <= q when nothing ties at q
    assert torch.all(details.threshold > 0)
    torch.testing.assert_close(details.kept_fraction, torch.full((2,), (neurons - pruned) / neurons))


def test_per_sample_targets(shared_net: nn.Module) -> None:
    x = images(4, seed=5)
    targets = [0, 3, 1, 4]
    maps, details = PathwayGrad(shared_net).attribute(x, target=targets, return_details=True)
    assert details.target.tolist() == targets
    for i, t in enumerate(targets):
        expected, _ = reference_pathway(shared_net, x[i : i + 1], t, 70.0)
        assert_maps_equal(maps[i : i + 1], expected)
    with_tensor = PathwayGrad(shared_net).attribute(x, target=torch.tensor(targets))
    assert torch.equal(with_tensor, maps)


def test_default_target_is_the_predicted_class(shared_net: nn.Module) -> None:
    x = images(4, seed=6)
    _, details = PathwayGrad(shared_net).attribute(x, return_details=True)
    assert details.target.tolist() == shared_net(x).argmax(1).tolist()
    assert torch.equal(details.predicted, details.target)
    torch.testing.assert_close(details.logit, shared_net(x).max(1).values)


def test_details_report_the_pruned_network(shared_net: nn.Module) -> None:
    x = images(3, seed=7)
    _, details = PathwayGrad(shared_net, percentile=90.0).attribute(x, return_details=True)
    for i in range(3):
        _, kept, logit = reference_pathway(shared_net, x[i : i + 1], int(details.target[i]), 90.0, with_logit=True)
        assert details.kept_fraction[i].item() == pytest.approx(kept, abs=1e-6)
        assert details.pruned_logit[i].item() == pytest.approx(logit, rel=1e-10)
    assert details.prediction_kept.dtype == torch.bool
    assert torch.equal(details.prediction_kept, details.pruned_predicted == details.target)
    assert not torch.allclose(details.pruned_logit, details.logit)


def test_masks_and_scores_are_what_attribute_prunes(shared_net: nn.Module) -> None:
    x = images(3, seed=7)
    method = PathwayGrad(shared_net, percentile=60.0)
    _, details = method.attribute(x, return_details=True)
    masks, thresholds = method.masks(x)
    scores = method.neuron_scores(x)
    assert len(masks) == len(scores) == 2 and all(m.dtype == torch.uint8 for m in masks)
    assert all(s.dtype == torch.float64 and s.shape == m.shape for s, m in zip(scores, masks))
    assert torch.equal(thresholds, details.threshold)
    for m, s in zip(masks, scores):
        assert torch.equal(m.bool(), s > thresholds.view(-1, 1, 1, 1))
    kept = sum(m.flatten(1).double().sum(1) for m in masks) / sum(m[0].numel() for m in masks)
    torch.testing.assert_close(kept.float(), details.kept_fraction)


def test_integrated_scores_match_direct_computation() -> None:
    """Scores from scaling one layer at a time, computed with plain autograd on the split network."""
    torch.manual_seed(8)
    net = tiny_mlp().double().eval()
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    steps, percentile = 7, 60.0
    maps, details = PathwayGrad(net, percentile=percentile, scores="integrated", steps=steps).attribute(x, return_details=True)
    relu_positions = [i for i, m in enumerate(net) if isinstance(m, nn.ReLU)]
    for i in range(3):
        target = int(details.target[i])
        scores = []
        for pos in relu_positions:
            a = net[: pos + 1](x[i : i + 1]).detach()
            downstream = lambda h, pos=pos: net[pos + 1 :](h)[0, target]  # noqa: E731
            grads = [torch.autograd.functional.vjp(downstream, a * (k / steps))[1] for k in range(1, steps + 1)]
            scores.append((a * torch.stack(grads).mean(0)).abs())
        expected, kept = reference_pathway(net, x[i : i + 1], target, percentile, scores=scores)
        assert_maps_equal(maps[i : i + 1], expected)
        assert details.kept_fraction[i].item() == pytest.approx(kept, abs=1e-6)


def test_integrated_ramp_is_not_the_reference_codes_accumulating_one() -> None:
    """With one step the ramp is just k/m = 1: integrated scores equal Taylor scores."""
    torch.manual_seed(9)
    net = tiny_mlp().eval()
    x = torch.randn(4, 3, 2, 2)
    one_step = PathwayGrad(net, scores="integrated", steps=1).attribute(x)
    taylor = PathwayGrad(net, scores="taylor").attribute(x)
    torch.testing.assert_close(one_step, taylor)


def test_random_prunes_p_percent_of_each_layer_seeded_by_sample_id(resnet18_64: nn.Module) -> None:
    x = images(3, size=32, seed=10)
    method = PathwayGrad(resnet18_64, percentile=40.0, scores="random")
    maps, details = method.attribute(x, sample_ids=["a", "b", "c"], return_details=True)
    assert details.threshold.shape == (3, 17)  # per layer: ResNet-18 makes 17 ReLU calls
    torch.testing.assert_close(details.kept_fraction, torch.full((3,), 0.6), atol=2e-3, rtol=0)
    again = method.attribute(x[[2, 0]], sample_ids=["c", "a"])
    assert_maps_equal(again, maps[[2, 0]])
    other = method.attribute(x[:1], sample_ids=["z"])
    assert not torch.allclose(other, maps[:1])


def test_greedy_with_one_step_is_taylor_and_more_steps_differ(shared_net: nn.Module) -> None:
    x = images(4, seed=11)
    taylor = PathwayGrad(shared_net, percentile=90.0).attribute(x)
    one = PathwayGrad(shared_net, percentile=90.0, scores="greedy", steps=1).attribute(x)
    torch.testing.assert_close(one, taylor)
    greedy, details = PathwayGrad(shared_net, percentile=90.0, scores="greedy", steps=9).attribute(x, return_details=True)
    assert not torch.allclose(greedy, taylor)
    neurons = 2 * 8 * 8 * 8
    most_kept = (neurons - int(np.floor(0.9 * (neurons - 1))) - 1) / neurons
    assert torch.all(details.kept_fraction <= most_kept + 1e-6)


def test_in_place_relus_give_the_same_maps_as_out_of_place(resnet18: nn.Module) -> None:
    x = images(2, size=32, seed=12, dtype=torch.float32)
    in_place = PathwayGrad(resnet18).attribute(x)
    for module in resnet18.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    try:
        out_of_place = PathwayGrad(resnet18).attribute(x)
    finally:
        for module in resnet18.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True
    torch.testing.assert_close(in_place, out_of_place)


def test_registered_by_name(shared_net: nn.Module) -> None:
    method = get("pathway", shared_net, percentile=80.0, scores="integrated")
    assert isinstance(method, PathwayGrad)
    assert method.params == {"percentile": 80.0, "scores": "integrated", "per_layer": False, "steps": 10}


def test_float32_is_within_rounding_of_float64(shared_net: nn.Module) -> None:
    """The float32 map is the float64 map of float32's own masks, to float32 rounding; the masks
    are float64's except within rounding of q."""
    x = images(3, seed=13)
    single_net = copy.deepcopy(shared_net).float()
    method = PathwayGrad(single_net)
    single, details = method.attribute(x.float(), return_details=True)
    masks, thresholds = method.masks(x.float(), target=details.target)
    double_masks, double_q = PathwayGrad(shared_net).masks(x, target=details.target)
    for i in range(3):
        target = int(details.target[i])
        expected, _ = reference_map(shared_net, x[i : i + 1], target, [m[i : i + 1] for m in masks])
        assert_maps_close32(single[i : i + 1].double(), expected)
        differ = sum(int((a[i] != b[i]).sum()) for a, b in zip(masks, double_masks))
        assert differ <= 2, f"{differ} of {sum(m[i].numel() for m in masks)} neurons flipped between dtypes"
        assert float(thresholds[i]) == pytest.approx(float(double_q[i]), rel=THRESHOLD_RTOL32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_runs_and_stays_close(resnet18: nn.Module, dtype: torch.dtype) -> None:
    """Half precision works but moves neurons across the threshold: maps agree only roughly.

    Measured on this random-weight ResNet-18: per-sample correlation with float32 maps
    0.76-0.92 in float16 and about 0.65 in bfloat16 (plain gradients: 0.99 / 0.98).
    """
    x = images(2, size=32, seed=14, dtype=torch.float32)
    single, reference = PathwayGrad(resnet18).attribute(x, return_details=True)
    half_net = copy.deepcopy(resnet18).to(dtype)
    half, details = PathwayGrad(half_net).attribute(x.to(dtype), target=reference.target, return_details=True)
    assert half.dtype == dtype and torch.isfinite(half).all()
    torch.testing.assert_close(details.kept_fraction.float(), reference.kept_fraction, atol=0.02, rtol=0)
    for a, b in zip(single, half.float()):
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] > 0.5


def test_two_forward_passes_give_the_map_and_every_detail(shared_net: nn.Module) -> None:
    """The scoring pass and the pruned pass: targets and the model's logits come from the first,
    so neither resolving targets nor reporting details costs another pass."""
    calls = []
    handle = shared_net.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        PathwayGrad(shared_net).attribute(images(2), return_details=True)
    finally:
        handle.remove()
    assert len(calls) == 2
