"""Fixtures of the security tests: a folder of someone else's files, and a small image folder source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import fashion_mnist, write_folder


@pytest.fixture
def stranger(tmp_path) -> Path:
    """A folder that holds someone else's files, as a home folder does."""
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.png").write_bytes(b"\x89PNG not really")
    (home / "notes.txt").write_text("mine")
    (home / ".bashrc").write_text("export X=1")
    return home


@pytest.fixture
def image_folder(tmp_path) -> Path:
    images, labels = fashion_mnist("test", 6)
    src = tmp_path / "images"
    write_folder(str(src), None, images, labels)
    return src
