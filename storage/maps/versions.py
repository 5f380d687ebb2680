"""Which format a map dataset was written in, and a clear refusal of one this code does not read.

The version is in three places (docs/format.md): ``_meta/run.json`` (``format.version``), each
maps file's Parquet key-value metadata, and the layout itself; the readers check the first two
and the layout, the driver the run record and the layout. Format 1 kept ``run.json``,
``manifest/`` and ``plan/`` at the root; format 2 moved them under ``_``-prefixed folders, which
readers that glob skip. Mixing the two in one output would make half of it invisible, so both the
readers and the driver check before they trust an empty manifest or write a first record.

Format 2 as read here is what writers since commit 9c39672 (the ``_`` layout) write; earlier writers
of version 2 still kept ``run.json`` at the root, so :func:`check_format` refuses their outputs as
format 1. Format 2 grew since without a new version number: each addition is optional to readers,
and every branch that reads an output without one names it here, by the commit that added it:

- ``stamp`` in plan segments (463aff9): a plan without it reads as unstamped (storage.maps.plan);
- ``examples_methods`` in ``run.json`` (ef4c3b9): without it no example PNG is kept
  (jobs.mapping.examples);
- ``byte_start`` / ``byte_stop`` in ranges segments (f865140): null, rows are found by reading
  (storage.maps.plan);
- a redacted ``source`` in the fingerprint (b0b7996): redacted before comparing
  (jobs.mapping.record);
- the degenerate-map details (cc2f1b9): null in maps tables without them (storage.maps.reader), and
  a method none of whose tables has them is not counted (jobs.mapping.map_checks).

What came before 9c39672 is in every format-2 output this code reads, so no branch serves its
absence: the errors' ``kind`` column (5dadd27), methods stored as specs (6932db5), ``format`` in
``run.json`` (6adf409). Where a reader still tolerates one missing (storage.maps.reader.read_errors,
jobs.inspect, :func:`run_format`), it is for a file edited by hand, and says so.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from storage.io.fs import InvalidStorageInput
from storage.io.lease import LEASE
from storage.io.location import Location
from storage.io.outputs import OutputKind
from storage.maps.tables import (ANALYSIS_DIR, EVAL_DIR, FORMAT, FORMAT_VERSION, MANIFEST_DIR, METADATA_KEY, PLAN_DIR,
                                 RUN_PATH)

#: What format 1 left at the root of an output.
FORMAT_1_MARKERS = ("run.json", "manifest", "plan/shards.parquet")


class FormatMismatch(InvalidStorageInput):
    """The dataset was written in a format version this code does not read or extend."""


def _refusal(url: str, version: Any) -> FormatMismatch:
    return FormatMismatch(
        f"{url} holds a map dataset of format version {version}; this version of pathway-attribution reads and "
        f"writes format {FORMAT_VERSION} (docs/format.md). Write new maps to another output URL, or read this one "
        f"with the release that wrote it (format 1: commit 1eeabce)")


#: The run record's fields that must be JSON objects, and those that must be lists, when present.
_OBJECT_FIELDS = ("format", "config", "fingerprint", "method_params", "model", "source")
_LIST_FIELDS = ("history", "warnings")


def parse_run(data: bytes | str, url: str) -> dict:
    """A run record's JSON, checked for shape and format: a damaged or foreign ``run.json`` is one
    line naming it, never a traceback (a map dataset someone else wrote is untrusted data)."""
    where = f"{url.rstrip('/')}/{RUN_PATH}"
    try:
        run = json.loads(data)
    except ValueError as err:
        raise InvalidStorageInput(f"{where} is not JSON ({err}); is this the --output of jobs.attribute? "
                                  "Move it aside or pick another output") from None
    wrong = [key for key in _OBJECT_FIELDS if isinstance(run, dict) and run.get(key) is not None
             and not isinstance(run[key], dict)]
    wrong += [key for key in _LIST_FIELDS if isinstance(run, dict) and run.get(key) is not None
              and not isinstance(run[key], list)]
    if not isinstance(run, dict) or wrong:
        detail = f"field(s) {', '.join(wrong)} of the wrong type" if isinstance(run, dict) else "not a JSON object"
        raise InvalidStorageInput(f"{where} is not a run record ({detail}); is this the --output of "
                                  "jobs.attribute? Move it aside or pick another output")
    run_format(run, url)
    return run


def run_format(run: dict, url: str) -> int:
    """The format version a run record declares; FormatMismatch when it is not this code's. One that
    declares none is taken as format 2: only format 2 puts a record at ``_meta/run.json``, and every
    format-2 writer declares it (since 6adf409), so such a record was written by hand."""
    about = run.get("format") or {}
    if not isinstance(about, dict):
        raise InvalidStorageInput(f"{url}: its run record's format field is not an object; is this a map dataset?")
    version = about.get("version", FORMAT_VERSION)
    if about.get("name", FORMAT) != FORMAT or version != FORMAT_VERSION:
        raise _refusal(url, version)
    return int(version)


def table_format(schema: pa.Schema, url: str) -> int:
    """The format version a maps file's key-value metadata declares (none: format 1, which wrote
    none); FormatMismatch when it is not this code's."""
    about = json.loads((schema.metadata or {}).get(METADATA_KEY, b'{"version": 1}'))
    if about.get("format", FORMAT) != FORMAT or about.get("version") != FORMAT_VERSION:
        raise _refusal(url, about.get("version"))
    return FORMAT_VERSION


def check_format(where: Location) -> dict | None:
    """The output's run record when it has one (None for a new or record-less output), after
    checking it is this code's format; FormatMismatch for a format-1 layout or another version."""
    data = where.get_optional(RUN_PATH)
    if data is not None:
        return parse_run(data, where.url)
    if any(where.exists(marker) for marker in FORMAT_1_MARKERS):
        raise _refusal(where.url, 1)
    return None


def _map_dataset() -> OutputKind:
    meta = RUN_PATH.split("/")[0]
    # Format 1's root entries count as a map dataset's, so that check_format
    # (above) refuses such an output with its own message (the format, and the release that reads it).
    format_1 = tuple(m.split("/")[0] for m in FORMAT_1_MARKERS)
    return OutputKind("jobs.attribute",
                      (meta, MANIFEST_DIR, PLAN_DIR, "_pending", EVAL_DIR, ANALYSIS_DIR, "maps", "errors", "zarr",
                       LEASE, *format_1))


#: What jobs.attribute writes (docs/format.md); jobs.report reads the same layout.
MAP_DATASET = _map_dataset()
