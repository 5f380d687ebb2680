"""Access to a model's neurons: every element of every activation call's output, however it is written.

:class:`NeuronCalls` takes over a model's activation calls for the duration of a ``with`` block:

- activation *modules* (``nn.ReLU``, ``nn.GELU``...) have their ``forward`` swapped; a module
  called several times per forward pass (torchvision's ResNet blocks reuse one ``relu``) is one
  layer per call, and a module is one neuron call whatever it computes inside;
- activation *functions* outside such modules (``F.relu``, ``torch.relu``, ``x.relu_()``,
  ``F.gelu``...) are caught by a :class:`torch.overrides.TorchFunctionMode`.

Only calls on tensors computed from the model's input are neurons: an activation applied to
parameters (Swin-V2's position-bias MLP, say) is the same for every sample and is left alone. The
tensors derived from the input are followed op by op through the same mode.

Calls are numbered in call order. Which families are neurons is the caller's choice
(``activations``: ``"relu"`` as in the paper, ``"all"``, or a tuple of
:data:`attribution.activations.FAMILIES`); the other activation calls that run are counted, so a
model whose activations escape the choice is an error unless partial coverage is allowed
(:meth:`NeuronCalls.check_coverage`). Inside the block a pass can record the outputs (to score
neurons), zero the pruned neurons of each sample (to prune), scale one layer (for integrated
scores), or apply a backward rule to every ReLU (guided backprop). On exit every module gets its
own ``forward`` back and the mode is popped, also when the block raises.
"""

from __future__ import annotations

import functools
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import activations as acts
from .base import AttributionError

#: A backward rule for ReLU calls: the ReLU's input -> the call's output (guided backprop).
ReluRule = Callable[[torch.Tensor], torch.Tensor]


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


@dataclass
class Coverage:
    """What the last recorded pass ran: neuron calls and all elementwise activation calls, with
    their elements per sample, and the families that ran but are not neurons."""

    neuron_calls: int = 0
    neuron_elements: int = 0
    activation_calls: int = 0
    activation_elements: int = 0
    missed: Counter = field(default_factory=Counter)  # family -> calls that are not neurons

    @property
    def fraction(self) -> float:
        """Neuron elements / activation elements (1.0 when every activation is a neuron)."""
        return self.neuron_elements / self.activation_elements if self.activation_elements else 1.0


class NeuronCalls:
    """Context manager that takes over every activation call of ``model`` (see the module doc).

    Attributes set by :meth:`reset` before a forward pass decide what neuron calls do:

    - ``record``: keep each call's output in :attr:`outputs` (after masking/scaling), so gradients
      with respect to it can be taken; ``record_call`` keeps only one call's.
    - ``keep``: one 0/1 tensor per call (uint8, or the activations' dtype): the call returns
      act(z) * keep. The masks are constants of the pruned net.
    - ``scale``: ``(call index, factor)`` multiplies one call's output by ``factor``.
    - ``relu_rule``: replaces every ReLU-family neuron call by ``rule(z)`` (guided backprop).
    """

    def __init__(self, model: nn.Module, activations: str | Sequence[str] = "relu",
                 allow_partial: bool = False) -> None:
        _check_model(model)
        self.model = model
        self.families = acts.resolve(activations if isinstance(activations, str) else tuple(activations))
        self.allow_partial = allow_partial
        self.modules = [m for m in model.modules() if acts.module_family(m) in self.families]
        self._saved: list[tuple[nn.Module, Any]] = []
        self._mode: _FunctionCalls | None = None
        self._hook: Any = None
        self._inside_module = 0
        # Tensors computed from the input, by id (a tensor's __eq__ is elementwise, so no WeakSet);
        # an entry goes when its tensor does, so a reused id never matches a stale one.
        self._derived: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
        self.reset()

    # -- entering and leaving ---------------------------------------------------------------
    def __enter__(self) -> NeuronCalls:
        try:
            for module in self.modules:
                own = module.__dict__.get("forward")  # an instance-level forward, put back on exit
                self._saved.append((module, own))
                module.forward = functools.partial(self._module_call, module, module.forward)
            self._hook = self.model.register_forward_pre_hook(self._mark_inputs, with_kwargs=True)
            self._mode = _FunctionCalls(self)
            self._mode.__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
        self.outputs = []

    def _restore(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._derived = weakref.WeakValueDictionary()
        for module, own in reversed(self._saved):
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own
        self._saved.clear()

    # -- configuring a pass ----------------------------------------------------------------
    def reset(self, *, record: bool = False, record_call: int | None = None,
              keep: Sequence[torch.Tensor] | None = None, scale: tuple[int, torch.Tensor] | None = None,
              relu_rule: ReluRule | None = None) -> None:
        """Configure the next forward pass and forget the previous one's outputs and counts."""
        self.record, self.record_call, self.keep, self.scale = record, record_call, keep, scale
        self.relu_rule = relu_rule
        self.outputs: list[torch.Tensor] = []
        self._versions: list[int] = []
        self.coverage = Coverage()
        self._functional = 0  # activation calls seen as functions, outside neuron modules
        self._module_skips = 0  # neuron-module calls on tensors not computed from the input

    @property
    def calls(self) -> int:
        """How many neuron calls the last forward pass made."""
        return self.coverage.neuron_calls

    # -- which tensors come from the input ---------------------------------------------------
    def _mark_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._mark(_tensors((args, kwargs)))

    def _mark(self, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            self._derived[id(t)] = t

    def _from_input(self, *values: Any) -> bool:
        """Whether any tensor in ``values`` (positional args, keyword values, one level of
        lists/tuples as in ``torch.cat``) was computed from the input. Written for speed: it runs
        for every torch call of every forward pass."""
        derived = self._derived
        for value in values:
            if isinstance(value, torch.Tensor):
                if derived.get(id(value)) is value:
                    return True
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, torch.Tensor) and derived.get(id(item)) is item:
                        return True
        return False

    # -- the calls -------------------------------------------------------------------------
    def _module_call(self, module: nn.Module, forward: Callable[..., torch.Tensor], z: torch.Tensor,
                     *args: Any, **kwargs: Any) -> torch.Tensor:
        """A neuron module's call: one neuron call, whatever runs inside it (inner activation
        functions are not counted again)."""
        self._inside_module += 1
        try:
            if self._mode is not None and not self._from_input(z):
                self._module_skips += 1
                return forward(z, *args, **kwargs)
            index = self.coverage.neuron_calls
            if type(module).forward is nn.ReLU.forward:
                return self._relu(index, z, module.inplace)
            return self._finish(index, forward(z, *args, **kwargs))
        finally:
            self._inside_module -= 1

    def _function_call(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        family = acts.function_family(func)
        if self._inside_module or family is None or not args or not self._from_input(args[0]):
            result = func(*args, **kwargs)
            if self._from_input(*args, *kwargs.values()):
                if isinstance(result, torch.Tensor):
                    self._derived[id(result)] = result
                else:
                    self._mark(_tensors(result))
            return result
        self._functional += 1
        if family not in self.families:
            result = func(*args, **kwargs)
            self._mark(_tensors(result))
            self._count_missed(family, result)
            return result
        index = self.coverage.neuron_calls
        if family == "relu":
            return self._relu(index, args[0], acts.is_inplace(func, args, kwargs))
        return self._finish(index, func(*args, **kwargs))

    def _relu(self, index: int, z: torch.Tensor, inplace: bool) -> torch.Tensor:
        """A ReLU-family neuron call: pruned in one fused op, or by the rule, or plain."""
        keep = self._keep(index)
        if keep is not None:
            result = _PrunedRelu.apply(z, keep, inplace)
            return self._finish(index, result, masked=True)
        if self.relu_rule is not None:
            return self._finish(index, self.relu_rule(z))
        return self._finish(index, z.relu_() if inplace else z.relu())

    def _keep(self, index: int) -> torch.Tensor | None:
        if self.keep is None:
            return None
        if index >= len(self.keep):
            raise AttributionError(
                f"the model made more activation calls ({index + 1}) than in the scoring pass "
                f"({len(self.keep)}); its forward pass must not depend on pruning"
            )
        return self.keep[index]

    def _finish(self, index: int, result: torch.Tensor, masked: bool = False) -> torch.Tensor:
        """Mask (if not done yet), scale, count and record one neuron call's output."""
        if not masked and (keep := self._keep(index)) is not None:
            result = result * keep  # out of place: the activation may have saved its output
        if self.scale is not None and self.scale[0] == index:
            result = result * self.scale[1]
        self._derived[id(result)] = result
        cov = self.coverage
        elements = result[0].numel() if result.dim() else 1
        cov.neuron_calls += 1
        cov.neuron_elements += elements
        cov.activation_calls += 1
        cov.activation_elements += elements
        if self.record or self.record_call == index:
            self.outputs.append(result)
            self._versions.append(result._version)
        return result

    def _count_missed(self, family: str, result: Any) -> None:
        if isinstance(result, torch.Tensor):
            cov = self.coverage
            cov.activation_calls += 1
            cov.activation_elements += result[0].numel() if result.dim() else 1
            cov.missed[family] += 1

    # -- checks after a recorded pass ------------------------------------------------------
    def check_recorded(self) -> None:
        """Fail if the model has no neurons, if activations escaped the chosen families (unless
        allowed), or if a recorded output was modified in place after its activation.

        Gradients taken with respect to a tensor modified in place would belong to the modified
        value, not to the neuron, so the scores would be silently wrong.
        """
        self.check_coverage()
        if (self._mode is not None and not self._functional and not self._module_skips
                and _top_function_mode() is self._mode):
            # Every activation of this pass was a module called on the input's data: later passes
            # of the block can skip the per-op function mode (what that saves: benchmarks/RESULTS.md,
            # "Figures moved from the code").
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        for index, (out, version) in enumerate(zip(self.outputs, self._versions)):
            if out._version != version:
                raise AttributionError(
                    f"the output of activation call {index} is modified in place later in the forward pass "
                    "(e.g. `x = relu(x); x += y`); make that operation out of place (`x = x + y`)"
                )

    def check_coverage(self) -> None:
        cov, chosen = self.coverage, ", ".join(sorted(self.families))
        if cov.neuron_calls == 0:
            ran = ", ".join(f"{n} {f}" for f, n in sorted(cov.missed.items())) or "none of the known ones"
            raise AttributionError(
                f"{type(self.model).__name__} makes no {chosen} activation calls, so it has no neurons to prune "
                f"(activation calls that ran: {ran}); pass activations='all' (or a tuple such as "
                f"('relu', 'gelu', 'silu')) to treat other elementwise activations as neurons"
            )
        if cov.missed and not self.allow_partial:
            missed = ", ".join(f"{n} {f}" for f, n in sorted(cov.missed.items()))
            raise AttributionError(
                f"only {cov.fraction:.0%} of {type(self.model).__name__}'s activation elements are neurons with "
                f"activations={chosen!r}: {missed} call(s) are not; pass activations='all' or a tuple that "
                f"includes {', '.join(sorted(cov.missed))}, or allow_partial=True to prune the {chosen} calls only"
            )


def _tensors(values: Any) -> list[torch.Tensor]:
    """The tensors in (nested tuples, lists and dicts of) ``values``."""
    if isinstance(values, torch.Tensor):
        return [values]
    if isinstance(values, (tuple, list)):
        return [t for v in values for t in _tensors(v)]
    if isinstance(values, dict):
        return [t for v in values.values() for t in _tensors(v)]
    return []


class _FunctionCalls(TorchFunctionMode):
    """Routes every torch function call of the block through :meth:`NeuronCalls._function_call`
    (the mode is popped while its handler runs, so a call is seen once)."""

    def __init__(self, calls: NeuronCalls) -> None:
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        return self.calls._function_call(func, args, kwargs or {})


def _top_function_mode() -> TorchFunctionMode | None:
    """The innermost active torch function mode (ours can only be dropped when it is on top)."""
    stack = torch.overrides._get_current_function_mode_stack()
    return stack[-1] if stack else None


def _check_model(model: nn.Module) -> None:
    """The model's activation calls must be visible to Python: not TorchScript, not compiled."""
    if isinstance(model, torch.jit.ScriptModule) or any(isinstance(m, torch.jit.ScriptModule)
                                                        for m in model.modules()):
        raise AttributionError(
            f"{type(model).__name__} is (or holds) a TorchScript module, whose activation calls cannot be seen "
            "from Python; pass the eager nn.Module it was scripted from"
        )
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise AttributionError("the model is compiled with torch.compile; pass the eager module (model._orig_mod)")
