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

A checkpoint is untrusted: an import path runs code, so it is refused before anything is
imported unless the operator trusts its module (``trust_code``, the jobs' ``--trust-code``), and
built-in archs' ``arch_kwargs`` may not ask their loader for weights or files. :mod:`models.trust`
holds the rules.

Tested by tests/models/test_registry.py and tests/models/test_trust.py.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models import trust
from models.small import resnet8

if TYPE_CHECKING:
    from models.registry import ModelSpec

_TIMM_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$")  # a registry name and tag; no hf-hub: / local-dir:
#: Our own architectures (no torchvision import needed: it is slow, and paid per Ray actor;
#: benchmarks/RESULTS.md, "Figures moved from the code").
OWN = {"resnet8": resnet8}
#: arch_kwargs keys that the spec's own fields set, per kind of built-in arch (a clash is an error).
OWNED = {"num_classes": "num_classes", "in_channels": "in_channels"}
_TIMM_OWNED = {**OWNED, "in_chans": "in_channels"}


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
    """torchvision.models, imported on first use (a slow import; the default ResNet-8 needs none)."""
    from models.tv import models

    return models


def torchvision_names() -> list[str]:
    """Every torchvision classification model name."""
    models = tv_models()
    return sorted(models.list_models(module=models))


def resolve(name: str, *, trust_code: str | Iterable[str] | None = ()) -> Arch:
    """The :class:`Arch` ``name`` names, or a :class:`ModelError` that says what names exist.

    An import path is imported only when its module is in ``trust_code`` (models.trust)."""
    if not isinstance(name, str) or not name:
        raise _error("arch must be a non-empty string")
    if name in OWN:
        return Arch(name, "own", lambda spec: _own(name, spec))
    if name.startswith("timm:"):
        if not _TIMM_NAME.match(name[5:]):
            raise _error(f"arch {name!r}: name a timm model of its registry (timm:<name>, e.g. timm:resnet18); hub "
                         "and folder prefixes (hf-hub:, local-dir:) and paths would load files, so are refused")
        return Arch(name, "timm", lambda spec: _timm(name[5:], spec))
    if ":" in name:
        factory = import_factory(name, trust_code=trust_code)
        return Arch(name, "import", lambda spec: _call(name, factory, spec))
    if name in torchvision_names():
        return Arch(name, "torchvision", lambda spec: _torchvision(name, spec))
    raise _error(f"unknown arch {name!r}; use {', '.join(OWN)}, a torchvision classification model "
                 "(e.g. resnet50, densenet121, convnext_tiny), timm:<name>, or an import path "
                 "package.module:ClassOrFactory")


def _own(name: str, spec: ModelSpec) -> nn.Module:
    trust.check_builtin_kwargs(name, spec.arch_kwargs, OWNED)
    fixed = {"num_classes": spec.num_classes, "in_channels": spec.in_channels}
    trust.check_binds(name, OWN[name], spec.arch_kwargs, fixed)
    return OWN[name](**fixed, **spec.arch_kwargs)


def _torchvision(name: str, spec: ModelSpec) -> nn.Module:
    trust.check_builtin_kwargs(name, spec.arch_kwargs, OWNED)
    try:
        model = tv_models().get_model(name, weights=None, num_classes=spec.num_classes, **spec.arch_kwargs)
    except (TypeError, ValueError) as err:
        raise _error(f"arch {name!r}: torchvision cannot build it with arch_kwargs {sorted(spec.arch_kwargs)} "
                     f"({' '.join(str(err).split())[:300]}); fix arch_kwargs") from None
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
    trust.check_builtin_kwargs(f"timm:{name}", spec.arch_kwargs, _TIMM_OWNED)
    try:
        import models.tv  # noqa: F401 - timm imports torchvision, which needs the shim on CPU-only torch
        import timm
    except ImportError:
        raise _error(f"arch 'timm:{name}' needs timm: pip install timm") from None
    if not timm.is_model(name.partition(".")[0]):
        raise _error(f"timm cannot build {name!r}: no such model in timm {timm.__version__} (timm.list_models())")
    try:
        return timm.create_model(name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels,
                                 **spec.arch_kwargs)
    except (RuntimeError, TypeError, ValueError) as err:
        raise _error(f"timm cannot build {name!r} with arch_kwargs {sorted(spec.arch_kwargs)}: "
                     f"{' '.join(str(err).split())[:300]}") from None


def import_factory(path: str, *, trust_code: str | Iterable[str] | None = ()) -> Callable[..., nn.Module]:
    """The class or factory an import path ``package.module:name`` names, once models.trust allows its
    module (checked before the import); a clear error when it cannot be imported here."""
    module_name, attr = trust.check_import_path(path, trust.trusted_modules(trust_code))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise _error(f"arch {path!r}: cannot import {module_name!r} ({err}); put it on PYTHONPATH, or ship it to the "
                     "Ray workers with `ray job submit --working-dir .` or runtime_env py_modules") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed on import: one line names it
        raise _error(f"arch {path!r}: importing {module_name!r} failed: {type(err).__name__}: "
                     f"{' '.join(str(err).split())[:300]}") from None
    return trust.check_callable(path, module, getattr(module, attr, None))


def _call(name: str, factory: Callable[..., nn.Module], spec: ModelSpec) -> nn.Module:
    """The trusted factory called with the spec's arch_kwargs, checked to bind before the call."""
    trust.check_plain(name, spec.arch_kwargs)
    trust.check_binds(name, factory, spec.arch_kwargs)
    try:
        model = factory(**spec.arch_kwargs)
    except Exception as err:  # noqa: BLE001 - the user's code refused its arguments: one line names it
        raise _error(f"arch {name!r} failed to build with arch_kwargs {sorted(spec.arch_kwargs)}: "
                     f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
    if not isinstance(model, nn.Module):
        raise _error(f"arch {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def available() -> list[str]:
    """Arch names for ``--help``: ours and torchvision's (timm:<name> and import paths are open-ended)."""
    return [*OWN, *torchvision_names()]
