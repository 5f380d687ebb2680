"""Image folders, ImageNet style: ``root/<class>/<file>`` on any fsspec URL.

If every top-level directory of ``root`` is a split name (train, test, val, ...), the split's
directory is the class root. Classes are the sorted class directory names, unless ``classes`` is
given (then an unknown directory is an error naming it); directories named 0, 1, 2, ... are integer
labels and keep their number. ``sample_id`` and locator are the file's path relative to the class
root, with '/' separators. Files may sit deeper inside a class directory.

Every file is accounted for: a file whose extension Pillow decodes (.png, .jpg, .webp, .bmp, .gif,
.tif, ...: :func:`storage.sources.images.image_extensions`) is a sample, also directly in the root,
where it has no label (``NO_LABEL``); every other file, and hidden files (``.DS_Store``, ``._x.jpg``),
are listed by :meth:`ImageFolderSource.skipped` with the reason. Folders whose name starts with ``_`` or
``.`` (a job's ``_meta``, ``.git``) are neither classes nor read, at any depth, and are listed there too.
A symbolic link whose target leaves the folder is not followed: its sample is an error row of kind
``outside-source`` (:mod:`storage.sources.inside`; ``--allow-paths`` widens it).

Tested by tests/storage/test_source_kinds.py and tests/storage/test_sources.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from storage.io.fs import StorageError, join, open_fs, resolve_storage_options, storage_errors
from storage.io.retry import retrying
from storage.sources.base import NO_LABEL, SPLIT_WORDS, Sample, SampleError, SampleRef, SkippedFile, Source, \
    split_aliases
from storage.sources.classes import kind_of_classes
from storage.sources.files import fetch, file_sample, is_skipped_folder, listed_files, skip_reason
from storage.sources.inside import OUTSIDE_SOURCE, reach_of


def split_root(root: str, url: str, split: str, top_dirs: Sequence[str]) -> tuple[str, str]:
    """(path, url) of the class root: ``root/<split>`` when the top level holds only split dirs."""
    names = [n for n in (d.rstrip("/").rsplit("/", 1)[-1] for d in top_dirs) if not is_skipped_folder(n)]
    if names and all(n.lower() in SPLIT_WORDS for n in names):
        for alias in split_aliases(split):
            for n in names:
                if n.lower() == alias:
                    return join(root, n), join(url, n)
        raise StorageError(f"{url} holds the splits {sorted(names)} but not {split!r}: pass split= one of them")
    return root, url


def open_split_root(url: str, split: str, storage_options: dict) -> tuple[object, str, str, list[dict]]:
    """``(fs, root path, root url, entries)`` of a folder's split directory (or the folder itself)."""
    fs, root = open_fs(url, storage_options)
    with storage_errors(url, "list", storage_options):
        entries = retrying(lambda: fs.ls(root, detail=True), f"listing {url}")
    top_dirs = sorted(e["name"].rstrip("/") for e in entries if e.get("type") == "directory")
    class_root, class_url = split_root(root.rstrip("/"), str(url).rstrip("/"), split, top_dirs)
    if class_root != root.rstrip("/"):
        with storage_errors(class_url, "list", storage_options):
            entries = retrying(lambda: fs.ls(class_root, detail=True), f"listing {class_url}")
    return fs, class_root, class_url, entries


class ImageFolderSource(Source):
    kind = "folder"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        self.storage_options = resolve_storage_options(storage_options)
        self.fs, self.root, self.url, entries = open_split_root(url, split, self.storage_options)
        found = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
        found = [d for d in found if not is_skipped_folder(d)]
        if classes is None:
            numbered = bool(found) and all(d.isdigit() for d in found)
            self.label_kind = "integers" if numbered else "names"
            self.classes = [str(i) for i in range(max(map(int, found)) + 1)] if numbered else found
        else:
            self.classes = list(classes)
            self.label_kind = kind_of_classes(self.classes)
            unknown = sorted(set(found) - set(self.classes))
            if unknown:
                raise StorageError(f"{self.url} has class directories {unknown} that are not among the given classes "
                                   f"{self.classes}: add them to classes or remove them")
        if not self.classes:
            self.label_kind = "none"
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._init_cache()

    def _init_cache(self) -> None:
        self._cache_listing: tuple[list[SampleRef], list[SkippedFile]] | None = None

    def _listing(self) -> tuple[list[SampleRef], list[SkippedFile]]:
        if self._cache_listing is None:
            files, skipped = listed_files(self.fs, self.root, self.url, self.storage_options)
            refs = []
            for rel, version in files.items():
                reason = skip_reason(rel)
                if reason:
                    skipped.append(SkippedFile(rel, reason))
                else:
                    refs.append(SampleRef(rel, rel, version))
            self._cache_listing = refs, skipped
        return self._cache_listing

    def list(self, limit: int | None = None) -> list[SampleRef]:
        return list(self._listing()[0][:limit])

    def skipped(self) -> list[SkippedFile]:
        return list(self._listing()[1])

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        reach = reach_of(self, self.url)
        rels = [str(r.locator) for r in refs]
        inside = [reach.allows_at(self.fs, join(self.root, rel)) for rel in rels]
        blobs = iter(fetch(self.fs, [join(self.root, rel) for rel, ok in zip(rels, inside) if ok], self.url,
                           self.storage_options))
        for ref, rel, ok in zip(refs, rels, inside):
            if not ok:  # a symbolic link whose target leaves the folder: not read
                yield SampleError(ref.sample_id, reach.refusal(join(self.url, rel), "the symbolic link"), OUTSIDE_SOURCE)
                continue
            data = next(blobs)
            top = rel.split("/", 1)[0] if "/" in rel else None
            label = NO_LABEL if top is None else self._class_index.get(top)
            if label is None:
                yield SampleError(ref.sample_id, f"{join(self.url, rel)} is not inside a class directory of "
                                                 f"{self.url} (classes: {len(self.classes)})", "label")
                continue
            yield file_sample(ref.sample_id, label, join(self.url, rel), data, self.storage_options, policy=self.policy)
