"""An output folder is the job's own: missing, empty, or holding only what that kind of job writes.

Jobs write their lease, run record and tables under ``--output`` and never delete anything else
there. Pointed at ``/``, a home folder or a folder of images, a job would scatter its files among
someone else's (and a later run would take a stranger's ``maps/`` for its own). So every job that
writes a folder lists it once, before it writes anything (before the lease is taken), with
:func:`check_output`; an :class:`OutputKind` names the top-level entries that job writes (what an
earlier failed run of it left, a lease or a run record, counts as its own).

An output inside a source (or the source inside the output) is refused too, by
:func:`check_apart`: the job's own files (``_meta/examples.png``) would become samples of the
next run. URLs are compared normalized: credentials dropped, local paths resolved (``file://``
stripped, symlinks followed), object-store prefixes compared on whole path components.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.io.fs import InvalidStorageInput, is_local, open_fs, redact_url, storage_errors
from storage.io.retry import retrying

#: Entries named in a refusal.
SHOWN = 5


class OutputNotOwn(InvalidStorageInput):
    """The output holds files this job did not write, or overlaps the job's source."""


@dataclass(frozen=True)
class OutputKind:
    """What a job writes at the top of its output folder: ``names`` are fnmatch patterns of entries
    (files or folders); ``job`` names the job in messages (e.g. "jobs.attribute")."""

    job: str
    names: tuple[str, ...]

    def owns(self, name: str) -> bool:
        """Whether a top-level entry is one this kind writes, or a temporary file an interrupted
        atomic write of one left (``.<name>.<random>.tmp``, storage.io.fs.write_bytes_atomic)."""
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names):
            return True
        return name.startswith(".") and name.endswith(".tmp") and \
            any(fnmatch.fnmatchcase(name[1:], f"{pattern}.*.tmp") for pattern in self.names)


def top_entries(url: str, storage_options: Mapping[str, Any] | None = None, flag: str = "--output"
                ) -> list[str] | None:
    """The names directly under ``url`` (sorted); None when nothing is there; :class:`OutputNotOwn`
    when ``url`` is a file. One listing (two requests on an object store)."""
    fs, root = open_fs(url, storage_options)
    root = root.rstrip("/") or "/"

    def listing() -> list[str] | None:
        if not is_local(fs):
            fs.invalidate_cache(root)
        try:
            info = fs.info(root)
        except FileNotFoundError:
            return None
        if info.get("type") != "directory":
            raise OutputNotOwn(f"{flag} {redact_url(url)} is a file, not a folder: give a new or empty folder "
                               "for the job's outputs")
        paths = (fs._strip_protocol(str(p)).rstrip("/") for p in fs.ls(root, detail=False))
        return sorted({p.rsplit("/", 1)[-1] for p in paths if p and p != root.rstrip("/")} - {""})

    with storage_errors(url, "list", storage_options):
        return retrying(listing, f"listing {redact_url(url)}")


def check_output(url: str, kind: OutputKind, storage_options: Mapping[str, Any] | None = None,
                 flag: str = "--output") -> None:
    """Refuse, before anything is written, an output that holds entries ``kind`` does not write
    (with one line naming the output and a few of them); a missing or empty folder is fine."""
    entries = top_entries(url, storage_options, flag)
    foreign = sorted((name for name in entries or () if not kind.owns(name)), key=lambda n: (n.startswith("."), n))
    if foreign:
        shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        raise OutputNotOwn(f"{flag} {redact_url(url)} holds what {kind.job} does not write ({shown}); give a new "
                           f"or empty folder, or an output of {kind.job} (nothing was written)")


def location_key(url: str) -> tuple[str, ...]:
    """``url`` as comparable path components: ("file", *resolved parts) for local paths and
    ``file://`` URLs; (scheme, bucket/host, *key parts) for the others, credentials, query and
    fragment dropped, ``s3a``/``s3n`` taken for ``s3``."""
    text = redact_url(str(url))
    if text.startswith("file://"):
        text = text[len("file://"):]
    scheme, sep, rest = text.partition("://")
    if not sep:
        resolved = os.path.realpath(os.path.expanduser(text or "."))
        return ("file", *(p for p in resolved.split(os.sep) if p))
    scheme = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}.get(scheme.lower(), scheme.lower())
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    return (scheme, *(p for p in rest.split("/") if p))


def _inside(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    return len(inner) >= len(outer) and inner[:len(outer)] == outer


def check_apart(output: str, sources: Mapping[str, str | None], flag: str = "--output") -> None:
    """Refuse an output that is one of ``sources`` ({flag: url}), lies inside one, or holds one:
    a job's own files would become samples of the source (or its writes would land among the
    source's files). No request is made."""
    out = location_key(output)
    for source_flag, source in sources.items():
        if not source:
            continue
        src = location_key(source)
        if out == src:
            where = "is"
        elif _inside(out, src):
            where = "is inside"
        elif _inside(src, out):
            where = "holds"
        else:
            continue
        raise OutputNotOwn(f"{flag} {redact_url(output)} {where} {source_flag} {redact_url(source)}: the job's "
                           f"files would be read as samples of the source, or land among its files; "
                           f"write the output to a folder outside the source")
