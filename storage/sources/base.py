"""The source contract shared by the driver, the workers and the evaluation jobs.

A :class:`Source` lists samples cheaply as :class:`SampleRef` (no decoding) and reads any subset
of them. Refs are plain data (``sample_id`` + a JSON-serializable ``locator``): the driver persists
them in its plan, and a worker calls ``read(refs)`` on an equal Source opened in another process.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Top-level names that mark a split rather than a class or a data directory.
SPLIT_ALIASES = {
    "test": ("test", "t10k", "val", "valid", "validation"),
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
}
SPLIT_WORDS = frozenset(w for ws in SPLIT_ALIASES.values() for w in ws)


def split_aliases(split: str) -> tuple[str, ...]:
    split = split.lower()
    if split in ("t10k",):
        split = "test"
    if split in ("validation", "valid"):
        split = "val"
    return SPLIT_ALIASES.get(split, (split,))


@dataclass(frozen=True)
class SampleRef:
    """A sample located in a source, known without decoding it."""

    sample_id: str        # stable across runs, e.g. "fashion-mnist/test/00042" or a relative file path
    locator: str | int    # source-specific, JSON-serializable


@dataclass
class Sample:
    sample_id: str
    image: np.ndarray     # uint8, [H, W, C] (C=1 for grayscale, 3 for RGB)
    label: int


@dataclass
class SampleError:
    sample_id: str
    reason: str


class Source(abc.ABC):
    """A dataset on any fsspec URL. Subclasses set ``url`` and ``classes``."""

    url: str
    classes: list[str]

    @abc.abstractmethod
    def list(self) -> list[SampleRef]:
        """All samples in deterministic source order; cheap (listing and headers, no decoding)."""

    @abc.abstractmethod
    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        """The samples of ``refs``, in that order; touches only what these refs need.

        A sample that cannot be decoded yields a :class:`SampleError`, never an exception.
        A store that cannot be reached at all raises :class:`storage.fs.StorageError`.
        """

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, classes={len(self.classes)})"

    def __getstate__(self) -> dict[str, Any]:
        # Caches (decoded files, listings, open handles) stay behind when a Source travels to a worker.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def _init_cache(self) -> None:
        """Create the per-object caches (names start with ``_cache``); called on init and unpickle."""


def to_uint8_hwc(image: Any) -> np.ndarray:
    """A decoded Pillow image as uint8 [H, W, C]: grayscale stays C=1, everything else becomes RGB.

    Palette images with transparency and RGBA/LA images drop the alpha channel (as
    ``PIL.Image.convert`` does); 16-bit and float grayscale are rescaled/clipped to 0..255.
    """
    mode = image.mode
    if mode in ("1", "L"):
        arr = np.asarray(image.convert("L"), dtype=np.uint8)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
    elif mode in ("I", "F"):
        arr = np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
    elif mode == "LA":
        arr = np.asarray(image.convert("L"), dtype=np.uint8)
    elif mode == "P":  # via RGBA where the palette has transparency, so Pillow resolves it first
        arr = np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB").convert("RGB"),
                         dtype=np.uint8)
    else:
        arr = np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/... bytes with Pillow to uint8 [H, W, C]; raises on corrupt data."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_uint8_hwc(img)


def decode_reason(err: BaseException) -> str:
    return f"cannot decode image: {type(err).__name__}: {err}"[:500]


def decoded_sample(sample_id: str, data: bytes, label: int) -> Sample | SampleError:
    """The sample, or an error record naming why its bytes do not decode (never an exception)."""
    try:
        return Sample(sample_id, decode_image(data), label)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt data
        return SampleError(sample_id, decode_reason(err))
