"""NeuronCalls finds every activation call, however it is written, and leaves no trace on the model,
even after errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attribution import AttributionError
from attribution.neurons import NeuronCalls
from attribution.pathway import PathwayGrad
from models.tv import models as tv_models
from tests.nets import BlockNet, hooks_left, relu_call_shapes, twin


def count_calls(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad(), NeuronCalls(model) as relus:
        relus.reset(record=True)
        model(x)
        return relus.calls, sum(o[0].numel() for o in relus.outputs)


def test_resnet50_at_224_has_49_relu_calls_and_about_9_6_million_neurons() -> None:
    model = tv_models.resnet50().eval()
    calls, neurons = count_calls(model, torch.zeros(1, 3, 224, 224))
    assert calls == 49
    assert 9.5e6 < neurons < 9.8e6
    assert hooks_left(model) == 0


def test_each_call_of_a_shared_module_is_its_own_layer() -> None:
    model = tv_models.resnet18().eval()  # one relu module per block, called twice
    calls, _ = count_calls(model, torch.zeros(1, 3, 32, 32))
    assert calls == 17
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 9


def test_vgg16_calls() -> None:
    model = tv_models.vgg16(num_classes=10).eval()
    calls, _ = count_calls(model, torch.zeros(1, 3, 32, 32))
    assert calls == 15  # 13 convs + 2 classifier layers


def test_hooks_are_removed_when_the_forward_pass_raises() -> None:
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:  # the scoring pass works, the pruned pass fails
                raise RuntimeError("boom")
            return self.relu(x.flatten(1))

    model = Fails()
    with pytest.raises(RuntimeError, match="boom"):
        PathwayGrad(model).attribute(torch.randn(2, 1, 2, 2))
    assert hooks_left(model) == 0


def test_model_without_relu_is_a_clear_error_naming_the_option() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(AttributionError, match="makes no relu activation calls.*activations='all'"):
        PathwayGrad(model).attribute(torch.randn(2, 1, 2, 2))
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
    with pytest.raises(AttributionError, match=r"activation calls that ran: 1 gelu\).*activations='all'"):
        PathwayGrad(gelu).attribute(torch.randn(2, 1, 2, 2))
    assert hooks_left(gelu) == 0 and not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("style", BlockNet.STYLES)
def test_every_way_of_writing_relu_is_a_neuron_call(style: str) -> None:
    torch.manual_seed(0)
    net = twin(style, BlockNet().eval())
    shapes = relu_call_shapes(net, torch.zeros(2, 3, 8, 8))
    assert shapes == [(2, 6, 8, 8), (2, 6, 8, 8), (2, 8, 4, 4)]
    assert hooks_left(net) == 0 and not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("write", ["F.relu", "F.relu_inplace", "torch.relu", "torch.relu_", "Tensor.relu",
                                   "Tensor.relu_"])
def test_functional_pruned_call_is_relu_times_mask_with_the_same_gradient(write: str) -> None:
    call = {"F.relu": F.relu, "F.relu_inplace": lambda t: F.relu(t, inplace=True), "torch.relu": torch.relu,
            "torch.relu_": torch.relu_, "Tensor.relu": torch.Tensor.relu, "Tensor.relu_": torch.Tensor.relu_}[write]

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return call(x * 1.0)

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 50, generator=generator)
    z[:, :5] = 0.0
    keep = (torch.rand(4, 50, generator=generator) > 0.5).to(torch.uint8)
    weight = torch.randn(4, 50, generator=generator)
    x, net = z.clone().requires_grad_(True), Net()
    with NeuronCalls(net) as calls:
        calls.reset(keep=[keep])
        out = net(x)
        assert calls.calls == 1
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    y = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((torch.relu(y) * keep * weight).sum(), y)
    assert torch.equal(out.detach(), torch.relu(z) * keep) and torch.equal(grad, expected)


def test_activations_of_parameters_are_not_neurons() -> None:
    """Only tensors computed from the input hold neurons (Swin-V2's position-bias MLP applies a ReLU
    to coordinates, the same for every sample)."""

    class ParamGate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.fc(x.flatten(1))) * F.relu(self.scale)

    net = ParamGate()
    with torch.no_grad(), NeuronCalls(net) as calls:
        calls.reset(record=True)
        net(torch.randn(3, 1, 2, 2))
        assert calls.calls == 1 and calls.outputs[0].shape == (3, 4) and not calls.coverage.missed


def test_a_declared_relu_module_that_is_never_called_is_no_problem() -> None:
    torch.manual_seed(0)
    net = BlockNet("functional").eval()  # holds self.relu, calls F.relu
    maps, details = PathwayGrad(net).attribute(torch.randn(2, 3, 8, 8), return_details=True)
    assert torch.isfinite(maps).all() and details.neuron_calls.tolist() == [3, 3]


def test_torchscript_is_refused_with_the_fix() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(AttributionError, match="TorchScript.*pass the eager"):
        PathwayGrad(scripted).attribute(torch.randn(2, 1, 2, 2))


def test_relu_output_modified_in_place_later_is_a_clear_error() -> None:
    class AddsInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu(self.fc(x.flatten(1)))
            h += 1.0
            return h

    with pytest.raises(AttributionError, match="modified in place"):
        PathwayGrad(AddsInPlace()).attribute(torch.randn(2, 1, 2, 2))


@pytest.mark.parametrize("inplace", [False, True])
def test_pruned_call_is_relu_times_mask_with_the_same_gradient(inplace: bool) -> None:
    """The fused call equals relu(z) * keep, and so does its gradient, ties at z = 0 included."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 50, generator=generator)
    z[:, :5] = 0.0
    keep = (torch.rand(4, 50, generator=generator) > 0.5).float()
    weight = torch.randn(4, 50, generator=generator)
    model = nn.Sequential(nn.Identity(), nn.ReLU(inplace=inplace))
    x = z.clone().requires_grad_(True)
    with NeuronCalls(model) as relus:
        relus.reset(keep=[keep])
        out = model(x.clone())
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    y = z.clone().requires_grad_(True)
    (expected_grad,) = torch.autograd.grad((torch.relu(y) * keep * weight).sum(), y)
    assert torch.equal(out.detach(), torch.relu(z) * keep)
    assert torch.equal(grad, expected_grad)
    assert hooks_left(model) == 0


def test_relu_subclass_with_its_own_forward_is_pruned_on_its_output_and_user_hooks_still_run() -> None:
    class Leakyish(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x) + 0.5

    relu = Leakyish()
    seen: list[torch.Tensor] = []
    handle = relu.register_forward_hook(lambda m, args, out: seen.append(out))
    model = nn.Sequential(nn.Flatten(), relu)
    x = torch.randn(2, 6)
    keep = torch.tensor([[1.0, 0, 1, 0, 1, 0]] * 2)
    with NeuronCalls(model) as relus:
        relus.reset(keep=[keep])
        out = model(x)
    assert torch.equal(out, (torch.relu(x) + 0.5) * keep)
    assert len(seen) == 1 and torch.equal(seen[0], out)
    handle.remove()
    assert hooks_left(model) == 0
    assert torch.equal(model(x), torch.relu(x) + 0.5)
