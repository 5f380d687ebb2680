"""The example PNG of an attribution run: the first maps of each method over the images as the model
saw them, drawn at the end of a complete run (``jobs.attribute``) from one committed shard, or kept
from the run before when nothing was computed. A picture never fails a run.

Tested by tests/jobs/test_attribute.py (a complete run draws it, a rerun that computes nothing keeps it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from jobs.mapping.record import warn

#: Maps per method in the picture.
EXAMPLES = 12


def write_examples(output: str, options: dict[str, Any], source: Any, methods: Sequence[str], spec: Any,
                   shard_id: str) -> list[str]:
    """A PNG grid of the first maps of each method over the images as the model saw them, next to the
    outputs; from one committed shard (its records and tables only, whatever the dataset's size)."""
    from jobs.reporting.plots import map_grid
    from storage.io.fs import join, redact_url
    from storage.io.location import Location
    from storage.maps.reader import join_with_source, read_shard
    from storage.maps.tables import EXAMPLES_PATH

    frames = {m: read_shard(output, m, shard_id, options, columns=["sample_id", "target", "map"]).head(EXAMPLES)
              for m in methods}
    first = next(iter(frames.values()))
    if first.empty:
        return []
    joined = join_with_source(first, source, spec)
    names = spec.class_names
    titles = [f"{sid.split('/')[-1]}\n{names[t] if t < len(names) else t}" for sid, t in zip(first.sample_id, first.target)]
    maps = {m: [frame.set_index("sample_id").loc[sid, "map"] for sid in first.sample_id] for m, frame in frames.items()}
    Location(output, options).put(EXAMPLES_PATH, map_grid(list(joined["image"]), maps, titles))
    return [redact_url(join(output, EXAMPLES_PATH))]


def examples_or_warning(output: str, options: dict[str, Any] | None, source: Any, methods: Sequence[str], spec: Any,
                        shard_id: str, run_record: dict[str, Any]) -> list[str]:
    """The example PNG, or a warning (stderr and run.json) when it cannot be drawn: pictures never
    fail a job whose shards are committed (a source file deleted since it was mapped, say)."""
    from storage.io.fs import StorageError, redact_text

    try:
        return write_examples(output, options, source, methods, spec, shard_id)
    except (StorageError, OSError, ValueError, KeyError, TypeError) as err:
        warning = f"no example maps drawn: {' '.join(redact_text(str(err)).split())[:500]}"
        print(f"warning: {warning}", file=sys.stderr)
        warn(run_record, warning)
        return []


def kept_examples(store: Any, previous_run: dict[str, Any], methods: Sequence[str]) -> list[str]:
    """The example PNG an earlier run drew, when a run that computed nothing can keep it: it drew
    the same methods and the file is still there (one request). Drawing it again would read and
    plot the same first shard, and importing matplotlib and drawing cost most of a no-op rerun
    (measured on the 10 M-row source: benchmarks/RESULTS.md, "Scale", session 8)."""
    from storage.maps.tables import EXAMPLES_PATH

    pngs = list(previous_run.get("examples") or [])
    if not pngs or list(previous_run.get("examples_methods") or []) != list(methods):
        return []
    return pngs if store.where.exists(EXAMPLES_PATH) else []
