"""Cascading model-parameter randomization (Adebayo et al. 2018, "Sanity checks for saliency maps").

:func:`cascade` lists the steps, from the logits down to the first layer, in *reverse
execution order*: a forward pass with hooks records when each parameterized module
(any module with parameters of its own: Conv, Linear, BatchNorm's affine, ...) first runs,
so a model that defines ``fc`` before ``conv1`` is still randomized from ``fc`` down.
Modules that never run in the traced forward (e.g. an auxiliary head in eval mode) are
left out: they cannot change the maps.

Steps are grouped per *block*: a module's block is the shortest prefix of its dotted name
that is not an ``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict``. For torchvision's
ResNet-50 the steps are ``fc, layer4.2, layer4.1, ..., layer1.0, bn1, conv1``: the paper's
"block 15" is ``layer4.2``, "block 0" is ``layer1.0``, and after ``conv1`` every parameter
is random. For a plain ``nn.Sequential`` each layer is its own step. ``group="module"``
makes every parameterized module its own step.

:func:`randomized` has two modes:

* ``normal`` (the reference's): every parameter of a chosen module, weights AND biases (and
  BatchNorm's gamma / beta), is redrawn from N(0, std). Buffers (BatchNorm's running
  statistics) are kept.
* ``reset`` (Quantus' MPRT): each chosen module's own ``reset_parameters()``, i.e. its
  initialization (Kaiming-uniform convolutions and linear layers; BatchNorm back to gamma 1,
  beta 0 *and* running mean 0 / variance 1). With ``group="module"`` this is Quantus' cascade
  module by module; Quantus orders modules by definition, this module by execution (the same
  order for ResNets), and Quantus reseeds torch's global RNG with ``seed + 1`` before every module.

Draws are seeded per module name (on the CPU, then copied to the module's device), so a module
gets the same random weights at every later cascade step and on every device, and the caller's
RNG state is left alone.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from ..base import eval_mode
from .errors import EvaluationError

__all__ = ["GROUPS", "MODES", "Step", "cascade", "execution_order", "randomized"]

Step = tuple[str, list[str]]
GROUPS = ("block", "module")
MODES = ("normal", "reset")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _example_input(model: nn.Module) -> torch.Tensor:
    """A zero input shaped for the first conv or linear layer found (64 px for convs)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return torch.zeros((1, module.in_channels, 64, 64), device=device, dtype=dtype)
        if isinstance(module, nn.Linear):
            return torch.zeros((1, module.in_features), device=device, dtype=dtype)
    raise EvaluationError("cannot guess an input for a model without Conv2d or Linear layers; pass example=")


def execution_order(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Names of the modules with parameters of their own, in the order they first run.

    One no-grad forward in eval mode on ``example`` (default: a zero image, 64 px for
    conv nets); every module's training flag is restored and every hook removed.
    """
    if not isinstance(model, nn.Module):
        raise EvaluationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = {m: n for n, m in model.named_modules() if n and next(m.parameters(recurse=False), None) is not None}
    order: list[str] = []
    seen: set[str] = set()

    def hook(module: nn.Module, args: object) -> None:
        name = names.get(module)
        if name is not None and name not in seen:
            seen.add(name)
            order.append(name)

    x = _example_input(model) if example is None else example
    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    except Exception as err:  # the guess did not fit the model
        raise EvaluationError(f"tracing {type(model).__name__} on an input of shape {tuple(x.shape)} failed "
                              f"({err}); pass example= with an input the model accepts") from err
    finally:
        for handle in handles:
            handle.remove()
    return order


def _block_of(model: nn.Module, name: str) -> str:
    parts = name.split(".")
    module = model
    for i, part in enumerate(parts):
        module = getattr(module, part) if not isinstance(module, nn.ModuleDict) else module[part]
        if not isinstance(module, _CONTAINERS):
            return ".".join(parts[: i + 1])
    return name


def cascade(model: nn.Module, example: torch.Tensor | None = None, group: str = "block") -> list[Step]:
    """Randomization steps ``[(step_name, module_names), ...]``, logits first, input layer last.

    Each step's modules are listed in reverse execution order; steps are ordered by the
    last-executed module they hold. See the module docstring for the grouping.
    """
    if group not in GROUPS:
        raise EvaluationError(f"group must be one of {GROUPS}, got {group!r}")
    order = execution_order(model, example)
    steps: dict[str, list[str]] = {}
    for name in reversed(order):  # dicts keep insertion order: first seen = last executed
        key = name if group == "module" else _block_of(model, name)
        steps.setdefault(key, []).append(name)
    return list(steps.items())


def _resolve_upto(steps: Sequence[Step], upto_step: Union[str, int]) -> int:
    names = [s for s, _ in steps]
    if isinstance(upto_step, bool) or not isinstance(upto_step, (str, int)):
        raise EvaluationError(f"upto_step must be a step name or index, got {upto_step!r}")
    if isinstance(upto_step, str):
        if upto_step not in names:
            raise EvaluationError(f"unknown step {upto_step!r}; steps are {names}")
        return names.index(upto_step)
    if not -len(names) <= upto_step < len(names):
        raise EvaluationError(f"step index {upto_step} out of range for {len(names)} steps")
    return upto_step % len(names)


def _seed_for(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _reset(module: nn.Module, name: str, generator_seed: int) -> None:
    """``module.reset_parameters()`` drawn from a CPU generator seeded with ``generator_seed``; the
    result (parameters and buffers) is copied into ``module`` in place, on its device and dtype."""
    if not callable(getattr(module, "reset_parameters", None)):
        raise EvaluationError(f"module {name!r} ({type(module).__name__}) has no reset_parameters(); "
                              "use mode='normal' (redraw from N(0, std)) for this model")
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(generator_seed)
        fresh.reset_parameters()
    state = dict(fresh.named_parameters(recurse=False)) | dict(fresh.named_buffers(recurse=False))
    for key, value in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if value is not None and state.get(key) is not None:
            value.copy_(state[key].to(device=value.device, dtype=value.dtype))


def randomized(model: nn.Module, upto_step: Union[str, int], std: float = 0.1, seed: int = 0,
               steps: Sequence[Step] | None = None, independent: bool = False, mode: str = "normal") -> nn.Module:
    """A deep copy of ``model`` with every module in steps 0..``upto_step`` randomized: re-drawn from
    N(0, std) (``mode="normal"``) or re-initialized by ``reset_parameters()`` (``mode="reset"``).

    ``upto_step`` is a step name or index into ``steps`` (default :func:`cascade(model)`;
    pass it to trace once). ``independent=True`` randomizes that one step only (the paper's
    independent layer randomization). ``model`` itself is never changed.
    """
    if mode not in MODES:
        raise EvaluationError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(std, (int, float)) and not isinstance(std, bool) and std >= 0):
        raise EvaluationError(f"std must be a number >= 0, got {std!r}")
    steps = cascade(model) if steps is None else list(steps)
    last = _resolve_upto(steps, upto_step)
    chosen = steps[last:last + 1] if independent else steps[: last + 1]
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    with torch.no_grad():
        for _, names in chosen:
            for name in names:
                if name not in modules:
                    raise EvaluationError(f"step module {name!r} is not in {type(model).__name__}; "
                                          "were the steps traced on another model?")
                if mode == "reset":
                    _reset(modules[name], name, _seed_for(seed, name))
                    continue
                generator = torch.Generator().manual_seed(_seed_for(seed, name))
                for pname, param in sorted(modules[name].named_parameters(recurse=False)):
                    draw = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                    param.copy_(draw.to(device=param.device, dtype=param.dtype))
    return copied
