"""What a checkpoint's ``arch`` may make this process import and call (issue #24).

A checkpoint is untrusted data; the operator (command line, environment, a library caller's
arguments) is trusted. The contract is the one of Hugging Face's ``trust_remote_code``:

- An import path ``package.module:Name`` is refused, before anything is imported, unless the
  operator trusts that module: ``--trust-code MODULE[,MODULE]`` on the jobs, ``trust_code=[...]``
  in the Python API (:func:`storage.checkpoints.load_checkpoint`, :func:`models.build_model`).
  Trusting ``pkg`` trusts ``pkg`` and every ``pkg.sub...`` (one package is one author's code, and
  importing ``pkg.sub`` runs ``pkg/__init__.py`` anyway); trusting ``pkg.sub`` does not trust ``pkg``.
- Never callable as an arch, trusted or not: this project's own packages (they hold the jobs'
  entry points, which would run with a checkpoint's arguments), any ``__main__`` module (importing
  one runs a program), the standard library, and functions of installed packages (a trusted module
  may still name a *class* of one, e.g. ``torch.nn:Linear``).
- Trusted code is checked before it is called: a class must subclass ``nn.Module``; a function must
  be defined in the trusted module itself, outside the Python installation; ``arch_kwargs`` must be
  JSON data that binds to its signature.
- Built-in archs (our own nets, torchvision names, ``timm:<name>``) need no trust, but their
  ``arch_kwargs`` may not ask the loader for weights, paths, cache folders or hub names, and may
  not repeat what the spec itself sets (``num_classes``, ``in_channels``).
"""

from __future__ import annotations

import inspect
import math
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

#: This project's top-level packages: never an arch (jobs.convert:main would run a job).
PROJECT_PACKAGES = frozenset({"attribution", "models", "storage", "workers", "jobs", "tests", "benchmarks",
                              "scripts"})
#: Where a refusal points the user.
HOW = "pass --trust-code {module} (Python: trust_code=[{module!r}]) if you trust that code; docs/security.md"
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: Loader keywords that fetch weights or read files (torchvision's builders, timm.create_model and its
#: build_model_with_cfg), refused in a built-in arch's arch_kwargs.
LOADER_KEYWORDS = frozenset({
    "weights", "weights_backbone", "progress", "pretrained", "pretrained_backbone", "pretrained_cfg",
    "pretrained_cfg_overlay", "pretrained_strict", "pretrained_filter_fn", "pretrained_model_args", "checkpoint_path",
    "cache_dir", "model_cfg", "feature_cfg", "features_only", "kwargs_filter", "model_dir", "hub_dir", "file",
    "url", "path",
})
#: Any keyword that looks like it names weights, a file, a folder or a hub is refused too.
_LOADER_LIKE = re.compile(r"pretrain|weights|checkpoint|cache|hub|url|file|download|(^|_)dirs?($|_)|(^|_)path$")
_MAX_DEPTH = 32


def _error(message: str) -> Exception:
    from models.registry import ModelError

    return ModelError(message)


def trusted_modules(trust_code: str | Iterable[str] | None) -> tuple[str, ...]:
    """``trust_code`` as a tuple of module names (a string may list several, comma-separated)."""
    if trust_code is None:
        return ()
    items = trust_code.split(",") if isinstance(trust_code, str) else list(trust_code)
    names = []
    for item in items:
        name = str(item).strip()
        if not name:
            continue
        if not _MODULE.match(name):
            raise _error(f"trust_code: {name!r} is not a module name (package.module); name the module an arch "
                         "imports, e.g. --trust-code mynets")
        names.append(name)
    return tuple(dict.fromkeys(names))


def is_trusted(module: str, trust_code: Iterable[str]) -> bool:
    """Whether ``module`` is one the operator trusts, or a submodule of one."""
    return any(module == t or module.startswith(t + ".") for t in trust_code)


def check_import_path(path: str, trust_code: Iterable[str]) -> tuple[str, str]:
    """``(module, name)`` of an import-path arch the operator allows; a :class:`ModelError` naming the
    module and the flag otherwise. Imports nothing."""
    if not IMPORT_PATH.match(path):
        raise _error(f"arch {path!r} is not an import path of the form package.module:ClassOrFactory")
    module, _, name = path.partition(":")
    parts = module.split(".")
    never = ("this project's own code" if parts[0] in PROJECT_PACKAGES else
             "a program's __main__ module" if "__main__" in parts else
             "the standard library" if parts[0] in sys.stdlib_module_names or parts[0] == "builtins" else
             "a private name" if name.startswith("__") else "")
    if never:
        raise _error(f"arch {path!r} names {never} ({module!r}), which no checkpoint may import or call, even "
                     "with --trust-code; an arch must be model code (an nn.Module class or its factory)")
    if not is_trusted(module, trust_code):
        raise _error(f"arch {path!r} would import and run module {module!r}, which is not trusted; "
                     + HOW.format(module=module))
    return module, name


def check_callable(path: str, module: Any, factory: Any) -> Callable[..., Any]:
    """``factory`` if it may be called as an arch: an ``nn.Module`` class, or a function defined in
    the trusted ``module`` itself, outside the Python installation (site-packages included)."""
    from torch import nn

    if factory is None:
        raise _error(f"arch {path!r}: module {module.__name__!r} has no {path.partition(':')[2]!r}")
    if inspect.isclass(factory):
        if not issubclass(factory, nn.Module):
            raise _error(f"arch {path!r} is a class but not an nn.Module")
        return factory
    if not inspect.isfunction(factory):
        raise _error(f"arch {path!r} is a {type(factory).__name__}, not an nn.Module class or a factory function")
    if getattr(factory, "__module__", None) != module.__name__ or not _outside_installation(factory):
        raise _error(f"arch {path!r} must be an nn.Module class, or a function defined in {module.__name__!r} "
                     "itself (your own code, not an installed package's)")
    return factory


def _outside_installation(function: Callable[..., Any]) -> bool:
    """Whether ``function`` is defined outside the interpreter's and the installed packages' folders."""
    try:
        source = inspect.getsourcefile(function)
    except TypeError:
        return False
    if source is None:
        return False
    path = Path(source).resolve()
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(path.is_relative_to(folder) for folder in installed)


def check_plain(arch: str, kwargs: Mapping[str, Any]) -> None:
    """arch_kwargs hold only JSON scalars, lists and dicts (string keys), nested at most 32 deep."""

    def plain(value: Any, depth: int) -> bool:
        if depth > _MAX_DEPTH:
            return False
        if value is None or isinstance(value, (bool, int, str)):
            return True
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, list):
            return all(plain(v, depth + 1) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v, depth + 1) for k, v in value.items())
        return False

    if not isinstance(kwargs, dict) or not plain(kwargs, 0):
        raise _error(f"arch {arch!r}: arch_kwargs must be JSON data (numbers, strings, booleans, null, lists and "
                     "objects)")


def check_binds(arch: str, factory: Callable[..., Any], kwargs: Mapping[str, Any],
                fixed: Mapping[str, Any] | None = None) -> None:
    """``factory(**fixed, **kwargs)`` would bind to its signature (checked without calling it)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise _error(f"arch {arch!r}: cannot read the signature of {getattr(factory, '__name__', factory)!r}, so "
                     "its arch_kwargs cannot be checked; wrap it in a function or nn.Module class of your own"
                     ) from None
    try:
        signature.bind(**(fixed or {}), **kwargs)
    except TypeError as err:
        raise _error(f"arch {arch!r}: arch_kwargs {sorted(kwargs)} do not fit {factory.__name__}{signature} ({err}); "
                     "fix arch_kwargs (jobs.convert --arch-kwargs)") from None


def check_builtin_kwargs(arch: str, kwargs: Mapping[str, Any], owned: Mapping[str, str]) -> None:
    """A built-in arch's arch_kwargs: plain data, no loader keyword (weights, paths, caches, hubs), no
    string that looks like a path or URL, and nothing the spec itself sets (``owned``: keyword -> the
    spec field that sets it)."""
    check_plain(arch, kwargs)
    clash = sorted(k for k in kwargs if k in owned)
    if clash:
        key = clash[0]
        raise _error(f"arch {arch!r}: arch_kwargs sets {key!r}, which the spec's {owned[key]} sets; remove it from "
                     "arch_kwargs")
    loader = sorted(k for k in kwargs if k in LOADER_KEYWORDS or _LOADER_LIKE.search(k.lower()))
    if loader:
        raise _error(f"arch {arch!r}: arch_kwargs {loader} would make the loader fetch weights or read files; a "
                     "checkpoint holds its own weights, so remove them from arch_kwargs")

    def strings(value: Any) -> Iterable[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)

    for key, value in kwargs.items():
        for text in strings(value):
            if any(c in text for c in "/\\:") or text.startswith(("~", ".")):
                raise _error(f"arch {arch!r}: arch_kwargs {key!r} holds {text[:60]!r}, which looks like a path or "
                             "URL; a built-in arch's arch_kwargs name no files")
