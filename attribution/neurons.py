"""Access to a model's neurons: every element of every ``nn.ReLU`` call's output.

:class:`ReluCalls` hooks all ReLU modules for the duration of a ``with`` block. A module
called several times in one forward pass (torchvision's ResNet blocks reuse one
``relu``) is one layer per call, numbered in call order. Inside the block a pass can
record the outputs (to score neurons), zero the pruned neurons of each sample (to prune),
or scale one layer (for integrated scores). On exit every hook is removed, also when
the block raises, so the model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import torch
from torch import nn

from .base import AttributionError


class ReluCalls:
    """Context manager that hooks every ``nn.ReLU`` call of ``model``.

    Attributes set before a forward pass decide what the hooks do:

    - ``record``: keep each call's output in :attr:`outputs` (after masking/scaling),
      so gradients with respect to it can be taken; ``record_call`` keeps only one call's.
    - ``keep``: one 0/1 tensor per call (in the activations' dtype), multiplied into the
      ReLU's *input* before it runs. The ReLU then computes relu(z) * keep and saves only
      its own output for backward, as without pruning, so pruning adds no activation
      memory beyond the masks. The masks are constants of the pruned net. (Float masks,
      not bool: on CPU, bool-mask kernels are about 7x slower than a float multiply.)
    - ``scale``: ``(call index, factor)`` multiplies one call's output by ``factor``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        if not self.modules:
            raise AttributionError(
                f"{type(model).__name__} has no nn.ReLU modules, so it has no neurons to prune; "
                "input-specific pruning needs ReLU activations as nn.ReLU modules "
                "(functional F.relu calls cannot be hooked)"
            )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.record = False
        self.record_call: int | None = None
        self.keep: Sequence[torch.Tensor] | None = None
        self.scale: tuple[int, torch.Tensor] | None = None
        self.outputs: list[torch.Tensor] = []
        self._versions: list[int] = []
        self._calls = 0
        self._pre_calls = 0

    def __enter__(self) -> ReluCalls:
        for module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._prune))
            self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs = []

    def reset(self, *, record: bool = False, record_call: int | None = None,
              keep: Sequence[torch.Tensor] | None = None,
              scale: tuple[int, torch.Tensor] | None = None) -> None:
        """Configure the next forward pass and forget the previous one's outputs."""
        self.record, self.record_call, self.keep, self.scale = record, record_call, keep, scale
        self.outputs, self._versions, self._calls, self._pre_calls = [], [], 0, 0

    @property
    def calls(self) -> int:
        """How many ReLU calls the last forward pass made."""
        return self._calls

    def _prune(self, module: nn.Module, args: tuple) -> tuple | None:
        index = self._pre_calls
        self._pre_calls += 1
        if self.keep is None:
            return None
        if index >= len(self.keep):
            raise AttributionError(
                f"the model made more ReLU calls ({index + 1}) than in the scoring pass "
                f"({len(self.keep)}); its forward pass must not depend on pruning"
            )
        return (args[0] * self.keep[index], *args[1:])

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        index = self._calls
        self._calls += 1
        result = output
        if self.scale is not None and self.scale[0] == index:
            result = result * self.scale[1]
        if self.record or self.record_call == index:
            self.outputs.append(result)
            self._versions.append(result._version)
        return None if result is output else result

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
