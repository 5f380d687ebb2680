"""A plain, one-sample-at-a-time pathway gradient written straight from the paper's algorithm.

It shares no code with the package: its own hooks, numpy's percentile, a copy of the
model with out-of-place ReLUs. Tests compare the batched implementation against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def out_of_place(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with out-of-place ReLUs (hooks then see each call's own output);
    flags restored afterwards. No copy: VGG's 138 M parameters make copies slow."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    flags = [(m, m.training) for m in model.modules()]
    inplace = [m.inplace for m in relus]
    model.eval()
    for module in relus:
        module.inplace = False
    try:
        yield model
    finally:
        for module, flag in zip(relus, inplace):
            module.inplace = flag
        for module, flag in flags:
            module.training = flag


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
    """|a * dy/da| of every ReLU call's output, for one sample, in the model's dtype."""
    x = x.detach().clone().requires_grad_(True)
    with out_of_place(model):
        logits, outputs = _relu_outputs(model, x)
        grads = torch.autograd.grad(logits[0, target], outputs)
    return [(o * g).abs().detach() for o, g in zip(outputs, grads)]


def reference_thresholds(scores: list[torch.Tensor], percentile: float, per_layer: bool = False) -> list[float]:
    """numpy's percentile over all scores (one q for every layer), or inside each layer."""
    if per_layer:
        return [np.percentile(s.numpy().ravel(), percentile) for s in scores]
    return [np.percentile(np.concatenate([s.numpy().ravel() for s in scores]), percentile)] * len(scores)


def reference_map(model: nn.Module, x: torch.Tensor, target: int, masks: list[torch.Tensor]
                  ) -> tuple[torch.Tensor, float]:
    """(input gradient [1, C, H, W], target logit) of ``model`` with each ReLU call's output
    multiplied by its 0/1 mask."""
    x = x.detach().clone().requires_grad_(True)
    with out_of_place(model):
        logits, _ = _relu_outputs(model, x, [m.to(x.dtype) for m in masks])
        (grad,) = torch.autograd.grad(logits[0, target], x)
    return grad, logits[0, target].item()


def reference_pathway(model: nn.Module, x: torch.Tensor, target: int, percentile: float,
                      per_layer: bool = False, scores: list[torch.Tensor] | None = None,
                      with_logit: bool = False) -> tuple:
    """(map [1, C, H, W], kept fraction[, pruned target logit]) for one sample x [1, C, H, W].

    Everything runs in the model's dtype: float64 models get float64 scores and thresholds.
    """
    if scores is None:
        scores = reference_scores_taylor(model, x, target)
    thresholds = reference_thresholds(scores, percentile, per_layer)
    masks = [torch.from_numpy(s.numpy() > t) for s, t in zip(scores, thresholds)]
    kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    grad, logit = reference_map(model, x, target, masks)
    if with_logit:
        return grad, float(kept), logit
    return grad, float(kept)
