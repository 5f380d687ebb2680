"""What kind of dataset a URL holds, from one or two listings (no file is read).

The formats, their file extensions and the rule that tells each in a folder's listing are rows of
:data:`storage.sources.registry.REGISTRY`; this module walks the URL. A file URL is told by its
extension (``.parquet`` -> parquet, ``.tar`` -> webdataset, ``.csv`` / ``.tsv`` / ``.jsonl`` -> index).
A directory is the first format in the table whose rule holds for its files (idx, parquet, webdataset,
labeled-folder, folder: data files win over stray images); when none holds, it is told by the
directories below it (after stepping into the split's directory when its top level holds only
split directories).

Anything else is an error that says what was found and lists the formats this project reads.

Tested by tests/storage/test_source_kinds.py and tests/storage/test_source_registry.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from storage.io.fs import InvalidStorageInput, is_file, open_fs, redact_url, storage_errors
from storage.io.retry import retrying
from storage.sources.base import SPLIT_WORDS, split_aliases
from storage.sources.files import is_skipped_folder
from storage.sources import registry
from storage.sources.registry import by_extension, get_format, in_listing, known_formats

__all__ = ["detect"]


def _kind_of_listing(entries: list[dict]) -> str | None:
    return in_listing([e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") != "directory"])


def detect(url: str, storage_options: Mapping[str, Any] | None) -> str:
    """The kind of dataset at ``url`` (see the module docstring), or a clear error."""
    by_name = by_extension(url.rstrip("/"))
    fs, path = open_fs(url, storage_options)
    if by_name:
        with storage_errors(url, "list", storage_options):
            if retrying(lambda: is_file(fs, path), f"checking {url}"):
                return by_name
    with storage_errors(url, "list", storage_options):
        entries = retrying(lambda: fs.ls(path, detail=True), f"listing {url}")
    if len(entries) == 1 and entries[0].get("type") == "file" and \
            entries[0]["name"].rstrip("/") == fs._strip_protocol(path).rstrip("/"):
        raise InvalidStorageInput(f"{redact_url(url)} is a file this project does not read as a dataset; "
                                  f"known formats: {known_formats()}")
    kind = _kind_of_listing(entries)
    if kind:
        return kind
    dirs = [e for e in entries if e.get("type") == "directory"  # _meta, .git...: never read (files.SKIPPED_FOLDER)
            and not is_skipped_folder(e["name"].rstrip("/").rsplit("/", 1)[-1])]
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in dirs]
    if names and all(n.lower() in SPLIT_WORDS for n in names):  # <split>/...: look inside one split
        preferred = [e for alias in split_aliases("test") for e in dirs if e["name"].rstrip("/").endswith(alias)]
        dirs = (preferred or dirs)[:1]
    seen = set()
    for entry in sorted(dirs, key=lambda e: e["name"])[:3]:
        with storage_errors(url, "list", storage_options):
            below = fs.ls(entry["name"], detail=True)
        seen.add(_kind_of_listing(below))
        for sub in sorted((b for b in below if b.get("type") == "directory"), key=lambda b: b["name"])[:1]:
            with storage_errors(url, "list", storage_options):  # <split>/<class>/ or data/<split>/
                deeper = _kind_of_listing(fs.ls(sub["name"], detail=True))
            seen.add(deeper if deeper is None or get_format(deeper).found_two_below else "folder")
    for fmt in registry.REGISTRY:  # in table order: data files win over stray images
        if fmt.found_below and fmt.name in seen:
            return fmt.name
    found = [e["name"].rstrip("/").rsplit("/", 1)[-1] + ("/" if e.get("type") == "directory" else "")
             for e in entries][:8]
    raise InvalidStorageInput(f"cannot tell what kind of dataset {redact_url(url)} is (it holds "
                              f"{', '.join(found) or 'nothing'}); pass --source-format. Known formats: "
                              f"{known_formats()}")
