"""What an untrusted source may make a job read: the operator's limits, in one value.

Sources, indexes and images are untrusted; the operator is trusted (docs/security.md). A
:class:`SourcePolicy` travels with a source (to every Ray worker through the job's config) and
holds the only ways the operator widens or narrows what a source can reach:

- ``allow_paths``: URL or path prefixes outside the source's own location that index rows and
  Parquet path columns may name (``--allow-paths``); empty means "only inside the source";
- ``max_image_pixels``: the largest image (width x height) that is decoded; larger ones become
  error rows (``--max-image-pixels``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

#: 64 megapixels: one decode of an RGBA image this size is 256 MB, under a quarter of the ~1 GB a
#: CPU worker's share of a small node holds, and larger than any photo a classifier is shown.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class SourcePolicy:
    """The operator's limits on what a source can make the job read (see the module docstring)."""

    allow_paths: tuple[str, ...] = ()
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        # Local prefixes made absolute here, on the driver: workers may run in another directory.
        object.__setattr__(self, "allow_paths", tuple(str(p) if "://" in str(p) else
                                                      os.path.abspath(os.path.expanduser(str(p)))
                                                      for p in self.allow_paths))
        if isinstance(self.max_image_pixels, bool) or not isinstance(self.max_image_pixels, int) \
                or self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive int, got {self.max_image_pixels!r}")

    @classmethod
    def of(cls, allow_paths: Sequence[str] | None = None, max_image_pixels: int | None = None) -> SourcePolicy:
        """A policy from optional flag values (None keeps the default)."""
        return cls(tuple(allow_paths or ()), max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)


DEFAULT_POLICY = SourcePolicy()
