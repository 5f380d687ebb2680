"""The source contract shared by the driver, the workers and the evaluation jobs.

A :class:`Source` lists samples cheaply as :class:`SampleRef` (no decoding) and reads any subset
of them. Refs are plain data (``sample_id`` + a JSON-serializable ``locator``): the driver persists
them in its plan, and a worker calls ``read(refs)`` on an equal Source opened in another process.

Tested by tests/storage/test_sources.py and tests/storage/test_source_kinds.py.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.io.fs import StorageError
from storage.sources.images import (decode_image, decode_kind, decode_reason,  # noqa: F401 - the contract's decoder
                                     to_uint8_hwc)
from storage.sources.policy import DEFAULT_POLICY, SourcePolicy

#: Top-level names that mark a split rather than a class or a data directory.
SPLIT_ALIASES = {
    "test": ("test", "t10k", "val", "valid", "validation"),
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
}
SPLIT_WORDS = frozenset(w for ws in SPLIT_ALIASES.values() for w in ws)


_WORD = re.compile(r"[A-Za-z0-9]+")


def split_words(rel: str) -> set[str]:
    """Split words named by a relative path's directories or by its file name's leading word."""
    *dirs, name = rel.split("/")
    first = _WORD.match(name)
    words = {d.lower() for d in dirs} | ({first.group(0).lower()} if first else set())
    return words & SPLIT_WORDS


def files_of_split(rel: Sequence[str], split: str, url: str, what: str) -> list[str]:
    """The files among ``rel`` that belong to ``split`` when some are named by split (``test-0000.parquet``,
    ``data/train/...``), else all of them. "test" falls back to "val" only where there is no test split."""
    marked = [r for r in rel if split_words(r)]
    if not marked:
        return list(rel)
    chosen: list[str] = []
    for alias in split_aliases(split):
        chosen = chosen or [r for r in rel if alias in split_words(r)]
    if not chosen:
        have = sorted(set().union(*(split_words(r) for r in marked)))
        raise StorageError(f"{url} holds {what} for splits {have} but not {split!r}")
    return chosen


def split_aliases(split: str) -> tuple[str, ...]:
    split = split.lower()
    if split in ("t10k",):
        split = "test"
    if split in ("validation", "valid"):
        split = "val"
    return SPLIT_ALIASES.get(split, (split,))


@dataclass(frozen=True)
class SampleRef:
    """A sample located in a source, known without decoding it."""

    sample_id: str        # stable across runs, e.g. "fashion-mnist/test/00042" or a relative file path
    locator: str | int    # source-specific, JSON-serializable
    # What the store says about the sample's bytes (size and ETag or mtime), where listing gives it
    # for free: a later listing with another stamp means the file changed since it was planned.
    stamp: str = field(default="", compare=False)


#: The ``id_format`` of a row file whose sample ids are data (a ``sample_id`` column, an index's paths,
#: a tar's keys): they are read with the rows, by the worker, and never held by the plan.
IDS_IN_ROWS = ""


@dataclass(frozen=True)
class RowFile:
    """A file of a row-addressable source: its rows 0..rows-1 are samples, in order. A plan holds a
    shard as row ranges of such files instead of one ref per sample (:mod:`storage.maps.plan`).

    A sample's id follows from (file, row) alone, ``id_format.format(row=i)``, or, with ``id_format``
    :data:`IDS_IN_ROWS`, is data read with the row. Where rows are read by bytes (an index's lines, a
    tar's members), ``starts``/``ends`` give each row's byte span: a range never spans a gap between
    rows (a skipped line or member), and ``span_stamp(start, end)`` stamps a span by its bytes, so
    that appending rows to the file changes none of the planned ones. Where ids are data, ``ids``
    holds them (a list or an Arrow array), which the plan writes once into its id index so that a
    sample's shard is found by its id (:func:`storage.maps.plan.shard_of`).
    """

    name: str             # relative to the source URL
    rows: int
    id_format: str        # a str.format template with one ``{row}`` field, e.g. "test-00000.parquet#{row}"
    stamp: str = ""       # size and version of the file (a changed stamp: its samples changed)
    starts: np.ndarray | None = field(default=None, compare=False)  # int64 [rows]: first byte of each row
    ends: np.ndarray | None = field(default=None, compare=False)    # int64 [rows]: the byte after each row
    span_stamp: Callable[[int, int], str] | None = field(default=None, compare=False)
    ids: Sequence[Any] | None = field(default=None, compare=False)  # where ids are data: those of the rows, in order

    @property
    def ids_in_rows(self) -> bool:
        return self.id_format == IDS_IN_ROWS

    def sample_id(self, row: int) -> str:
        return self.id_format.format(row=row)

    def row_of(self, sample_id: str) -> int | None:
        """The row whose id is ``sample_id``, or None when it is not one of this file's ids (always
        None where ids are data)."""
        if self.ids_in_rows:
            return None
        row = row_of_id(self.id_format, sample_id)
        return row if row is not None and row < self.rows else None


@dataclass(frozen=True)
class RowRange:
    """Rows ``start:stop`` of a row file; their ids are ``id_format.format(row=i)``, or data read with
    the rows (:data:`IDS_IN_ROWS`). ``span`` is their byte span where rows are read by bytes."""

    file: str
    start: int
    stop: int
    id_format: str
    stamp: str = field(default="", compare=False)
    span: tuple[int, int] | None = None

    @property
    def ids_in_rows(self) -> bool:
        return self.id_format == IDS_IN_ROWS

    def sample_ids(self) -> list[str]:
        """The ids of the rows, where they follow from the row."""
        if self.ids_in_rows:
            raise ValueError(f"the ids of {self.file} rows {self.start}:{self.stop} are data: read them from the source")
        return [self.id_format.format(row=i) for i in range(self.start, self.stop)]

    def describe(self) -> str:
        """The rows as users can find them (for messages)."""
        return f"{self.file} rows {self.start}:{self.stop}" if self.ids_in_rows else self.id_format.format(row=self.start)


def row_of_id(id_format: str, sample_id: str) -> int | None:
    """The row ``i`` whose id ``id_format.format(row=i)`` is ``sample_id``, or None when no row's is."""
    head, _, rest = id_format.partition("{row")
    tail = rest.partition("}")[2]
    if not (sample_id.startswith(head) and sample_id.endswith(tail)) or len(sample_id) <= len(head) + len(tail):
        return None
    middle = sample_id[len(head):len(sample_id) - len(tail)]
    return int(middle) if middle.isdigit() and id_format.format(row=int(middle)) == sample_id else None


@dataclass
class Sample:
    sample_id: str
    image: np.ndarray     # uint8 [H, W, C]: C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA); see decode_image
    label: int            # index into the source's ``classes``; NO_LABEL when the sample has none


#: The label of a sample its source gives no class (an image outside any class directory, an index row
#: without a label). Stored as -1 in the maps' ``label`` column.
NO_LABEL = -1

#: What went wrong with a sample (the ``kind`` of its error row).
ERROR_KINDS = ("read", "decode", "too-large", "preprocess", "label", "attribution", "outside-source")


@dataclass
class SampleError:
    """A sample that could not be processed. ``reason`` names the file (or row) and the cause;
    ``kind`` says at which step: read, decode, preprocess, label or attribution, or outside-source
    (its path leads outside the source: not read, storage.sources.inside), or too-large (the image
    is above ``--max-image-pixels``: not decoded, storage.sources.images)."""

    sample_id: str
    reason: str
    kind: str = "read"


@dataclass(frozen=True)
class SkippedFile:
    """A file under a source that is not a sample (not an image, not a label file the source uses)."""

    path: str             # relative to the source URL
    reason: str


class Source(abc.ABC):
    """A dataset on any fsspec URL. Subclasses set ``url`` and ``classes``.

    ``kind`` names the format (``open_source(kind=...)``, ``--source-format``). ``label_kind`` says what
    the labels are: ``"names"`` (``classes`` are real class names, which jobs match against a model's
    class names), ``"integers"`` (``classes`` are "0".."K-1": the labels are class indices already) or
    ``"none"`` (no sample has a label); ``intrinsic_indices`` is described below.
    """

    url: str
    classes: list[str]
    kind: str = ""
    label_kind: str = "names"
    #: True where label indices are the data's own (an IDX labels file, a Parquet label column), not the
    #: position of a name in a sorted list: they stay valid for a model that names no classes.
    intrinsic_indices: bool = False
    #: The operator's limits on what this source may make the job read (set by open_source).
    policy: SourcePolicy = DEFAULT_POLICY

    @abc.abstractmethod
    def list(self, limit: int | None = None) -> list[SampleRef]:
        """All samples (or the first ``limit``) in deterministic source order; cheap (listing and
        headers, no decoding). Row-addressable sources read only as far as ``limit`` needs."""

    @abc.abstractmethod
    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        """The samples of ``refs``, in that order; touches only what these refs need.

        A sample that cannot be decoded yields a :class:`SampleError`, never an exception.
        A store that cannot be reached at all raises :class:`storage.io.fs.StorageError`.
        """

    def skipped(self) -> list[SkippedFile]:
        """Files under the source that are not samples, with why (complete once :meth:`list` ran)."""
        return []

    def row_files(self, limit: int | None = None) -> list[RowFile] | None:
        """The source as files of rows (the first ``limit`` rows), where it is row-addressable and its
        sample ids follow from the row; None where samples must be listed one by one (the default).
        Cheap: headers or footers only, nothing per sample."""
        return None

    def row_refs(self, rows: RowRange) -> list[SampleRef]:
        """The refs of a range of a row file (see :meth:`row_files`); where ids are data, they are read
        here. Rows that no longer match the plan (the file changed since) raise StorageError."""
        raise NotImplementedError(f"{type(self).__name__} is not row-addressable")

    def find(self, sample_ids: Sequence[str]) -> dict[str, SampleRef]:
        """Refs of those ``sample_ids`` the source holds. Sources whose ids follow from the row work
        them out from the ids; the others list the source (once per Source object, where it caches
        its listing)."""
        files = self.row_files()
        if files is None or any(f.ids_in_rows for f in files):
            wanted = set(sample_ids)
            return {r.sample_id: r for r in self.list() if r.sample_id in wanted}
        found = {}
        for sid in sample_ids:
            for f in files:
                row = f.row_of(sid)
                if row is not None:
                    found[sid] = self.row_refs(RowRange(f.name, row, row + 1, f.id_format, f.stamp))[0]
                    break
        return found

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, classes={len(self.classes)})"

    def __getstate__(self) -> dict[str, Any]:
        # Caches (decoded files, listings, open handles) stay behind when a Source travels to a worker.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def _init_cache(self) -> None:
        """Create the per-object caches (names start with ``_cache``); called on init and unpickle."""


def decoded_sample(sample_id: str, data: bytes | None, label: int, where: str, *,
                   policy: SourcePolicy) -> Sample | SampleError:
    """The sample, or an error row naming ``where`` (the file or row) and why its bytes do not decode.
    ``policy`` is the source's (required, so that no decode path escapes the operator's pixel cap): an
    image above it is an error row of kind ``too-large``, never decoded."""
    try:
        return Sample(sample_id, decode_image(data, policy), label)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt data
        return SampleError(sample_id, decode_reason(err, where, data), decode_kind(err))
