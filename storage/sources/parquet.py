"""Parquet files of encoded images (the Hugging Face datasets layout, among others).

Columns: ``image`` (binary PNG/JPEG bytes, or a struct with a ``bytes`` field as HF writes it),
``label`` (integer) and optionally ``sample_id`` (string; otherwise ``"<file>#<row>"``, with
``<file>`` relative to the URL). The URL is one ``.parquet`` file or a prefix holding several
(found recursively, sorted). If file or directory names carry split words (``test-0000.parquet``,
``data/train/...``), only the requested split's files are used.

Listing reads each file's footer (and the ``sample_id`` column when present). Reading a shard
reads only the row groups that hold its rows. Class names come from ``classes``, else from the
HF ``ClassLabel`` names in the schema metadata, else ``"0".."K-1"``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import StorageError, join, open_fs, storage_errors
from storage.sources.base import SPLIT_WORDS, Sample, SampleError, SampleRef, Source, decoded_sample, \
    split_aliases

_WORD = re.compile(r"[A-Za-z0-9]+")


def _split_words(rel: str) -> set[str]:
    """Split words named by a relative path's directories or by its file name's leading word."""
    *dirs, name = rel.split("/")
    first = _WORD.match(name)
    words = {d.lower() for d in dirs} | ({first.group(0).lower()} if first else set())
    return words & SPLIT_WORDS


class ParquetSource(Source):
    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, path = open_fs(self.url, self.storage_options)
        self.root = path.rstrip("/")
        with storage_errors(self.url, "list", self.storage_options):
            single = self.root.endswith(".parquet") and self.fs.isfile(self.root)
            found = [] if single else sorted(p for p in self.fs.find(self.root, detail=False) if p.endswith(".parquet"))
        self._single = single
        if single:
            self.root, name = self.root.rsplit("/", 1)
            self.files = [name]
        else:
            rel = [p[len(self.root) + 1:] for p in found]
            if not rel:
                raise StorageError(f"no .parquet files under {self.url}")
            marked = [r for r in rel if _split_words(r)]
            if marked:
                chosen = []
                for alias in split_aliases(split):  # "test" falls back to "val" only where there is no test split
                    chosen = chosen or [r for r in rel if alias in _split_words(r)]
                if not chosen:
                    have = sorted(set().union(*(_split_words(r) for r in marked)))
                    raise StorageError(f"{self.url} holds Parquet files for splits {have} but not {split!r}")
                rel = chosen
            self.files = rel
        self._init_cache()
        schema = self._file(self.files[0]).schema_arrow
        for col in ("image", "label"):
            if col not in schema.names:
                raise StorageError(f"{self._url(self.files[0])} has no {col!r} column "
                                   f"(columns: {schema.names}); expected image, label[, sample_id]")
        self.classes = list(classes) if classes is not None else (self._hf_names(schema) or self._label_range())

    def _init_cache(self) -> None:
        self._cache_lock = threading.Lock()
        self._cache_files: dict[str, pq.ParquetFile] = {}
        self._cache_refs: list[SampleRef] | None = None

    def _url(self, rel: str) -> str:
        return self.url if self._single else join(self.url, rel)

    def _file(self, rel: str) -> pq.ParquetFile:
        """The file's ParquetFile (footer read once per Source object)."""
        with self._cache_lock:
            if rel not in self._cache_files:
                with storage_errors(self._url(rel), "open Parquet file", self.storage_options):
                    handle = self.fs.open(join(self.root, rel), "rb")
                    try:
                        self._cache_files[rel] = pq.ParquetFile(handle)
                    except (pa.ArrowInvalid, OSError) as err:
                        handle.close()
                        raise StorageError(f"{self._url(rel)} is not a readable Parquet file "
                                           f"(truncated or corrupt?): {err}") from None
            return self._cache_files[rel]

    @staticmethod
    def _hf_names(schema: pa.Schema) -> list[str] | None:
        try:
            meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
            names = meta.get("info", {}).get("features", {}).get("label", {}).get("names")
            return [str(n) for n in names] if names else None
        except (ValueError, AttributeError):
            return None

    def _label_range(self) -> list[str]:
        top = -1
        for rel in self.files:
            labels = self._read_column(rel, "label")
            if len(labels):
                top = max(top, int(np.max(labels)))
        return [str(i) for i in range(top + 1)]

    def _read_column(self, rel: str, column: str) -> np.ndarray:
        with storage_errors(self._url(rel), "read", self.storage_options):
            try:
                return self._file(rel).read(columns=[column]).column(column).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, OSError) as err:
                raise StorageError(f"cannot read column {column!r} of {self._url(rel)} "
                                   f"(truncated or corrupt?): {err}") from None

    def list(self) -> list[SampleRef]:
        if self._cache_refs is None:
            refs: list[SampleRef] = []
            for rel in self.files:
                if "sample_id" in self._file(rel).schema_arrow.names:
                    ids = self._read_column(rel, "sample_id")
                    refs += [SampleRef(str(s), f"{rel}#{i}") for i, s in enumerate(ids)]
                else:
                    refs += [SampleRef(f"{rel}#{i}", f"{rel}#{i}") for i in range(self._file(rel).metadata.num_rows)]
            self._cache_refs = refs
        return list(self._cache_refs)

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        i = 0
        while i < len(refs):  # consecutive refs of one file are read together
            rel = str(refs[i].locator).rsplit("#", 1)[0]
            j = i
            while j < len(refs) and str(refs[j].locator).rsplit("#", 1)[0] == rel:
                j += 1
            yield from self._read_file(rel, refs[i:j])
            i = j

    def _read_file(self, rel: str, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        try:
            rows = [int(str(r.locator).rsplit("#", 1)[1]) for r in refs]
        except (IndexError, ValueError):
            for r in refs:
                yield SampleError(r.sample_id, f"bad locator {r.locator!r} for {self.url}")
            return
        pf = self._file(rel)
        meta = pf.metadata
        bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = sorted({int(np.searchsorted(bounds, r, side="right")) - 1 for r in rows if 0 <= r < bounds[-1]})
        table = None
        if groups:
            with storage_errors(self._url(rel), "read", self.storage_options):
                try:
                    table = pf.read_row_groups(groups, columns=["image", "label"])
                except (pa.ArrowInvalid, OSError) as err:
                    raise StorageError(f"cannot read {self._url(rel)} (truncated or corrupt?): {err}") from None
        # position of each row group's first row inside the table read above
        offsets, pos = {}, 0
        for g in groups:
            offsets[g] = pos
            pos += meta.row_group(g).num_rows
        images = table.column("image") if table is not None else None
        labels = table.column("label") if table is not None else None
        for ref, row in zip(refs, rows):
            if not 0 <= row < bounds[-1]:
                yield SampleError(ref.sample_id, f"row {row} is outside {self._url(rel)} ({bounds[-1]} rows)")
                continue
            g = int(np.searchsorted(bounds, row, side="right")) - 1
            k = offsets[g] + row - int(bounds[g])
            value = images[k].as_py()
            if isinstance(value, dict):
                value = value.get("bytes")
            label = labels[k].as_py()
            if value is None or label is None:
                yield SampleError(ref.sample_id, f"row {row} of {self._url(rel)} has no image bytes or label")
                continue
            yield decoded_sample(ref.sample_id, value, int(label))
