"""Which calls are elementwise activations, however a model writes them.

A model can apply a ReLU as a module (``nn.ReLU``), as a function (``F.relu``, ``torch.relu``),
as a tensor method (``x.relu()``), each in place or not; GELU, SiLU, Hardswish and the others
likewise. :data:`FAMILIES` names every activation this project recognizes, :func:`module_family`
and :func:`function_family` say which family a module or a torch function belongs to, and
:func:`is_inplace` whether a given function call overwrites its input.

Gates (``sigmoid``, ``hardsigmoid``, ``tanh``), ``softmax`` and normalization are deliberately not
activations here: their outputs scale or normalize other tensors, they are not neurons.

Tested by tests/attribution/test_neurons.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Every elementwise activation family. ``relu`` is the paper's neuron; the others are neurons
#: only when asked for (``activations="all"`` or a tuple of these names).
FAMILIES = ("relu", "relu6", "hardtanh", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "hardswish", "mish",
            "prelu")

#: Module types by family; subclasses count as their family (checked in this order).
_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.Hardtanh, "hardtanh"), (nn.LeakyReLU, "leaky_relu"),
    (nn.ELU, "elu"), (nn.SELU, "selu"), (nn.CELU, "celu"), (nn.GELU, "gelu"), (nn.SiLU, "silu"),
    (nn.Hardswish, "hardswish"), (nn.Mish, "mish"), (nn.PReLU, "prelu"),
)


def module_family(module: nn.Module) -> str | None:
    """The activation family of a module, or None for every other module."""
    for cls, family in _MODULES:
        if isinstance(module, cls):
            return family
    return None


def _torch_nn(name: str) -> Any:
    return getattr(torch._C._nn, name, None)


# function -> (family, always in place?, position of the ``inplace`` argument or None)
_FUNCTIONS: dict[Callable[..., Any], tuple[str, bool, int | None]] = {}


def _add(family: str, inplace: bool, position: int | None, *functions: Any) -> None:
    for fn in functions:
        if fn is not None:
            _FUNCTIONS.setdefault(fn, (family, inplace, position))


_add("relu", False, 1, F.relu)
_add("relu", False, None, torch.relu, torch.Tensor.relu)
_add("relu", True, None, F.relu_, torch.relu_, torch.Tensor.relu_)
_add("relu6", False, 1, F.relu6)
_add("relu6", False, None, _torch_nn("relu6"))
_add("relu6", True, None, _torch_nn("relu6_"))
_add("hardtanh", False, 3, F.hardtanh)
_add("hardtanh", False, None, _torch_nn("hardtanh"))
_add("hardtanh", True, None, F.hardtanh_, _torch_nn("hardtanh_"))
_add("leaky_relu", False, 2, F.leaky_relu)
_add("leaky_relu", False, None, _torch_nn("leaky_relu"))
_add("leaky_relu", True, None, F.leaky_relu_, _torch_nn("leaky_relu_"))
_add("elu", False, 2, F.elu)
_add("elu", False, None, _torch_nn("elu"))
_add("elu", True, None, F.elu_, _torch_nn("elu_"))
_add("selu", False, 1, F.selu)
_add("selu", False, None, torch.selu)
_add("selu", True, None, torch.selu_)
_add("celu", False, 2, F.celu)
_add("celu", False, None, torch.celu)
_add("celu", True, None, torch.celu_)
_add("gelu", False, None, F.gelu, _torch_nn("gelu"))
_add("silu", False, 1, F.silu)
_add("silu", False, None, _torch_nn("silu"))
_add("silu", True, None, _torch_nn("silu_"))
_add("hardswish", False, 1, F.hardswish)
_add("hardswish", False, None, _torch_nn("hardswish"))
_add("hardswish", True, None, _torch_nn("hardswish_"))
_add("mish", False, 1, F.mish)
_add("mish", False, None, _torch_nn("mish"))
_add("mish", True, None, _torch_nn("mish_"))
_add("prelu", False, None, F.prelu, torch.prelu)


def function_family(func: Callable[..., Any]) -> str | None:
    """The activation family of a torch function or tensor method, or None."""
    entry = _FUNCTIONS.get(func)
    return entry[0] if entry else None


def is_inplace(func: Callable[..., Any], args: tuple, kwargs: dict) -> bool:
    """Whether this call of an activation function overwrites its input."""
    _, always, position = _FUNCTIONS[func]
    if always:
        return True
    if position is None:
        return False
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    return len(args) > position and bool(args[position])


def resolve(activations: str | tuple[str, ...] | list[str]) -> frozenset[str]:
    """The families ``activations`` names: ``"relu"`` (the paper's neurons), ``"all"``, or a tuple."""
    from .base import AttributionError

    if isinstance(activations, str):
        names: tuple[str, ...] = FAMILIES if activations == "all" else (activations,)
    else:
        names = tuple(activations)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown or not names:
        raise AttributionError(f"unknown activations {unknown or names!r}; use 'relu', 'all' or a tuple of "
                               f"{', '.join(FAMILIES)}")
    return frozenset(names)
