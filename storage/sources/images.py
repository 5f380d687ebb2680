"""Decoding image bytes with Pillow into the one layout every source hands out.

``decode_image`` returns uint8 ``[H, W, C]`` with C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA): alpha is
kept, so that the model's preprocessing (``models.preprocess``) composites it on the background its
spec names, and converts the channels to the model's. The file's own modes map as follows:

- ``1``, ``L`` -> L; ``LA``, ``La`` -> LA; ``RGBA``, ``RGBa``, ``PA`` -> RGBA;
- ``P`` (palette) -> RGBA when the palette has transparency, else RGB;
- ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` -> RGB (Pillow's conversion);
- 16-bit grayscale (``I;16*``, and ``I`` holding values above 255) -> L, scaled by 255/65535;
- ``I`` holding values within 0..255 -> L as they are; float ``F`` -> L, scaled by 255 when every
  value lies in [0, 1], else clipped to 0..255.

The EXIF orientation is applied (the image is turned as a viewer shows it); animated and multi-page
files give their first frame. Errors say what the bytes are, never an object repr.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

#: Formats Pillow registers an opener for that cannot decode pixels by themselves (stub plugins and
#: formats that need an external program); their extensions are not treated as images.
_NOT_DECODABLE = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"})
_EXTENSIONS: tuple[str, ...] | None = None
_EXTENSION_SET: frozenset[str] | None = None
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_EXIF_ORIENTATION = 0x0112


def image_extensions() -> tuple[str, ...]:
    """Lower-case file extensions (with the dot) of every format this Pillow can decode: .png, .jpg,
    .jpeg, .webp, .bmp, .gif, .tif, .tiff, .ppm, .tga, ... (computed once per process)."""
    global _EXTENSIONS
    if _EXTENSIONS is None:
        from PIL import Image

        Image.init()
        _EXTENSIONS = tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items()
                                   if fmt in Image.OPEN and fmt not in _NOT_DECODABLE))
    return _EXTENSIONS


def is_image_name(name: str) -> bool:
    """True when ``name``'s extension is one Pillow decodes (case-insensitive). A set lookup of the
    last suffix: a folder listing asks this once per file."""
    global _EXTENSION_SET
    if _EXTENSION_SET is None:
        _EXTENSION_SET = frozenset(image_extensions())
    return name[name.rfind("."):].lower() in _EXTENSION_SET


def to_uint8_hwc(image: Any) -> np.ndarray:
    """A decoded Pillow image as uint8 [H, W, C] in L, LA, RGB or RGBA (see the module docstring)."""
    mode = image.mode
    if mode in ("1", "L"):
        arr = np.asarray(image.convert("L"), dtype=np.uint8)
    elif mode in ("LA", "La"):
        arr = np.asarray(image.convert("LA"), dtype=np.uint8)
    elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        arr = np.asarray(image if mode == "RGBA" else image.convert("RGBA"), dtype=np.uint8)
    elif mode.startswith("I;16"):
        arr = _scale16(np.asarray(image, dtype=np.uint16))
    elif mode == "I":
        values = np.asarray(image, dtype=np.int64)
        arr = _scale16(np.clip(values, 0, 65535)) if values.size and values.max() > 255 else \
            np.clip(values, 0, 255).astype(np.uint8)
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        arr = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:
        arr = np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _scale16(values: np.ndarray) -> np.ndarray:
    """16-bit values to 8 bits, rounded (65535 -> 255)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def decode_image(data: bytes | None) -> np.ndarray:
    """Decode image bytes (any format Pillow reads) to uint8 [H, W, C]; raises on corrupt data."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty file (0 bytes)")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return to_uint8_hwc(img)


def decode_reason(err: BaseException, where: str, data: bytes | None = None) -> str:
    """A one-line reason naming ``where`` (a file URL, or a row of a file) and the cause."""
    from PIL import UnidentifiedImageError

    if not data:
        cause = "empty file (0 bytes)"
    elif isinstance(err, UnidentifiedImageError):
        cause = f"not an image format Pillow can read ({len(data)} bytes starting {bytes(data[:8])!r})"
    else:
        cause = f"{type(err).__name__}: {_OBJECT_REPR.sub('the file', str(err))}"
    return f"cannot decode image {where}: {cause}"[:500]
