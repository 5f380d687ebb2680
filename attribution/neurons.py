"""Access to a model's neurons: every element of every ``nn.ReLU`` call's output.

:class:`ReluCalls` takes over all ReLU modules for the duration of a ``with`` block. A
module called several times in one forward pass (torchvision's ResNet blocks reuse one
``relu``) is one layer per call, numbered in call order. Inside the block a pass can
record the outputs (to score neurons), zero the pruned neurons of each sample (to prune),
or scale one layer (for integrated scores). On exit every module gets its own ``forward``
back, also when the block raises, so the model is left exactly as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from .base import AttributionError


class _PrunedRelu(torch.autograd.Function):
    """relu(z) * keep as one autograd node whose backward is the ReLU's own.

    The output is positive exactly where z > 0 and the neuron is kept, so the gradient
    mask is ``output > 0``, as for a plain ReLU: pruning costs one in-place multiply in the
    forward pass and nothing in the backward pass or in saved activations. (Multiplying the
    mask in as a separate op cost a tensor per layer and an extra pass each way.)
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, keep: torch.Tensor, inplace: bool) -> torch.Tensor:
        if inplace:
            out = z.clamp_min_(0).mul_(keep)
            ctx.mark_dirty(z)
        else:
            out = z.clamp_min(0).mul_(keep)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None, None


class ReluCalls:
    """Context manager that takes over every ``nn.ReLU`` call of ``model``.

    Attributes set before a forward pass decide what the calls do:

    - ``record``: keep each call's output in :attr:`outputs` (after masking/scaling),
      so gradients with respect to it can be taken; ``record_call`` keeps only one call's.
    - ``keep``: one 0/1 tensor per call (uint8, or the activations' dtype): the call
      returns relu(z) * keep. The masks are constants of the pruned net. (uint8, not bool:
      on CPU a multiply by a bool mask was 1.5x slower than by a uint8 one, masked_fill 4x.)
    - ``scale``: ``(call index, factor)`` multiplies one call's output by ``factor``.

    The ReLU modules' ``forward`` is replaced for the block (hooks could only add work
    around the ReLU, not fold the mask into it); hooks a user put on them still run.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        if not self.modules:
            raise AttributionError(
                f"{type(model).__name__} has no nn.ReLU modules, so it has no neurons to prune; "
                "input-specific pruning needs ReLU activations as nn.ReLU modules "
                "(functional F.relu calls cannot be hooked)"
            )
        self._saved: list[tuple[nn.Module, Any]] = []
        self.record = False
        self.record_call: int | None = None
        self.keep: Sequence[torch.Tensor] | None = None
        self.scale: tuple[int, torch.Tensor] | None = None
        self.outputs: list[torch.Tensor] = []
        self._versions: list[int] = []
        self._calls = 0

    def __enter__(self) -> ReluCalls:
        try:
            for module in self.modules:
                own = module.__dict__.get("forward")  # an instance-level forward, put back on exit
                self._saved.append((module, own))
                module.forward = functools.partial(self._call, module, module.forward)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()
        self.outputs = []

    def _restore(self) -> None:
        for module, own in reversed(self._saved):
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own
        self._saved.clear()

    def reset(self, *, record: bool = False, record_call: int | None = None,
              keep: Sequence[torch.Tensor] | None = None,
              scale: tuple[int, torch.Tensor] | None = None) -> None:
        """Configure the next forward pass and forget the previous one's outputs."""
        self.record, self.record_call, self.keep, self.scale = record, record_call, keep, scale
        self.outputs, self._versions, self._calls = [], [], 0

    @property
    def calls(self) -> int:
        """How many ReLU calls the last forward pass made."""
        return self._calls

    def _call(self, module: nn.Module, forward: Callable[..., torch.Tensor], z: torch.Tensor,
              *args: Any, **kwargs: Any) -> torch.Tensor:
        index = self._calls
        self._calls += 1
        if self.keep is None:
            result = forward(z, *args, **kwargs)
        elif index >= len(self.keep):
            raise AttributionError(
                f"the model made more ReLU calls ({index + 1}) than in the scoring pass "
                f"({len(self.keep)}); its forward pass must not depend on pruning"
            )
        elif type(module).forward is nn.ReLU.forward:
            result = _PrunedRelu.apply(z, self.keep[index], module.inplace)
        else:  # a subclass with its own forward: prune its output as a separate op
            result = forward(z, *args, **kwargs) * self.keep[index]
        if self.scale is not None and self.scale[0] == index:
            result = result * self.scale[1]
        if self.record or self.record_call == index:
            self.outputs.append(result)
            self._versions.append(result._version)
        return result

    def check_recorded(self) -> None:
        """Fail if a recorded output was modified in place after its ReLU.

        Gradients taken with respect to such a tensor would belong to the modified
        value, not to the neuron, so the scores would be silently wrong.
        """
        for index, (out, version) in enumerate(zip(self.outputs, self._versions)):
            if out._version != version:
                raise AttributionError(
                    f"the output of ReLU call {index} is modified in place later in the forward pass "
                    "(e.g. `x = relu(x); x += y`); make that operation out of place (`x = x + y`)"
                )
