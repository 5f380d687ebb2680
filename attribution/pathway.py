"""Pathway gradient: the input gradient of the network pruned for this very input.

Khakzar et al., "Neural Response Interpretation through the Lens of Critical Pathways"
(CVPR 2021; arXiv 1911.11081 "Improving Feature Attribution through Input-specific
Network Pruning"). For each sample:

1. score every neuron (every element of every ReLU call's output, however the model writes
   the ReLU: module, function, tensor method, in place or not) by its contribution to the
   target logit;
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
  Such flips are rare (benchmarks/RESULTS.md, "Figures moved from the code") but do move the map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from . import scores as scoring
from .base import MODEL_DETAILS, Attribution, AttributionError, Detail, Details, SampleIds, Target
from . import activations as acts
from .neurons import NeuronCalls
from .registry import register
from .threshold import batched_percentile, count, masks_above

SCORES = ("taylor", "integrated", "random", "greedy")
DEFAULT_STEPS = {"integrated": 10, "greedy": 5}


@register("pathway")
class PathwayGrad(Attribution):
    """Input-specific pruning attribution ("pathway gradient").

    Args:
        model: classifier returning logits [B, K]; its neurons are its ReLU calls (see
            :mod:`attribution.neurons`).
        percentile: p, the share of each sample's neurons to prune (0-100; default 70).
        scores: ``taylor`` |a * dy/da| (default), ``integrated`` (per-layer integrated
            gradients), ``random`` (p % of each layer at random, a control) or
            ``greedy`` (prune in ``steps`` rounds, re-scoring in between).
        per_layer: apply the percentile inside each layer instead of across all layers.
        steps: integration steps (``integrated``, default 10) or pruning rounds
            (``greedy``, default 5).
        activations: which activation calls are neurons: ``"relu"`` (the paper's; ReLU only),
            ``"all"`` (also ReLU6/Hardtanh, LeakyReLU, ELU, SELU, CELU, GELU, SiLU, Hardswish,
            Mish, PReLU), or a tuple of those names. Beyond ReLU this is our extension of the
            paper: such activations have few exact zeros and negative outputs, so fewer neurons
            are dead and a pruned neuron removes a negative contribution as well as a positive one.
        allow_partial: when elementwise activations outside ``activations`` run (GELU in a net
            pruned at its ReLUs only), prune the chosen ones anyway instead of raising.
    """

    #: The scoring pass resolves targets and yields the model's logits: no extra forward pass.
    resolves_targets = True

    def __init__(self, model: nn.Module, percentile: float = 70.0, scores: str = "taylor",
                 per_layer: bool = False, steps: int | None = None,
                 activations: str | tuple[str, ...] = "relu", allow_partial: bool = False) -> None:
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
        families = acts.resolve(activations if isinstance(activations, str) else tuple(activations))
        self.percentile = float(percentile)
        self.scores = scores
        self.seeded = scores == "random"
        self.per_layer = bool(per_layer) or scores == "random"
        self.steps = int(steps) if steps is not None else DEFAULT_STEPS.get(scores)
        self.activations = ("all" if families == frozenset(acts.FAMILIES) else "relu" if families == {"relu"}
                            else tuple(f for f in acts.FAMILIES if f in families))
        self.allow_partial = bool(allow_partial)

    @property
    def params(self) -> dict:
        params: dict = {"percentile": self.percentile, "scores": self.scores, "per_layer": self.per_layer}
        if self.steps is not None:
            params["steps"] = self.steps
        if self.activations != "relu":  # the paper's neurons are left implicit, as before the option
            params["activations"] = list(self.activations) if isinstance(self.activations, tuple) else self.activations
        if self.allow_partial:
            params["allow_partial"] = True
        return params

    @property
    def detail_schema(self) -> dict[str, Detail]:
        return {
            **MODEL_DETAILS,
            # A list column always (one value, or one per layer with per_layer, which scores='random'
            # implies), so that outputs holding both kinds have one column type.
            "threshold": Detail(torch.float64, "the sample's pruning threshold q: [q], or one per layer with "
                                "per_layer", "list"),
            "kept_fraction": Detail(torch.float64, "kept neurons / all neurons"),
            "pruned_logit": Detail(torch.float64, "the pruned network's target logit"),
            "pruned_predicted": Detail(torch.int64, "the class the pruned network predicts"),
            "prediction_kept": Detail(torch.bool, "whether the pruned network still predicts the target"),
            "neuron_calls": Detail(torch.int64, "activation calls that are neurons (pruning candidates)"),
            "activation_calls": Detail(torch.int64, "elementwise activation calls that ran"),
            "neuron_elements": Detail(torch.int64, "neurons per sample"),
            "activation_elements": Detail(torch.int64, "elementwise activation outputs per sample"),
        }

    def masks(self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None
              ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The pruning itself: one uint8 keep mask per ReLU call (1 kept, 0 pruned), shaped like that
        call's output [B, ...], in call order, and each sample's threshold(s) (the ``threshold``
        detail).

        These are the masks :meth:`attribute` applies; they let a caller inspect the pathway, or
        check a map against a reference computed with the very same masks.
        """
        with self._prepared(inputs, target, sample_ids) as (x, targets, seeds), self._relu_calls() as relus:
            keep, thresholds, _ = self._masks(relus, x.requires_grad_(True), targets, seeds)
        return keep, thresholds

    def neuron_scores(self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None
                      ) -> list[torch.Tensor]:
        """Every neuron's score in the unpruned network (for ``greedy``, the first round's): one
        tensor per ReLU call, shaped like its output, float32 (float64 for float64 inputs)."""
        with self._prepared(inputs, target, sample_ids) as (x, targets, seeds), self._relu_calls() as relus:
            return self._scored(relus, x.requires_grad_(True), targets, seeds).scores

    @contextlib.contextmanager
    def _relu_calls(self) -> Iterator[NeuronCalls]:
        with torch.enable_grad(), NeuronCalls(self.model, self.activations, self.allow_partial) as relus:
            yield relus

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]
                   ) -> tuple[torch.Tensor, Details]:
        with self._relu_calls() as relus:
            return self._run(relus, inputs, targets, seeds)

    def _run(self, relus: NeuronCalls, inputs: torch.Tensor, targets: torch.Tensor | None,
             seeds: list[int]) -> tuple[torch.Tensor, Details]:
        x = inputs.detach().requires_grad_(True)
        keep, thresholds, scored = self._masks(relus, x, targets, seeds)
        targets = scored.targets
        kept = (sum(count(m.flatten(1)) for m in keep).double() / sum(m[0].numel() for m in keep)).float()

        relus.reset(keep=keep)
        pruned_logits, _, selected = scoring.forward_target(self.model, x, targets)
        if relus.calls != len(keep):
            raise AttributionError(
                f"the model made {relus.calls} activation calls with pruning but {len(keep)} without; "
                "its forward pass must not depend on the activations' values"
            )
        (grad,) = torch.autograd.grad(selected, x)
        relus.reset()
        logits, pruned_logits = scored.logits, pruned_logits.detach()
        details = Details(
            target=targets,
            predicted=logits.argmax(1),
            logit=logits.gather(1, targets[:, None]).squeeze(1),
            threshold=thresholds,
            kept_fraction=kept,
            pruned_logit=pruned_logits.gather(1, targets[:, None]).squeeze(1),
            pruned_predicted=pruned_logits.argmax(1),
        )
        details["prediction_kept"] = details.pruned_predicted == targets
        details["degenerate"] = pruned_everything(kept, thresholds)
        coverage, batch = scored.coverage, targets.shape[0]
        for name in ("neuron_calls", "activation_calls", "neuron_elements", "activation_elements"):
            details[name] = torch.full((batch,), getattr(coverage, name), dtype=torch.int64)
        return grad, details

    def _masks(self, relus: NeuronCalls, x: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]
               ) -> tuple[list[torch.Tensor], torch.Tensor, scoring.Scored]:
        """Keep masks (1 keep / 0 pruned, one per ReLU call), thresholds, the unpruned scoring pass."""
        if self.scores == "greedy":
            return self._greedy_masks(relus, x, targets)
        scored = self._scored(relus, x, targets, seeds)
        keep, thresholds = keep_masks(scored.scores, self.percentile, self.per_layer)
        scored.scores = []
        return keep, thresholds, scored

    def _scored(self, relus: NeuronCalls, x: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]
                ) -> scoring.Scored:
        """The scoring pass of the unpruned network (greedy's first round is a Taylor pass)."""
        if self.scores in ("taylor", "greedy"):
            return scoring.taylor(self.model, relus, x, targets)
        if self.scores == "integrated":
            return scoring.integrated(self.model, relus, x, targets, self.steps)
        return scoring.random(self.model, relus, x, targets, seeds)

    def _greedy_masks(self, relus: NeuronCalls, x: torch.Tensor, targets: torch.Tensor | None
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


def pruned_everything(kept: torch.Tensor, thresholds: torch.Tensor) -> np.ndarray:
    """Per sample, why its pathway is empty ("" when it is not). Scores are >= 0 and a score <= q is
    pruned, so a kept fraction of 0 with every threshold 0 means every score is 0: a zero head (as
    torchvision's ViT starts with) or a target the net gives no gradient. Its map is then the
    gradient of a constant, all zeros, and must not be stored as a real map."""
    empty = (kept == 0).cpu().numpy()
    zero = (thresholds.reshape(thresholds.shape[0], -1) <= 0).all(dim=1).cpu().numpy()
    return np.where(empty & zero, "all neuron scores are zero: every neuron pruned",
                    np.where(empty, "kept fraction 0: every neuron pruned", "")).astype(object)


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
