"""Parquet files of encoded images (the Hugging Face datasets layout, among others).

Columns: the image (``image`` or ``img``: binary PNG/JPEG/... bytes, a struct ``{bytes, path}`` as HF
writes it, or a path string), the label (``label``, ``labels``, ``fine_label``, ``class`` or
``category``: integers, or class names as strings; optional) and optionally ``sample_id`` (string;
otherwise ``"<file>#<row>"``, with ``<file>`` relative to the URL). The URL is one ``.parquet`` file or
a prefix holding several (found recursively, sorted). If file or directory names carry split words
(``test-0000.parquet``, ``data/train/...``), only the requested split's files are used.

Rows without image bytes but with a path (HF exports built from files) read the file that path
names, relative to the Parquet file's directory (absolute paths and URLs as they are); when there is
none, the row's error says where it looked. A path that leads outside the source (the URL's folder,
or the file's for a single file) is not read: the row is an error row of kind ``outside-source``
unless the path lies under an ``--allow-paths`` prefix (:mod:`storage.sources.inside`). Folders named
``_*`` or ``.*`` are not read, and a ``.parquet`` file that is a symbolic link leading outside the
folder is skipped.

Listing reads each file's footer (and the ``sample_id`` column when present, to check that its ids
are unique). A plan holds row ranges of files (:meth:`ParquetSource.row_files`); reading a shard
reads only the row groups that hold its rows, ``sample_id`` included. Class names come from ``classes``, else from the
HF ``ClassLabel`` names in the schema metadata, else the sorted string labels, else ``"0".."K-1"``.
A file whose footer is unreadable, and files under the URL that are neither Parquet nor images (which
rows may name), are listed by :meth:`ParquetSource.skipped`; rows of a row group that cannot be read
become error rows. Neither stops a job.

Tested by tests/storage/test_source_kinds.py and tests/storage/test_source_ranges.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.io.fs import (InvalidStorageInput, StorageError, is_file, join, open_fs, resolve_storage_options,
                        storage_errors)
from storage.io.retry import is_transient, retrying
from storage.sources.base import (IDS_IN_ROWS, NO_LABEL, RowFile, RowRange, Sample, SampleError, SampleRef, SkippedFile,
                                  Source, decoded_sample, files_of_split)
from storage.sources.classes import classes_of, kind_of_classes
from storage.sources.files import fetch_urls, file_sample, listed_files, resolve_path, stamp
from storage.sources.inside import OUTSIDE_SOURCE, escapes, reach_of
from storage.sources.policy import DEFAULT_POLICY
from storage.sources.images import is_image_name

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "category")


#: Bytes a Parquet file's reader buffers per request (fsspec's default on S3 is 50 MiB per open file).
READ_BLOCK = 4 * 2**20


class UnreadableParquet(StorageError):
    """A Parquet file (or part of one) that cannot be decoded: the data's fault, not the store's."""


class ParquetSource(Source):
    kind = "parquet"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        self.url = str(url).rstrip("/")
        self.storage_options = resolve_storage_options(storage_options)
        self.fs, path = open_fs(self.url, self.storage_options)
        self.root = path.rstrip("/")
        folders: list[SkippedFile] = []
        with storage_errors(self.url, "list", self.storage_options):
            single = self.root.endswith(".parquet") and retrying(lambda: is_file(self.fs, self.root), f"checking {url}")
            if single:
                stamps = {self.root.rsplit("/", 1)[1]: stamp(retrying(lambda: self.fs.info(self.root),
                                                                      f"checking {url}"))}
            else:
                stamps, folders = listed_files(self.fs, self.root, self.url, self.storage_options)
        self._single = single
        self._stamps = stamps  # size and version of each file, as listed (RowFile.stamp)
        self._skipped: list[SkippedFile] = folders
        if single:
            self.root, name = self.root.rsplit("/", 1)
            files = [name]
        else:
            links = escapes(self.fs, self.root, [join(self.root, r) for r in stamps if r.endswith(".parquet")],
                            DEFAULT_POLICY)
            self._skipped += [SkippedFile(r, f"{OUTSIDE_SOURCE}: a symbolic link that leads outside {self.url}; "
                                             "not read") for r in stamps if join(self.root, r) in links]
            rel = [r for r in stamps if join(self.root, r) not in links]
            self._skipped += [SkippedFile(r, "not a .parquet file") for r in rel  # images are read where rows name them
                              if not r.endswith(".parquet") and not is_image_name(r)]
            rel = [r for r in rel if r.endswith(".parquet")]
            if not rel:
                raise StorageError(f"no .parquet files under {self.url}")
            files = files_of_split(rel, split, self.url, "Parquet files")
        self._init_cache()
        self.files = []
        for rel in files:  # a file whose footer does not decode is reported, not fatal
            try:
                self._meta(rel)
                self.files.append(rel)
            except UnreadableParquet as err:
                self._skipped.append(SkippedFile(rel, str(err)))
        if not self.files:
            raise StorageError(f"no readable Parquet file under {self.url}: {self._skipped[-1].reason}")
        schema = self._meta(self.files[0]).schema.to_arrow_schema()
        self.image_column = next((c for c in IMAGE_COLUMNS if c in schema.names), None)
        if self.image_column is None:
            raise StorageError(f"{self._url(self.files[0])} has no image column ({' or '.join(IMAGE_COLUMNS)}); "
                               f"its columns: {schema.names}; expected image[, label][, sample_id]")
        self.label_column = next((c for c in LABEL_COLUMNS if c in schema.names), None)
        named = self._hf_names(schema, self.label_column)
        if classes is not None:
            self.classes = list(classes)
            self.label_kind = kind_of_classes(self.classes)
        elif named:  # HF ClassLabel: the column holds indices, the metadata names them
            self.classes, self.label_kind, self.intrinsic_indices = named, "names", True
        elif self.label_column is None:
            self.classes, self.label_kind = [], "none"
        else:
            labels = (self._read_column(rel, self.label_column).to_numpy(zero_copy_only=False) for rel in self.files)
            self.classes, self.label_kind = classes_of(v for column in labels for v in set(column.tolist()))
        self._class_index = {c: i for i, c in enumerate(self.classes)}

    def _init_cache(self) -> None:
        self._cache_lock = threading.Lock()
        self._cache_meta: dict[str, pq.FileMetaData] = {}
        self._cache_refs: list[SampleRef] | None = None

    def _url(self, rel: str) -> str:
        return self.url if self._single else join(self.url, rel)

    def _meta(self, rel: str) -> pq.FileMetaData:
        """The file's footer (row groups, row counts, schema), read once per Source object; no file
        stays open (a source of thousands of files would exhaust ``ulimit -n``)."""
        with self._cache_lock:
            if rel not in self._cache_meta:
                def footer() -> pq.FileMetaData:
                    with self._open(rel) as parquet:
                        return parquet.metadata

                self._cache_meta[rel] = retrying(footer, f"reading the footer of {self._url(rel)}")
            return self._cache_meta[rel]

    @contextlib.contextmanager
    def _open(self, rel: str) -> Iterator[pq.ParquetFile]:
        """The file, open for the block; reads go through a bounded buffer (READ_BLOCK bytes)."""
        with storage_errors(self._url(rel), "open Parquet file", self.storage_options):
            handle = self.fs.open(join(self.root, rel), "rb", block_size=READ_BLOCK)
        try:
            try:
                parquet = pq.ParquetFile(handle, metadata=self._cache_meta.get(rel))
            except (pa.ArrowInvalid, OSError) as err:
                if is_transient(err):
                    raise  # the store's fault, retried by the caller: not a corrupt file
                if isinstance(err, OSError) and err.errno == errno.EMFILE:
                    raise StorageError(f"cannot open {self._url(rel)}: too many open files in this process; raise "
                                       "the limit (ulimit -n)") from None
                raise UnreadableParquet(f"{self._url(rel)} is not a readable Parquet file "
                                        f"(truncated or corrupt?): {err}") from None
            yield parquet
        finally:
            handle.close()

    @staticmethod
    def _hf_names(schema: pa.Schema, column: str | None) -> list[str] | None:
        try:
            meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
            names = meta.get("info", {}).get("features", {}).get(column or "", {}).get("names")
            return [str(n) for n in names] if names else None
        except (ValueError, AttributeError):
            return None

    def _read_column(self, rel: str, column: str, groups: Sequence[int] | None = None) -> pa.Array:
        """One column of a file (of row ``groups`` only, when given)."""
        with storage_errors(self._url(rel), "read", self.storage_options):
            def read() -> pa.Array:
                with self._open(rel) as parquet:
                    table = parquet.read(columns=[column]) if groups is None else \
                        parquet.read_row_groups(groups, columns=[column])
                    return table.column(column).combine_chunks()

            try:
                return retrying(read, f"reading {column!r} of {self._url(rel)}")
            except (pa.ArrowInvalid, OSError) as err:
                if isinstance(err, StorageError) or is_transient(err):
                    raise  # already worded, or the store's fault (worded by storage_errors)
                raise StorageError(f"cannot read column {column!r} of {self._url(rel)} "
                                   f"(truncated or corrupt?): {err}") from None

    def list(self, limit: int | None = None) -> list[SampleRef]:
        if self._cache_refs is not None:
            return self._cache_refs[:limit]
        refs: list[SampleRef] = []
        for rel in self.files:
            if limit is not None and len(refs) >= limit:
                return refs[:limit]  # the files past the limit are not read (and nothing partial is cached)
            version = self._stamps.get(rel, "")  # the file's: a changed file changes each of its samples
            if "sample_id" in self._meta(rel).schema.names:
                ids = self._read_ids(rel).to_pylist()
                refs += [SampleRef(str(s), f"{rel}#{i}", version) for i, s in enumerate(ids)]
            else:
                refs += [SampleRef(f"{rel}#{i}", f"{rel}#{i}", version) for i in range(self._meta(rel).num_rows)]
        self._cache_refs = refs
        return refs[:limit]

    def skipped(self) -> list[SkippedFile]:
        return list(self._skipped)

    def row_files(self, limit: int | None = None) -> list[RowFile]:
        """Each file's rows (the first ``limit`` rows of the source), from the footers already read.
        A file with a ``sample_id`` column names its samples: its ids are data, read with the rows by
        the worker, and checked here to be unique (they are committed exactly once)."""
        files, total = [], 0
        for rel in self.files:
            if limit is not None and total >= limit:
                break
            rows = self._meta(rel).num_rows if limit is None else min(self._meta(rel).num_rows, limit - total)
            if "sample_id" in self._meta(rel).schema.names:
                files.append(RowFile(rel, rows, IDS_IN_ROWS, self._stamps.get(rel, ""),
                                     ids=self._read_ids(rel).slice(0, rows)))
            else:
                files.append(RowFile(rel, rows, rel.replace("{", "{{").replace("}", "}}") + "#{row}",
                                     self._stamps.get(rel, "")))
            total += rows
        self._check_unique([f.ids for f in files if f.ids is not None])
        return files

    def _check_unique(self, columns: Sequence[pa.Array]) -> None:
        """Raise where the ``sample_id`` columns repeat an id; they are compared in Arrow, without a
        Python object per id."""
        if not columns:
            return
        ids = pa.chunked_array(columns, pa.string())
        if pc.count_distinct(ids, mode="all").as_py() == len(ids):
            return
        counts = pc.value_counts(ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")[:3].to_pylist()
        raise InvalidStorageInput(f"the sample_id column of {self.url} repeats ids (e.g. {repeated}); they must be "
                                  "unique to be committed exactly once")

    def _read_ids(self, rel: str, groups: Sequence[int] | None = None) -> pa.Array:
        """The ``sample_id`` column of a file (of row ``groups`` only, when given), as strings."""
        return self._read_column(rel, "sample_id", groups).cast(pa.string())

    def row_refs(self, rows: RowRange) -> list[SampleRef]:
        name, start, stop = rows.file, rows.start, rows.stop
        if not rows.ids_in_rows:
            return [SampleRef(rows.id_format.format(row=i), f"{name}#{i}") for i in range(start, stop)]
        meta = self._meta(name)
        bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        if stop > bounds[-1]:
            raise StorageError(f"{self._url(name)} has {bounds[-1]} rows, not the {stop} it had when planned: it "
                               "changed since; write to a new output to map it as it is now")
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, stop - 1, side="right")) - 1
        ids = self._read_ids(name, range(first, last + 1)).slice(start - int(bounds[first]), stop - start)
        return [SampleRef(str(sid), f"{name}#{i}") for i, sid in zip(range(start, stop), ids.to_pylist())]

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        i = 0
        while i < len(refs):  # consecutive refs of one file are read together
            rel = str(refs[i].locator).rsplit("#", 1)[0]
            j = i
            while j < len(refs) and str(refs[j].locator).rsplit("#", 1)[0] == rel:
                j += 1
            yield from self._read_file(rel, refs[i:j])
            i = j

    def _rows(self, rel: str, rows: Sequence[int]) -> tuple[dict[int, tuple[Any, Any]], int]:
        """``({row: (image value, label value)}, rows in the file)`` for the wanted rows inside the file;
        only the row groups that hold them are read."""
        meta = self._meta(rel)
        bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        inside = sorted({r for r in rows if 0 <= r < bounds[-1]})
        groups = sorted({int(np.searchsorted(bounds, r, side="right")) - 1 for r in inside})
        if not groups:
            return {}, int(bounds[-1])
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        with storage_errors(self._url(rel), "read", self.storage_options):
            try:
                def read() -> pa.Table:
                    with self._open(rel) as parquet:
                        return parquet.read_row_groups(groups, columns=columns)

                table = retrying(read, f"reading row groups of {self._url(rel)}")
            except (pa.ArrowInvalid, OSError) as err:
                if isinstance(err, StorageError) or is_transient(err):
                    raise  # a corrupt file (worded by _open), or the store's fault: never the samples' error rows
                raise UnreadableParquet(f"cannot read row groups {groups} of {self._url(rel)} "
                                        f"(truncated or corrupt?): {err}") from None
        start = {g: int(sum(meta.row_group(h).num_rows for h in groups[:k])) for k, g in enumerate(groups)}
        images, labels = table.column(self.image_column), table.column(self.label_column) if self.label_column else None
        out = {}
        for r in inside:
            g = int(np.searchsorted(bounds, r, side="right")) - 1
            k = start[g] + r - int(bounds[g])
            out[r] = images[k].as_py(), None if labels is None else labels[k].as_py()
        return out, int(bounds[-1])

    def _label(self, raw: Any) -> int | None:
        if raw is None:
            return NO_LABEL
        if self.label_kind == "names" and isinstance(raw, str):
            return self._class_index.get(raw.strip())
        return int(raw) if isinstance(raw, (int, np.integer)) and raw >= 0 else None

    def _read_file(self, rel: str, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        try:
            rows = [int(str(r.locator).rsplit("#", 1)[1]) for r in refs]
        except (IndexError, ValueError):
            for r in refs:
                yield SampleError(r.sample_id, f"bad locator {r.locator!r} for {self.url}")
            return
        try:
            values, total = self._rows(rel, rows)
        except UnreadableParquet as err:  # the data's fault: every sample of these rows gets the reason
            for r in refs:
                yield SampleError(r.sample_id, str(err)[:500], "read")
            return
        pending: list[tuple[int, SampleRef, str, int, str]] = []  # path-only rows, fetched together
        out: list[Sample | SampleError | None] = []
        for ref, row in zip(refs, rows):
            where = f"row {row} of {self._url(rel)}"
            if row not in values:
                out.append(SampleError(ref.sample_id, f"row {row} is outside {self._url(rel)} ({total} rows)"))
                continue
            value, raw = values[row]
            label = self._label(raw)
            path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, bytes) else None
            if label is None:
                out.append(SampleError(ref.sample_id, f"{where}: label {repr(raw)[:100]} is not among the classes of "
                                                      f"{self.url} ({len(self.classes)})", "label"))
            elif data is not None:
                out.append(decoded_sample(ref.sample_id, data, label, where, policy=self.policy))
            elif path:
                pending.append((len(out), ref, self._resolve(rel, path), label, path))
                out.append(None)
            else:
                out.append(SampleError(ref.sample_id, f"{where} has neither image bytes nor a path"))
        self._fetch_paths(pending, out, rel)
        yield from out  # type: ignore[misc]

    def _resolve(self, rel: str, path: str) -> str:
        """A row's image path: relative to the Parquet file's directory, or absolute as it is."""
        return resolve_path(self._url(rel).rsplit("/", 1)[0], path)

    def _fetch_paths(self, pending: list[tuple[int, SampleRef, str, int, str]], out: list, rel: str) -> None:
        """Read the files path-only rows name, into their places in ``out``; a path that leads outside
        the source (its folder, or the single file's) is an error row and is not read."""
        reach = reach_of(self, self.url.rsplit("/", 1)[0] if self._single else self.url)
        kept = []
        for slot, ref, url, label, written in pending:
            if reach.allows(url):
                kept.append((slot, ref, url, label))
            else:
                out[slot] = SampleError(ref.sample_id, reach.refusal(written), OUTSIDE_SOURCE)
        pending = kept
        blobs = fetch_urls([url for _, _, url, _ in pending], self._url(rel), self.storage_options)
        for (slot, ref, url, label), data in zip(pending, blobs):
            sample = file_sample(ref.sample_id, label, url, data, self.storage_options, policy=self.policy)
            if isinstance(sample, SampleError) and sample.kind == "read":
                sample.reason = f"{ref.sample_id} has no image bytes; its path: {sample.reason}"[:500]
            out[slot] = sample
