"""Helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

from storage.fs import open_fs


def every_file(url: str, options: dict | None = None) -> dict[str, bytes]:
    """Every file under ``url`` (local or s3://), as relative path -> bytes."""
    fs, root = open_fs(url, options or None)
    root = root.rstrip("/")
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


def chunks(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
