"""The run record of a map dataset (``_meta/run.json``): one home for what it holds and when.

A run's record goes through four states, each assembled here and written through the sink
(``storage.maps.sink.MapSink``) by ``jobs.attribute``:

- :func:`carried_forward`: before anything is written, what the output is (binding, config, model)
  from the prior record, the prior run appended to the history;
- :func:`started`: status "running", this run's configuration, source and labels;
- :func:`finished`: "complete" or "incomplete", with counts, examples and map quality;
- :func:`failed`: "failed" or "interrupted", with the reason.

An output is bound to the configuration that made its maps. Committed shards are skipped on a
rerun, so a rerun with another percentile, checkpoint or split would silently mix maps of two
configurations in one output. The first run therefore records a :func:`fingerprint` of everything
that determines the maps, and every later run compares its own (:func:`check`):

- the source and split, and the checkpoint's content (a SHA-256 of the file, not its URL); the
  source's URL without credentials (storage.io.fs.redact_url), since the fingerprint is stored in
  run.json, and old and new fingerprints are compared redacted;
- the model's input: size, channels, normalization and preprocessing policy;
- the reduction and the target mode;
- each method's label, registry name and parameters.

A run whose fingerprint differs is refused with one line saying what differs and the fix. The
exception is a new method label: it adds that method to the output (its maps are computed for
every shard), and the stored fingerprint grows by it.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.runtime.binding import bind, plain
from storage.io.fs import redact_text, redact_url
from storage.maps.manifest import now
from workers.tasks import JobConfig, stored_methods

#: Fields of the fingerprint that are not methods, in the order differences are reported.
FIELDS = ("source", "split", "checkpoint_sha256", "model_input", "reduction", "target", "format_version")


def fingerprint(config: Any, spec: Any, checkpoint_sha256: str, params: Mapping[str, Mapping[str, Any]],
                format_version: int) -> dict[str, Any]:
    """What determines the maps of a run (``config``: a JobConfig, ``spec``: the model's ModelSpec,
    ``params``: each method label's full parameters, as the built method reports them)."""
    model_input = {k: v for k, v in spec.to_dict().items() if k not in ("arch", "arch_kwargs", "class_names")}
    return {
        "source": redact_url(config.source), "split": config.split, "checkpoint_sha256": checkpoint_sha256,
        "model_input": model_input, "reduction": config.reduction, "target": config.target,
        "format_version": format_version,
        "methods": {m.label: {"name": m.name, "params": plain(params[m.label])} for m in config.methods},
    }


def check(stored: Mapping[str, Any] | None, current: Mapping[str, Any], output: str) -> tuple[dict, list[str]]:
    """The fingerprint to keep, and the method labels this run adds; :class:`JobError` when the run
    would mix configurations in ``output`` (jobs.runtime.binding.bind)."""
    # Like with like: a fingerprint stored before b0b7996 (format 2, sources redacted) may hold a credential.
    if stored and "source" in stored:
        stored = {**stored, "source": redact_url(stored.get("source") or "")}
    return bind(stored, current, output, "maps", FIELDS)


#: Fields of a run record that a new run starts from: what the output is, and its example PNG (kept
#: by a run that computes nothing; jobs.mapping.examples.kept_examples) until the run ends and says otherwise.
CARRIED = ("fingerprint", "config", "method_params", "model", "preprocessing", "labels", "source", "format",
           "examples", "examples_methods")
#: Fields of a run record that its history entry keeps.
SUMMARIZED = ("attempt", "started_at", "finished_at", "failed_at", "status", "reason", "maps", "errors", "seconds")
#: Runs kept in a record's history (the oldest are dropped; each entry is a few hundred bytes).
HISTORY = 200


def carried_forward(prior: Mapping[str, Any] | None, started_at: str) -> dict[str, Any]:
    """A new run's record before it writes anything: what the output is (binding, config, model) from
    the prior record, the prior run appended to the history, and this run's start."""
    if not prior:
        return {"status": "running", "started_at": started_at}
    attempt = prior.get("attempt")
    history, later = [], []
    for run in prior.get("history", []):
        (later if attempt and run.get("after") == attempt else history).append(run)
    history.append({k: prior[k] for k in SUMMARIZED if k in prior}
                   | {"methods": [m.label for m in stored_methods(prior.get("config") or {})]})
    # The attempts refused against the prior run say so ("after"), and follow it even within the second
    # its times are given to; a record written before they said so is ordered by its times.
    history.sort(key=lambda run: str(run.get("started_at") or ""))
    history += later
    return {**{k: prior[k] for k in CARRIED if k in prior}, "status": "running", "started_at": started_at,
            "history": history[-HISTORY:]}


def merged_config(prior_config: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """This run's public config, listing every method the output holds: this run's, then earlier
    runs' that this one did not name (readers learn the output's methods from it)."""
    labels = {m.label for m in stored_methods(config)}
    earlier = [m.to_dict() for m in stored_methods(prior_config or {}) if m.label not in labels]
    return {**config, "methods": [*config["methods"], *earlier]}


#: Files under a source that are not samples, listed in run.json (all are counted).
SKIPPED_LISTED = 1000


def started(record: dict[str, Any], *, bound: Mapping[str, Any], config: JobConfig,
            params: Mapping[str, Mapping[str, Any]], spec: Any, labels: Any, source: Any, samples: int,
            warnings: Sequence[str], started_at: str) -> None:
    """The record of a run that starts working (status "running"): this attempt, its binding and
    configuration (every method the output holds), the model and its preprocessing, the label
    matching, the source with its sample count and the files under it that are not samples."""
    from models.preprocess import describe

    skipped = source.skipped()
    record.update({"attempt": uuid.uuid4().hex[:12], "fingerprint": dict(bound),
                   "config": merged_config(record.get("config"), config.public_dict()),
                   "method_params": {**record.get("method_params", {}), **params}, "model": spec.to_dict(),
                   "preprocessing": describe(spec), "labels": labels.to_dict(), "started_at": started_at,
                   "source": {"url": redact_url(source.url), "format": source.kind, "label_kind": source.label_kind,
                              "samples": samples},
                   "skipped_files": {"count": len(skipped),
                                     "files": [{"path": redact_url(f.path), "reason": redact_text(f.reason)}
                                               for f in skipped[:SKIPPED_LISTED]]},
                   "warnings": list(warnings), "status": "running"})


def warn(record: dict[str, Any], warning: str) -> None:
    """Add a warning to the record (it is printed where it arises)."""
    record.setdefault("warnings", []).append(warning)


def finished(record: dict[str, Any], *, methods: Sequence[str], missing: Mapping[str, Sequence[str]], maps: int,
             errors: int, seconds: float, errors_by_kind: Mapping[str, int], examples: Sequence[str],
             quality: Mapping[str, Any]) -> None:
    """The record of a run that ended: "complete" when every planned shard is committed for every
    method, else "incomplete" with the reason; counts, the example PNG and the maps' quality
    (jobs.mapping.map_checks)."""
    complete = not any(missing.values())
    record.update(status="complete" if complete else "incomplete", finished_at=now(), seconds=seconds,
                  maps=maps, errors=errors, errors_by_kind=dict(errors_by_kind), examples=list(examples),
                  examples_methods=list(methods) if examples else [],
                  degenerate_maps=quality.get("degenerate", {}), grad_cam_layers=quality.get("grad_cam", {}))
    record["warnings"] = list(dict.fromkeys([*record.get("warnings", []), *quality.get("warnings", [])]))
    if not complete:
        record["reason"] = f"{sum(map(len, missing.values()))} (method, shard) pairs not committed; rerun to finish"


def failed(record: dict[str, Any], err: BaseException, prior: Mapping[str, Any] | None,
           args: argparse.Namespace | None = None) -> dict[str, Any]:
    """The record of a run that failed (status "failed", or "interrupted" by Ctrl-C or SIGTERM) with
    the reason, never a credential. A run that failed before it wrote its own record (a refused
    configuration, a missing checkpoint) leaves an existing output's record as it was, its attempt
    added to the history, since the output itself is unchanged."""
    from jobs.runtime.cli import redacted
    from jobs.runtime.stopping import as_interrupted, signal_name

    if isinstance(err, KeyboardInterrupt):  # Ctrl-C or SIGTERM: what was committed is kept, a rerun resumes
        stop = as_interrupted(err, getattr(err, "detail", ""))
        reason = f"interrupted by {signal_name(stop.signum)}" + (f": {stop.detail}" if stop.detail else "")
    else:
        reason = " ".join(redacted(str(err), args).split()) or type(err).__name__
    failure = {"status": "interrupted" if isinstance(err, KeyboardInterrupt) else "failed", "reason": reason[:2000],
               "failed_at": now()}
    if "attempt" not in record and prior:
        refused = {"started_at": record.get("started_at"), **failure}
        if prior.get("attempt"):
            refused["after"] = prior["attempt"]  # the run this attempt found: its place in the history
        return {**prior, "history": [*prior.get("history", []), refused]}
    record.update(failure)
    return record
