"""One interface for every attribution method, and the registry that names them.

Like Captum, each method is a class with ``attribute(inputs, target=...)``; like a
plugin registry, a new method is one class plus ``@register("name")``. Jobs select
methods by name and store their ``params`` next to every map.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar, Union

import torch
from torch import nn

Target = Union[None, int, Sequence[int], torch.Tensor]
SampleIds = Union[None, Sequence[Union[str, int]], torch.Tensor]


class AttributionError(ValueError):
    """Bad input to an attribution method: the message names the input and the fix."""


class Attribution(abc.ABC):
    """Base class: holds the model and the method's parameters, computes maps.

    Subclasses implement :meth:`_attribute`, which receives a detached float input
    batch, one target class per sample and one integer seed per sample.
    """

    name: ClassVar[str] = ""
    #: Modules the method imports on its first call (not at construction, to keep start-up
    #: short); a worker can import them ahead, in the background, while it starts computing.
    lazy_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise AttributionError(
                f"model must be a torch.nn.Module returning logits [B, K], got {type(model).__name__}"
            )
        self.model = model

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters, as stored next to every map it produces."""
        return {}

    def attribute(
        self, inputs: torch.Tensor, target: Target = None, *, sample_ids: SampleIds = None
    ) -> torch.Tensor:
        """Return one map per sample, shaped like ``inputs`` ([B, C, H, W]).

        ``target`` is None (the class the model predicts), one int for the whole batch,
        or one class per sample. ``sample_ids`` seed the stochastic methods per sample,
        so a sample's map never depends on the rest of its batch; by default the seed
        is a hash of the sample's pixels.
        """
        inputs = check_inputs(inputs)
        with eval_mode(self.model):
            targets = resolve_targets(self.model, inputs, target)
            seeds = sample_seeds(inputs, sample_ids)
            return self._attribute(inputs, targets, seeds)

    @abc.abstractmethod
    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Compute maps for a checked batch with resolved targets."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Attribution]] = {}
A = TypeVar("A", bound=type[Attribution])


def register(name: str) -> Callable[[A], A]:
    """Class decorator that makes a method available as ``get(name, model, ...)``."""

    def decorate(cls: A) -> A:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attribution method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def get(name: str, model: nn.Module, **params: Any) -> Attribution:
    """Build the method registered as ``name`` around ``model``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise AttributionError(
            f"unknown attribution method {name!r}; choose one of {', '.join(available())}"
        ) from None
    try:
        return cls(model, **params)
    except TypeError as err:
        raise AttributionError(f"bad parameters for method {name!r}: {err}") from None


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


def resolve_targets(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """One target class per sample; None means the class the model predicts for each sample."""
    targets = parse_target(target, inputs.shape[0], inputs.device)
    if targets is not None:
        return targets
    with torch.no_grad():
        logits = check_logits(model(inputs), inputs.shape[0])
    return logits.argmax(dim=1)


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


def sample_seeds(inputs: torch.Tensor, sample_ids: SampleIds) -> list[int]:
    """A 63-bit seed per sample, from its id or, without ids, from its pixels.

    Seeding per sample (not per batch) keeps stochastic maps independent of batching.
    """
    batch = inputs.shape[0]
    if sample_ids is None:
        pixels = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        keys = [pixels[i].tobytes() for i in range(batch)]
    else:
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        if len(ids) != batch:
            raise AttributionError(f"sample_ids has {len(ids)} entries for a batch of {batch}")
        keys = [str(i).encode() for i in ids]
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
