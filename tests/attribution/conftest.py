"""Small real models for attribution tests, and a check that a method left the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import one_thread
from tests.nets import make_resnet18, make_tiny_net

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def tiny_net() -> nn.Module:
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
