"""The one table of dataset formats: each format's name, Source class, description, aliases and how
it is detected. Everything that lists formats derives from :data:`REGISTRY`: ``open_source(kind=...)``,
detection (:mod:`storage.sources.detect`), the jobs' ``--source-format`` type and help
(:func:`jobs.runtime.cli.source_format`) and the errors that name the known formats. A new format is
one module with its Source class plus one :class:`SourceFormat` row here.

Detection reads listings only. A file URL is told by :attr:`SourceFormat.extensions`. A folder is
the first format, in table order, whose :attr:`SourceFormat.in_listing` accepts its file names; a
folder that none accepts is told by the folders below it (:attr:`SourceFormat.found_below`,
:attr:`SourceFormat.found_two_below`; see :func:`storage.sources.detect.detect`).

Tested by tests/storage/test_source_registry.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage.io.fs import InvalidStorageInput
from storage.sources.base import Source
from storage.sources.folder import ImageFolderSource
from storage.sources.idx import IDXSource, has_idx_files
from storage.sources.images import is_image_name
from storage.sources.index import INDEX_EXTENSIONS, IndexSource
from storage.sources.labeled import LABEL_FILES, LabeledFolderSource, find_labels_file
from storage.sources.parquet import ParquetSource
from storage.sources.webdataset import WebDatasetSource


@dataclass(frozen=True)
class SourceFormat:
    """One dataset format.

    ``in_listing`` says from a folder's file names (no directories) whether the folder holds this
    format. ``found_below``: a folder whose own files tell nothing is this format when a folder
    below it is (``<split>/...``). ``found_two_below``: files two folders down (``data/<split>/``)
    still make this format; for the others, something found that deep means class folders, a
    ``folder``."""

    name: str
    source: type[Source]
    description: str
    aliases: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    in_listing: Callable[[Sequence[str]], bool] | None = None
    found_below: bool = True
    found_two_below: bool = False


def _has_suffix(*suffixes: str) -> Callable[[Sequence[str]], bool]:
    return lambda names: any(n.endswith(suffixes) for n in names)


def _has_labels_file(names: Sequence[str]) -> bool:
    labels = find_labels_file(names)  # a lone other .csv beside class directories is not one
    return bool(labels) and (labels in LABEL_FILES or any(is_image_name(n) for n in names))


def _has_images(names: Sequence[str]) -> bool:
    return any(is_image_name(n) for n in names)


#: Every format this project reads, in detection order (the first whose rule holds wins: data files
#: win over stray images).
REGISTRY: tuple[SourceFormat, ...] = (
    SourceFormat("idx", IDXSource, "MNIST-style IDX files ({train,t10k}-images-idx3-ubyte[.gz] + labels)",
                 in_listing=has_idx_files, found_below=False),
    SourceFormat("parquet", ParquetSource, "Parquet files with an image column (bytes, or a path) and a label "
                 "column (Hugging Face exports)", extensions=(".parquet",), in_listing=_has_suffix(".parquet"),
                 found_two_below=True),
    SourceFormat("webdataset", WebDatasetSource, "WebDataset .tar shards (key.jpg|png + key.cls|json)",
                 aliases=("tar", "wds"), extensions=(".tar",), in_listing=_has_suffix(".tar"), found_two_below=True),
    SourceFormat("labeled-folder", LabeledFolderSource, "folder of images with a labels file (labels.csv, or "
                 "Hugging Face metadata.jsonl)", aliases=("hf-imagefolder", "metadata"), in_listing=_has_labels_file),
    SourceFormat("folder", ImageFolderSource, "image folder, root/<class>/<image> (images directly in the root "
                 "have no label)", aliases=("imagefolder", "image-folder"), in_listing=_has_images),
    SourceFormat("index", IndexSource, "CSV / TSV / JSONL index with a path or url column and a label column",
                 aliases=("csv", "jsonl", "tsv"), extensions=INDEX_EXTENSIONS, found_below=False),
)

# Every lookup below reads REGISTRY when called (six rows: no index is worth keeping in step).


def get_format(kind: str) -> SourceFormat:
    """The row of format ``kind``: a name or an alias such as csv, wds (any case), or a clear error."""
    wanted = str(kind).lower()
    for fmt in REGISTRY:
        if wanted == fmt.name or wanted in fmt.aliases:
            return fmt
    raise InvalidStorageInput(f"unknown source format {kind!r}; known formats: {known_formats()}")


def format_name(kind: str) -> str:
    """A ``--source-format`` value as a format's name (aliases such as csv, wds accepted)."""
    return get_format(kind).name


def format_names() -> tuple[str, ...]:
    """Every format's name, in table order."""
    return tuple(f.name for f in REGISTRY)


def accepted_names() -> tuple[str, ...]:
    """Every value ``--source-format`` takes: the names, then the aliases."""
    return (*format_names(), *(alias for f in REGISTRY for alias in f.aliases))


def known_formats() -> str:
    """The formats with what each is, for errors that must tell the user what this project reads."""
    return "; ".join(f"{f.name}: {f.description}" for f in REGISTRY)


def formats_help() -> str:
    """The formats as a short list for a ``--source-format`` help text (each name, its aliases after)."""
    return "one of " + ", ".join(f.name + (f" ({'/'.join(f.aliases)})" if f.aliases else "") for f in REGISTRY)


def by_extension(name: str) -> str | None:
    """The format a file named ``name`` is, from its extension, or None."""
    lower = name.lower()
    return next((f.name for f in REGISTRY if f.extensions and lower.endswith(f.extensions)), None)


def in_listing(names: Sequence[str]) -> str | None:
    """The format a folder whose file names are ``names`` holds (the first rule that holds), or None."""
    return next((f.name for f in REGISTRY if f.in_listing is not None and f.in_listing(names)), None)
