"""An evaluation's units of work, stored under its output as each finishes, bound to its configuration.

jobs.perturb and jobs.sanity cut their work into units (a method's shard of samples; a method's
cascade step under one draw of random weights) that the job runner (jobs.runtime.runner) schedules.
Each finished unit's arrays are one file, ``<output>/units/<key>.npz``, written atomically: the
file is the commit, and a rerun of the same command skips every unit whose file is there, so a run
that was stopped, or lost a worker, resumes where it was.

A unit's key names its samples (:func:`samples_digest`): other samples are other units. How they
are computed is the output's configuration, and units are only reusable under the one that made
them, so the output is bound to it, as a map dataset is (jobs.attribute refuses a rerun of another
configuration): the first run records its settings in ``<output>/units/binding.json``, and a
later run with other settings is refused with one line naming what differs and the fix. The
exception, as for maps, is a new method label: its units are added beside the others (a unit key
never depends on which other methods run).

Tested by tests/jobs/test_perturb.py and tests/jobs/test_sanity.py (stopped runs resume; other settings refused).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jobs.runtime.binding import bind, plain
from jobs.runtime.cli import JobError

UNITS_DIR = "units"
BINDING = f"{UNITS_DIR}/binding.json"
SUFFIX = ".npz"


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering ``range(n)`` in pieces of ``size``."""
    return [(i, min(n, i + size)) for i in range(0, n, max(1, size))]


def unit_key(*parts: Any) -> str:
    """A unit's file name stem from its parts (``gradient-000064-1a2b3c4d``): safe characters kept, anything
    else replaced, with a short hash of the original so that two labels never share a key."""
    text = "-".join(str(p) for p in parts)
    safe = re.sub(r"[^A-Za-z0-9_.=+-]", "_", text).lstrip(".")
    return safe if safe == text else f"{safe}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def model_sha256(model: Any) -> str:
    """A digest of a model's weights: the same checkpoint URL retrained is another configuration."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def samples_digest(ids: list[str]) -> str:
    """8 hex digits naming a unit's samples, in their order, in its key: other samples (another
    --limit, --shard-size or map dataset) are other units, computed beside these, never mixed up."""
    return hashlib.sha256("\n".join(str(i) for i in ids).encode()).hexdigest()[:8]


class UnitStore:
    """The units of one evaluation output (see the module docstring). ``settings``: everything that
    determines a unit's numbers, plain JSON; its ``methods`` (label -> definition) may grow."""

    def __init__(self, output: str, options: dict[str, Any], job: str, settings: Mapping[str, Any]) -> None:
        from storage.io.location import Location

        self.where = Location(output, options)
        self.job = job
        self.settings = plain(settings)

    def bind(self) -> None:
        """Record this run's settings, or check them against those the output holds: :class:`JobError`
        naming the differences when its units were made otherwise (jobs.runtime.binding.bind)."""
        from storage.io.fs import redact_url

        stored = self.where.get_optional(BINDING)
        before = None
        if stored is not None:
            try:
                before = json.loads(stored)["settings"]
            except (ValueError, KeyError, TypeError):
                raise JobError(f"{redact_url(self.where.url_of(BINDING))} is not a {self.job} unit binding; "
                               "use another --output") from None
        settings, added = bind(before, self.settings, redact_url(self.where.url), f"{self.job} results")
        if before is None or added:
            self.where.put_json(BINDING, {"job": self.job, "settings": settings})

    def done(self) -> set[str]:
        """The keys of the units committed so far."""
        start = len(UNITS_DIR) + 1
        return {rel[start:-len(SUFFIX)] for rel in self.where.find(UNITS_DIR, SUFFIX) if "/" not in rel[start:]}

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Commit one unit's arrays (one atomic write)."""
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
        self.where.put(f"{UNITS_DIR}/{key}{SUFFIX}", buffer.getvalue())

    def load_done(self, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """The committed units among ``keys``, read back in parallel; an unreadable one is left out
        (computed again)."""
        done = self.done()
        wanted = [key for key in keys if key in done]
        blobs = self.where.get_many([f"{UNITS_DIR}/{key}{SUFFIX}" for key in wanted])
        loaded = {key: _arrays(blobs[f"{UNITS_DIR}/{key}{SUFFIX}"]) for key in wanted}
        return {key: arrays for key, arrays in loaded.items() if arrays is not None}


def _arrays(data: bytes | None) -> dict[str, np.ndarray] | None:
    """A unit file's arrays, or None when it is gone or unreadable."""
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError):
        return None
