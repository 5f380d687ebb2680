"""WebDataset tar shards: ``<url>/*.tar`` (or one ``.tar``), each holding samples as ``<key>.<ext>`` members.

    shard-000000.tar:  n01440764_10026.jpg  n01440764_10026.cls  n01443537_1002.png  n01443537_1002.json ...

- A member's key is its path up to the first dot of its file name, and its extension the rest
  (WebDataset's own rule). Members of one key form one sample.
- The sample's image is its first member with an extension Pillow decodes (``jpg``, ``png``,
  ``webp``, ...). Its label comes from ``cls`` / ``class`` / ``label`` (a number or a class name as
  text), else from ``json`` (a number, a name, or an object with ``label``, ``cls``, ``class``,
  ``category`` or ``class_name``); without either the sample has no label.
- If tar names carry split words (``train-000.tar``, ``test/...``) only the split's tars are used.
- ``sample_id`` is ``<tar>#<key>`` (the tar relative to the URL). The locator holds the image
  member's byte range, so a worker reads a shard with ranged requests (neighbouring members merged)
  and never lists a tar.

A tar is row-addressable: a plan holds a shard as a range of a tar's samples with their byte span
(headers and members, :meth:`WebDatasetSource.row_files`), which a worker reads in one request and
cuts its images from; where a tar interleaves the members of different samples, the source is
planned sample by sample instead.

Listing reads every tar's headers and its label members (plain headers by a small parser of our own,
about twice as fast as tarfile; any other tar by tarfile). Keys without an image, other files under
the URL (compressed ``.tar.gz`` included: they cannot be read by range), and a tar that ends in a
corrupt header (everything before it is used) are listed by :meth:`WebDatasetSource.skipped`, and so
are ``_`` / dot folders (not read) and tars that are symbolic links leading outside the folder.

Tested by tests/storage/test_source_kinds.py and tests/storage/test_source_ranges.py.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.io.fs import StorageError, join, open_fs, storage_errors, translate
from storage.io.retry import is_transient, retrying
from storage.sources.base import (IDS_IN_ROWS, RowFile, RowRange, Sample, SampleError, SampleRef, SkippedFile,
                                  files_of_split)
from storage.sources.files import Entry, FileListSource, file_sample, listed_files, read_span, span_changed, stamp
from storage.sources.inside import OUTSIDE_SOURCE, escapes
from storage.sources.policy import DEFAULT_POLICY
from storage.sources.images import is_image_name

LABEL_EXTENSIONS = ("cls", "class", "label", "cls.txt")
JSON_LABEL_KEYS = ("label", "cls", "class", "category", "class_name")
#: Byte ranges of one tar closer than this are read in one request.
_MERGE_GAP = 1 << 20
_MAX_SPAN = 64 << 20


def split_key(name: str) -> tuple[str, str]:
    """``"dir/n0144_1.seg.png"`` -> ``("dir/n0144_1", "seg.png")``, as WebDataset splits member names."""
    folder, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return posixpath.join(folder, key) if folder else key, ext.lower()


def _label_value(ext: str, data: bytes) -> Any:
    text = data.decode("utf-8", "replace").strip()
    if ext != "json":
        return text or None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = next((value[k] for k in JSON_LABEL_KEYS if k in value), None)
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


@dataclass
class Scanned:
    """A tar's members by sample key: ``{key: {ext: (offset, size) for images and others, raw label for
    label members}}``, each key's byte span (from its first header to the end of its last member's
    data), and its hidden members and what stopped the reading early (a corrupt header), if anything."""

    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    spans: dict[str, list[int]] = field(default_factory=dict)
    problems: list[SkippedFile] = field(default_factory=list)


def _scan(fh: Any, rel: str, base: int = 0) -> Scanned:
    """The members of the tar (or of a span of it that starts at a header, ``base`` bytes into it)
    readable from ``fh``: by :func:`_scan_plain` where every header is a plain one, else by tarfile."""
    plain = _scan_plain(fh, rel, base)
    if plain is not None:
        return plain
    fh.seek(0)
    return _scan_tarfile(fh, rel, base)


def _scan_tarfile(fh: Any, rel: str, base: int) -> Scanned:
    """:func:`_scan` by Python's tarfile, which reads every tar format."""
    scanned = Scanned()
    members = scanned.members
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    _add_member(scanned, rel, member.name, base + member.offset, base + member.offset_data,
                                member.size, lambda member=member: _read_member(tar, member))
            fh.seek(tar.offset)  # tarfile ends quietly at a corrupt header: it must be the end marker
            if fh.read(tarfile.BLOCKSIZE).strip(b"\0"):
                raise tarfile.ReadError(f"a corrupt header at byte {base + tar.offset}")
    except tarfile.TarError as err:
        scanned.problems.append(SkippedFile(rel, f"not a readable tar after {sum(map(len, members.values()))} "
                                                 f"members (the rest of it is not read): {err}"))
    return scanned


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle else b""


def _add_member(scanned: Scanned, rel: str, name: str, header: int, data: int, size: int,
                read: Callable[[], bytes]) -> None:
    """Record a file member of a tar: its (first) header starts at byte ``header``, its data at ``data``."""
    if posixpath.basename(name).startswith("."):  # ._x.jpg that tar tools add
        scanned.problems.append(SkippedFile(f"{rel}#{name}", "hidden file"))
        return
    key, ext = split_key(name)
    parts = scanned.members.setdefault(key, {})
    parts[ext] = _label_value(ext, read()) if ext in LABEL_EXTENSIONS or ext == "json" else (data, size)
    end = data + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    span = scanned.spans.setdefault(key, [header, end])
    span[1] = max(span[1], end)


#: Header types :func:`_scan_plain` reads: regular files (and contiguous ones) and directories.
_PLAIN_TYPES = (b"0", b"\0", b"7", b"5")


def _scan_plain(fh: Any, rel: str, base: int) -> Scanned | None:
    """:func:`_scan` for a tar of plain headers only (ustar or GNU, no extended headers, links or
    sparse files, sizes in octal, checksums right, ending in a zero block), parsed here about twice as
    fast as tarfile does (benchmarks/RESULTS.md, Scale); None for any other tar, which tarfile then reads (and words the
    errors of)."""
    scanned = Scanned()
    pos = 0
    while True:
        fh.seek(pos)
        buf = fh.read(tarfile.BLOCKSIZE)
        if not buf.strip(b"\0"):
            return scanned if pos and (len(buf) == tarfile.BLOCKSIZE or not buf) else None
        kind = buf[156:157]
        if len(buf) < tarfile.BLOCKSIZE or kind not in _PLAIN_TYPES or buf[124] & 0x80 or buf[148] & 0x80:
            return None
        try:
            size = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            checksum = int(buf[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        if checksum != 256 + sum(buf[:148]) + sum(buf[156:]):
            return None
        name = buf[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        prefix = buf[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if kind != b"5" and not (kind == b"\0" and name.endswith("/")):
            data = pos + tarfile.BLOCKSIZE
            _add_member(scanned, rel, f"{prefix}/{name}" if prefix else name, base + pos, base + data, size,
                        lambda data=data, size=size: (fh.seek(data), fh.read(size))[1])
        pos += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _samples_of(rel: str, scanned: Scanned, skipped: list[SkippedFile]) -> tuple[list[Entry], list[tuple[int, int]]]:
    """The samples of a scanned tar (keys with an image member), in order, and their byte spans; keys
    without an image go to ``skipped``."""
    entries: list[Entry] = []
    spans: list[tuple[int, int]] = []
    for key, parts in scanned.members.items():
        image = next(((ext, span) for ext, span in parts.items() if is_image_name(f"x.{ext}")), None)
        if image is None:
            skipped.append(SkippedFile(f"{rel}#{key}", f"no image member (has .{', .'.join(parts)})"))
            continue
        raw = next((parts[ext] for ext in (*LABEL_EXTENSIONS, "json") if ext in parts
                    and not isinstance(parts[ext], tuple)), None)
        entries.append((f"{rel}#{key}", [rel, f"{key}.{image[0]}", *image[1]], raw))
        spans.append(tuple(scanned.spans[key]))  # type: ignore[arg-type]
    return entries, spans


class WebDatasetSource(FileListSource):
    kind = "webdataset"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        url = str(url).rstrip("/")
        self.split = split
        single = url.endswith(".tar")
        super().__init__(url, storage_options, classes, base_url=url.rsplit("/", 1)[0] if single else url)

    def _tars(self) -> tuple[list[str], list[SkippedFile]]:
        """The split's tar files relative to ``base_url``, and the other files under the URL."""
        fs, root = open_fs(self.base_url, self.storage_options)
        if self.url.endswith(".tar"):
            name = self.url.rsplit("/", 1)[-1]
            with storage_errors(self.url, "list", self.storage_options):
                self._cache_stamps[name] = stamp(retrying(lambda: fs.info(join(root, name)), f"checking {self.url}"))
            return [name], []
        stamps, other = listed_files(fs, root, self.url, self.storage_options)
        self._cache_stamps.update(stamps)  # a tar's stamp is each of its samples' (offsets move when it changes)
        links = escapes(fs, root, [join(root, r) for r in stamps if r.endswith(".tar")], DEFAULT_POLICY)
        other += [SkippedFile(r, f"{OUTSIDE_SOURCE}: a symbolic link that leads outside {self.url}; not read")
                  for r in stamps if join(root, r) in links]
        rel = [r for r in stamps if join(root, r) not in links]
        other += [SkippedFile(r, "a compressed tar cannot be read by byte range: store it uncompressed"
                              if r.endswith((".tar.gz", ".tgz")) else "not a .tar shard") for r in rel
                  if not r.endswith(".tar")]
        tars = [r for r in rel if r.endswith(".tar")]
        if not tars:
            raise StorageError(f"no .tar files under {self.url}")
        return files_of_split(tars, self.split, self.url, "tar shards"), other

    def _entries(self) -> tuple[list[Entry], list[SkippedFile]]:
        tars, skipped = self._tars()
        entries: list[Entry] = []
        for rel in tars:
            scanned = self._members(rel)
            skipped += scanned.problems
            tar_entries, spans = _samples_of(rel, scanned, skipped)
            entries += tar_entries
            self._cache_spans[rel] = spans
        return entries, skipped

    def _init_cache(self) -> None:
        super()._init_cache()
        self._cache_spans: dict[str, list[tuple[int, int]]] = {}  # tar -> byte span of each sample, as listed
        self._cache_span: tuple[str, int, bytes] | None = None    # the last span a worker read: (tar, start, bytes)

    def row_files(self, limit: int | None = None) -> list[RowFile] | None:
        """Each tar as a file of rows, its samples, each with its byte span (the headers and data of its
        members); None where some tar interleaves the members of its samples, which spans cannot cut."""
        ids: dict[str, list[str]] = {}
        for sid, location, _ in self._listing()[0][:limit]:
            ids.setdefault(location[0], []).append(sid)
        files = []
        for rel, keys in ids.items():
            spans = np.array(self._cache_spans[rel][:len(keys)], np.int64).reshape(len(keys), 2)
            if (spans[1:, 0] < spans[:-1, 1]).any():
                return None
            files.append(RowFile(rel, len(keys), IDS_IN_ROWS, self._cache_stamps.get(rel, ""), spans[:, 0], spans[:, 1],
                                 ids=keys))
        return files

    def row_refs(self, rows: RowRange) -> list[SampleRef]:
        """The refs of a planned range, from its span of the tar alone (read once: the images are then
        cut from it); a span that no longer holds the planned samples (the tar changed) is an error."""
        url = join(self.base_url, rows.file)
        data = read_span(url, self.storage_options, rows)
        start = rows.span[0]  # type: ignore[index] - read_span checked it
        entries, _ = _samples_of(rows.file, _scan(io.BytesIO(data), rows.file, start), [])
        if len(entries) != rows.stop - rows.start:
            raise span_changed(url, rows, "write to a new output to map it as it is now")
        self._cache_span = (rows.file, start, data)
        return [SampleRef(sid, json.dumps([location, raw])) for sid, location, raw in entries]

    def _members(self, rel: str) -> Scanned:
        """The members of one tar (see :func:`_scan`)."""
        url = join(self.base_url, rel)
        fs, path = open_fs(url, self.storage_options)

        def scan() -> Scanned:
            # The whole tar is read again when the store fails on the way (a transient failure is
            # an OSError, which tarfile lets through), so that no member is missed or listed twice.
            with fs.open(path, "rb") as fh:
                return _scan(fh, rel)

        with storage_errors(url, "read", self.storage_options):
            return retrying(scan, f"reading the members of {url}")

    def stamp_key(self, location: Any) -> str:
        return str(location[0])

    def describe(self, location: Any) -> str:
        return f"{join(self.base_url, str(location[0]))}#{location[1]}"

    def _read_located(self, entries: Sequence[tuple[SampleRef, Any, int] | SampleError]
                      ) -> Iterator[Sample | SampleError]:
        """Ranged reads of each tar's members (neighbours merged into one request), in order."""
        blobs: dict[int, bytes | BaseException] = {}
        by_tar: dict[str, list[tuple[int, int, int]]] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, SampleError):
                tar, _, offset, size = entry[1]
                by_tar.setdefault(tar, []).append((int(offset), int(size), i))
        for tar, items in by_tar.items():
            blobs.update(self._ranges(tar, sorted(items)))
        for i, entry in enumerate(entries):
            if isinstance(entry, SampleError):
                yield entry
            else:
                ref, location, label = entry
                yield file_sample(ref.sample_id, label, self.describe(location), blobs[i], self.storage_options,
                                  policy=self.policy)

    def _ranges(self, tar: str, items: list[tuple[int, int, int]]) -> dict[int, bytes | BaseException]:
        if self._cache_span is not None and self._cache_span[0] == tar:  # the span row_refs just read
            _, first, data = self._cache_span
            if all(first <= offset and offset + size <= first + len(data) for offset, size, _ in items):
                return {i: data[offset - first:offset - first + size] for offset, size, i in items}
        url = join(self.base_url, tar)
        fs, path = open_fs(url, self.storage_options)
        spans: list[list] = []  # [start, end, [(offset, size, i), ...]]
        for offset, size, i in items:
            if spans and offset - spans[-1][1] <= _MERGE_GAP and offset + size - spans[-1][0] <= _MAX_SPAN:
                spans[-1][1] = max(spans[-1][1], offset + size)
                spans[-1][2].append((offset, size, i))
            else:
                spans.append([offset, offset + size, [(offset, size, i)]])
        with storage_errors(url, "read", self.storage_options):
            data = retrying(lambda: fs.cat_ranges([path] * len(spans), [s[0] for s in spans],
                                                  [s[1] for s in spans], on_error="return"), f"reading {url}")
            # A range the store failed transiently is read again (and past the retry budget fails the
            # shard); only what is wrong with the tar itself becomes the samples' error rows.
            for k, (start, end, _) in enumerate(spans):
                blob = data[k]
                if isinstance(blob, BaseException) and is_transient(blob):
                    data[k] = retrying(lambda start=start, end=end: fs.cat_file(path, start=start, end=end),
                                       f"reading bytes {start}:{end} of {url}")
                elif isinstance(blob, PermissionError):
                    raise translate(blob, url, "read", self.storage_options)
        out: dict[int, bytes | BaseException] = {}
        for (start, _, members), blob in zip(spans, data):
            for offset, size, i in members:
                if isinstance(blob, BaseException):
                    out[i] = blob
                elif len(blob) < offset - start + size:
                    out[i] = EOFError(f"{url} ends before byte {offset + size} (truncated since it was listed?)")
                else:
                    out[i] = blob[offset - start:offset - start + size]
        return out
