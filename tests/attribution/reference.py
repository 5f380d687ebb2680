"""A plain, one-sample-at-a-time pathway gradient written straight from the paper's algorithm.

It shares no code with the package: its own hooks, numpy's percentile, a copy of the
model with out-of-place ReLUs. Tests compare the batched implementation against it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def _out_of_place_copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return clone


def _relu_outputs(model: nn.Module, x: torch.Tensor, masks: list[torch.Tensor] | None = None):
    outputs: list[torch.Tensor] = []

    def hook(module, args, output):
        if masks is not None:
            output = output * masks[len(outputs)]
        outputs.append(output)
        return output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def reference_scores_taylor(model: nn.Module, x: torch.Tensor, target: int) -> list[torch.Tensor]:
    logits, outputs = _relu_outputs(model, x)
    grads = torch.autograd.grad(logits[0, target], outputs)
    return [(o * g).abs().detach() for o, g in zip(outputs, grads)]


def reference_pathway(model: nn.Module, x: torch.Tensor, target: int, percentile: float,
                      per_layer: bool = False, scores: list[torch.Tensor] | None = None,
                      with_logit: bool = False) -> tuple:
    """(map [1, C, H, W], kept fraction[, pruned target logit]) for one sample x [1, C, H, W]."""
    model = _out_of_place_copy(model)
    x = x.detach().clone().requires_grad_(True)
    if scores is None:
        scores = reference_scores_taylor(model, x, target)
    if per_layer:
        thresholds = [np.percentile(s.numpy().ravel(), percentile) for s in scores]
    else:
        q = np.percentile(np.concatenate([s.numpy().ravel() for s in scores]), percentile)
        thresholds = [q] * len(scores)
    masks = [(s.numpy() > t) for s, t in zip(scores, thresholds)]
    kept = sum(m.sum() for m in masks) / sum(m.size for m in masks)
    logits, _ = _relu_outputs(model, x, [torch.from_numpy(m).to(x.dtype) for m in masks])
    (grad,) = torch.autograd.grad(logits[0, target], x)
    if with_logit:
        return grad, float(kept), logits[0, target].item()
    return grad, float(kept)
