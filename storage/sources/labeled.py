"""A folder of images with a labels file: a flat folder + ``labels.csv``, or a Hugging Face ``imagefolder``
with ``metadata.jsonl`` / ``metadata.csv``.

    root/                              root/train/metadata.jsonl   {"file_name": "0001.png", "label": "Bag"}
      0001.png  0002.jpg ...           root/train/0001.png ...
      labels.csv   (filename,label)    root/test/metadata.jsonl ...

- The labels file is the first of :data:`LABEL_FILES` in the (split's) folder, else its only
  ``.csv`` / ``.tsv`` / ``.jsonl`` file; with split directories it may also sit at the top.
- Its columns are read as an index's (:mod:`storage.sources.index`): a file column (``file_name``,
  ``filename``, ``path``, ...) and a label column (``label``, ``class``, ...).
- Every image file under the folder is a sample, ``sample_id`` its path relative to the folder. Its
  label is that of the row naming its path relative to the labels file, else the only row naming its
  file name, else the only row naming its file name without extension (ImageNet's ``ImageId``); a file
  no row names has no label. Rows naming no file, non-image and hidden files, and ``_`` / dot
  folders (never read) are listed by :meth:`LabeledFolderSource.skipped`.
- Only files the folder's listing finds are read, never a path a row names. A symbolic link whose
  target leaves the folder is not followed: its sample is an error row of kind ``outside-source``
  (:mod:`storage.sources.inside`), and a labels file that is such a link is an error.

Tested by tests/storage/test_source_kinds.py.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Sequence
from typing import Any

from storage.io.fs import StorageError, join, open_fs, resolve_storage_options, storage_errors
from storage.sources.base import SkippedFile
from storage.sources.files import FileListSource, listed_files, skip_reason
from storage.sources.folder import open_split_root
from storage.sources.inside import escapes
from storage.sources.policy import DEFAULT_POLICY
from storage.sources.index import INDEX_EXTENSIONS, index_entries

LABEL_FILES = ("metadata.jsonl", "metadata.csv", "labels.csv", "labels.jsonl", "labels.tsv")


def find_labels_file(names: Sequence[str]) -> str | None:
    """The labels file among a folder's file names (see the module docstring), or None."""
    for name in LABEL_FILES:
        if name in names:
            return name
    tables = [n for n in names if n.lower().endswith(INDEX_EXTENSIONS)]
    return tables[0] if len(tables) == 1 else None


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _names(entries: Sequence[dict]) -> list[str]:
    return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") != "directory"]


class LabeledFolderSource(FileListSource):
    kind = "labeled-folder"
    outside_what = "the symbolic link"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        options = resolve_storage_options(storage_options)
        self.fs, self.root, root_url, entries = open_split_root(url, split, options)
        labels = find_labels_file(_names(entries))
        labels_dir, self.offset = root_url, ""
        if labels is None and root_url != str(url).rstrip("/"):  # split dirs, one labels file at the top
            fs, top = open_fs(url, options)
            with storage_errors(url, "list", options):
                labels = find_labels_file(_names(fs.ls(top, detail=True)))
            labels_dir, self.offset = str(url).rstrip("/"), root_url.rsplit("/", 1)[-1] + "/"
        if labels is None:
            raise StorageError(f"{root_url} has no labels file: expected one of {', '.join(LABEL_FILES)}, or a single "
                               f"{'/'.join(INDEX_EXTENSIONS)} file naming the images and their labels")
        self.labels_url = join(labels_dir, labels)
        super().__init__(root_url, options, classes, base_url=labels_dir)

    def _entries(self) -> tuple[list[tuple[str, str, Any]], list[SkippedFile]]:
        labels_fs, labels_path = open_fs(self.labels_url, self.storage_options)
        if escapes(labels_fs, labels_path.rsplit("/", 1)[0], [labels_path], DEFAULT_POLICY):
            raise StorageError(f"{self.labels_url} is a symbolic link that leads outside {self.url}; it is not read: "
                               "replace the link with the file it points to")
        rows, skipped = index_entries(self.labels_url, self.storage_options)
        by_path = {posixpath.normpath(path): raw for _, path, raw in rows}
        names = Counter(posixpath.basename(p) for p in by_path)
        stems = Counter(_stem(p) for p in by_path)
        by_name = {posixpath.basename(p): p for p in by_path if names[posixpath.basename(p)] == 1}
        by_stem = {_stem(p): p for p in by_path if stems[_stem(p)] == 1}
        labels_path = self.labels_url.rsplit("/", 1)[-1] if not self.offset else None
        entries, used = [], set()
        files, folders = listed_files(self.fs, self.root, self.url, self.storage_options)
        skipped += folders
        for rel, version in files.items():
            reason = skip_reason(rel)
            if rel == labels_path:
                continue
            if reason:
                skipped.append(SkippedFile(rel, reason))
                continue
            key = self.offset + rel
            hit = key if key in by_path else by_name.get(posixpath.basename(rel)) or by_stem.get(_stem(rel))
            if hit is not None:
                used.add(hit)
            entries.append((rel, key, None if hit is None else by_path[hit]))
            self._cache_stamps[key] = version
        labels_name = self.labels_url.rsplit("/", 1)[-1]
        skipped += [SkippedFile(p, f"listed in {labels_name} but not a file in {self.url}")
                    for p in by_path if p not in used]
        return entries, skipped
