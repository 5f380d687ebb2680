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


def _relu_outputs(model: nn.Module, x: torch.Tensor, masks: list[torch.Tensor] | None = None, change=None):
    """(logits, every ReLU call's output), each output multiplied by its call's mask where ``masks``
    are given, and passed through ``change(module, call, output)`` where that is given."""
    outputs: list[torch.Tensor] = []

    def hook(module, args, output):
        if masks is not None:
            output = output * masks[len(outputs)]
        if change is not None:
            output = change(module, len(outputs), output)
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


# --------------------------------------------------------------------------------------------------
# The authors' ``integrated`` scores (NeuronIntGrad), indexed as their code indexes them.
#
# Re-implemented here from the description of what the reference code does (CAMP-eXplain-AI/
# PathwayGrad, src/Pruner.py), not copied from it. Its plain passes hook every ``nn.ReLU`` module
# and keep one activation, gradient and mask per ReLU *call*; its integrated scoring loop, though,
# walks the ReLU *modules* and makes score entry i for the i-th module. Entry i holds call i's
# activation and gradient, and the scale meant for it is applied by a hook on module i, to module
# i's call number i only. Where every module is called once (VGG) module i makes call i and this
# is per-call scoring. Where a module is reused (torchvision's BasicBlock calls one ``relu`` twice):
#
# - there are fewer entries than calls; the calls past the last entry are never scored, and the
#   threshold step never touches their masks, so they stay wholly unpruned;
# - entry i for a call that module i does not make is never scaled: its "integrated" score is the
#   call's plain Taylor score |a * dy/da|.
#
# One thing is deliberately NOT reproduced: the reference's ramp accumulates (0, .1, .3, .6, ...
# past 1, m + 1 passes). Here the ramp is k/m, k = 1..m, as in the paper and this project, so that a
# comparison isolates the indexing.
# --------------------------------------------------------------------------------------------------


def _relu_outputs_scaled(model: nn.Module, x: torch.Tensor, module: nn.Module, call: int, factor: float):
    """(logits, every ReLU call's output) with call ``call``'s output multiplied by ``factor`` iff
    ``module`` is the module making that call (the reference's hook sits on the module, the factor
    in a per-call slot)."""
    return _relu_outputs(model, x, change=lambda hooked, index, output:
                         output * factor if hooked is module and index == call else output)


def reference_scores_integrated_per_module(model: nn.Module, x: torch.Tensor, target: int, steps: int
                                           ) -> list[torch.Tensor]:
    """The reference's integrated scores for one sample x [1, C, H, W]: one entry per ``nn.ReLU``
    module (not per call), entry i = |a_i * mean_k dy/da_i,k| for call i, a_i,k = (k/m)·a_i applied
    by module i's hook as described above. In the model's dtype."""
    x = x.detach().clone().requires_grad_(True)
    with out_of_place(model):
        modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        with torch.no_grad():
            _, outputs = _relu_outputs(model, x)
        activations = [o.detach() for o in outputs]
        scores = []
        for i, module in enumerate(modules):
            total = torch.zeros_like(activations[i])
            for k in range(1, steps + 1):
                logits, outputs = _relu_outputs_scaled(model, x, module, i, k / steps)
                (grad,) = torch.autograd.grad(logits[0, target], outputs[i])
                total += grad
            scores.append((activations[i] * (total / steps)).abs())
    return scores


def reference_masks_per_module(scores: list[torch.Tensor], shapes: list[torch.Size], percentile: float
                               ) -> tuple[list[torch.Tensor], float]:
    """(one 0/1 keep mask per ReLU call, q) as the reference prunes from per-module entries: q is
    numpy's percentile over the entries' scores, entry i prunes call i where score <= q, and calls
    without an entry keep every neuron."""
    q = float(np.percentile(np.concatenate([s.numpy().ravel() for s in scores]), percentile))
    masks = [torch.ones(shape, dtype=torch.bool) for shape in shapes]
    for i, s in enumerate(scores):
        masks[i] = s > q
    return masks, q
