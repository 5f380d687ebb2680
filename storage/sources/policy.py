"""What an untrusted source may make a job read: the operator's limits, in one value.

Sources, indexes and images are untrusted; the operator is trusted (docs/security.md). A
:class:`SourcePolicy` travels with a source (to every Ray worker through the job's config) and
holds the only ways the operator widens or narrows what a source can reach:

- ``allow_paths``: URL or path prefixes outside the source's own location that index rows and
  Parquet path columns may name (``--allow-paths``); empty means "only inside the source";
- ``max_image_pixels``: the largest image (width x height) that is decoded; larger ones become
  error rows of kind ``too-large`` (``--max-image-pixels``; storage.sources.images).

One field is not the operator's: ``decode_size`` (height, width) is the smallest size the consumer of
the images needs (``models.preprocess.decode_size`` of the model's spec). The worker, and
``load_arrays``/``join_with_source`` given a spec, set it with ``dataclasses.replace``, so that JPEGs
decode at the smallest DCT scale that covers it, the same one wherever "the image the model saw" is
read. None (sources opened without a model) decodes every image in full.

Tested by tests/storage/test_source_policy.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

#: 40 megapixels. The costliest decode holds about 10 bytes per pixel at its peak: a progressive 4:4:4
#: JPEG keeps libjpeg's coefficients (6 bytes a pixel, whatever the draft scale) beside Pillow's image
#: (4); other formats hold Pillow's image and the uint8 output (storage.sources.images converts in
#: strips). So one decode stays near 400 MB, well under the ~1 GB a CPU worker's share of a small node
#: holds (measured: benchmarks/RESULTS.md, session 11), and the cap still admits a 36-megapixel camera.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class SourcePolicy:
    """The operator's limits on what a source can make the job read (see the module docstring)."""

    allow_paths: tuple[str, ...] = ()
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    decode_size: tuple[int, int] | None = None  # (height, width) the model needs; see the module docstring

    def __post_init__(self) -> None:
        if self.decode_size is not None:
            size = tuple(self.decode_size)
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
                raise ValueError(f"decode_size must be (height, width) of positive ints, got {self.decode_size!r}")
            object.__setattr__(self, "decode_size", size)
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
