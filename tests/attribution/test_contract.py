"""The contract every registered method keeps, checked for each name in ``available()``
(Zennit-style), so a newly registered method is covered without editing this file.

One ``attribute(inputs, target=..., sample_ids=..., return_details=...)``: maps shaped like the
inputs (or one channel), per-sample targets, details exactly as declared in ``detail_schema``,
parameters that rebuild the same method, and a model left exactly as it was, also after an error.
"""

from __future__ import annotations

import pytest
import torch

from attribution import TEXT, AttributionError, Details, MethodSpec, available, get, method_class
from tests.nets import TinyConvNet, make_tiny_net

#: Fewer steps where a method has them, so that every method runs in well under a second here.
FAST = {"integrated_gradients": {"n_steps": 5}, "smoothgrad": {"n_samples": 4}}
NAMES = available()
IDS = ["p", "q", "r", "s"]


def build(name: str, model: torch.nn.Module):
    return get(name, model, **FAST.get(name, {}))


def uses_targets(name: str) -> bool:
    return method_class(name).needs_model


@pytest.fixture
def net64() -> TinyConvNet:
    """float64: a sample's map alone then equals its map in the batch to float64 rounding, for
    every method (float32 pathway maps may differ where a neuron is within rounding of q)."""
    return make_tiny_net().double()


@pytest.fixture
def images64(tiny_images) -> torch.Tensor:
    return tiny_images.double()


@pytest.mark.parametrize("name", NAMES)
def test_maps_and_declared_details(name, net64, images64):
    method = build(name, net64)
    maps, details = method.attribute(images64, [4, 0, 3, 1], sample_ids=IDS, return_details=True)
    assert maps.shape in (images64.shape, (4, 1, 8, 8)) and maps.dtype == images64.dtype
    assert not maps.requires_grad and torch.isfinite(maps).all()
    assert isinstance(details, Details) and list(details) == list(method.detail_schema)
    assert {"target", "predicted", "logit"} <= set(details), "every method with a model reports its view"
    assert details.target.tolist() == [4, 0, 3, 1]
    with torch.no_grad():
        logits = net64(images64)
    assert details.predicted.tolist() == logits.argmax(1).tolist()
    torch.testing.assert_close(details.logit.double(), logits[torch.arange(4), details.target])
    for key, declared in method.detail_schema.items():
        value = details[key]
        if declared.dtype is TEXT:  # one str per sample ("" for nothing to say)
            assert len(value) == 4 and all(isinstance(v, str) for v in value) and declared.doc, key
            continue
        assert value.shape[0] == 4 and value.dim() in ((1, 2) if declared.per_sample == "list" else (1,)), key
        kind = {torch.int64: "integral", torch.float64: "floating", torch.bool: "bool"}[declared.dtype]
        assert (value.dtype == torch.bool) == (kind == "bool"), key
        assert value.is_floating_point() == (kind == "floating"), key
        assert declared.doc, f"{name}: detail {key!r} has no doc"
    assert torch.equal(method.attribute(images64, [4, 0, 3, 1], sample_ids=IDS), maps)


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_targets_match_single_sample_runs(name, net64, images64):
    method = build(name, net64)
    targets = [4, 0, 3, 1]
    batch = method.attribute(images64, targets, sample_ids=IDS)
    for i, t in enumerate(targets):
        alone = method.attribute(images64[i : i + 1], t, sample_ids=IDS[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-10, atol=1e-12 * batch.abs().max().item())
    other = method.attribute(images64, [0, 0, 0, 0], sample_ids=IDS)[1:]
    assert torch.equal(other, batch[1:]) != uses_targets(name), "the target changes a model-based map only"


@pytest.mark.parametrize("name", NAMES)
def test_default_target_is_the_predicted_class(name, net64, images64):
    method = build(name, net64)
    _, details = method.attribute(images64, sample_ids=IDS, return_details=True)
    with torch.no_grad():
        assert details.target.tolist() == net64(images64).argmax(1).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_stored_params_rebuild_the_same_method(name, tiny_net):
    method = build(name, tiny_net)
    again = MethodSpec(name, method.params).build(tiny_net)
    assert type(again) is type(method) and again.params == method.params and again.name == name


@pytest.mark.parametrize("name", NAMES)
def test_model_and_inputs_unchanged(resnet18, images32, snapshot, name):
    resnet18.train()
    resnet18.layer2.eval()  # a mixed state must come back as it was
    resnet18.fc.weight.requires_grad_(False)
    before = snapshot(resnet18, images32)
    x = images32.clone()
    maps = build(name, resnet18).attribute(x, sample_ids=[0, 1, 2], return_details=True)[0]
    assert torch.isfinite(maps).all()
    assert torch.equal(x, images32) and not x.requires_grad and x.grad is None
    before.assert_unchanged(resnet18)
    with torch.no_grad():  # callers may hold a no_grad context
        again = build(name, resnet18).attribute(x, sample_ids=[0, 1, 2])
    assert torch.equal(again, maps)
    before.assert_unchanged(resnet18)


class ExplodingNet(TinyConvNet):
    """Raises in the middle of its ``fail_at``-th forward pass, after a ReLU ran."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.relu(self.conv1(x))
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.fc(self.gap(self.relu3(self.conv3(self.pool(self.relu(self.conv2(h)))))).flatten(1))


@pytest.mark.parametrize("fail_at", [1, 2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_model_unchanged_after_an_error(tiny_images, snapshot, name, fail_at):
    torch.manual_seed(0)
    model = ExplodingNet(fail_at=0)
    model.train()
    before = snapshot(model, tiny_images)
    model.fail_at, model.calls = fail_at, 0
    try:
        build(name, model).attribute(tiny_images, [0, 1, 2, 3], sample_ids=IDS, return_details=True)
    except RuntimeError as err:
        assert "boom" in str(err)
    else:
        assert model.calls < fail_at, f"{name}: the forward pass that raises ran, but no error came out"
    model.fail_at = 0
    before.assert_unchanged(model)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_target_is_a_clear_error(tiny_net, tiny_images, snapshot, name):
    before = snapshot(tiny_net, tiny_images)
    with pytest.raises(AttributionError, match="out of range"):
        build(name, tiny_net).attribute(tiny_images, [0, 1, 2, 5], return_details=True)
    before.assert_unchanged(tiny_net)


@pytest.mark.parametrize("name", NAMES)
def test_frozen_model_still_works(tiny_net, tiny_images, name):
    tiny_net.requires_grad_(False)
    maps = build(name, tiny_net).attribute(tiny_images, [0, 1, 2, 3], sample_ids=IDS)
    assert maps.abs().sum() > 0
    assert not any(p.requires_grad for p in tiny_net.parameters())
