"""Neuron scores: how much each activation output element contributes to the target logit.

Each function runs the forward/backward passes it needs inside an active
:class:`~attribution.neurons.NeuronCalls` session and returns one score tensor per neuron
call, shaped like that call's output and never negative. Scores are float32, or float64 for
float64 inputs: a threshold over float64 activations must be taken in float64, or rounding the
scores to float32 would move neurons across it (and float64's batched maps would no longer
equal the per-sample ones exactly). All passes are batched; every quantity is per sample
because samples never interact in an eval-mode classifier.

Tested by tests/attribution/test_pathway.py and tests/attribution/test_reference_indexing.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import check_logits
from .neurons import Coverage, NeuronCalls


@dataclass
class Scored:
    """Scores per ReLU call, plus what the scoring pass learnt about the unpruned model."""

    scores: list[torch.Tensor]
    logits: torch.Tensor  # unpruned logits [B, K] (detached)
    targets: torch.Tensor  # [B]
    coverage: Coverage  # what the unpruned pass ran


def forward_target(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, sum of each sample's target logit); None targets = predicted classes.

    Summing over the batch is exact per sample: samples never interact in eval mode.
    """
    logits = check_logits(model(x), x.shape[0], targets)
    if targets is None:
        targets = logits.detach().argmax(dim=1)
    return logits, targets, logits.gather(1, targets[:, None]).sum()


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores of float64 activations stay float64; all others (float32, float16, bfloat16) are
    scored in float32, which half precision's products would underflow or overflow."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _magnitude(grad: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """|activation * grad| in :func:`score_dtype`, in the gradient's own buffer where that is safe."""
    dtype = score_dtype(grad.dtype)
    if grad.dtype != dtype:
        return grad.to(dtype).abs_().mul_(activation.to(dtype))
    owned = grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last)
    return (grad.abs_() if owned else grad.abs()).mul_(activation)


def taylor(model: nn.Module, relus: NeuronCalls, x: torch.Tensor, targets: torch.Tensor | None,
           keep: list[torch.Tensor] | None = None) -> Scored:
    """First-order Taylor scores |a * dy_t/da| (NeuronMCT), optionally in a pruned net."""
    relus.reset(record=True, keep=keep)
    logits, targets, selected = forward_target(model, x, targets)
    relus.check_recorded()
    activations, coverage = relus.outputs, relus.coverage
    grads = torch.autograd.grad(selected, activations, allow_unused=True, materialize_grads=True)
    relus.reset()
    scores = [_magnitude(g, a.detach()) for g, a in zip(grads, activations)]
    return Scored(scores, logits.detach(), targets, coverage)


def integrated(model: nn.Module, relus: NeuronCalls, x: torch.Tensor, targets: torch.Tensor | None,
               steps: int) -> Scored:
    """Integrated-gradient scores (NeuronIntGrad), one layer at a time.

    Layer l is scaled by k/steps for k = 1..steps while every other layer stays intact;
    the score is |a * mean_k dy_t/da_k|. The reference implementation accumulates its
    scale factors (0, .1, .3, .6, ...) by mistake; this uses the intended ramp.
    """
    with torch.no_grad():
        relus.reset(record=True)
        logits, targets, _ = forward_target(model, x, targets)
        relus.check_recorded()
        activations, coverage = relus.outputs, relus.coverage
    scores = []
    for layer, activation in enumerate(activations):
        total = torch.zeros_like(activation, dtype=score_dtype(activation.dtype))
        for k in range(1, steps + 1):
            relus.reset(record_call=layer, scale=(layer, torch.tensor(k / steps, dtype=x.dtype, device=x.device)))
            _, _, selected = forward_target(model, x, targets)
            (grad,) = torch.autograd.grad(selected, relus.outputs, allow_unused=True, materialize_grads=True)
            total += grad
        relus.reset()
        scores.append(total.div_(steps).abs_().mul_(activation.to(total.dtype)))
    return Scored(scores, logits.detach(), targets, coverage)


def random(model: nn.Module, relus: NeuronCalls, x: torch.Tensor, targets: torch.Tensor | None,
           seeds: list[int]) -> Scored:
    """Uniform random scores, drawn per sample from a generator seeded by that sample."""
    with torch.no_grad():
        relus.reset(record=True)
        logits, targets, _ = forward_target(model, x, targets)
        relus.check_recorded()
        shapes, coverage = [out.shape for out in relus.outputs], relus.coverage
        relus.reset()
    scores = [torch.empty(shape, dtype=torch.float32, device=x.device) for shape in shapes]
    for row, seed in enumerate(seeds):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        for layer in scores:
            layer[row] = torch.rand(layer.shape[1:], generator=generator, device=x.device)
    return Scored(scores, logits.detach(), targets, coverage)
