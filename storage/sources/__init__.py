"""Dataset sources over fsspec URLs: any image a user has, in the layouts people keep them in.

``open_source(url)`` picks the kind from what the URL holds (:mod:`storage.sources.detect`), or
takes it from ``kind=`` (``--source-format``)::

    open_source("fashion-mnist")                        # the Debian package's IDX files
    open_source("s3://bucket/imagenet-val")             # root/<class>/<file>.jpg        (folder)
    open_source("s3://bucket/flat")                     # images + labels.csv / metadata.jsonl (labeled-folder)
    open_source("s3://bucket/val.csv")                  # path|url,label rows            (index)
    open_source("s3://bucket/wds")                      # shard-000.tar with key.jpg + key.cls (webdataset)
    open_source("s3://bucket/cifar10", split="test")    # *.parquet with image/label columns (parquet)

The formats (name, Source class, aliases, detection rule) are the rows of
:data:`storage.sources.registry.REGISTRY`. See :mod:`storage.sources.base` for the contract (SampleRef,
Sample, SampleError, SkippedFile, Source), :mod:`storage.sources.images` for decoding and
:mod:`storage.sources.classes` for labels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from storage.io.fs import InvalidStorageInput, StorageError, redact_text, redact_url, resolve_storage_options
from storage.sources.base import (IDS_IN_ROWS, NO_LABEL, RowFile, RowRange, Sample, SampleError, SampleRef, SkippedFile,
                                  Source, decode_image)
from storage.sources.classes import LabelMatch, match_labels, normalize_class_name
from storage.sources.detect import detect
from storage.sources.folder import ImageFolderSource
from storage.sources.idx import FASHION_MNIST_CLASSES, IDXSource, find_idx_files, has_idx_files
from storage.sources.images import image_extensions
from storage.sources.index import IndexSource
from storage.sources.labeled import LabeledFolderSource
from storage.sources.parquet import ParquetSource
from storage.sources.policy import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_POLICY, SourcePolicy
from storage.sources.registry import REGISTRY, SourceFormat, format_name, get_format, known_formats
from storage.sources.webdataset import WebDatasetSource

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IDS_IN_ROWS",
           "IDXSource", "ImageFolderSource", "IndexSource", "LabelMatch", "LabeledFolderSource", "NO_LABEL",
           "ParquetSource", "REGISTRY", "RowFile", "RowRange", "Sample", "SampleError", "SampleRef", "SkippedFile",
           "Source", "SourceFormat", "SourcePolicy", "WebDatasetSource", "decode_image", "decoding_for",
           "find_idx_files", "format_name", "get_format", "has_idx_files", "image_extensions", "known_formats", "load_arrays",
           "match_labels", "model_policy", "normalize_class_name", "open_source", "source_location"]

log = logging.getLogger(__name__)

#: Where the Debian package ``dataset-fashion-mnist`` puts the four IDX files.
FASHION_MNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
_ALIASES = {"fashion-mnist": FASHION_MNIST_DIR, "fashion_mnist": FASHION_MNIST_DIR, "fashionmnist": FASHION_MNIST_DIR}


def open_source(url: str, *, split: str = "test", storage_options: dict | None = None,
                classes: Sequence[str] | None = None, kind: str | None = None,
                policy: SourcePolicy | None = None) -> Source:
    """Open the dataset at ``url``; ``kind`` (a format of :data:`REGISTRY`, or an alias such as csv, wds)
    skips the detection. ``classes`` fixes the class list (a job's workers get the driver's).
    ``policy`` holds the operator's limits on what the source can make the job read
    (:mod:`storage.sources.policy`; default: only inside the source, images up to 40 megapixels).
    ``storage_options`` None means ``$STORAGE_OPTIONS``'s, as the jobs read it (read once, here)."""
    policy = policy or DEFAULT_POLICY
    storage_options = resolve_storage_options(storage_options)
    alias = _ALIASES.get(str(url).lower())
    if alias is not None:
        if not os.path.isdir(alias):
            raise StorageError(f"Fashion-MNIST is not installed at {alias}: run "
                               "`sudo apt-get install dataset-fashion-mnist` (or set FASHION_MNIST_DIR)")
        return _with_policy(IDXSource(alias, split=split, classes=classes, name="fashion-mnist"), policy)
    fmt = get_format(kind if kind is not None else detect(str(url), storage_options))
    return _with_policy(fmt.source(url, split=split, storage_options=storage_options, classes=classes), policy)


def source_location(url: str) -> str:
    """Where a source's files are: the folder a dataset name stands for, else ``url`` itself (for
    comparing a job's output with its source: storage.io.outputs.check_apart)."""
    return _ALIASES.get(str(url).lower(), str(url))


def _with_policy(source: Source, policy: SourcePolicy) -> Source:
    source.policy = policy
    return source


def model_policy(policy: SourcePolicy, spec: Any) -> SourcePolicy:
    """``policy`` with the decode size of a model's ``spec`` (models.ModelSpec): JPEGs then decode at
    the smallest DCT scale that covers the model's input (storage.sources.policy, .images). Whatever
    reads images to show "the image the model saw" uses this, so it sees the same decode."""
    from models.preprocess import decode_size

    return dataclasses.replace(policy, decode_size=decode_size(spec))


@contextlib.contextmanager
def decoding_for(source: Source, spec: Any) -> Iterator[Source]:
    """``source`` reading for ``spec``'s model (:func:`model_policy`) within the block; its own policy after."""
    saved = source.policy
    source.policy = model_policy(saved, spec)
    try:
        yield source
    finally:
        source.policy = saved


def load_arrays(source: Source, refs: Sequence[SampleRef] | None = None, spec: Any = None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All (or ``refs``') samples as arrays: images uint8 [N, H, W, C], labels int64 [N], sample_ids.

    Samples that fail to decode are skipped; their count and first reasons are logged. With a model's
    ``spec`` (models.ModelSpec) every image is brought to what that model sees (its channels and input
    size, models.preprocess.model_view), so any source stacks; without one, images of different shapes
    (sizes, or modes such as RGB beside RGBA) are an error. A spec also sets the decode size
    (:func:`decoding_for`): JPEGs decode as the attribution job's workers decode them.
    """
    refs = source.list() if refs is None else refs
    images, labels, ids, errors = [], [], [], []
    with decoding_for(source, spec) if spec is not None else contextlib.nullcontext(source):
        for item in source.read(refs):
            if isinstance(item, SampleError):
                errors.append(item)
                continue
            images.append(item.image)
            labels.append(item.label)
            ids.append(item.sample_id)
    if errors:
        log.warning("%s: skipped %d of %d samples that could not be read, e.g. %s", redact_url(source.url), len(errors),
                    len(refs), redact_text("; ".join(f"{e.sample_id}: {e.reason}" for e in errors[:3])))
    if not images:
        return np.zeros((0, 0, 0, 0), np.uint8), np.zeros(0, np.int64), ids
    if spec is not None:
        from models.preprocess import model_view

        images = model_view(spec, images)
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise InvalidStorageInput(f"{source.url}: images have different shapes {shapes[:5]} (height, width, "
                                  "channels); pass the model's spec to load_arrays to bring them to its input")
    return np.stack(images), np.asarray(labels, dtype=np.int64), ids
