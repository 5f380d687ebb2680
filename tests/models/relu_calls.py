"""Test helper: what the attribution method sees of a model."""

from __future__ import annotations

import torch

from attribution.neurons import ReluCalls


def relu_call_shapes(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Output shape of every nn.ReLU call, in call order: the neurons the attribution method sees."""
    with torch.no_grad(), ReluCalls(model) as relus:
        relus.reset(record=True)
        model(x)
        return [tuple(out.shape) for out in relus.outputs]
