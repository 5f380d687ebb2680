"""IDX files (MNIST / Fashion-MNIST layout): ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

Uncompressed files are read with ranged reads (offset ``16 + i*rows*cols``), so a shard touches
only its own bytes. Gzip files cannot be seeked: the first read decompresses the images file once
and caches it in this Source object (its size and time: benchmarks/RESULTS.md, "Figures moved from
the code"); the cache is not pickled, so each worker process decompresses at most once per Source.

Tested by tests/storage/test_sources.py.
"""

from __future__ import annotations

import gzip
import numbers
import struct
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from models.fashion_mnist import FASHION_MNIST_CLASSES
from storage.io.fs import StorageError, join, open_fs, resolve_storage_options, storage_errors
from storage.io.retry import retrying
from storage.sources.base import RowFile, RowRange, Sample, SampleError, SampleRef, Source, split_aliases
from storage.sources.classes import kind_of_classes
from storage.sources.files import stamp
from storage.sources.inside import escapes
from storage.sources.policy import DEFAULT_POLICY

_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def find_idx_files(names: Sequence[str], split: str) -> tuple[str, str] | None:
    """(images, labels) file names for ``split`` among ``names`` (basenames), or None."""
    wanted = "train" if split.lower() in ("train", "training") else "test"
    if split.lower() not in ("train", "training") and "test" not in split_aliases(split):
        return None
    base = set(names)
    for prefix in _PREFIXES[wanted]:
        for ext in ("", ".gz"):
            images, labels = f"{prefix}-images-idx3-ubyte{ext}", f"{prefix}-labels-idx1-ubyte{ext}"
            if images in base and labels in base:
                return images, labels
    return None


def has_idx_files(names: Sequence[str]) -> bool:
    return any("-idx3-ubyte" in n or "-idx1-ubyte" in n for n in names)


class IDXSource(Source):
    """One split of an IDX dataset directory on any fsspec URL."""

    kind = "idx"
    intrinsic_indices = True  # the labels file holds the indices; the names are ours

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None, name: str | None = None,
                 files: tuple[str, str] | None = None):
        self.url = str(url).rstrip("/")
        self.storage_options = resolve_storage_options(storage_options)
        fs, root = open_fs(self.url, self.storage_options)
        self.fs, self.root = fs, root.rstrip("/")
        self._init_cache()
        if files is None:
            with storage_errors(self.url, "list", self.storage_options):
                names = [p.rstrip("/").rsplit("/", 1)[-1]
                         for p in retrying(lambda: fs.ls(self.root, detail=False), f"listing {self.url}")]
            files = find_idx_files(names, split)
            if files is None:
                raise StorageError(f"no IDX files for split {split!r} in {self.url}: expected "
                                   "{train,t10k}-images-idx3-ubyte[.gz] and the matching labels file")
        self.images_file, self.labels_file = files
        links = escapes(fs, self.root, [self._path(f) for f in files], DEFAULT_POLICY)
        if links:
            raise StorageError(f"{join(self.url, links.pop().rsplit('/', 1)[-1])} is a symbolic link that leads outside "
                               f"{self.url}; it is not read: replace the link with the file it points to")
        self.split = "train" if self.images_file.startswith("train") else "test"
        self.name = name or self.root.rsplit("/", 1)[-1] or "idx"
        self._n, self._rows, self._cols = self._header()
        if classes is not None:
            self.classes = list(classes)
        elif "fashion" in self.name.lower():
            self.classes = list(FASHION_MNIST_CLASSES)
        else:
            self.classes = [str(i) for i in range(int(self._labels().max()) + 1)]
        self.label_kind = kind_of_classes(self.classes)

    def _init_cache(self) -> None:
        self._cache_lock = threading.Lock()
        self._cache_images: np.ndarray | None = None
        self._cache_labels: np.ndarray | None = None
        self._cache_stamp: str | None = None

    def _path(self, name: str) -> str:
        return join(self.root, name)

    def _read_prefix(self, name: str, nbytes: int) -> bytes:
        def read() -> bytes:
            if name.endswith(".gz"):
                with self.fs.open(self._path(name), "rb") as fh, gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read(nbytes)
            return self.fs.cat_file(self._path(name), start=0, end=nbytes)

        with storage_errors(join(self.url, name), "read", self.storage_options):
            return retrying(read, f"reading {join(self.url, name)}")

    def _header(self) -> tuple[int, int, int]:
        head = self._read_prefix(self.images_file, 16)
        if len(head) < 16:
            raise StorageError(f"truncated IDX images file {join(self.url, self.images_file)}")
        magic, n, rows, cols = struct.unpack(">IIII", head)
        if magic != 0x00000803:
            raise StorageError(f"{join(self.url, self.images_file)} is not an IDX3 uint8 file (it does not start with "
                               "the magic number 0x803)")
        return n, rows, cols

    def _labels(self) -> np.ndarray:
        if self._cache_labels is not None:
            return self._cache_labels
        url = join(self.url, self.labels_file)
        with storage_errors(url, "read", self.storage_options):
            data = retrying(lambda: self.fs.cat_file(self._path(self.labels_file)), f"reading {url}")
        if self.labels_file.endswith(".gz"):
            data = gzip.decompress(data)
        magic, n = struct.unpack(">II", data[:8])
        if magic != 0x00000801 or len(data) < 8 + n:
            raise StorageError(f"{url} is not a complete IDX1 uint8 labels file")
        if n != self._n:
            raise StorageError(f"{url} holds {n} labels but the images file holds {self._n} images")
        self._cache_labels = np.frombuffer(data, dtype=np.uint8, count=n, offset=8).astype(np.int64)
        return self._cache_labels

    def _all_images(self) -> np.ndarray:
        """The whole decompressed images file (gzip only), cached."""
        with self._cache_lock:
            if self._cache_images is None:
                url = join(self.url, self.images_file)
                with storage_errors(url, "read", self.storage_options):
                    data = gzip.decompress(retrying(lambda: self.fs.cat_file(self._path(self.images_file)),
                                                    f"reading {url}"))
                size = self._rows * self._cols
                if len(data) < 16 + self._n * size:
                    raise StorageError(f"truncated IDX images file {url}")
                self._cache_images = np.frombuffer(data, np.uint8, self._n * size, 16).reshape(
                    self._n, self._rows, self._cols)
            return self._cache_images

    def list(self, limit: int | None = None) -> list[SampleRef]:
        return self._refs(0, min(self._n, limit or self._n))

    def _id_format(self) -> str:
        width = max(5, len(str(self._n - 1)))
        prefix = f"{self.name}/{self.split}/".replace("{", "{{").replace("}", "}}")
        return prefix + "{row:0" + str(width) + "d}"

    def row_files(self, limit: int | None = None) -> list[RowFile]:
        """One file of rows: the images file (its stamp also covers the labels file's)."""
        if self._cache_stamp is None:
            with storage_errors(self.url, "list", self.storage_options):
                self._cache_stamp = "+".join(
                    stamp(retrying(lambda f=f: self.fs.info(self._path(f)), f"checking {join(self.url, f)}"))
                    for f in (self.images_file, self.labels_file))
        return [RowFile(self.images_file, min(self._n, limit or self._n), self._id_format(), self._cache_stamp)]

    def row_refs(self, rows: RowRange) -> list[SampleRef]:
        return self._refs(rows.start, rows.stop)

    def _refs(self, start: int, stop: int) -> list[SampleRef]:
        template = self._id_format()
        return [SampleRef(template.format(row=i), i) for i in range(start, min(stop, self._n))]

    def _runs(self, idx: list[int]) -> Iterator[tuple[int, int]]:
        """Maximal runs of consecutive indices as (start, stop)."""
        i = 0
        while i < len(idx):
            j = i
            while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
                j += 1
            yield idx[i], idx[j] + 1
            i = j + 1

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        labels = self._labels()
        size = self._rows * self._cols
        valid = [r for r in refs if isinstance(r.locator, numbers.Integral) and 0 <= r.locator < self._n]
        images: dict[int, np.ndarray] = {}
        if self.images_file.endswith(".gz"):
            if valid:
                everything = self._all_images()
                images = {int(r.locator): everything[r.locator] for r in valid}
        else:
            url = join(self.url, self.images_file)
            for start, stop in self._runs(sorted({int(r.locator) for r in valid})):
                with storage_errors(url, "read", self.storage_options):
                    data = retrying(lambda start=start, stop=stop: self.fs.cat_file(
                        self._path(self.images_file), start=16 + start * size, end=16 + stop * size),
                        f"reading images {start}:{stop} of {url}")
                if len(data) < (stop - start) * size:
                    raise StorageError(f"truncated IDX images file {url}")
                block = np.frombuffer(data, np.uint8).reshape(stop - start, self._rows, self._cols)
                images.update({start + k: block[k] for k in range(stop - start)})
        for ref in refs:
            if ref.locator not in images:
                yield SampleError(ref.sample_id, f"index {ref.locator!r} is outside {self.url} "
                                                 f"({self.split}: {self._n} images)")
                continue
            yield Sample(ref.sample_id, np.array(images[ref.locator])[:, :, None], int(labels[ref.locator]))
