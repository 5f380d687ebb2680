"""Where a source may make a job read: inside its own location, or under a prefix the operator allows.

Indexes, labels files, Parquet path columns and folders are untrusted data (docs/security.md). A row
that names ``/etc/passwd``, ``../../x.png``, ``file:///...``, ``s3://other-bucket/...`` or
``http://10.0.0.1/...``, or a symbolic link in a folder whose target leaves it, must not make a
worker read a file outside the data or contact an address the operator did not choose. So every path
a row or a listing gives is checked before anything is read, by :class:`Reach`:

- it is placed as the filesystem will read it (:func:`storage.io.fs.open_fs`: protocol and path, ``..``
  collapsed; on local disks with symbolic links resolved, so that a link cannot lead out);
- it is read only where that place lies inside the source's own location, or under one of the
  operator's ``--allow-paths`` prefixes (:attr:`storage.sources.policy.SourcePolicy.allow_paths`),
  compared the same way and on whole path components (``/data/x`` does not hold ``/data/xy``);
- otherwise the sample is an error row of kind :data:`OUTSIDE_SOURCE` that names the path as the row
  wrote it (credentials redacted) and the flag. Nothing of it is read and no request is made, and
  the message is the same whether or not the target exists.

Tested by tests/storage/test_source_policy.py and tests/storage/test_source_kinds.py.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec
from fsspec.core import split_protocol

from storage.io.fs import redact_url
from storage.sources.policy import SourcePolicy

#: The ``kind`` of the error row of a sample whose path leaves the source.
OUTSIDE_SOURCE = "outside-source"
#: The flag that widens what a source may name (jobs/runtime/cli.py source_flags).
ALLOW_FLAG = "--allow-paths"

_LOCAL = ("file", "local")
_HTTP = ("http", "https")

Place = tuple[str, str]  # (protocol, normalized path): where a read would land
_REAL_DIRS = 4096  # local folders a Reach remembers resolved


def shown_path(path: str, limit: int = 200) -> str:
    """A path as a row wrote it, safe for messages: credentials redacted, long ones cut."""
    text = redact_url(str(path))
    return text if len(text) <= limit else text[:limit] + "..."


def place_of(fs: Any, path: str, real_dir: Callable[[str], str] = os.path.realpath) -> Place:
    """Where reading ``path`` on ``fs`` lands: local paths absolute with symbolic links resolved, other
    paths with ``..`` collapsed (object stores), http(s) URLs with their host and decoded path.
    ``real_dir`` resolves a local path's folder (:class:`Reach` caches it: files of one folder share it)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in _LOCAL:
        head, name = os.path.split(os.path.abspath(path))
        target = os.path.join(real_dir(head), name)
        return "file", os.path.realpath(target) if os.path.islink(target) else target
    if protocol in _HTTP:
        return "http", _http_path(path)
    return protocol, posixpath.normpath("/" + path.lstrip("/"))


def _http_path(url: str) -> str:
    """An http(s) URL as ``scheme://host[:port]/path``, the path percent-decoded with ``..`` collapsed
    (servers decode ``%2e%2e`` and many read ``\\`` as ``/``); query and fragment dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "//invalid"
    path = unquote(parts.path).replace("\\", "/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{posixpath.normpath('/' + path)}"


def place(url: str, real_dir: Callable[[str], str] = os.path.realpath) -> Place | None:
    """Where reading ``url`` lands (see :func:`place_of`), or None when it names no filesystem this
    process can open (such a path is never read). The protocol and path are found as
    :func:`storage.io.fs.open_fs` finds them (fsspec's ``split_protocol`` and the filesystem class's
    ``_strip_protocol``), without making a filesystem per path."""
    if "::" in url:  # fsspec chains filesystems on "::" (zip://x::s3://..., simplecache::http://...)
        return None
    protocol, _ = split_protocol(url)
    try:
        cls = fsspec.get_filesystem_class(protocol or "file")
        return place_of(cls, cls._strip_protocol(url), real_dir)
    except (ImportError, ValueError, TypeError):
        return None


def prefix_place(prefix: str) -> Place:
    """An operator's ``--allow-paths`` prefix placed like the paths it is compared with; a scheme
    whose filesystem is not installed keeps its name (nothing of it can be read anyway)."""
    found = place(prefix)
    if found is not None:
        return found
    scheme, _, rest = prefix.partition("://")
    return scheme.lower(), posixpath.normpath("/" + rest.lstrip("/"))


def is_under(where: Place, prefix: Place) -> bool:
    """Whether ``where`` lies under ``prefix``: the same protocol, and the prefix's path components
    leading the path's."""
    if where[0] != prefix[0]:
        return False
    head = prefix[1].rstrip("/")
    return where[1] == prefix[1] or where[1].startswith(head + "/")


class Reach:
    """What a source may read: its root (its own location) and the operator's allowed prefixes."""

    def __init__(self, root: str, policy: SourcePolicy) -> None:
        self.root = str(root).rstrip("/") or "/"
        self.policy = policy
        self.prefixes = [p for p in [place(self.root)] if p is not None]
        self.prefixes += [prefix_place(p) for p in policy.allow_paths]
        self._real_dirs: dict[str, str] = {}

    def _real_dir(self, folder: str) -> str:
        """A local folder with its symbolic links resolved, remembered for this object's life (a
        worker's shard reads many files of few folders); bounded."""
        real = self._real_dirs.get(folder)
        if real is None:
            if len(self._real_dirs) >= _REAL_DIRS:
                self._real_dirs.clear()
            real = self._real_dirs[folder] = os.path.realpath(folder)
        return real

    def allows(self, url: str) -> bool:
        """Whether reading ``url`` stays inside the root or under an allowed prefix."""
        where = place(url, self._real_dir)
        return where is not None and any(is_under(where, p) for p in self.prefixes)

    def allows_at(self, fs: Any, path: str) -> bool:
        """:meth:`allows` for a path already opened on ``fs`` (a folder's own files)."""
        where = place_of(fs, path, self._real_dir)
        return any(is_under(where, p) for p in self.prefixes)

    def refusal(self, written: str, what: str = "a row's path") -> str:
        """The one-line reason of a sample whose path leaves the source: the path as written, the
        source's location and the flag; the same whether or not the target exists."""
        return (f"{what} {shown_path(written)} leads outside the source {redact_url(self.root)}; it is not read. "
                f"To read such files, pass {ALLOW_FLAG} with a prefix that holds them")


def reach_of(source: Any, root: str) -> Reach:
    """The source's :class:`Reach`, made once per Source object and policy (the policy is set after
    the source is opened, and caches stay behind when a source travels to a worker)."""
    cached = getattr(source, "_cache_reach", None)
    if cached is None or cached.policy is not source.policy or cached.root != (str(root).rstrip("/") or "/"):
        cached = Reach(root, source.policy)
        source._cache_reach = cached
    return cached


def escapes(fs: Any, root: str, paths: Sequence[str], policy: SourcePolicy) -> set[str]:
    """Those of ``paths`` (files a listing of the local folder ``root`` found) that are symbolic links
    leading outside it and outside the allowed prefixes; empty on other filesystems (no links)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in _LOCAL:
        return set()
    reach = Reach(root, policy)
    return {p for p in paths if os.path.islink(p) and not reach.allows_at(fs, p)}
