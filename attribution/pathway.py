"""Pathway gradient: the input gradient of the network pruned for this very input.

Khakzar et al., "Neural Response Interpretation through the Lens of Critical Pathways"
(CVPR 2021; arXiv 1911.11081 "Improving Feature Attribution through Input-specific
Network Pruning"). For each sample:

1. score every neuron (every element of every ReLU call's output) by its contribution
   to the target logit;
2. prune the neurons whose score is at or below the sample's p-th percentile, taken over
   all layers at once (or inside each layer with ``per_layer=True``);
3. return the gradient of the target logit of the pruned network with respect to the
   input. The pruning masks are constants of that network.

Everything runs as batched passes, and what "a sample's map equals the one it gets alone"
means depends on the dtype:

- **float64**: exactly that, to float64 rounding. Scores and thresholds stay in float64, so the
  masks are the per-sample ones and the maps agree to ~1e-12 relative (tested on ResNet-18/50
  and VGG at p = 30, 70, 90).
- **float32**: torch picks convolution kernels per batch shape and per CPU instruction set, and
  they round differently, so a score moves by its float32 rounding between a batch of N and a
  batch of 1 (or between two CPUs). A neuron whose score lies within that rounding of q may then
  fall on either side of it. Masks agree everywhere else, and a map recomputed with the other
  computation's masks agrees to float32 rounding (tests/attribution/test_pathway.py checks both).
  Such flips are rare (0-4 of 10^5-10^6 neurons per sample measured) but do move the map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import scores as scoring
from .base import Attribution, AttributionError, SampleIds, Target, check_inputs, eval_mode, parse_target, sample_seeds
from .base import register
from .neurons import ReluCalls
from .threshold import batched_percentile, count, masks_above

SCORES = ("taylor", "integrated", "random", "greedy")
DEFAULT_STEPS = {"integrated": 10, "greedy": 5}


@dataclass
class PathwayDetails:
    """Per-sample facts about the pruned network (all tensors have B rows)."""

    target: torch.Tensor
    threshold: torch.Tensor  # [B], or [B, layers] with per_layer=True or scores="random"
    kept_fraction: torch.Tensor  # kept neurons / all neurons
    logit: torch.Tensor  # target logit of the unpruned network
    pruned_logit: torch.Tensor  # target logit of the pruned network
    predicted: torch.Tensor  # class the unpruned network predicts
    pruned_predicted: torch.Tensor  # class the pruned network predicts

    @property
    def prediction_kept(self) -> torch.Tensor:
        """Whether the pruned network still predicts the target class."""
        return self.pruned_predicted == self.target


@register("pathway")
class PathwayGrad(Attribution):
    """Input-specific pruning attribution ("pathway gradient").

    Args:
        model: classifier returning logits [B, K]; its neurons are its ``nn.ReLU`` calls.
        percentile: p, the share of each sample's neurons to prune (0-100; default 70).
        scores: ``taylor`` |a * dy/da| (default), ``integrated`` (per-layer integrated
            gradients), ``random`` (p % of each layer at random, a control) or
            ``greedy`` (prune in ``steps`` rounds, re-scoring in between).
        per_layer: apply the percentile inside each layer instead of across all layers.
        steps: integration steps (``integrated``, default 10) or pruning rounds
            (``greedy``, default 5).
    """

    def __init__(self, model: nn.Module, percentile: float = 70.0, scores: str = "taylor",
                 per_layer: bool = False, steps: int | None = None) -> None:
        super().__init__(model)
        if not 0.0 <= float(percentile) < 100.0:
            raise AttributionError(f"percentile must be in [0, 100), got {percentile}; 100 would prune every neuron")
        if scores not in SCORES:
            raise AttributionError(f"unknown scores {scores!r}; choose one of {', '.join(SCORES)}")
        if steps is not None and (scores not in DEFAULT_STEPS or int(steps) < 1):
            raise AttributionError(
                f"steps applies to scores='integrated' or 'greedy' and must be >= 1, got steps={steps} "
                f"with scores={scores!r}"
            )
        self.percentile = float(percentile)
        self.scores = scores
        self.per_layer = bool(per_layer) or scores == "random"
        self.steps = int(steps) if steps is not None else DEFAULT_STEPS.get(scores)

    @property
    def params(self) -> dict:
        params = {"percentile": self.percentile, "scores": self.scores, "per_layer": self.per_layer}
        if self.steps is not None:
            params["steps"] = self.steps
        return params

    def attribute(self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None,
                  return_details: bool = False) -> torch.Tensor | tuple[torch.Tensor, PathwayDetails]:
        """Maps shaped like ``inputs``; with ``return_details`` also :class:`PathwayDetails`."""
        inputs = check_inputs(inputs)
        targets = parse_target(target, inputs.shape[0], inputs.device)
        seeds = sample_seeds(inputs, sample_ids) if self.scores == "random" else []
        with eval_mode(self.model), torch.enable_grad(), ReluCalls(self.model) as relus:
            maps, details = self._run(relus, inputs, targets, seeds)
        return (maps, details) if return_details else maps

    def masks(self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None
              ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The pruning itself: one uint8 keep mask per ReLU call (1 kept, 0 pruned), shaped like that
        call's output [B, ...], in call order, and each sample's threshold(s) (as in PathwayDetails).

        These are the masks :meth:`attribute` applies; they let a caller inspect the pathway, or
        check a map against a reference computed with the very same masks.
        """
        with self._scoring_session(inputs, target, sample_ids) as (relus, x, targets, seeds):
            keep, thresholds, _ = self._masks(relus, x, targets, seeds)
        return keep, thresholds

    def neuron_scores(self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None
                      ) -> list[torch.Tensor]:
        """Every neuron's score in the unpruned network (for ``greedy``, the first round's): one
        tensor per ReLU call, shaped like its output, float32 (float64 for float64 inputs)."""
        with self._scoring_session(inputs, target, sample_ids) as (relus, x, targets, seeds):
            return self._scored(relus, x, targets, seeds).scores

    @contextlib.contextmanager
    def _scoring_session(self, inputs: torch.Tensor, target: Target, sample_ids: SampleIds
                         ) -> Iterator[tuple[ReluCalls, torch.Tensor, torch.Tensor | None, list[int]]]:
        inputs = check_inputs(inputs)
        targets = parse_target(target, inputs.shape[0], inputs.device)
        seeds = sample_seeds(inputs, sample_ids) if self.scores == "random" else []
        with eval_mode(self.model), torch.enable_grad(), ReluCalls(self.model) as relus:
            yield relus, inputs.detach().requires_grad_(True), targets, seeds

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        with torch.enable_grad(), ReluCalls(self.model) as relus:
            return self._run(relus, inputs, targets, seeds)[0]

    def _run(self, relus: ReluCalls, inputs: torch.Tensor, targets: torch.Tensor | None,
             seeds: list[int]) -> tuple[torch.Tensor, PathwayDetails]:
        x = inputs.detach().requires_grad_(True)
        keep, thresholds, scored = self._masks(relus, x, targets, seeds)
        targets = scored.targets
        kept = (sum(count(m.flatten(1)) for m in keep).double() / sum(m[0].numel() for m in keep)).float()

        relus.reset(keep=keep)
        pruned_logits, _, selected = scoring.forward_target(self.model, x, targets)
        if relus.calls != len(keep):
            raise AttributionError(
                f"the model made {relus.calls} ReLU calls with pruning but {len(keep)} without; "
                "its forward pass must not depend on the activations' values"
            )
        (grad,) = torch.autograd.grad(selected, x)
        relus.reset()
        logits = scored.logits
        details = PathwayDetails(
            target=targets,
            threshold=thresholds,
            kept_fraction=kept,
            logit=logits.gather(1, targets[:, None]).squeeze(1),
            pruned_logit=pruned_logits.detach().gather(1, targets[:, None]).squeeze(1),
            predicted=logits.argmax(1),
            pruned_predicted=pruned_logits.detach().argmax(1),
        )
        return grad, details

    def _masks(self, relus: ReluCalls, x: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]
               ) -> tuple[list[torch.Tensor], torch.Tensor, scoring.Scored]:
        """Keep masks (1 keep / 0 pruned, one per ReLU call), thresholds, the unpruned scoring pass."""
        if self.scores == "greedy":
            return self._greedy_masks(relus, x, targets)
        scored = self._scored(relus, x, targets, seeds)
        keep, thresholds = keep_masks(scored.scores, self.percentile, self.per_layer)
        scored.scores = []
        return keep, thresholds, scored

    def _scored(self, relus: ReluCalls, x: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]
                ) -> scoring.Scored:
        """The scoring pass of the unpruned network (greedy's first round is a Taylor pass)."""
        if self.scores in ("taylor", "greedy"):
            return scoring.taylor(self.model, relus, x, targets)
        if self.scores == "integrated":
            return scoring.integrated(self.model, relus, x, targets, self.steps)
        return scoring.random(self.model, relus, x, targets, seeds)

    def _greedy_masks(self, relus: ReluCalls, x: torch.Tensor, targets: torch.Tensor | None
                      ) -> tuple[list[torch.Tensor], torch.Tensor, scoring.Scored]:
        """Prune p/steps % more in each round, re-scoring the pruned net; pruned stays pruned."""
        keep: list[torch.Tensor] | None = None
        first: scoring.Scored | None = None
        for step in range(1, self.steps + 1):
            scored = scoring.taylor(self.model, relus, x, targets, keep)
            first = first or scored
            targets = scored.targets
            new, thresholds = keep_masks(scored.scores, self.percentile * step / self.steps, self.per_layer)
            scored.scores = []
            keep = new if keep is None else [n.mul_(m) for n, m in zip(new, keep)]
        return keep, thresholds, first


def keep_masks(scores: list[torch.Tensor], percentile: float, per_layer: bool
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Keep a neuron iff its score is above the sample's percentile q (score <= q is pruned).

    The masks are uint8 (1 keep, 0 pruned): a quarter of float masks' memory, which is the
    pathway's whole memory overhead over a plain gradient during the pruned pass.
    """
    rows = [s.flatten(1) for s in scores]
    if per_layer:
        q = torch.stack([batched_percentile([r], percentile, minimum=0.0) for r in rows], dim=1)
        columns = [q[:, i] for i in range(len(scores))]
    else:
        q = batched_percentile(rows, percentile, minimum=0.0)
        columns = [q] * len(scores)
    return masks_above(scores, columns), q
