"""storage.sources.files: the local listing gives what fsspec's find gives, at a fraction of its cost."""

from __future__ import annotations

import os

import fsspec

from storage.io.fs import open_fs
from storage.sources.base import SkippedFile
from storage.sources.files import (SKIPPED_FOLDER, _local_stamped_files, is_skipped_folder, listed_files, stamp,
                                   stamped_files)
from tests.helpers import fashion_mnist, write_folder


def fsspec_stamps(url: str) -> dict[str, str]:
    """The reference: fsspec's ``find(detail=True)`` of the folder, stamped, keyed by relative path."""
    fs, root = open_fs(url)
    found = fs.find(root, detail=True)
    return {path[len(root) + 1:]: stamp(info) for path, info in sorted(found.items())}


def test_local_listing_matches_fsspec_find(tmp_path) -> None:
    """Nested class folders, hidden files and folders, a file and a folder reached by symlink, a
    dangling symlink and an empty folder: the same relative paths and stamps as fsspec lists them,
    so plans stamped by either compare equal; ``_`` and dot folders are left out (and named) alike."""
    images, labels = fashion_mnist("test", 12)
    url = str(tmp_path / "folder")
    write_folder(url, None, images, labels, extra={".DS_Store": b"x", "Bag/.ipynb_checkpoints/a.png": b"x",
                                                    "Bag/deeper/still/b.png": b"xy", "notes.txt": b"hello",
                                                    "_meta/examples.png": b"x", "Bag/_x/y/c.png": b"x"})
    os.makedirs(tmp_path / "folder" / "empty")
    os.symlink(tmp_path / "folder" / "notes.txt", tmp_path / "folder" / "link.txt")
    os.symlink(tmp_path / "folder" / "Bag", tmp_path / "folder" / "linked-dir")
    os.symlink(tmp_path / "absent", tmp_path / "folder" / "dangling.png")

    found = fsspec_stamps(url)
    expected = {rel: v for rel, v in found.items() if not any(is_skipped_folder(p) for p in rel.split("/")[:-1])}
    assert len(found) - len(expected) == 3 and ".DS_Store" in expected  # hidden files are skip_reason's
    assert "link.txt" in expected and "linked-dir" in expected and "dangling.png" in expected
    assert expected["link.txt"].startswith("5:")  # a symlink has its target's size
    fs, root = open_fs(url)
    assert stamped_files(fs, root, url, None) == expected
    assert list(stamped_files(fs, root, url, None)) == sorted(expected)
    assert dict(_local_stamped_files(root + "/")) == expected
    folders = [SkippedFile(f, SKIPPED_FOLDER) for f in ("Bag/.ipynb_checkpoints/", "Bag/_x/", "_meta/")]
    assert listed_files(fs, root, url, None) == (expected, folders)

    memory = fsspec.filesystem("memory")  # fsspec's find path (object stores) leaves out the same folders
    for rel in found:
        memory.pipe(f"/listing-{tmp_path.name}/{rel}", b"x")
    listed, skipped = listed_files(memory, f"/listing-{tmp_path.name}", "memory://x", None)
    assert list(listed) == sorted(expected) and skipped == folders


def test_a_single_file_root_is_listed_by_fsspec(tmp_path) -> None:
    """A root that is a file (a Parquet source of one file) keeps fsspec's listing."""
    path = tmp_path / "one.parquet"
    path.write_bytes(b"not read here")
    fs, root = open_fs(str(path))
    assert list(stamped_files(fs, root, str(path), None).values()) == [stamp(fs.info(root))]
