"""Dataset sources over fsspec URLs: Fashion-MNIST IDX, image folders, Parquet of encoded images.

``open_source(url)`` picks the kind from what the URL holds::

    open_source("fashion-mnist")                      # the Debian package's IDX files
    open_source("s3://bucket/imagenet-val")           # root/<class>/<file>.jpg
    open_source("s3://bucket/cifar10", split="test")  # *.parquet with image/label columns

See :mod:`storage.sources.base` for the contract (SampleRef, Sample, SampleError, Source).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from storage.fs import InvalidStorageInput, StorageError, open_fs, storage_errors
from storage.sources.base import Sample, SampleError, SampleRef, Source, decode_image
from storage.sources.folder import IMAGE_EXTENSIONS, ImageFolderSource
from storage.sources.idx import FASHION_MNIST_CLASSES, IDXSource, find_idx_files, has_idx_files
from storage.sources.parquet import ParquetSource

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IDXSource", "ImageFolderSource", "ParquetSource",
           "Sample", "SampleError", "SampleRef", "Source", "decode_image", "load_arrays", "open_source"]

log = logging.getLogger(__name__)

#: Where the Debian package ``dataset-fashion-mnist`` puts the four IDX files.
FASHION_MNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
_ALIASES = {"fashion-mnist": FASHION_MNIST_DIR, "fashion_mnist": FASHION_MNIST_DIR, "fashionmnist": FASHION_MNIST_DIR}
KINDS = ("idx", "folder", "parquet")


def open_source(url: str, *, split: str = "test", storage_options: dict | None = None,
                classes: Sequence[str] | None = None, kind: str | None = None) -> Source:
    """Open the dataset at ``url``; ``kind`` ("idx", "folder", "parquet") skips the detection.

    Detection looks at the top level only (one listing): IDX files -> IDX; ``*.parquet`` files,
    or a URL ending in ``.parquet`` -> Parquet; otherwise, if the first sub-directories hold
    Parquet files -> Parquet, else an image folder.
    """
    alias = _ALIASES.get(str(url).lower())
    if alias is not None:
        if not os.path.isdir(alias):
            raise StorageError(f"Fashion-MNIST is not installed at {alias}: run "
                               "`sudo apt-get install dataset-fashion-mnist` (or set FASHION_MNIST_DIR)")
        return IDXSource(alias, split=split, classes=classes, name="fashion-mnist")
    if kind is not None and kind not in KINDS:
        raise InvalidStorageInput(f"kind must be one of {KINDS}, got {kind!r}")
    if kind is None:
        kind = _detect(str(url), storage_options)
    cls = {"idx": IDXSource, "folder": ImageFolderSource, "parquet": ParquetSource}[kind]
    return cls(url, split=split, storage_options=storage_options, classes=classes)


def _detect(url: str, storage_options: dict | None) -> str:
    if url.rstrip("/").endswith(".parquet"):
        return "parquet"
    fs, path = open_fs(url, storage_options)
    with storage_errors(url, "list", storage_options):
        entries = fs.ls(path, detail=True)
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries]
    if has_idx_files(names):
        return "idx"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names):
        return "folder"
    for entry in [e for e in entries if e.get("type") == "directory"][:3]:
        with storage_errors(url, "list", storage_options):
            below = fs.ls(entry["name"], detail=True)
        if any(b["name"].endswith(".parquet") for b in below):
            return "parquet"
        if any(b["name"].lower().endswith(IMAGE_EXTENSIONS) for b in below):
            return "folder"
        for sub in [b for b in below if b.get("type") == "directory"][:1]:  # <split>/<class>/ or data/<split>/
            with storage_errors(url, "list", storage_options):
                if any(p.endswith(".parquet") for p in fs.ls(sub["name"], detail=False)):
                    return "parquet"
    return "folder"


def load_arrays(source: Source, refs: Sequence[SampleRef] | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All (or ``refs``') samples as arrays: images uint8 [N, H, W, C], labels int64 [N], sample_ids.

    Samples that fail to decode are skipped; their count and first reasons are logged. Images of
    different shapes are an error (resize them first, e.g. with models.preprocess).
    """
    refs = source.list() if refs is None else refs
    images, labels, ids, errors = [], [], [], []
    for item in source.read(refs):
        if isinstance(item, SampleError):
            errors.append(item)
            continue
        images.append(item.image)
        labels.append(item.label)
        ids.append(item.sample_id)
    if errors:
        log.warning("%s: skipped %d of %d samples that could not be read, e.g. %s", source.url, len(errors),
                    len(refs), "; ".join(f"{e.sample_id}: {e.reason}" for e in errors[:3]))
    if not images:
        return np.zeros((0, 0, 0, 0), np.uint8), np.zeros(0, np.int64), ids
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise InvalidStorageInput(f"{source.url}: images have different shapes {shapes[:5]}; resize them before stacking")
    return np.stack(images), np.asarray(labels, dtype=np.int64), ids
