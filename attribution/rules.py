"""Rules: how some methods change what a ReLU does in the backward pass, for one attribution.

In Zennit's terms these are rules (a modified gradient of one kind of layer), not canonizers
(which restructure a model). Each is a context manager that changes the model for the duration
of one attribution and restores every changed attribute on exit, also when the body raises.

Tested by tests/attribution/test_baselines.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@contextlib.contextmanager
def relu_out_of_place(model: nn.Module) -> Iterator[nn.Module]:
    """Set ``inplace=False`` on every ``nn.ReLU`` in ``model``; restore each flag afterwards.

    An in-place ReLU overwrites its input, so a forward hook that needs the ReLU's
    input (guided backprop) or a layer output that a later in-place ReLU would
    overwrite (Grad-CAM on a conv followed by ``ReLU(inplace=True)``) sees the wrong
    tensor. Out-of-place ReLUs compute the same values with one extra buffer per call.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    flags = [m.inplace for m in relus]
    try:
        for module in relus:
            module.inplace = False
        yield model
    finally:
        for module, flag in zip(relus, flags):
            module.inplace = flag


@contextlib.contextmanager
def forward_hooks(
    modules: list[nn.Module], hook: Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]
) -> Iterator[list[RemovableHandle]]:
    """Register ``hook`` as a forward hook on each module; remove all of them on exit."""
    handles: list[RemovableHandle] = []
    try:
        for module in modules:
            handles.append(module.register_forward_hook(hook))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through positive inputs.

    Guided backprop (Springenberg et al. 2015): ``grad_in = relu(grad_out) * [x > 0]``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * (out > 0).to(grad_out.dtype)


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[nn.Module]:
    """Make every ReLU call of ``model`` backpropagate the guided way, however it is written.

    Each ReLU call (module, ``F.relu``, ``torch.relu``, ``x.relu()``; see
    :class:`attribution.neurons.NeuronCalls`) returns :class:`_GuidedReLU` of its input, so a
    ReLU module called several times per forward (torchvision ResNets) is handled per call, and
    the rule touches only the gradient that flows through the ReLU, not other uses of its input
    tensor (Captum's GuidedBackprop clamps the input tensor's *total* gradient, which is wrong
    when that tensor also feeds a skip connection). Other activations keep their gradient.
    """
    from .neurons import NeuronCalls

    with NeuronCalls(model, "relu", allow_partial=True) as calls:
        calls.reset(relu_rule=_GuidedReLU.apply)
        yield model
