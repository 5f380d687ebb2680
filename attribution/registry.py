"""Methods by name: ``@register("name")`` on a class, ``get(name, model, **params)`` to build one.

Like a plugin registry, a new method is one class plus its registration; jobs select methods by
name. A :class:`MethodSpec` is that selection as plain data (label, registry name, parameters),
so it can travel to Ray workers and into ``run.json`` and be built there.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
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


def parameters(name: str) -> dict[str, Any]:
    """The parameters method ``name`` accepts (besides the model), with their type hints."""
    init = method_class(name).__init__
    hints = typing.get_type_hints(init)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in inspect.signature(init).parameters.values()
             if p.kind in named and p.name not in ("self", "model")]
    return {p: hints.get(p, Any) for p in names}


def _open_ended(name: str) -> bool:
    """Whether method ``name``'s constructor takes ``**kwargs`` (its own check then decides)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD
               for p in inspect.signature(method_class(name).__init__).parameters.values())


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Refuse parameters method ``name`` does not take, or of a type it does not take, in one line.

    Method parameters come from command lines and from stored run.json files (data someone else
    may have written), so they are checked against the constructor's signature before it runs:
    a wrong type is an :class:`AttributionError` naming the parameter and what it accepts, never
    a ValueError or TypeError from deep inside the method."""
    accepted = parameters(name)
    for key, value in params.items():
        if key not in accepted and not _open_ended(name):
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
            raise AttributionError(f"method {name!r} has no parameter {key!r}; {takes}")
        hint = accepted.get(key, Any)
        if not _fits(value, hint):
            raise AttributionError(f"method {name!r}: parameter {key!r} takes {_describe(hint)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a JSON value) fits type hint ``hint``; unknown hints are left to the method."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin in (tuple, list, typing.get_origin(typing.Sequence[int])):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    return True


def _describe(hint: Any) -> str:
    """``hint`` in words, for an error line."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in words:
        return words[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (tuple, list, typing.get_origin(typing.Sequence[int])):
        item = _describe(args[0]) if args else "values"
        return f"a list of {item.removeprefix('a ').removeprefix('an ')}s"
    return str(hint)


def get(name: str, model: nn.Module | None, **params: Any) -> Attribution:
    """Build the method registered as ``name`` around ``model``; bad parameters are an
    :class:`AttributionError` in one line (:func:`check_params`), whatever the method raises."""
    cls = method_class(name)
    check_params(name, params)
    try:
        return cls(model, **params)
    except AttributionError:
        raise
    except (TypeError, ValueError) as err:
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
