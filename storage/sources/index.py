"""A CSV / TSV / JSONL index of images: one row per sample, ``path`` (or ``url``) and ``label``.

The usual layout for ImageNet val and for datasets on object storage::

    path,label                      {"url": "s3://bucket/img/0001.jpg", "label": "tench"}
    val/0001.JPEG,tench             {"url": "s3://bucket/img/0002.jpg", "label": 0}

- A row's image column is the first of :data:`PATH_COLUMNS` it has; its label column the first of
  :data:`LABEL_COLUMNS` (optional: without it the sample has no label); an ``id`` / ``sample_id`` column
  gives sample ids (default: the path as written). Each row is read on its own (JSONL rows may differ),
  so that a worker can read a shard's lines alone.
- Relative paths are resolved against the index file's directory; absolute paths and URLs
  (``s3://...``) are read as they are, with the same storage options, where they lie inside that
  directory or under an ``--allow-paths`` prefix. A row that leads anywhere else (``/etc/passwd``,
  ``../..``, another bucket, an ``http://`` address) is not read: its sample is an error row of kind
  ``outside-source`` (:mod:`storage.sources.inside`).
- Labels are class names or integers (:func:`storage.sources.classes.classes_of`).
- Rows without a path, lines that are not JSON, and repeated sample ids are listed by
  :meth:`IndexSource.skipped` (with the line number); they never stop a job.
- An index is row-addressable: a plan holds a shard as a range of its sample rows with their byte
  span, stamped by a CRC of those bytes (:meth:`IndexSource.row_files`); a worker reads that span
  (and a CSV's header) and nothing else. Appending rows keeps every planned span as it was.

Tested by tests/storage/test_source_kinds.py and tests/storage/test_source_policy.py.
"""

from __future__ import annotations

import codecs
import csv
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from storage.io.fs import StorageError, open_fs, storage_errors
from storage.io.retry import retrying
from storage.sources.base import IDS_IN_ROWS, RowFile, RowRange, SampleRef, SkippedFile
from storage.sources.files import FileListSource, read_bytes, read_span, span_changed

INDEX_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson")
PATH_COLUMNS = ("path", "url", "file_name", "filename", "file", "image", "image_path", "image_url", "img", "location",
                "image_id", "imageid")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "labels", "target")
ID_COLUMNS = ("sample_id", "id")

Entry = tuple[str, str, Any]  # (sample_id, path, raw label)


@dataclass
class IndexRows:
    """An index's rows as parsed: each with its line number and byte span in the file."""

    columns: list[str]
    rows: list[tuple[int, dict]] = field(default_factory=list)      # (line number, row)
    spans: list[tuple[int, int]] = field(default_factory=list)      # (first byte, byte after it), per row
    skipped: list[SkippedFile] = field(default_factory=list)


def is_jsonl(name: str) -> bool:
    return name.lower().endswith((".jsonl", ".ndjson"))


def _lines(data: bytes, pos: int, name: str) -> Iterator[tuple[str, int]]:
    """Each line of ``data`` from byte ``pos`` on, with its newline, and the byte after it."""
    while pos < len(data):
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline + 1
        try:
            yield data[pos:end].decode("utf-8"), end
        except UnicodeDecodeError as err:
            raise StorageError(f"{name} is not UTF-8 text at byte {pos + err.start} ({err.reason}); save the index "
                               "as UTF-8") from None
        pos = end


def parse_index(data: bytes, name: str, columns: Sequence[str] | None = None, base: int = 0) -> IndexRows:
    """The rows of a CSV / TSV / JSONL file's bytes, or of a span of them that starts at a row (``columns``
    then gives a CSV's header, and ``base`` the span's first byte in the file). A row's span runs from
    the end of the row before it (blank lines belong to the next row) to its newline; a skipped line
    leaves a gap."""
    pos = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if is_jsonl(name):
        return _parse_jsonl(data, pos, name, base)
    ends: list[int] = []

    def lines() -> Iterator[str]:
        for text, end in _lines(data, pos, name):
            ends.append(end)
            yield text

    reader = csv.reader(lines(), delimiter="\t" if name.lower().endswith(".tsv") else ",")
    if columns is None:
        columns = [c.strip() for c in next(reader, [])]
    parsed = IndexRows(list(columns))
    start = ends[-1] if ends else pos
    for record in reader:
        if not record:  # a blank line
            continue
        row = {k: v.strip() for k, v in zip(columns, record)}
        row.update(dict.fromkeys(columns[len(record):]))
        parsed.rows.append((reader.line_num, row))
        parsed.spans.append((base + start, base + ends[-1]))
        start = ends[-1]
    return parsed


def _parse_jsonl(data: bytes, pos: int, name: str, base: int) -> IndexRows:
    columns: dict[str, None] = {}
    parsed = IndexRows([])
    start = pos
    for number, (line, end) in enumerate(_lines(data, pos, name), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            parsed.skipped.append(SkippedFile(f"{name}:{number}", f"not a JSON line ({err.msg})"))
            start = end
            continue
        if not isinstance(row, dict):
            parsed.skipped.append(SkippedFile(f"{name}:{number}", f"a JSON {type(row).__name__}, not an object"))
            start = end
            continue
        columns.update(dict.fromkeys(row))
        parsed.rows.append((number, row))
        parsed.spans.append((base + start, base + end))
        start = end
    parsed.columns = list(columns)
    return parsed


def read_index(url: str, storage_options: dict | None) -> IndexRows:
    """The rows of a CSV / TSV / JSONL file."""
    return parse_index(read_bytes(url, storage_options), url.rsplit("/", 1)[-1])


def pick(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` among ``columns`` (case-insensitive), as the index spells it."""
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def entries_of(parsed: IndexRows, url: str) -> tuple[list[Entry], list[tuple[int, int]], list[SkippedFile]]:
    """``([(sample_id, path, raw label)], [their byte spans], skipped)`` of parsed rows (see the module
    docstring). A row without a path, or repeating an id, is skipped."""
    name = url.rsplit("/", 1)[-1]
    if pick(parsed.columns, PATH_COLUMNS) is None:
        raise StorageError(f"{url} has no image column: expected one of {', '.join(PATH_COLUMNS)}; "
                           f"it has {parsed.columns[:10]}")
    chosen: dict[tuple[str, ...], tuple[str | None, ...]] = {}
    entries, spans, skipped, seen = [], [], list(parsed.skipped), {}
    for (number, row), span in zip(parsed.rows, parsed.spans):
        keys = tuple(row)
        if keys not in chosen:
            chosen[keys] = tuple(pick(keys, c) for c in (PATH_COLUMNS, LABEL_COLUMNS, ID_COLUMNS))
        path_col, label_col, id_col = chosen[keys]
        path = row.get(path_col) if path_col else None
        if not isinstance(path, str) or not path.strip():
            skipped.append(SkippedFile(f"{name}:{number}", f"no {path_col or PATH_COLUMNS[0]!r}"))
            continue
        sample_id = str(row.get(id_col) or path) if id_col else path.strip()
        if sample_id in seen:
            skipped.append(SkippedFile(f"{name}:{number}", f"repeats sample {sample_id!r} of line {seen[sample_id]}"))
            continue
        seen[sample_id] = number
        entries.append((sample_id, path.strip(), row.get(label_col) if label_col else None))
        spans.append(span)
    return entries, spans, skipped


def index_entries(url: str, storage_options: dict | None) -> tuple[list[Entry], list[SkippedFile]]:
    """``([(sample_id, path, raw label)], skipped)`` of an index file (see the module docstring)."""
    entries, _, skipped = entries_of(read_index(url, storage_options), url)
    return entries, skipped


def span_stamp(data: bytes) -> str:
    """The stamp of a span of an index: the CRC-32 of its bytes."""
    return f"crc32:{zlib.crc32(data):08x}"


@dataclass
class IndexSamples:
    """An index's samples as columns (lists, or Arrow arrays where parsed in C++), in order, with the
    byte span of each, and the lines skipped."""

    ids: Sequence[Any]
    paths: Sequence[Any]
    labels: Sequence[Any] | None   # raw labels; None where the index has no label column
    starts: np.ndarray
    ends: np.ndarray
    skipped: list[SkippedFile]

    def entries(self) -> list[Entry]:
        ids, paths = _pylist(self.ids), _pylist(self.paths)
        labels = _pylist(self.labels) if self.labels is not None else [None] * len(ids)
        return list(zip(ids, paths, labels))

    def distinct_labels(self) -> list[Any]:
        if self.labels is None:
            return []
        return pc.unique(self.labels).to_pylist() if isinstance(self.labels, pa.Array) else list(self.labels)


def _pylist(values: Sequence[Any]) -> list[Any]:
    return values.to_pylist() if isinstance(values, pa.Array) else list(values)


def index_samples(data: bytes, url: str) -> IndexSamples:
    """The samples of an index file's bytes: parsed in C++ where every line of a CSV / TSV is one row
    (no quotes, no blank lines: the common case), else row by row (same result, slower)."""
    fast = _csv_samples(data, url)
    if fast is not None:
        return fast
    entries, spans, skipped = entries_of(parse_index(data, url.rsplit("/", 1)[-1]), url)
    span = np.array(spans, np.int64).reshape(len(spans), 2)
    has_labels = any(raw is not None for _, _, raw in entries)
    return IndexSamples([e[0] for e in entries], [e[1] for e in entries],
                        [e[2] for e in entries] if has_labels else None, span[:, 0], span[:, 1], skipped)


def _csv_samples(data: bytes, url: str) -> IndexSamples | None:
    """:func:`index_samples` by pyarrow's CSV reader, or None where a line may not be one row."""
    name = url.rsplit("/", 1)[-1]
    if is_jsonl(name) or b'"' in data or data.count(b"\r") != data.count(b"\r\n"):
        return None
    pos = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    raw = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(raw == 10)
    ends = newlines + 1 if data.endswith(b"\n") else np.append(newlines + 1, len(data))
    starts = np.concatenate([[pos], ends[:-1]]).astype(np.int64)
    lengths = ends - starts
    if not len(ends) or (lengths <= 1).any() or ((lengths == 2) & (raw[starts] == 13)).any():
        return None  # an empty file, or a blank line (not a row)
    delimiter = "\t" if name.lower().endswith(".tsv") else ","
    try:
        columns = [c.strip() for c in next(csv.reader([data[pos:ends[0]].decode("utf-8")], delimiter=delimiter))]
        if len(set(columns)) != len(columns) or pick(columns, PATH_COLUMNS) is None:
            return None
        table = pa_csv.read_csv(
            pa.py_buffer(memoryview(data)[ends[0]:]),
            read_options=pa_csv.ReadOptions(column_names=columns),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                  strings_can_be_null=False))
    except (pa.ArrowInvalid, UnicodeDecodeError, StopIteration):
        return None
    if table.num_rows != len(ends) - 1:
        return None
    path_col, label_col, id_col = (pick(columns, c) for c in (PATH_COLUMNS, LABEL_COLUMNS, ID_COLUMNS))
    column = {c: pc.utf8_trim_whitespace(table.column(c).combine_chunks()) for c in {path_col, label_col, id_col} - {None}}
    paths = column[path_col]
    ids = paths if id_col is None else pc.if_else(pc.equal(column[id_col], ""), paths, column[id_col])
    has_path = pc.not_equal(paths, "")
    path_given = has_path.to_numpy(zero_copy_only=False)
    valid = np.flatnonzero(path_given)
    # Dictionary codes number the distinct ids in order of appearance: a row is an id's first when its
    # code exceeds every code before it, and the n-th first row is where code n first appears.
    codes = pc.dictionary_encode(ids.filter(has_path)).indices.to_numpy().astype(np.int64)
    firsts = codes > np.concatenate([[-1], np.maximum.accumulate(codes)[:-1]]) if len(codes) else np.zeros(0, bool)
    kept = valid[firsts]  # each id's first row, in order
    skipped = [(row, f"no {path_col!r}") for row in np.flatnonzero(~path_given).tolist()]
    repeats = np.flatnonzero(~firsts)
    skipped += [(row, f"repeats sample {sid!r} of line {kept[code] + 2}") for row, sid, code in
                zip(valid[repeats].tolist(), ids.take(pa.array(valid[repeats], pa.int64())).to_pylist(),
                    codes[repeats].tolist())]
    take = pa.array(kept, pa.int64())
    return IndexSamples(ids.take(take), paths.take(take), column[label_col].take(take) if label_col else None,
                        starts[kept + 1], ends[kept + 1],
                        [SkippedFile(f"{name}:{row + 2}", reason) for row, reason in sorted(skipped)])


class IndexSource(FileListSource):
    """The samples an index file lists (see the module docstring)."""

    kind = "index"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        url = str(url).rstrip("/")
        self.name = url.rsplit("/", 1)[-1]
        super().__init__(url, storage_options, classes, base_url=url.rsplit("/", 1)[0] if "/" in url else ".")

    def _init_cache(self) -> None:
        super()._init_cache()
        self._cache_data: bytes = b""
        self._cache_samples: IndexSamples | None = None
        self._cache_columns: list[str] | None = None

    def _samples(self) -> IndexSamples:
        """The index's samples as columns, read once per Source object (the driver's)."""
        if self._cache_samples is None:
            self._cache_data = read_bytes(self.url, self.storage_options)
            self._cache_samples = index_samples(self._cache_data, self.url)
        return self._cache_samples

    def _entries(self) -> tuple[list[Entry], list[SkippedFile]]:
        return self._samples().entries(), self._samples().skipped

    def _raw_labels(self) -> Iterable[Any]:
        return self._samples().distinct_labels()

    def skipped(self) -> list[SkippedFile]:
        return list(self._samples().skipped)

    def row_files(self, limit: int | None = None) -> list[RowFile]:
        """The index as one file of rows, its samples, each with its byte span (see the module
        docstring); no sample is made a Python object."""
        samples = self._samples()
        rows = len(samples.starts) if limit is None else min(limit, len(samples.starts))
        data = self._cache_data
        return [RowFile(self.name, rows, IDS_IN_ROWS, starts=samples.starts[:rows], ends=samples.ends[:rows],
                        span_stamp=lambda start, end: span_stamp(data[start:end]), ids=samples.ids[:rows])]

    def row_refs(self, rows: RowRange) -> list[SampleRef]:
        """The refs of a planned range, from its span of the index alone; a span whose bytes changed
        since it was planned (the index was edited, not appended to) is an error."""
        data = read_span(self.url, self.storage_options, rows)
        parsed = parse_index(data, self.name, None if is_jsonl(self.name) else self._columns(), base=rows.span[0])
        entries, _, _ = entries_of(parsed, self.url) if parsed.rows else ([], [], [])
        if span_stamp(data) != rows.stamp or len(entries) != rows.stop - rows.start:
            raise span_changed(self.url, rows, "an index may grow at its end, but to map an edited one, write to a "
                                               "new output")
        return [SampleRef(sid, json.dumps([location, raw])) for sid, location, raw in entries]

    def _columns(self) -> list[str]:
        """A CSV's header, read once per Source object."""
        if self._cache_columns is None:
            fs, path = open_fs(self.url, self.storage_options)

            def header() -> bytes:
                with fs.open(path, "rb", block_size=1 << 16) as fh:
                    return fh.readline()

            with storage_errors(self.url, "read", self.storage_options):
                self._cache_columns = parse_index(retrying(header, f"reading the header of {self.url}"),
                                                  self.name).columns
        return self._cache_columns
