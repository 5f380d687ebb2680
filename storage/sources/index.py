"""A CSV / TSV / JSONL index of images: one row per sample, ``path`` (or ``url``) and ``label``.

The usual layout for ImageNet val and for datasets on object storage::

    path,label                      {"url": "s3://bucket/img/0001.jpg", "label": "tench"}
    val/0001.JPEG,tench             {"url": "s3://bucket/img/0002.jpg", "label": 0}

- The image column is the first of :data:`PATH_COLUMNS` the index has; the label column the first of
  :data:`LABEL_COLUMNS` (optional: without it samples have no label); an ``id`` / ``sample_id`` column
  gives sample ids (default: the path as written).
- Relative paths are resolved against the index file's directory; absolute paths and URLs
  (``s3://...``) are read as they are, with the same storage options.
- Labels are class names or integers (:func:`storage.sources.classes.classes_of`).
- Rows without a path, lines that are not JSON, and repeated sample ids are listed by
  :meth:`IndexSource.skipped` (with the line number); they never stop a job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from storage.fs import StorageError, open_fs, storage_errors
from storage.retry import retrying
from storage.sources.base import SkippedFile
from storage.sources.files import FileListSource

INDEX_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson")
PATH_COLUMNS = ("path", "url", "file_name", "filename", "file", "image", "image_path", "image_url", "img", "location",
                "image_id", "imageid")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "labels", "target")
ID_COLUMNS = ("sample_id", "id")


def read_index(url: str, storage_options: dict | None) -> tuple[list[str], list[tuple[int, dict]], list[SkippedFile]]:
    """``(columns, [(line number, row)], [skipped lines])`` of a CSV / TSV / JSONL file."""
    fs, path = open_fs(url, storage_options)
    with storage_errors(url, "read", storage_options):
        data = retrying(lambda: fs.cat_file(path), f"reading {url}")
    name = url.rsplit("/", 1)[-1]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise StorageError(f"{url} is not UTF-8 text ({err}); save the index as UTF-8") from None
    rows: list[tuple[int, dict]] = []
    skipped: list[SkippedFile] = []
    if name.lower().endswith((".jsonl", ".ndjson")):
        columns: dict[str, None] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                skipped.append(SkippedFile(f"{name}:{number}", f"not a JSON line ({err.msg})"))
                continue
            if not isinstance(row, dict):
                skipped.append(SkippedFile(f"{name}:{number}", f"a JSON {type(row).__name__}, not an object"))
                continue
            columns.update(dict.fromkeys(row))
            rows.append((number, row))
        return list(columns), rows, skipped
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if name.lower().endswith(".tsv") else ",")
    columns_list = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns_list
    for row in reader:
        rows.append((reader.line_num, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()
                                       if k is not None}))
    return columns_list, rows, skipped


def pick(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` among ``columns`` (case-insensitive), as the index spells it."""
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def index_entries(url: str, storage_options: dict | None) -> tuple[list[tuple[str, str, Any]], list[SkippedFile]]:
    """``([(sample_id, path, raw label)], skipped)`` of an index file (see the module docstring)."""
    columns, rows, skipped = read_index(url, storage_options)
    name = url.rsplit("/", 1)[-1]
    path_col = pick(columns, PATH_COLUMNS)
    if path_col is None:
        raise StorageError(f"{url} has no image column: expected one of {', '.join(PATH_COLUMNS)}; "
                           f"it has {columns[:10]}")
    label_col, id_col = pick(columns, LABEL_COLUMNS), pick(columns, ID_COLUMNS)
    entries, seen = [], {}
    for number, row in rows:
        path = row.get(path_col)
        if not isinstance(path, str) or not path.strip():
            skipped.append(SkippedFile(f"{name}:{number}", f"no {path_col!r}"))
            continue
        sample_id = str(row.get(id_col) or path) if id_col else path.strip()
        if sample_id in seen:
            skipped.append(SkippedFile(f"{name}:{number}", f"repeats sample {sample_id!r} of line {seen[sample_id]}"))
            continue
        seen[sample_id] = number
        entries.append((sample_id, path.strip(), row.get(label_col) if label_col else None))
    return entries, skipped


class IndexSource(FileListSource):
    """The samples an index file lists (see the module docstring)."""

    kind = "index"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        url = str(url).rstrip("/")
        super().__init__(url, storage_options, classes, base_url=url.rsplit("/", 1)[0] if "/" in url else ".")

    def _entries(self) -> tuple[list[tuple[str, str, Any]], list[SkippedFile]]:
        return index_entries(self.url, self.storage_options)
