"""One interface for every attribution method (the registry that names them is
:mod:`attribution.registry`).

Like Captum, each method is a class with ``attribute(inputs, target=..., return_details=...)``,
and per-sample targets work in a batch. Every method returns ``(maps, details)`` on request, with
the details it declares in ``detail_schema``: a job's worker and its map sink store whatever a
method declares, so a new per-sample output is one entry in one method.

Tested by tests/attribution/test_contract.py (every registered method) and tests/attribution/test_baselines.py.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
import torch
from torch import nn

Target = Union[None, int, Sequence[int], torch.Tensor]
SampleIds = Union[None, Sequence[Union[str, int]], torch.Tensor]


class AttributionError(ValueError):
    """Bad input to an attribution method: the message names the input and the fix."""


class Details(dict):
    """Per-sample facts a method reports next to its maps: name -> tensor with one row per sample
    ([B], or [B, k] for a list per sample). Read them as ``details["threshold"]`` or
    ``details.threshold``; each method declares their types in :attr:`Attribution.detail_schema`."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no detail {name!r}; this method reports {', '.join(self)}") from None


@dataclass(frozen=True)
class Detail:
    """The declared type of one detail, which is how a map dataset stores it as a column.

    ``dtype`` is one of torch.int64, torch.float64, torch.bool, or :data:`TEXT` (one str per sample:
    a numpy array of B strings, "" for none, stored as null); ``per_sample`` is ``"scalar"`` (a [B]
    tensor) or ``"list"`` (a [B, k] tensor stored as a list per sample; a [B] tensor is a one-item
    list per sample).
    """

    dtype: torch.dtype | type
    doc: str
    per_sample: str = "scalar"


#: The ``dtype`` of a detail that is text, one str per sample.
TEXT = str

#: What every method that holds a model reports: the model's own view of each sample, and whether
#: its map is degenerate (a map that holds no information must not pass for a real one).
MODEL_DETAILS: dict[str, Detail] = {
    "target": Detail(torch.int64, "the class the map explains"),
    "predicted": Detail(torch.int64, "the class the model predicts"),
    "logit": Detail(torch.float64, "the model's target logit (pre-softmax)"),
    "degenerate": Detail(TEXT, "why the map holds no information ('all-zero map', or the method's own reason, "
                               "e.g. the pathway's 'all neuron scores are zero'); null for a real map"),
}


class Attribution(abc.ABC):
    """Base class: holds the model and the method's parameters; :meth:`attribute` computes maps.

    Every method goes through :meth:`attribute`, which checks the inputs, puts the model in eval
    mode (restoring every module's flag afterwards), resolves targets, seeds stochastic methods
    per sample, and collects :class:`Details`. Subclasses implement :meth:`_attribute`.
    """

    name: ClassVar[str] = ""
    #: False for maps computed from the pixels alone (controls): ``model`` may then be None.
    needs_model: ClassVar[bool] = True
    #: True when :meth:`_attribute` runs the model itself and reports ``MODEL_DETAILS``, so the
    #: base class need not run a forward pass to resolve targets (the pathway's scoring pass).
    resolves_targets: ClassVar[bool] = False
    #: Whether maps are random, drawn per sample from a seed (its id, else a hash of its pixels).
    seeded: bool = False

    def __init__(self, model: nn.Module | None) -> None:
        if model is None and not self.needs_model:
            self.model = None
            return
        if not isinstance(model, nn.Module):
            raise AttributionError(
                f"model must be a torch.nn.Module returning logits [B, K], got {type(model).__name__}"
            )
        self.model = model

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters, as stored next to every map it produces."""
        return {}

    @property
    def detail_schema(self) -> dict[str, Detail]:
        """The details :meth:`attribute` reports, in order (the map dataset's extra columns)."""
        return dict(MODEL_DETAILS) if self.model is not None else {}

    def attribute(self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None,
                  return_details: bool = False) -> torch.Tensor | tuple[torch.Tensor, Details]:
        """One map per sample: [B, C, H, W] like ``inputs`` ([B, 1, H, W] for single-channel maps).

        ``target`` is None (the class the model predicts), one int for the whole batch, or one
        class per sample. ``sample_ids`` seed the stochastic methods per sample, so a sample's
        map never depends on the rest of its batch; by default the seed is a hash of its pixels.
        With ``return_details`` also the :class:`Details` of :attr:`detail_schema`.
        """
        details = Details()
        with self._prepared(inputs, target, sample_ids) as (inputs, targets, seeds):
            resolve = return_details or (targets is None and self.needs_model)  # controls ignore targets
            if self.model is not None and not self.resolves_targets and resolve:
                details = model_details(self.model, inputs, targets)
                targets = details["target"]
            out = self._attribute(inputs, targets, seeds)
        maps, extra = out if isinstance(out, tuple) else (out, {})
        if not return_details:
            return maps
        details.update(extra)
        if "degenerate" in self.detail_schema:
            details["degenerate"] = degenerate_reasons(maps, details.get("degenerate"))
        if targets is not None and "target" in self.detail_schema:
            details.setdefault("target", targets)
        missing = [name for name in self.detail_schema if name not in details]
        if missing:
            raise AssertionError(f"{type(self).__name__} declared details {missing} but did not report them")
        return maps, Details((name, details[name]) for name in self.detail_schema)

    @contextlib.contextmanager
    def _prepared(self, inputs: torch.Tensor, target: Target, sample_ids: SampleIds
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
        """Checked inputs, parsed targets (None: predicted) and per-sample seeds, with the model in
        eval mode for the block: what every public entry point of a method starts from."""
        inputs = check_inputs(inputs)
        targets = parse_target(target, inputs.shape[0], inputs.device)
        seeds = sample_seeds(inputs, sample_ids) if self.seeded else []
        with eval_mode(self.model) if self.model is not None else contextlib.nullcontext():
            yield inputs, targets, seeds

    @abc.abstractmethod
    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor | None, seeds: list[int]
                   ) -> torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """The maps of a checked batch, or (maps, details of the method's own).

        ``targets`` holds one class per sample; it is None only for methods that resolve targets
        themselves (``resolves_targets``) or need no model. ``seeds`` has one seed per sample for
        ``seeded`` methods, else it is empty.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- helpers


def check_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """A detached floating-point image batch [B, C, H, W], or a clear error."""
    if not isinstance(inputs, torch.Tensor):
        raise AttributionError(f"inputs must be a torch.Tensor [B, C, H, W], got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise AttributionError(
            f"inputs must have shape [B, C, H, W], got {tuple(inputs.shape)}; "
            "add a batch dimension with inputs.unsqueeze(0) for a single image"
        )
    if not inputs.is_floating_point():
        raise AttributionError(
            f"inputs must be floating point, got {inputs.dtype}; convert and normalize images first"
        )
    if inputs.shape[0] == 0:
        raise AttributionError("inputs is an empty batch")
    return inputs.detach()


def parse_target(target: Target, batch: int, device: torch.device) -> torch.Tensor | None:
    """One target class per sample as a long tensor, or None for "the predicted class"."""
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        targets = torch.full((batch,), target, dtype=torch.long)
    else:
        targets = torch.as_tensor(target).reshape(-1)
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise AttributionError(f"target must hold integer class indices, got dtype {targets.dtype}")
        if targets.numel() != batch:
            raise AttributionError(
                f"target has {targets.numel()} entries for a batch of {batch}; give one class per sample"
            )
    if bool((targets < 0).any()):
        raise AttributionError(f"target holds a negative class index: {targets.tolist()}")
    return targets.to(device=device, dtype=torch.long)


def model_details(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None) -> Details:
    """:data:`MODEL_DETAILS` from one forward pass without gradients; None targets become the
    predicted classes."""
    with torch.no_grad():
        logits = check_logits(model(inputs), inputs.shape[0], targets)
    predicted = logits.argmax(dim=1)
    targets = predicted if targets is None else targets
    return Details(target=targets, predicted=predicted, logit=logits.gather(1, targets[:, None]).squeeze(1))


def degenerate_reasons(maps: torch.Tensor, own: Any = None) -> np.ndarray:
    """Per sample, why its map is degenerate ("" when it is not): the method's own reason where it
    gives one (``own``), else "all-zero map" for a map that is exactly 0 everywhere."""
    zero = (maps.detach().flatten(1) == 0).all(dim=1).cpu().numpy()
    reasons = np.where(zero, "all-zero map", "").astype(object)
    if own is not None:
        own = np.asarray(own, dtype=object)
        reasons = np.where(own != "", own, reasons).astype(object)
    return reasons


def check_logits(logits: Any, batch: int, targets: torch.Tensor | None = None) -> torch.Tensor:
    """The model output must be logits [B, K] and every target < K."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AttributionError(f"the model must return logits [B, K] with B={batch}, got {shape}")
    if targets is not None and bool((targets >= logits.shape[1]).any()):
        raise AttributionError(
            f"target class {int(targets.max())} is out of range for a model with {logits.shape[1]} classes"
        )
    return logits


def target_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model and return (all logits, each sample's target logit)."""
    logits = check_logits(model(inputs), inputs.shape[0], targets)
    return logits, logits.gather(1, targets[:, None]).squeeze(1)


def sample_seeds(inputs: torch.Tensor | None, sample_ids: SampleIds, hash: str = "blake2b") -> list[int]:
    """A seed per sample, from its id or, without ids, from its pixels (``inputs`` may be None with ids).

    Seeding per sample (not per batch) keeps stochastic maps independent of batching. The one home
    of per-sample seeds, in two versions that stored results depend on: ``blake2b`` (63 bits), the
    attribution methods'; ``crc32`` (32 bits, ``zlib.crc32`` of the id's text), what the evaluation
    jobs seed with (jobs.perturb's random order and imputation noise, jobs.roar's removal): their
    stored curves and cells were made with it, and moving them to blake2b would change every number.
    """
    import zlib

    if hash not in ("blake2b", "crc32"):
        raise AttributionError(f"sample_seeds: hash must be 'blake2b' or 'crc32', got {hash!r}")
    if sample_ids is None:
        if inputs is None:
            raise AttributionError("sample_seeds needs sample_ids or inputs")
        pixels = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        keys = [pixels[i].tobytes() for i in range(inputs.shape[0])]
    else:
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        if inputs is not None and len(ids) != inputs.shape[0]:
            raise AttributionError(f"sample_ids has {len(ids)} entries for a batch of {inputs.shape[0]}")
        keys = [str(i).encode() for i in ids]
    if hash == "crc32":
        return [zlib.crc32(k) for k in keys]
    return [int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "little") >> 1 for k in keys]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def input_gradient(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """d logit_target / d inputs for each sample in one batched backward pass.

    Only the input gradient is requested, so no parameter gradient is computed.
    """
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        _, selected = target_logits(model, x, targets)
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad
