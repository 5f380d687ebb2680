"""Image folders, ImageNet style: ``root/<class>/<file>.png|jpg|jpeg`` on any fsspec URL.

If every top-level directory of ``root`` is a split name (train, test, val, ...), the split's
directory is the class root. Classes are the sorted class directory names, unless ``classes`` is
given (then an unknown directory is an error naming it). ``sample_id`` and locator are the file's
path relative to the class root, with '/' separators. Files may sit deeper inside a class
directory; files directly in the root, and non-image files, are skipped (and counted in a log line).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from storage.fs import StorageError, join, open_fs, storage_errors, translate
from storage.sources.base import SPLIT_WORDS, Sample, SampleError, SampleRef, Source, decoded_sample, \
    split_aliases

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_FETCH_BATCH = 64  # files fetched concurrently (one async batch) per round trip


def split_root(root: str, url: str, split: str, top_dirs: Sequence[str]) -> tuple[str, str]:
    """(path, url) of the class root: ``root/<split>`` when the top level holds only split dirs."""
    names = [d.rstrip("/").rsplit("/", 1)[-1] for d in top_dirs]
    if names and all(n.lower() in SPLIT_WORDS for n in names):
        for alias in split_aliases(split):
            for n in names:
                if n.lower() == alias:
                    return join(root, n), join(url, n)
        raise StorageError(f"{url} holds the splits {sorted(names)} but not {split!r}: pass split= one of them")
    return root, url


class ImageFolderSource(Source):
    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        self.storage_options = dict(storage_options or {})
        fs, root = open_fs(url, self.storage_options)
        with storage_errors(url, "list", self.storage_options):
            entries = fs.ls(root, detail=True)
        top_dirs = sorted(e["name"].rstrip("/") for e in entries if e.get("type") == "directory")
        class_root, url = split_root(root.rstrip("/"), str(url).rstrip("/"), split, top_dirs)
        if class_root != root.rstrip("/"):
            with storage_errors(url, "list", self.storage_options):
                entries = fs.ls(class_root, detail=True)
            top_dirs = sorted(e["name"].rstrip("/") for e in entries if e.get("type") == "directory")
        self.fs, self.root, self.url = fs, class_root, url
        found = [d.rstrip("/").rsplit("/", 1)[-1] for d in top_dirs]
        if classes is None:
            self.classes = sorted(found)
        else:
            self.classes = list(classes)
            unknown = sorted(set(found) - set(self.classes))
            if unknown:
                raise StorageError(f"{url} has class directories {unknown} that are not among the given classes "
                                   f"{self.classes}: add them to classes or remove them")
        if not self.classes:
            raise StorageError(f"{url} has no class directories: expected root/<class>/<image>.png|jpg|jpeg")
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._init_cache()

    def _init_cache(self) -> None:
        self._cache_refs: list[SampleRef] | None = None

    def list(self) -> list[SampleRef]:
        if self._cache_refs is None:
            with storage_errors(self.url, "list", self.storage_options):
                paths = self.fs.find(self.root, detail=False)
            prefix = self.root.rstrip("/") + "/"
            refs, skipped = [], 0
            for path in sorted(paths):
                rel = path[len(prefix):] if path.startswith(prefix) else path
                if "/" not in rel or not rel.lower().endswith(IMAGE_EXTENSIONS) or \
                        rel.split("/", 1)[0] not in self._class_index:
                    skipped += 1
                    continue
                refs.append(SampleRef(rel, rel))
            if skipped:
                log.info("%s: skipped %d files that are not <class>/<image>.png|jpg|jpeg", self.url, skipped)
            self._cache_refs = refs
        return list(self._cache_refs)

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        for start in range(0, len(refs), _FETCH_BATCH):
            batch = refs[start:start + _FETCH_BATCH]
            paths = [join(self.root, str(r.locator)) for r in batch]
            with storage_errors(self.url, "read", self.storage_options):
                blobs = self.fs.cat(paths, on_error="return") if paths else {}
            for ref, path in zip(batch, paths):
                label = self._class_index.get(str(ref.locator).split("/", 1)[0])
                if label is None:
                    yield SampleError(ref.sample_id, f"{ref.locator!r} is not inside a class directory of {self.url}")
                    continue
                data = blobs.get(path, blobs.get(self.fs._strip_protocol(path)))
                if isinstance(data, PermissionError):
                    raise translate(data, self.url, "read", self.storage_options)
                if isinstance(data, BaseException) or data is None:
                    yield SampleError(ref.sample_id, f"cannot read {join(self.url, str(ref.locator))}: "
                                                     f"{type(data).__name__}: {data}"[:500])
                    continue
                yield decoded_sample(ref.sample_id, data, label)
