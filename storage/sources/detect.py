"""What kind of dataset a URL holds, from one or two listings (no file is read).

A file URL is told by its extension: ``.parquet`` -> parquet, ``.tar`` -> webdataset, ``.csv`` /
``.tsv`` / ``.jsonl`` -> index. A directory (after stepping into the split's directory when its
top level holds only split directories) is, in this order:

1. ``idx``: it holds IDX files (``*-idx3-ubyte[.gz]``);
2. ``parquet``: it (or a directory below it) holds ``.parquet`` files;
3. ``webdataset``: it (or a directory below it) holds ``.tar`` files;
4. ``labeled-folder``: it holds a labels file (``metadata.jsonl``, ``labels.csv``, ...) or a single
   ``.csv`` / ``.jsonl`` next to images;
5. ``folder``: it holds images, or directories (classes) that do.

Anything else is an error that says what was found and lists the formats this project reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from storage.io.fs import InvalidStorageInput, is_file, open_fs, redact_url, storage_errors
from storage.io.retry import retrying
from storage.sources.base import SPLIT_WORDS, split_aliases
from storage.sources.files import is_skipped_folder
from storage.sources.idx import has_idx_files
from storage.sources.images import is_image_name
from storage.sources.index import INDEX_EXTENSIONS
from storage.sources.labeled import LABEL_FILES, find_labels_file

#: The formats ``open_source(kind=...)`` / ``--source-format`` take, with what each is.
FORMATS = {
    "idx": "MNIST-style IDX files ({train,t10k}-images-idx3-ubyte[.gz] + labels)",
    "folder": "image folder, root/<class>/<image> (images directly in the root have no label)",
    "labeled-folder": "folder of images with a labels file (labels.csv, or Hugging Face metadata.jsonl)",
    "index": "CSV / TSV / JSONL index with a path or url column and a label column",
    "webdataset": "WebDataset .tar shards (key.jpg|png + key.cls|json)",
    "parquet": "Parquet files with an image column (bytes, or a path) and a label column (Hugging Face exports)",
}
_ALIASES = {"imagefolder": "folder", "image-folder": "folder", "csv": "index", "jsonl": "index", "tsv": "index",
            "tar": "webdataset", "wds": "webdataset", "hf-imagefolder": "labeled-folder", "metadata": "labeled-folder"}


def known_formats() -> str:
    return "; ".join(f"{name}: {what}" for name, what in FORMATS.items())


def format_name(kind: str) -> str:
    """A ``--source-format`` value as one of :data:`FORMATS` (aliases such as csv, wds accepted)."""
    name = _ALIASES.get(str(kind).lower(), str(kind).lower())
    if name not in FORMATS:
        raise InvalidStorageInput(f"unknown source format {kind!r}; known formats: {known_formats()}")
    return name


def _by_extension(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".tar"):
        return "webdataset"
    if lower.endswith(INDEX_EXTENSIONS):
        return "index"
    return None


def _kind_of_listing(entries: list[dict]) -> str | None:
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") != "directory"]
    if has_idx_files(names):
        return "idx"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    images = [n for n in names if is_image_name(n)]
    labels = find_labels_file(names)
    if labels and (images or labels in LABEL_FILES):  # a lone other .csv beside class directories is not one
        return "labeled-folder"
    return "folder" if images else None


def detect(url: str, storage_options: Mapping[str, Any] | None) -> str:
    """The kind of dataset at ``url`` (see the module docstring), or a clear error."""
    by_name = _by_extension(url.rstrip("/"))
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
            seen.add(deeper if deeper in ("parquet", "webdataset") or deeper is None else "folder")
    for kind in ("parquet", "webdataset", "labeled-folder", "folder"):  # data files win over stray images
        if kind in seen:
            return kind
    found = [e["name"].rstrip("/").rsplit("/", 1)[-1] + ("/" if e.get("type") == "directory" else "")
             for e in entries][:8]
    raise InvalidStorageInput(f"cannot tell what kind of dataset {redact_url(url)} is (it holds "
                              f"{', '.join(found) or 'nothing'}); pass --source-format. Known formats: "
                              f"{known_formats()}")
