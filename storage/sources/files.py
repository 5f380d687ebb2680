"""Reading samples that are files: fetching many at once, and sources whose refs carry their labels.

:class:`FileListSource` is the base of the sources that list samples with their labels from an
index: a CSV / JSONL index (:mod:`storage.sources.index`), a folder with a labels file
(:mod:`storage.sources.labeled`) and WebDataset tars (:mod:`storage.sources.webdataset`). Their
locator is ``json.dumps([location, raw_label])``: where the image is (for files, the path relative to
``base_url``, or an absolute URL / path) and the label as the index wrote it (a class name, an
integer, or null). A worker reads a shard from its refs alone, without listing or reading the index.

Tested by tests/storage/test_source_files.py.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from storage.io.fs import StorageError, is_local, open_fs, resolve_storage_options, scrub, storage_errors, translate
from storage.io.retry import is_transient, retrying
from storage.sources.base import (NO_LABEL, RowRange, Sample, SampleError, SampleRef, SkippedFile, Source,
                                  decoded_sample)
from storage.sources.classes import classes_of, integer_label, kind_of_classes
from storage.sources.images import is_image_name
from storage.sources.inside import OUTSIDE_SOURCE, Reach, reach_of
from storage.sources.policy import SourcePolicy

#: Files fetched concurrently (one async batch) per round trip.
FETCH_BATCH = 64


def fetch(fs: Any, paths: Sequence[str], url: str, storage_options: Mapping[str, Any] | None
          ) -> list[bytes | BaseException]:
    """The contents of ``paths`` (one filesystem), in order; a missing or unreadable file gives its
    exception, which becomes the sample's error row.

    Paths are exact keys, never patterns: a file named ``shot [1].png`` is read as named. What is
    not the data's fault is never an error row: a request that fails transiently (throttling, 5xx,
    a dropped connection) is retried with backoff, and one that still fails, or is refused, raises
    :class:`storage.io.fs.StorageError`, which fails the shard (it is retried, or left uncommitted for
    a rerun), so no sample is recorded as bad because the store was busy.
    """
    out: list[bytes | BaseException] = []
    for start in range(0, len(paths), FETCH_BATCH):
        batch = list(paths[start:start + FETCH_BATCH])
        with storage_errors(url, "read", storage_options):
            blobs = cat_exact(fs, batch)
        for path, data in zip(batch, blobs):
            if isinstance(data, BaseException) and is_transient(data):
                with storage_errors(fs.unstrip_protocol(path), "read", storage_options):
                    data = retrying(lambda path=path: fs.cat_file(path), f"reading {fs.unstrip_protocol(path)}")
            if isinstance(data, PermissionError):
                raise translate(data, url, "read", storage_options)
            out.append(data)
    return out


def cat_exact(fs: Any, paths: Sequence[str]) -> list[bytes | BaseException]:
    """Each path's bytes or exception, concurrently on async filesystems (s3, gcs, http); the paths
    are not expanded as globs, unlike ``fs.cat(list)``."""
    if getattr(fs, "async_impl", False):
        import asyncio

        from fsspec.asyn import sync

        async def gather() -> list[bytes | BaseException]:
            return await asyncio.gather(*(fs._cat_file(p) for p in paths), return_exceptions=True)

        return sync(fs.loop, gather)
    out: list[bytes | BaseException] = []
    for path in paths:
        try:
            out.append(fs.cat_file(path))
        except Exception as err:  # noqa: BLE001 - each backend raises its own; the caller sorts them
            out.append(err)
    return out


def fetch_urls(urls: Sequence[str], url: str, storage_options: Mapping[str, Any] | None
               ) -> list[bytes | BaseException]:
    """:func:`fetch` for URLs that may live on different filesystems (an index naming s3:// and local
    files), grouped by filesystem, in order."""
    groups: dict[int, tuple[Any, list[str], list[int]]] = {}
    for i, each in enumerate(urls):
        fs, path = open_fs(each, storage_options)
        group = groups.setdefault(id(fs), (fs, [], []))
        group[1].append(path)
        group[2].append(i)
    out: list[bytes | BaseException] = [b""] * len(urls)
    for fs, paths, positions in groups.values():
        for i, blob in zip(positions, fetch(fs, paths, url, storage_options)):
            out[i] = blob
    return out


def read_bytes(url: str, storage_options: Mapping[str, Any] | None, span: tuple[int, int] | None = None) -> bytes:
    """A file's bytes, or those of ``span`` (first byte, byte after the last), retried while the store
    fails transiently."""
    fs, path = open_fs(url, storage_options)
    start, end = span if span is not None else (None, None)
    with storage_errors(url, "read", storage_options):
        return retrying(lambda: fs.cat_file(path, start=start, end=end),
                        f"reading bytes {start}:{end} of {url}" if span is not None else f"reading {url}")


def read_span(url: str, storage_options: Mapping[str, Any] | None, rows: RowRange) -> bytes:
    """The bytes of a planned range's span of the file at ``url`` (an index's lines, a tar's members)."""
    if rows.span is None:
        raise StorageError(f"{rows.describe()} of {url} were planned without their byte span")
    return read_bytes(url, storage_options, rows.span)


def span_changed(url: str, rows: RowRange, advice: str) -> StorageError:
    """The error for a planned span whose bytes no longer hold its samples."""
    start, end = rows.span or (0, 0)
    return StorageError(f"{url} changed since it was planned: bytes {start}:{end} no longer hold the "
                        f"{rows.stop - rows.start} samples of {rows.describe()}; {advice}")


def read_reason(err: BaseException, shown: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """A one-line reason for a file that could not be read, naming it."""
    if isinstance(err, FileNotFoundError):
        cause = "no such file"
    elif isinstance(err, IsADirectoryError):
        cause = "a directory, not a file"
    else:
        cause = scrub(f"{type(err).__name__}: {err}", storage_options)
    return f"cannot read {shown}: {cause}"[:500]


def file_sample(sample_id: str, label: int, shown: str, data: bytes | BaseException,
                storage_options: Mapping[str, Any] | None = None, *, policy: SourcePolicy) -> Sample | SampleError:
    """A fetched file as a sample (decoded within the source's ``policy``), or the error row that names it."""
    if isinstance(data, BaseException):
        return SampleError(sample_id, read_reason(data, shown, storage_options), "read")
    return decoded_sample(sample_id, data, label, shown, policy=policy)


def is_url(path: str) -> bool:
    return "://" in path or path.startswith("/")


def resolve_path(base: str, path: str) -> str:
    """``path`` as written in an index or a Parquet row: absolute URLs and paths as they are, others
    relative to the directory URL ``base``. Whether it may be read is :class:`storage.sources.inside.Reach`'s
    to say: a path that leads outside the source is refused, not read."""
    if is_url(path):
        return path
    scheme, sep, rest = base.rstrip("/").rpartition("://")
    return f"{scheme}{sep}{posixpath.normpath(f'{rest}/{path}')}"


def skip_reason(rel: str) -> str | None:
    """Why a file found under a folder source is not a sample, or None when it is one: hidden files
    (.DS_Store, ._x.jpg, anything in .ipynb_checkpoints/...) and files Pillow does not decode."""
    if rel.startswith(".") or "/." in rel:
        return "hidden file"
    if not is_image_name(rel):
        return "not an image file (no extension Pillow decodes)"
    return None


#: Why a folder is not read: a job's own ``_meta`` / ``_pending``, Spark's ``_temporary``, ``.git``,
#: ``.ipynb_checkpoints``... (Arrow's dataset readers skip the same names).
SKIPPED_FOLDER = "a folder whose name starts with '_' or '.' (job outputs, hidden folders) is not read"


def is_skipped_folder(name: str) -> bool:
    """Whether a folder of this name is left out of a listing (see :data:`SKIPPED_FOLDER`)."""
    return name.startswith(("_", "."))


def stamped_files(fs: Any, root: str, url: str, storage_options: Mapping[str, Any] | None) -> dict[str, str]:
    """:func:`listed_files`' files alone."""
    return listed_files(fs, root, url, storage_options)[0]


def listed_files(fs: Any, root: str, url: str, storage_options: Mapping[str, Any] | None
                 ) -> tuple[dict[str, str], list[SkippedFile]]:
    """Every file under ``root`` (recursively), sorted by its path relative to it, with its stamp
    (:func:`stamp`), and the folders left out (``_`` and dot folders at any depth, each with
    :data:`SKIPPED_FOLDER`); one listing, the same requests as listing names alone."""
    with storage_errors(url, "list", storage_options):
        if is_local(fs) and os.path.isdir(root):
            folders: list[str] = []
            files = dict(sorted(_local_stamped_files(root, folders)))
            return files, [SkippedFile(f, SKIPPED_FOLDER) for f in sorted(folders)]
        found = retrying(lambda: fs.find(root, detail=True), f"listing {url}")
    prefix = root.rstrip("/") + "/"
    cut = len(prefix)
    files, skipped = {}, set()
    for p in sorted(found):
        rel = p[cut:] if p.startswith(prefix) else p
        parts = rel.split("/")[:-1]
        hidden = next((i for i, part in enumerate(parts) if is_skipped_folder(part)), None)
        if hidden is None:
            files[rel] = stamp(found[p])
        else:
            skipped.add("/".join(parts[:hidden + 1]) + "/")
    return files, [SkippedFile(f, SKIPPED_FOLDER) for f in sorted(skipped)]


def _local_stamped_files(root: str, skipped: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(relative path, stamp) of every file under a local ``root``, as ``fs.find(detail=True)`` of
    fsspec's local filesystem lists them (symlinks are files, with their target's size and their own
    mtime; a file gone mid-listing is left out) and :func:`stamp` stamps them, without building
    fsspec's info dict per file: that is most of a local listing's cost (benchmarks/bench_scale.py).
    ``_`` and dot folders are not entered; their paths (``rel/``) go to ``skipped``."""
    pending = [(root.rstrip("/") or "/", "")]
    while pending:
        folder, rel = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = f"{rel}{entry.name}"
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if is_skipped_folder(entry.name):
                            if skipped is not None:
                                skipped.append(f"{name}/")
                        else:
                            pending.append((entry.path, f"{name}/"))
                        continue
                    info = entry.stat(follow_symlinks=False)
                    size = info.st_size
                    if entry.is_symlink():
                        try:
                            size = entry.stat(follow_symlinks=True).st_size
                        except OSError:
                            size = 0
                except FileNotFoundError:
                    continue
                yield name, f"{size}:{info.st_mtime}"


def stamp(info: Mapping[str, Any]) -> str:
    """A file's size and version as a listing reports them (ETag on object stores, mtime on disks)."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size', '')}:{version.strip(_QUOTE) if isinstance(version, str) else version}"


_QUOTE = '"'  # S3 ETags come quoted


Entry = tuple[str, Any, Any]  # (sample_id, location, raw label)


class FileListSource(Source):
    """Samples listed with their location and raw label; :meth:`_entries` lists them (driver side only),
    :meth:`_read_located` reads them (files by default).

    With ``classes`` given (as a job's workers get them from the driver) nothing is listed on open.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None, classes: Sequence[str] | None,
                 base_url: str) -> None:
        self.url = str(url).rstrip("/")
        self.storage_options = resolve_storage_options(storage_options)
        self.base_url = base_url.rstrip("/")
        self._init_cache()
        if classes is None:
            self.classes, self.label_kind = classes_of(self._raw_labels())
        else:
            self.classes = [str(c) for c in classes]
            self.label_kind = kind_of_classes(self.classes)
        self._class_index = {c: i for i, c in enumerate(self.classes)}

    def _init_cache(self) -> None:
        self._cache_listing: tuple[list[Entry], list[SkippedFile]] | None = None
        self._cache_stamps: dict[str, str] = {}  # stamp_key(location) -> the file's stamp, filled by _entries

    def stamp_key(self, location: Any) -> str:
        """The file a location's stamp is kept under (a tar for WebDataset; the file itself by default)."""
        return str(location)

    def _entries(self) -> tuple[list[Entry], list[SkippedFile]]:
        """``([(sample_id, location, raw_label), ...] in source order, [skipped files])``."""
        raise NotImplementedError

    def _raw_labels(self) -> Iterable[Any]:
        """The samples' raw labels (each distinct one at least once), which the class list is made of."""
        return (raw for _, _, raw in self._listing()[0])

    def _listing(self) -> tuple[list[Entry], list[SkippedFile]]:
        if self._cache_listing is None:
            self._cache_listing = self._entries()
        return self._cache_listing

    def list(self, limit: int | None = None) -> list[SampleRef]:
        entries = self._listing()[0][:limit]
        stamps = self._cache_stamps
        return [SampleRef(sid, json.dumps([location, raw]), stamps.get(self.stamp_key(location), ""))
                for sid, location, raw in entries]

    def skipped(self) -> list[SkippedFile]:
        return list(self._listing()[1])

    def label_of(self, raw: Any) -> int | None:
        """The class index of a raw label; NO_LABEL for none; None when it names no class of this source."""
        if raw is None or str(raw).strip() == "":
            return NO_LABEL
        if self.label_kind == "integers":
            number = integer_label(raw)
            return number if number is not None and number < len(self.classes) else None
        return self._class_index.get(str(raw).strip())

    def resolve(self, path: str) -> str:
        """The URL of an entry's path: absolute URLs and paths as they are, others under ``base_url``."""
        return resolve_path(self.base_url, path)

    #: What a refused location is, in the error row (an index's row; a folder's symbolic link).
    outside_what = "the row's path"

    def reach(self) -> Reach:
        """What the entries may name: files under ``base_url``, or under the operator's allowed prefixes."""
        return reach_of(self, self.base_url)

    def describe(self, location: Any) -> str:
        """A location as users know it (for messages)."""
        return self.resolve(str(location))

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        located: list[tuple[SampleRef, Any, int] | SampleError] = []
        for ref in refs:
            try:
                location, raw = json.loads(str(ref.locator))
            except (ValueError, TypeError):
                located.append(SampleError(ref.sample_id, f"bad locator {ref.locator!r} for {self.url}"))
                continue
            label = self.label_of(raw)
            if label is None:
                located.append(SampleError(ref.sample_id, f"label {repr(raw)[:100]} of {self.describe(location)} is not among "
                                                          f"the classes of {self.url} ({len(self.classes)})", "label"))
            else:
                located.append((ref, location, label))
        yield from self._read_located(located)

    def _read_located(self, entries: Sequence[tuple[SampleRef, Any, int] | SampleError]
                      ) -> Iterator[Sample | SampleError]:
        """Fetch each entry's file (grouped by filesystem, in batches), in order."""
        reach = self.reach()
        for start in range(0, len(entries), FETCH_BATCH):
            batch = [e if isinstance(e, SampleError) or reach.allows(self.resolve(str(e[1]))) else
                     SampleError(e[0].sample_id, reach.refusal(str(e[1]), self.outside_what), OUTSIDE_SOURCE)
                     for e in entries[start:start + FETCH_BATCH]]
            wanted = [(ref, self.resolve(str(location)), label) for ref, location, label in
                      (e for e in batch if not isinstance(e, SampleError))]
            data = fetch_urls([url for _, url, _ in wanted], self.url, self.storage_options)
            it = iter(zip(wanted, data))
            for entry in batch:
                if isinstance(entry, SampleError):
                    yield entry
                    continue
                (ref, url, label), blob = next(it)
                yield file_sample(ref.sample_id, label, url, blob, self.storage_options, policy=self.policy)
