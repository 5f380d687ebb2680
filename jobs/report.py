"""One HTML and one Markdown report gathering the evaluation outputs that already exist.

    python -m jobs.report                                             # defaults below
    python -m jobs.report --maps s3://bucket/maps/fm-test --output s3://bucket/report

Reads, never computes: the map dataset's ``run.json`` (run configuration) and ``examples.png``
(jobs.attribute), pixel perturbation (``auc.csv``, ``perturbation.png``; default
``<maps>/_eval/perturbation``, else ``outputs/eval/perturbation``), sanity checks
(``sanity.csv``, ``sanity.png``; default ``outputs/eval/sanity``) and ROAR (``results.csv``,
``roar.png``; default ``<maps>/_eval/roar``, where jobs.roar writes by default). A section whose outputs are missing says "not run
yet" with the command that produces it, so the report can be built at any point of a study.

Outputs under ``--output`` (default ``outputs/report``): ``report.html`` (self-contained: PNGs as
base64 data URIs) and ``report.md`` (PNGs copied next to it and linked). Exit 1 with one line
when the map dataset cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.runtime.cli import JobError, job_parser, run_main, storage_flags, storage_options_from

DEFAULT_MAPS = "outputs/maps/fashion-mnist"
DEFAULT_OUTPUT = "outputs/report"
#: What this job writes under --output: the reports and their figures (storage.io.outputs.check_output).
OUTPUT_NAMES = ("report.html", "report.md", "*.png")
PERTURBATION_FALLBACK = "outputs/eval/perturbation"
SANITY_DEFAULT = "outputs/eval/sanity"


@dataclass
class Section:
    """One report section: a title, the folder it came from, tables, figures, or why it is absent."""

    title: str
    source: str
    tables: list[tuple[str, Any]] = field(default_factory=list)   # (caption, DataFrame)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)
    missing: str | None = None  # command that produces this section, when nothing was found
    notes: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.report", __doc__, [storage_flags()])
    p.add_argument("--maps", default=DEFAULT_MAPS, help="map dataset URL (run.json, examples.png)")
    p.add_argument("--perturbation", default=None,
                   help=f"jobs.perturb output (default: <maps>/_eval/perturbation, else {PERTURBATION_FALLBACK})")
    p.add_argument("--sanity", default=SANITY_DEFAULT, help="jobs.sanity output")
    p.add_argument("--roar", default=None,
                   help="jobs.roar output (default: <maps>/_eval/roar, where jobs.roar --test-maps <maps> writes)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="folder URL for report.html and report.md")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- reading


def read_optional(url: str, name: str, options: dict[str, Any]) -> bytes | None:
    """``<url>/<name>``, or None where it does not exist (a section not run yet is not an error)."""
    from storage.io.location import Location

    return Location(url, options).get_optional(name)


def _csv(data: bytes) -> Any:
    import pandas as pd

    return pd.read_csv(io.BytesIO(data))


def _ordered_pivot(frame: Any, index: list[str], columns: str, values: str) -> Any:
    """Wide table keeping the order of first appearance (pandas' pivot sorts rows and columns)."""
    wide = frame.pivot_table(index=index, columns=columns, values=values, aggfunc="first", sort=False)
    wide.columns.name = None
    return wide.reset_index()


def _result_section(title: str, url: str, options: dict[str, Any], csv_name: str, caption: str,
                    shape: Callable[[Any], Any], png_name: str, command: str) -> Section:
    """A section from one job's output folder: its CSV summarised by ``shape``, its PNG, or the
    command that produces them when neither exists."""
    section = Section(title, url)
    data = read_optional(url, csv_name, options)
    if data is not None:
        section.tables.append((caption, shape(_csv(data))))
    figure = read_optional(url, png_name, options)
    if figure is not None:
        section.figures.append((png_name, figure))
    if data is None and figure is None:
        section.missing = command
    return section


def _if_columns(columns: set[str], reshape: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Reshape a table that has the expected columns; show any other table as it is."""
    return lambda table: reshape(table) if columns <= set(table.columns) else table


def _plus_minus(mean: Any, sd: Any, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± sd`` as text ("" for a missing mean; no ± without an sd)."""
    if mean != mean:
        return ""
    text = f"{scale * mean:.{digits}f}"
    return text if sd != sd else f"{text} ± {scale * sd:.{digits}f}"


def perturbation_tables(table: Any) -> Any:
    """Areas per method, one column per (fill, ranking, order): the drop's area and ROAD's accuracy area."""
    if "fill" not in table.columns:  # a table from before fills and rankings
        return _ordered_pivot(table, ["method"], "order", "auc")
    table = table.assign(curve=table["fill"] + " " + table["rank"].replace("-", "") + " " + table["order"])
    drops = _ordered_pivot(table, ["method"], "curve", "auc")
    road = _ordered_pivot(table, ["method"], "curve", "accuracy_auc")
    road.columns = ["method", *[f"ROAD acc. {c}" for c in road.columns[1:]]]
    return drops.merge(road, on="method", sort=False)


def perturbation_section(url: str, options: dict[str, Any], maps: str) -> Section:
    section = _result_section(
        "Pixel perturbation (MoRF / LeRF) and ROAD", url, options, "auc.csv",
        "Area under the mean relative-drop curve (MoRF: higher is better; LeRF: lower is better) and under ROAD's "
        "accuracy curve (MoRF: lower is better; LeRF: higher is better), per fill (mean / nli) and ranking "
        "(|map| / signed)",
        _if_columns({"method", "order", "auc"}, perturbation_tables),
        "perturbation.png", f"python -m jobs.perturb --maps {maps}")
    summary = read_optional(url, "auc.json", options)
    if summary is not None:  # what is degenerate about the curves (flat panels must say so)
        section.notes += [f"Note: {n}" for n in json.loads(summary).get("notes") or []]
    return section


def sanity_table(table: Any) -> Any:
    """Mean ± sd over randomization draws (or ± std over samples for a table without draws) per step."""
    spread = "sd_draws" if "sd_draws" in table.columns else "std"
    cells = table.assign(value=[_plus_minus(m, s) for m, s in zip(table["mean"], table[spread])])
    return _ordered_pivot(cells, ["metric", "method"], "step_name", "value")


def sanity_section(url: str, options: dict[str, Any]) -> Section:
    section = _result_section(
        "Sanity checks (cascading parameter randomization)", url, options, "sanity.csv",
        "Similarity to the original maps after each randomization step, mean ± sd over independent draws of the "
        "random weights, for all four metrics (lower once randomized = the method depends on the weights)",
        _if_columns({"method", "metric", "step_name", "mean"}, sanity_table),
        "sanity.png", "python -m jobs.sanity")
    config = read_optional(url, "sanity.json", options)
    if config is not None:
        info = json.loads(config)
        how = ("weights re-drawn from N(0, {std})" if info.get("randomize", "normal") == "normal"
               else "modules reset with reset_parameters()").format(std=info.get("std"))
        section.notes.append(f"{info.get('samples')} samples, {info.get('draws', 1)} draws, {how}, "
                             f"one step per {info.get('group', 'block')}.")
    return section


def roar_table(table: Any) -> Any:
    """The verdict table: ROAR and mask-only accuracy (%) per method x t x fill, the p-value, the verdict."""
    return table.assign(
        roar=[_plus_minus(m, s, 100, 1) for m, s in zip(table["accuracy"], table["std"])],
        mask_only=[_plus_minus(m, s, 100, 1) for m, s in zip(table["mask_accuracy"], table["mask_std"])],
    )[["method", "t", "fill", "roar", "mask_only", "p_value", "verdict"]]


def roar_section(url: str, options: dict[str, Any], maps: str) -> Section:
    command = f"python -m jobs.roar --train-maps <train-split maps> --test-maps {maps}"
    if read_optional(url, "summary.csv", options) is None:  # a grid from before the leakage control
        return _result_section(
            "ROAR (remove and retrain)", url, options, "results.csv",
            "Test accuracy after retraining without the top t % pixels, over seeds (lower = the removed pixels mattered)",
            _if_columns({"method", "t", "accuracy"}, lambda t: t.groupby(["method", "t"], sort=True)["accuracy"]
                        .agg(mean="mean", std="std", seeds="count").reset_index()), "roar.png", command)
    section = _result_section(
        "ROAR (remove and retrain) with the mask-leakage control", url, options, "summary.csv",
        "Test accuracy (%) after retraining without the top t % pixels (lower = the removed pixels mattered), and "
        "after training on the removal mask alone; a cell is valid only where the mask alone is at chance or "
        "ROAR's accuracy is above it (one-sided Welch t-test over seeds, alpha 0.05)",
        _if_columns({"method", "t", "accuracy", "mask_accuracy", "verdict"}, roar_table), "roar.png", command)
    run = read_optional(url, "run.json", options)
    check = json.loads(run).get("budget") if run is not None else None
    if check:
        from jobs.evaluation.roar_summary import budget_line, chance_line

        section.notes += [line for line in (chance_line(check), budget_line(check)) if line]
    if run is not None:
        section.notes += [f"Note: {n}" for n in json.loads(run).get("notes") or []]
    return section


def examples_section(maps: str, options: dict[str, Any]) -> Section:
    from storage.maps.tables import EXAMPLES_PATH

    section = Section("Example maps", maps)
    figure = read_optional(maps, EXAMPLES_PATH, options)
    if figure is None:
        section.missing = f"python -m jobs.attribute --output {maps}"
    else:
        section.figures.append(("examples.png", figure))
    return section


def _has_outputs(url: str, names: Sequence[str], options: dict[str, Any]) -> bool:
    from storage.io.location import Location

    where = Location(url, options)
    return any(where.exists(n) for n in names)


# --------------------------------------------------------------------------- rendering


def markdown_table(frame: Any) -> str:
    """Pipe table; pandas.to_markdown needs the optional ``tabulate`` package."""
    try:
        return frame.to_markdown(index=False, floatfmt=".4f")
    except ImportError:
        pass

    def cell(value: Any) -> str:
        if isinstance(value, float):
            text = "" if value != value else f"{value:.4f}"
        else:
            text = str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = [cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_html(run: dict, maps: str, sections: list[Section]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>Attribution report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
             "pre{background:#f5f5f5;padding:1em;overflow:auto}.missing{color:#a40}</style></head><body>",
             "<h1>Attribution report</h1>", f"<p>Map dataset: <code>{esc(maps)}</code></p>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2><p>Source: <code>{esc(section.source)}</code></p>")
        if section.missing:
            parts.append(f"<p class=\"missing\">Not run yet. Produce it with: <code>{esc(section.missing)}</code></p>")
            continue
        for note in section.notes:
            parts.append(f"<p><b>{esc(note)}</b></p>")
        for caption, table in section.tables:
            parts.append(f"<p>{esc(caption)}</p>")
            parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""))
        for name, png in section.figures:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<p><img alt=\"{esc(name)}\" src=\"data:image/png;base64,{data}\"></p>")
    parts.append("<h2>Run configuration</h2>")
    config = json.dumps(run, indent=2, sort_keys=True, default=str)
    parts.append(f"<pre>{html.escape(config, quote=False)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(run: dict, maps: str, sections: list[Section]) -> str:
    lines = ["# Attribution report", "", f"Map dataset: `{maps}`", ""]
    for section in sections:
        lines += [f"## {section.title}", "", f"Source: `{section.source}`", ""]
        if section.missing:
            lines += [f"**Not run yet.** Produce it with: `{section.missing}`", ""]
            continue
        lines += [f"**{note}**\n" for note in section.notes]
        for caption, table in section.tables:
            lines += [caption, "", markdown_table(table), ""]
        for name, _ in section.figures:
            lines += [f"![{name}]({name})", ""]
    lines += ["## Run configuration", "", "```json", json.dumps(run, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- job


def run(args: argparse.Namespace) -> int:
    from storage.io.fs import StorageError, join, redact_url
    from storage.io.location import Location
    from storage.io.outputs import OutputKind, check_output
    from storage.maps.reader import read_run
    from storage.maps.tables import EVAL_DIR

    options = storage_options_from(args.storage_options)
    maps = args.maps.rstrip("/")
    try:
        run_config = read_run(maps, options)
    except StorageError as err:
        raise JobError(f"--maps: cannot read the map dataset's run.json ({err}); pass the --output of "
                       f"jobs.attribute as --maps, or run python -m jobs.attribute --output {redact_url(maps)}") from None

    perturbation = args.perturbation
    if perturbation is None:
        own = join(maps, EVAL_DIR, "perturbation")
        perturbation = own if _has_outputs(own, ("auc.csv", "perturbation.png"), options) else PERTURBATION_FALLBACK
    shown = redact_url(maps)
    sections = [examples_section(maps, options),
                perturbation_section(perturbation, options, shown),
                sanity_section(args.sanity, options),
                roar_section(args.roar or join(maps, EVAL_DIR, "roar"), options, shown)]
    for section in sections:
        section.source = redact_url(section.source)

    check_output(args.output, OutputKind("jobs.report", OUTPUT_NAMES), options)  # before anything is written
    where = Location(args.output, options)
    for section in sections:
        for name, png in section.figures:
            where.put(name, png)
    where.put("report.html", render_html(run_config, shown, sections).encode())
    where.put("report.md", render_markdown(run_config, shown, sections).encode())

    for section in sections:
        state = f"not run yet: {section.missing}" if section.missing else "included"
        print(f"  {section.title:52s} {state}")
    html_url = join(args.output, "report.html")
    print(f"report: {redact_url(html_url)} and {redact_url(join(args.output, 'report.md'))}")
    if "://" not in args.output or args.output.startswith("file://"):
        path = os.path.abspath(args.output.removeprefix("file://"))
        print(f"open it: xdg-open {os.path.join(path, 'report.html')}  (or open that file in a browser)")
    else:
        print(f"open it: download report.html (self-contained) from {redact_url(args.output)} and open it in a browser")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.report", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
