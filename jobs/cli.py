"""What every job's command line shares: method specs and one-line errors with exit status 1.

Methods are named ``[label=]name[:key=value,...]`` so one method can appear twice with
different parameters, e.g. ``pathway_integrated=pathway:scores=integrated``; the label names
the method in every output, table and plot (default: the registry name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs.train import JobError


def parse_params(item: str, rest: str) -> dict[str, Any]:
    """``"percentile=70,scores=taylor"`` -> {"percentile": 70, "scores": "taylor"}; values parsed as JSON."""
    params: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, eq, value = pair.partition("=")
        if not eq:
            raise JobError(f"--methods: expected key=value in {item!r}, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@dataclass(frozen=True)
class MethodSpec:
    """One method to evaluate: its label in the outputs, its registry name, its parameters."""

    label: str
    name: str
    params: dict[str, Any]


def parse_method_specs(text: str) -> dict[str, MethodSpec]:
    """``"pt=pathway:scores=taylor gradient"`` -> {label: MethodSpec}; unknown names are an error."""
    import attribution

    specs: dict[str, MethodSpec] = {}
    for item in text.replace(";", " ").split():
        head, _, rest = item.partition(":")
        label, eq, name = head.partition("=")
        if not eq:
            label, name = head, head
        if not label or not name:
            raise JobError(f"--methods: cannot read {item!r}; write [label=]name[:key=value,...]")
        if name not in attribution.available():
            raise JobError(f"--methods: unknown method {name!r}; choose one of {', '.join(attribution.available())}")
        params = parse_params(item, rest)
        if label in specs:
            raise JobError(f"--methods: label {label!r} appears twice; give one a label, e.g. {label}2={item}")
        specs[label] = MethodSpec(label, name, params)
    if not specs:
        raise JobError("--methods names no method")
    return specs


def build_methods(model: Any, specs: dict[str, MethodSpec]) -> dict[str, Any]:
    """Every method built around ``model`` (fails early on bad parameters)."""
    import attribution

    return {label: attribution.get(s.name, model, **s.params) for label, s in specs.items()}


def run_main(prog: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a problem the user can fix is one line on stderr and exit status 1, no traceback."""
    from attribution import AttributionError
    from models.registry import ModelError
    from storage.fs import StorageError

    try:
        return run(args)
    except (JobError, AttributionError, ModelError, StorageError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
