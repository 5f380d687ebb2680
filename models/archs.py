"""The architectures a :class:`models.registry.ModelSpec` can name, and how each one is built.

``arch`` is one of:

- ``resnet8`` (and the project's other own small nets);
- any torchvision classification model name (``torchvision.models.list_models``), built with
  ``num_classes`` and, for a first conv on ``in_channels != 3``, a new first convolution;
- ``timm:<name>`` when timm is installed (``timm.create_model(name, num_classes=...,
  in_chans=..., **arch_kwargs)``);
- an import path ``package.module:callable``, called as ``callable(**spec.arch_kwargs)``: the
  user's own model class or factory. The module is imported on the driver and on every Ray
  worker (``PYTHONPATH`` locally; ``ray job submit --working-dir`` or ``py_modules``).

Importing code is the user's decision: a checkpoint whose arch is an import path runs that module
when it is loaded. Only the module the arch names is imported, never the standard library, and
a function (as opposed to an ``nn.Module`` class) must be defined in code outside the Python
installation, so that a checkpoint cannot name ``os:system`` or an installed package's loader.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models.small import resnet8

if TYPE_CHECKING:
    from models.registry import ModelSpec

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: Our own architectures (no torchvision import needed: it costs ~0.9 s per Ray actor).
OWN = {"resnet8": resnet8}


def _error(message: str) -> Exception:
    from models.registry import ModelError

    return ModelError(message)


@dataclass(frozen=True)
class Arch:
    """How to build one named architecture."""

    name: str
    kind: str  # "own", "torchvision", "timm" or "import"
    build: Callable[[ModelSpec], nn.Module]

    @property
    def torchvision(self) -> bool:
        return self.kind == "torchvision"


def tv_models() -> Any:
    """torchvision.models, imported on first use (about 0.9 s; the default ResNet-8 needs none)."""
    from models.tv import models

    return models


def torchvision_names() -> list[str]:
    """Every torchvision classification model name."""
    models = tv_models()
    return sorted(models.list_models(module=models))


def resolve(name: str) -> Arch:
    """The :class:`Arch` ``name`` names, or a :class:`ModelError` that says what names exist."""
    if not isinstance(name, str) or not name:
        raise _error("arch must be a non-empty string")
    if name in OWN:
        return Arch(name, "own", lambda spec: OWN[name](num_classes=spec.num_classes, in_channels=spec.in_channels,
                                                          **spec.arch_kwargs))
    if name.startswith("timm:"):
        return Arch(name, "timm", lambda spec: _timm(name[5:], spec))
    if ":" in name:
        factory = import_factory(name)
        return Arch(name, "import", lambda spec: _call(name, factory, spec))
    if name in torchvision_names():
        return Arch(name, "torchvision", lambda spec: _torchvision(name, spec))
    raise _error(f"unknown arch {name!r}; use {', '.join(OWN)}, a torchvision classification model "
                 "(e.g. resnet50, densenet121, convnext_tiny), timm:<name>, or an import path "
                 "package.module:ClassOrFactory")


def _torchvision(name: str, spec: ModelSpec) -> nn.Module:
    model = tv_models().get_model(name, weights=None, num_classes=spec.num_classes, **spec.arch_kwargs)
    if spec.in_channels != 3:
        replace_first_conv(model, spec.in_channels, pretrained=False)
    return model


def replace_first_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Give ``model`` a first convolution for ``in_channels`` (the first Conv2d on 3 channels);
    pretrained RGB filters are summed (1 channel) or repeated (more channels)."""
    path = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if path is None:
        raise _error(f"{type(model).__name__} has no convolution on 3 input channels to adapt to {in_channels}")
    old = model.get_submodule(path)
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    if pretrained:
        with torch.no_grad():
            w = old.weight
            if in_channels == 1:
                new.weight.copy_(w.sum(dim=1, keepdim=True))
            else:
                reps = math.ceil(in_channels / 3)
                new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (3.0 / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _timm(name: str, spec: ModelSpec) -> nn.Module:
    try:
        import models.tv  # noqa: F401 - timm imports torchvision, which needs the shim on CPU-only torch
        import timm
    except ImportError:
        raise _error(f"arch 'timm:{name}' needs timm: pip install timm") from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels,
                                 **spec.arch_kwargs)
    except RuntimeError as err:
        raise _error(f"timm cannot build {name!r}: {err}") from None


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The class or factory an import path ``package.module:name`` names, after the safety checks
    in the module docstring; a clear error when it cannot be imported here."""
    if not _IMPORT_PATH.match(path):
        raise _error(f"arch {path!r} is not an import path of the form package.module:ClassOrFactory")
    module_name, _, attr = path.partition(":")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise _error(f"arch {path!r} names a standard-library module; an arch must name model code")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise _error(f"arch {path!r}: cannot import {module_name!r} ({err}); put it on PYTHONPATH, or ship it to the "
                     "Ray workers with `ray job submit --working-dir .` or runtime_env py_modules") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise _error(f"arch {path!r}: module {module_name!r} has no {attr!r}")
    if inspect.isclass(factory):
        if not issubclass(factory, nn.Module):
            raise _error(f"arch {path!r} is a class but not an nn.Module")
    elif not (inspect.isfunction(factory) and _user_code(factory)):
        raise _error(f"arch {path!r} must be an nn.Module class, or a function defined in your own code "
                     "(not in the Python installation or an installed package)")
    return factory


def _user_code(function: Callable[..., Any]) -> bool:
    """Whether ``function`` is defined outside the interpreter's and the installed packages' folders."""
    source = inspect.getsourcefile(function)
    if source is None:
        return False
    path = Path(source).resolve()
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(path.is_relative_to(folder) for folder in installed)


def _call(name: str, factory: Callable[..., nn.Module], spec: ModelSpec) -> nn.Module:
    model = factory(**spec.arch_kwargs)
    if not isinstance(model, nn.Module):
        raise _error(f"arch {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def available() -> list[str]:
    """Arch names for ``--help``: ours and torchvision's (timm:<name> and import paths are open-ended)."""
    return [*OWN, *torchvision_names()]
