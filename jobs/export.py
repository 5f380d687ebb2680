"""Export a map dataset for a viewer: ``--to fiftyone DIR`` writes files FiftyOne loads as a dataset.

    python -m jobs.export outputs/maps/fashion-mnist --to fiftyone exports/fm
    python exports/fm/load_fiftyone.py --launch          # in a Python with fiftyone installed

FiftyOne's route for labels stored as files is ``fo.Sample`` + ``fo.Heatmap(map_path=...)`` added
with ``Dataset.add_samples`` (its own exporters write heatmaps the same way). The export writes
only files, so it needs no fiftyone (the ``fiftyone`` extra is for loading):

* ``images/<id>.png``: each image **as the model saw it** (``join_with_source``: channels, resize,
  crop; not normalized), so each heatmap lies exactly over its image;
* ``heatmaps/<method>/<id>.png``: the map as a 16-bit grayscale PNG. A map with negative values is
  spread over ``[lo, hi] = [-max|map|, max|map|]`` (0 lands at mid-grey), a non-negative one over
  ``[0, max]``; value = lo + pixel / 65535 * (hi - lo), within half a step of the stored float16;
* ``samples.json``: per sample its image, per method its heatmap file with ``lo`` / ``hi``, and the
  details as fields: ``label``, ``target``, ``predicted`` and, per method, ``<method>_<detail>``
  (kept_fraction, prediction_kept, logits, ...) and ``<method>_error`` (the error row's kind);
* ``load_fiftyone.py``: ``load(dir)`` builds the dataset with one ``fo.Heatmap`` field per method.
  FiftyOne's ``range`` is the range of the *stored* values, so it is ``[0, 65535]``; the map's own
  ``[lo, hi]`` are the heatmap's ``lo`` and ``hi`` attributes.

A sample with no map in any method (error rows only) is listed under ``skipped`` in samples.json
with its reasons, not dropped silently. Rerunning into the same DIR rewrites the same files; a DIR
holding anything else is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jobs.runtime.cli import JobError, job_parser, positive_int, run_main, storage_flags, storage_options_from

FORMATS = ("fiftyone",)
#: Written first into DIR: a later run recognises its own export (and rewrites it).
MARKER = ".pathway-export"
LOADER = Path(__file__).parent / "reporting" / "fiftyone_loader.py"
#: Columns every maps table has that are not a sample's details.
_NOT_DETAILS = {"sample_id", "shard_id", "method", "params", "map"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.export", __doc__, [storage_flags()])
    p.add_argument("output", help="the map dataset: the --output of jobs.attribute (local path or URL)")
    p.add_argument("--to", nargs=2, metavar=("FORMAT", "DIR"), required=True,
                   help=f"the format ({', '.join(FORMATS)}) and the local folder to write")
    p.add_argument("--methods", default=None, help="method labels to export, space-separated (default: all)")
    p.add_argument("--limit", type=positive_int, default=None, help="export the first N samples only (default: all)")
    p.add_argument("--source", default=None,
                   help="the images' source, where it moved since the run (default: the one run.json names)")
    return p.parse_args(argv)


def encode_map(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A float map -> (uint16 image, lo, hi): signed maps symmetric around 0, others from 0; never an
    empty range, so decoding is always lo + pixel / 65535 * (hi - lo)."""
    m = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(m).max()) if m.size else 0.0
    peak = peak if peak > 0 else 1.0
    lo, hi = (-peak, peak) if m.size and m.min() < 0 else (0.0, peak)
    pixels = np.rint((m - lo) / (hi - lo) * 65535.0).clip(0, 65535).astype(np.uint16)
    return pixels, lo, hi


def decode_map(pixels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The inverse of :func:`encode_map` (float32), within (hi - lo) / 131070 of the original."""
    return (lo + pixels.astype(np.float64) / 65535.0 * (hi - lo)).astype(np.float32)


def file_stem(sample_id: str) -> str:
    """A file name for a sample id (ids may hold "/" or odd characters; the hash keeps them apart)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._")[-80:] or "sample"
    return f"{readable}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def field_name(text: str) -> str:
    """A FiftyOne field name (an identifier, not one of a sample's own fields)."""
    name = re.sub(r"\W+", "_", text).strip("_") or "method"
    name = f"m_{name}" if name[0].isdigit() else name
    return f"{name}_" if name in {"id", "filepath", "tags", "metadata", "media_type", "ground_truth",
                                  "prediction"} else name


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """A table value as JSON (numpy scalars and arrays to Python, NaN to null)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _prepare_dir(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise JobError(f"{directory} exists and is not an export of this tool: pass an empty or new folder")
    for part in ("images", "heatmaps"):  # our own earlier export: its files may name other samples
        shutil.rmtree(directory / part, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("pathway-attribution export: rerunning the export rewrites this folder\n")


def export_fiftyone(url: str, directory: str | Path, options: Mapping[str, Any] | None = None,
                    methods: Sequence[str] | None = None, limit: int | None = None, source: Any = None) -> dict:
    """Write the FiftyOne export of the map dataset at ``url`` into local ``directory``, shard by shard
    (one shard's maps in memory at a time); returns the summary written to samples.json, minus samples."""
    from storage.io.fs import InvalidStorageInput, StorageNotFound, redact_url
    from storage.maps.reader import join_with_source, read_errors, read_maps, read_run, read_shard

    out = Path(directory)
    run = read_run(url, options)
    labels = list(methods) if methods else list(dict.fromkeys(read_maps(url, None, options,
                                                                        columns=["method"])["method"]))
    index = {m: read_maps(url, m, options, columns=["sample_id", "shard_id"]) for m in labels}
    absent = [m for m in labels if index[m].empty]
    if not labels or absent:
        which = f" of {', '.join(absent)}" if absent else ""
        raise InvalidStorageInput(f"{redact_url(url)} has no committed maps{which}: run jobs.attribute first, or "
                                  "name its methods (python -m jobs.inspect shows them)")
    errors = {m: read_errors(url, m, options) for m in labels}
    shards = list(dict.fromkeys(s for m in labels for s in index[m]["shard_id"]))
    _prepare_dir(out)
    samples: list[dict] = []
    wanted = None
    if limit is not None:
        order = list(dict.fromkeys(s for m in labels for s in index[m]["sample_id"]))
        wanted = set(order[:limit])
    for shard in shards:
        frames = {}
        for m in labels:
            try:
                frame = read_shard(url, m, shard, options)
            except StorageNotFound:
                continue
            frames[m] = frame if wanted is None else frame[frame.sample_id.isin(wanted)]
        ids = list(dict.fromkeys(s for f in frames.values() for s in f.sample_id))
        if not ids:
            continue
        import pandas as pd

        images = join_with_source(pd.DataFrame({"sample_id": ids}), source or run["config"]["source"], run,
                                  storage_options=options).set_index("sample_id")["image"]
        rows = {sid: {"sample_id": sid, "filepath": f"images/{file_stem(sid)}.png", "fields": {}, "heatmaps": {}}
                for sid in ids}
        for sid in ids:
            _save_png(out / rows[sid]["filepath"], images[sid])
        for m, frame in frames.items():
            field = field_name(m)
            for record in frame.to_dict("records"):
                row = rows[record["sample_id"]]
                pixels, lo, hi = encode_map(record["map"])
                path = f"heatmaps/{field}/{file_stem(record['sample_id'])}.png"
                _save_png(out / path, pixels)
                row["heatmaps"][field] = {"map_path": path, "lo": lo, "hi": hi, "signed": lo < 0}
                for name, value in record.items():
                    if name in _NOT_DETAILS or value is None:  # None: a column of another method's details
                        continue
                    if name in ("label", "target", "predicted") and name not in row["fields"]:
                        row["fields"][name] = _plain(value)
                    if name != "label":
                        row["fields"][f"{field}_{name}"] = _plain(value)
        samples.extend(rows.values())
    by_sample: dict[str, dict[str, str]] = {}
    for m, table in errors.items():
        for sid, kind, reason in zip(table.sample_id, table.kind, table.reason):
            by_sample.setdefault(sid, {})[m] = kind or reason
    exported = {r["sample_id"] for r in samples}
    for row in samples:
        for m, kind in by_sample.get(row["sample_id"], {}).items():
            row["fields"][f"{field_name(m)}_error"] = kind
    skipped = [{"sample_id": sid, "errors": kinds} for sid, kinds in by_sample.items()
               if sid not in exported and (wanted is None or sid in wanted)]
    summary = {"format": "pathway-attribution fiftyone export", "version": 1, "maps": redact_url(url),
               "name": re.sub(r"[^A-Za-z0-9._-]+", "-", redact_url(url).rstrip("/").rsplit("/", 1)[-1]) or "maps",
               "images": "as the model saw them (join_with_source), not normalized",
               "heatmap_encoding": "16-bit PNG; value = lo + pixel / 65535 * (hi - lo)",
               "methods": {field_name(m): m for m in labels}, "classes": list(run.get("model", {}).get("class_names")
                                                                            or []),
               "count": len(samples), "skipped": skipped}
    tmp = out / "samples.json.tmp"
    tmp.write_text(json.dumps({**summary, "samples": samples}, indent=1))
    os.replace(tmp, out / "samples.json")
    shutil.copyfile(LOADER, out / "load_fiftyone.py")
    return summary


def run(args: argparse.Namespace) -> int:
    fmt, directory = args.to
    if fmt not in FORMATS:
        raise JobError(f"--to {fmt}: unknown format; one of {', '.join(FORMATS)}")
    options = storage_options_from(args.storage_options)
    methods = args.methods.split() if args.methods else None
    summary = export_fiftyone(args.output, directory, options, methods, args.limit, args.source)
    where = Path(directory).resolve()
    print(f"exported {summary['count']} samples, methods {', '.join(summary['methods'].values())}, to {where}"
          + (f"; {len(summary['skipped'])} samples had no map (listed under 'skipped' in samples.json)"
             if summary["skipped"] else ""))
    print(f"open it with: python {where / 'load_fiftyone.py'} --launch   (needs: pip install 'pathway-attribution"
          "[fiftyone]' or pip install fiftyone)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.export", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
