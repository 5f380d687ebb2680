"""An output bound to the configuration that made it: one check for map datasets and evaluation units.

A map dataset (jobs.mapping.record: its run.json fingerprint) and an evaluation's stored units
(jobs.evaluation.units: units/binding.json) may only grow under the configuration that made them.
:func:`bind` compares the stored settings with this run's: any field that differs, or a method
label whose definition changed, is refused in one line naming up to three differences and the fix;
a new method label joins the output beside the others (nothing else depends on which methods run).

Tested by tests/jobs/mapping/test_record.py, tests/jobs/test_perturb.py and tests/jobs/test_sanity.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.runtime.cli import JobError


def plain(value: Any) -> Any:
    """``value`` as plain JSON data (what a stored binding reads back as): keys sorted, the rest as text."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def show(value: Any) -> str:
    """A setting's value in a message, at most 120 characters."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def bind(stored: Mapping[str, Any] | None, current: Mapping[str, Any], output: str, holds: str,
         fields: Sequence[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The settings to keep and the method labels this run adds, or :class:`JobError` when ``output``
    (which "holds ``holds``", e.g. "maps") was made with other settings. ``fields``: the settings
    compared, in the order differences are reported (default: every key but ``methods``, sorted);
    ``methods`` maps each label to its definition."""
    new = current.get("methods") or {}
    if not stored:
        return dict(current), list(new)
    old = stored.get("methods") or {}
    names = fields if fields is not None else sorted((set(stored) | set(current)) - {"methods"})
    differences = [f"{name} was {show(stored.get(name))}, is {show(current.get(name))}"
                   for name in names if stored.get(name) != current.get(name)]
    differences += [f"method {label!r} was {show(old[label])}, is {show(spec)}"
                    for label, spec in new.items() if label in old and old[label] != spec]
    if differences:
        raise JobError(f"{output} holds {holds} made with another configuration: {'; '.join(differences[:3])}. "
                       "Write to a new --output, or give a changed method a new label (label=name:params) "
                       "to add it beside the old one")
    added = [label for label in new if label not in old]
    return {**stored, "methods": {**old, **{label: new[label] for label in added}}}, added
