"""Show what a map dataset holds: its runs, its maps and error rows per method, what is left to do.

    python -m jobs.inspect                                  # outputs/maps/fashion-mnist
    python -m jobs.inspect s3://bucket/maps/r50 --json      # the same, as JSON for scripts

Prints the run history and status (``_meta/run.json``), per method the committed shards, maps and
error rows, the error rows by kind, the shards planned but not committed yet, the configuration
(public: no storage options, URLs redacted) and the format version. It reads only small things:
run.json, the commit records (``_manifest/``, through their index), the plan's id columns
(``_plan/``), and the ``kind`` column of the errors tables of shards that have error rows; never a
map. Local paths and every fsspec URL (``--storage-options`` or ``$STORAGE_OPTIONS``, like every job).
An output that is not a map dataset is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.runtime.cli import JobError, job_parser, run_main, storage_flags, storage_options_from

DEFAULT_OUTPUT = "outputs/maps/fashion-mnist"  # jobs.attribute's
#: Runs of the history printed as text (--json has all of them).
SHOWN_RUNS = 10
#: Pending shard ids named per method.
SHOWN_SHARDS = 5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.inspect", __doc__, [storage_flags()])
    p.add_argument("output", nargs="?", default=DEFAULT_OUTPUT,
                   help="the map dataset: the --output of jobs.attribute (local path or URL)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (for scripts)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- reading


def _public(value: Any) -> Any:
    """``value`` with every string redacted (storage.io.fs.redact_text) and no storage options: a run
    record written by another version, or by hand, may hold either."""
    from storage.io.fs import redact_text

    if isinstance(value, Mapping):
        return {k: _public(v) for k, v in value.items() if k != "storage_options"}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def method_labels(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{label: {"name", "params"}} of a run record's config (its list of method specs), without importing
    the methods (torch). Format 2 stores methods as specs (6932db5, before its layout: the older
    {label: params} form is in no output this code reads; storage.maps.versions)."""
    methods = config.get("methods") or []
    return {m.get("label") or m["name"]: {"name": m["name"], "params": m.get("params") or {}}
            for m in methods if isinstance(m, Mapping) and m.get("name")}


def planned_shards(where: Any) -> dict[str, Any]:
    """The plan's shards and samples from its segments' id and range columns (not its locators)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.maps.tables import PLAN_DIR

    segments = [rel for rel in where.find(PLAN_DIR, ".parquet")
                if rel.rsplit("/", 1)[-1].startswith(("shards", "ranges"))]
    ids: set[str] = set()
    samples, sizes, forms = 0, set(), set()
    for rel, data in where.get_many(segments).items():
        if data is None:
            continue
        schema = pq.read_schema(pa.BufferReader(data))
        ranges = "file" in schema.names
        forms.add("ranges" if ranges else "samples")
        sizes.add(int((schema.metadata or {}).get(b"shard_size", b"0")))
        table = pq.read_table(pa.BufferReader(data), columns=["shard_id", *(("start", "stop") if ranges else ())])
        ids.update(table.column("shard_id").to_pylist())
        if ranges:
            samples += sum(b - a for a, b in zip(table.column("start").to_pylist(), table.column("stop").to_pylist()))
        else:
            samples += table.num_rows
    return {"shards": len(ids), "samples": samples, "shard_size": max(sizes - {0}, default=None),
            "form": next(iter(forms)) if len(forms) == 1 else None, "shard_ids": sorted(ids)}


def errors_by_kind(where: Any, records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Error rows by kind, from the ``kind`` column of the errors tables of ``records`` that have
    error rows. Every format-2 errors table has it (5dadd27, before format 2's layout); a table
    without it, or a row with none (edited by hand), counts as "unknown"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [f["path"] for rec in records if rec.get("n_errors") for f in rec.get("files", ())
             if f["path"].startswith("errors/") and f["path"].endswith(".parquet")]
    counts: Counter[str] = Counter()
    for rel, data in where.get_many(paths).items():
        data = data if data is not None else where.get_optional(f"_pending/{rel}")  # committed, not yet published
        if data is None:
            counts["missing table"] += 1
            continue
        if "kind" not in pq.read_schema(pa.BufferReader(data)).names:
            counts["unknown"] += pq.read_metadata(pa.BufferReader(data)).num_rows
            continue
        kinds = pq.read_table(pa.BufferReader(data), columns=["kind"]).column("kind").to_pylist()
        counts.update(k or "unknown" for k in kinds)
    return dict(sorted(counts.items()))


def not_a_map_dataset(url: str) -> JobError:
    return JobError(f"{url} is not a map dataset (no _meta/run.json, _manifest/ or _plan/ there): give the --output "
                    "of jobs.attribute")


def inspect_output(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary of the map dataset at ``url`` (what :func:`render` prints and ``--json`` gives)."""
    from storage.io.fs import StorageNotFound, redact_url, storage_errors
    from storage.io.lease import LEASE
    from storage.io.location import Location
    from storage.maps.manifest import read_commits
    from storage.maps.reader import read_run
    from storage.maps.tables import MANIFEST_DIR

    where = Location(url, storage_options)
    shown = redact_url(url)
    with storage_errors(url, "check", storage_options):
        a_file = where.fs.isfile(where.root)
    if a_file:  # a file has no run record under it: say what it is not
        raise not_a_map_dataset(shown)
    try:
        run = read_run(url, storage_options)  # refuses another format, or a record of another shape
    except StorageNotFound:
        run = None
    commits = read_commits(where) if run is not None or where.find(MANIFEST_DIR) else {}
    plan = planned_shards(where)
    if run is None and not commits and not plan["shards"]:
        raise not_a_map_dataset(shown)
    run = run or {}
    config = run.get("config") or {}
    declared = method_labels(config)
    by_method: dict[str, list[dict]] = {label: [] for label in declared}
    for (method, _), record in commits.items():
        by_method.setdefault(method, []).append(record)
    methods = {}
    for label, records in by_method.items():
        done = {r["shard_id"] for r in records}
        pending = [s for s in plan["shard_ids"] if s not in done]
        methods[label] = {**declared.get(label, {"name": None, "params": {}}),
                          "shards_committed": len(records), "shards_pending": len(pending),
                          "pending_shards": pending[:SHOWN_SHARDS],
                          "maps": sum(int(r.get("n_samples") or 0) for r in records),
                          "error_rows": sum(int(r.get("n_errors") or 0) for r in records),
                          "errors_by_kind": errors_by_kind(where, records)}
    current = {k: run[k] for k in ("attempt", "started_at", "finished_at", "failed_at", "status", "reason", "maps",
                                   "errors", "seconds") if k in run}
    lease = where.get_optional(LEASE)
    return _public({
        "output": shown, "format": run.get("format"), "status": run.get("status"), "reason": run.get("reason"),
        "history": [*run.get("history", []), *([current] if current else [])],
        "plan": {k: v for k, v in plan.items() if k != "shard_ids"}, "methods": methods,
        "unpublished_tables": len(where.find("_pending", ".parquet")),
        "lease": json.loads(lease) if lease else None,
        "source": run.get("source"), "config": config, "warnings": run.get("warnings") or [],
    })


# --------------------------------------------------------------------------- printing


def render(summary: Mapping[str, Any]) -> str:
    """The summary as text, one fact per line."""
    about = summary.get("format") or {}
    lines = [f"map dataset {summary['output']} (format {about.get('name', '?')} version {about.get('version', '?')})"]
    last = (summary["history"] or [{}])[-1]
    status = summary.get("status") or "not recorded"
    when = ", ".join(f"{k.removesuffix('_at')} {last[k]}" for k in ("started_at", "finished_at", "failed_at")
                     if last.get(k))
    lines.append(f"status: {status}" + (f" ({when})" if when else "") +
                 (f": {summary['reason']}" if summary.get("reason") else ""))
    if summary.get("lease"):
        lease = summary["lease"]
        lines.append(f"lease: held by {lease.get('purpose')} on {lease.get('host')} (pid {lease.get('pid')}) "
                     f"until {lease.get('expires_at')}")
    source, config, plan = summary.get("source") or {}, summary.get("config") or {}, summary["plan"]
    if source or config:
        lines.append(f"source: {source.get('format') or config.get('source_format') or '?'} "
                     f"{source.get('url') or config.get('source')}, split {config.get('split', '?')}, "
                     f"{source.get('samples', '?')} samples listed")
    lines.append(f"plan: {plan['samples']} samples in {plan['shards']} shards of {plan['shard_size'] or '-'}")
    lines.append("methods:")
    for label, m in summary["methods"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in m["errors_by_kind"].items()) or "-"
        pending = f", {m['shards_pending']} pending" + (f" (e.g. {', '.join(m['pending_shards'])})"
                                                          if m["pending_shards"] else "")
        lines.append(f"  {label} ({m['name'] or '?'}): {m['shards_committed']} shards committed{pending}; "
                     f"{m['maps']} maps, {m['error_rows']} error rows; errors by kind: {kinds}")
    if summary["unpublished_tables"]:
        lines.append(f"{summary['unpublished_tables']} committed-or-abandoned tables in _pending/ (the next "
                     "jobs.attribute run publishes or drops them)")
    runs = summary["history"]
    lines.append(f"runs ({len(runs)}, oldest first{f'; the last {SHOWN_RUNS}' if len(runs) > SHOWN_RUNS else ''}):")
    for r in runs[-SHOWN_RUNS:]:
        detail = f"{r.get('maps', '-')} maps, {r.get('errors', '-')} error rows" if "maps" in r else ""
        took = f", {float(r['seconds']):.1f} s" if r.get("seconds") is not None else ""
        reason = f": {r['reason']}" if r.get("reason") else ""
        lines.append(f"  {r.get('started_at', '?')} {r.get('status', '?')} {detail}{took}{reason}".rstrip())
    for warning in summary.get("warnings") or []:
        lines.append(f"warning: {warning}")
    lines.append("config:")
    lines += [f"  {k}: {json.dumps(v, sort_keys=True, default=str)}" for k, v in sorted(config.items())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = inspect_output(args.output, storage_options_from(args.storage_options) or None)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str) if args.json else render(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.inspect", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
