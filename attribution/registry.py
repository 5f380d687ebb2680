"""Methods by name: ``@register("name")`` on a class, ``get(name, model, **params)`` to build one.

Like a plugin registry, a new method is one class plus its registration; jobs select methods by
name. A :class:`MethodSpec` is that selection as plain data (label, registry name, parameters),
so it can travel to Ray workers and into ``run.json`` and be built there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from .base import Attribution, AttributionError

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


def method_class(name: str) -> type[Attribution]:
    """The class registered as ``name``, or a clear error listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise AttributionError(
            f"unknown attribution method {name!r}; choose one of {', '.join(available())}"
        ) from None


def get(name: str, model: nn.Module | None, **params: Any) -> Attribution:
    """Build the method registered as ``name`` around ``model``."""
    cls = method_class(name)
    try:
        return cls(model, **params)
    except TypeError as err:
        raise AttributionError(f"bad parameters for method {name!r}: {err}") from None


@dataclass(frozen=True)
class MethodSpec:
    """One method as plain data: its ``label`` in the outputs, its registry ``name``, its ``params``.

    The label lets one method appear twice with different parameters (e.g. ``pathway`` and
    ``pathway_integrated``); it defaults to the name.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.label or self.name)
        object.__setattr__(self, "params", dict(self.params))

    def build(self, model: nn.Module | None) -> Attribution:
        """The method around ``model`` (fails early on an unknown name or bad parameters)."""
        return get(self.name, model, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodSpec:
        return cls(name=str(data["name"]), params=dict(data.get("params") or {}), label=str(data.get("label") or ""))
