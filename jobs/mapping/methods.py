"""``--methods``: method specs ``[label=]name[:key=value,...]``, checked when parsed and built.

One method can appear twice with different parameters, e.g.
``pathway_integrated=pathway:scores=integrated``; the label names the method in every output,
table and plot (default: the registry name), so it must be one safe path component. Parameter
names and JSON types are checked against the method's signature when the spec is parsed, ranges
when it is built: both before any work, as one line naming the spec (exit status 2).

Tested by tests/jobs/runtime/test_cli.py and tests/jobs/runtime/test_cli_output.py, with the command lines'
table in tests/security/test_errors.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jobs.runtime.cli import JobError



def _split_top_level(text: str) -> list[str]:
    """``text`` split at commas outside brackets and quotes (a value may be a JSON list)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_params(item: str, rest: str) -> dict[str, Any]:
    """``'percentile=70,activations=["relu","gelu"]'`` -> {"percentile": 70, "activations": ["relu", "gelu"]};
    values parsed as JSON where they are JSON, else kept as strings."""
    params: dict[str, Any] = {}
    for pair in filter(None, _split_top_level(rest)):
        key, eq, value = pair.partition("=")
        if not eq:
            raise JobError(f"--methods: expected key=value in {item!r}, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def check_label(label: str) -> str:
    """A method label names folders and files of every output (``maps/<label>/``), so it must be one
    safe path component: the rule storage applies to every name (storage.maps.manifest.check_name)."""
    from storage.io.fs import InvalidStorageInput
    from storage.maps.manifest import check_name

    try:
        return check_name("method label", label)
    except InvalidStorageInput as err:
        raise JobError(f"--methods: {err}; choose another label, e.g. label=name:key=value") from None


def parse_method_specs(text: str) -> list[Any]:
    """``"pt=pathway:scores=taylor gradient"`` -> [MethodSpec, ...]; unknown names are an error."""
    import attribution

    specs: dict[str, attribution.MethodSpec] = {}
    for item in text.replace(";", " ").split():
        head, _, rest = item.partition(":")
        label, eq, name = head.partition("=")
        if not eq:
            label, name = head, head
        if not label or not name:
            raise JobError(f"--methods: cannot read {item!r}; write [label=]name[:key=value,...]")
        if name not in attribution.available():
            raise JobError(f"--methods: unknown method {name!r}; choose one of {', '.join(attribution.available())}")
        if label in specs:
            raise JobError(f"--methods: label {label!r} appears twice; give one a label, e.g. {label}2={item}")
        check_label(label)
        params = parse_params(item, rest)
        try:
            attribution.check_params(name, params)
        except attribution.AttributionError as err:
            raise JobError(f"--methods {item}: {err}") from None
        specs[label] = attribution.MethodSpec(name, params, label)
    if not specs:
        raise JobError("--methods names no method")
    return list(specs.values())


def build_methods(model: Any, specs: Sequence[Any]) -> dict[str, Any]:
    """Every method built around ``model``, by label (fails early on bad parameters, naming the spec)."""
    from attribution import AttributionError

    methods = {}
    for spec in specs:
        try:
            methods[spec.label] = spec.build(model)
        except AttributionError as err:
            text = ",".join(f"{k}={json.dumps(v)}" for k, v in spec.params.items())
            named = spec.name if spec.label == spec.name else f"{spec.label}={spec.name}"
            named += f":{text}" if text else ""
            raise JobError(f"--methods {named}: {err}") from None
    return methods
