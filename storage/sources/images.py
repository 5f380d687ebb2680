"""Decoding image bytes with Pillow into the one layout every source hands out, within the operator's
limits.

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
files give their first frame.

Images are untrusted (docs/security.md), so decoding is bounded by the source's
:class:`~storage.sources.policy.SourcePolicy`:

- **Pixel cap.** The size the file's header declares (``Image.open`` reads only the header) is
  checked against ``policy.max_image_pixels`` (``--max-image-pixels``) before any pixel is decoded;
  a larger image raises :class:`ImageTooLarge` (an error row of kind ``too-large``). The cap applies
  to the declared size, drafted JPEGs included: a progressive JPEG's coefficients are buffered at
  full size whatever the draft scale, and the declared size is what the operator can reason about.
  Pillow's own bomb limit (``Image.MAX_IMAGE_PIXELS``) is lifted while one of these decodes runs, so
  that it never refuses an image under a larger operator cap; it is restored when none runs.
- **Bounded copies.** Large images are converted to uint8 in strips, so one decode holds Pillow's
  image, the output array and a strip, not several whole-image copies.
- **JPEG draft.** ``policy.decode_size`` (height, width), set by whoever knows the model (the worker,
  ``load_arrays(spec=...)``, ``join_with_source``; see ``models.preprocess.decode_size``), lets
  JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) that still covers it (``Image.draft``)
  and divides both sides: each drafted pixel is then the average of whole s x s blocks, and the
  drafted image spans exactly the full one, so the resize that follows sees the same geometry
  (a partial last block would shift the image by up to a drafted pixel). Other formats, and JPEGs
  under twice that size, decode in full as before.
- **Errors** name the format problem, never bytes of the file: Pillow's messages lose any bytes
  literal and anything after their first ": ".

Tested by tests/storage/test_images.py.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from storage.sources.policy import DEFAULT_POLICY, SourcePolicy

#: Formats Pillow registers an opener for that cannot decode pixels by themselves (stub plugins and
#: formats that need an external program); their extensions are not treated as images.
_NOT_DECODABLE = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"})
#: Formats whose decoder scales by DCT (``Image.draft``).
_DRAFTABLE = frozenset({"JPEG", "MPO"})
#: Formats named first when an unrecognised file's error lists what was tried.
_COMMON = ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP")
_EXTENSIONS: tuple[str, ...] | None = None
_EXTENSION_SET: frozenset[str] | None = None
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_BYTES_LITERAL = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")
_EXIF_ORIENTATION = 0x0112
#: Pixels converted at once: bounds the conversion copies of a large image to a strip.
_STRIP_PIXELS = 1 << 20
#: Orientations 5-8 turn the image a quarter: the file's width is the shown height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the operator's cap: it is not decoded."""

    def __init__(self, width: int, height: int, cap: int) -> None:
        self.width, self.height, self.cap = width, height, cap
        super().__init__(f"image is {width}x{height} ({width * height:,} pixels), above --max-image-pixels "
                         f"{cap:,}; raise it to map this image")


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


def image_formats() -> list[str]:
    """The formats Pillow opens and decodes here, the common ones first (for "not an image" errors)."""
    from PIL import Image

    Image.init()
    rest = sorted(f for f in Image.OPEN if f not in _NOT_DECODABLE and f not in _COMMON)
    return [f for f in _COMMON if f in Image.OPEN] + rest


def to_uint8_hwc(image: Any) -> np.ndarray:
    """A decoded Pillow image as uint8 [H, W, C] in L, LA, RGB or RGBA (see the module docstring);
    a large one is converted in strips, so that its conversion copies stay strip-sized."""
    convert, channels = _converter(image)
    width, height = image.size
    if width * height <= _STRIP_PIXELS:
        arr = convert(image)
        return np.ascontiguousarray(arr if arr.ndim == 3 else arr[:, :, None])
    out = np.empty((height, width, channels), np.uint8)
    for top, bottom in _strips(width, height):
        arr = convert(image.crop((0, top, width, bottom)))
        out[top:bottom] = arr if arr.ndim == 3 else arr[:, :, None]
    return out


def _strips(width: int, height: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _converter(image: Any) -> tuple[Callable[[Any], np.ndarray], int]:
    """The per-mode conversion (applied to the image or to each strip of it) and its channel count."""
    mode = image.mode
    if mode in ("1", "L"):
        return (lambda im: np.asarray(im if im.mode == "L" else im.convert("L"), dtype=np.uint8)), 1
    if mode in ("LA", "La"):
        return (lambda im: np.asarray(im if im.mode == "LA" else im.convert("LA"), dtype=np.uint8)), 2
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return (lambda im: np.asarray(im if im.mode == "RGBA" else im.convert("RGBA"), dtype=np.uint8)), 4
    if mode.startswith("I;16"):
        return (lambda im: _scale16(np.asarray(im, dtype=np.uint16))), 1
    if mode == "I":
        wide = image.getextrema()[1] > 255  # one rule for the whole image, whatever the strip
        return (lambda im: _scale16(np.clip(np.asarray(im, dtype=np.int64), 0, 65535)) if wide else
                np.clip(np.asarray(im, dtype=np.int64), 0, 255).astype(np.uint8)), 1
    if mode == "F":
        scale = 255.0 if _unit_floats(image) else 1.0
        return (lambda im: np.clip(np.rint(np.nan_to_num(np.asarray(im, dtype=np.float64)) * scale), 0, 255)
                .astype(np.uint8)), 1
    return (lambda im: np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)), 3


def _unit_floats(image: Any) -> bool:
    """True when every value of a float image lies in [0, 1] (NaN read as 0), strip by strip."""
    width, height = image.size
    parts = [image] if width * height <= _STRIP_PIXELS else \
        (image.crop((0, top, width, bottom)) for top, bottom in _strips(width, height))
    for part in parts:
        values = np.nan_to_num(np.asarray(part, dtype=np.float64))
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            return False
    return width * height > 0


def _scale16(values: np.ndarray) -> np.ndarray:
    """16-bit values to 8 bits, rounded (65535 -> 255)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


_LIFTED = threading.Lock()
_lifts = 0
_saved_limit: int | None = None


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Lift Pillow's global bomb limit while any decode of ours runs (ours is checked first, and is
    the operator's); the last decode to finish restores it."""
    from PIL import Image

    global _lifts, _saved_limit
    with _LIFTED:
        if _lifts == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _lifts += 1
    try:
        yield
    finally:
        with _LIFTED:
            _lifts -= 1
            if _lifts == 0:
                Image.MAX_IMAGE_PIXELS = _saved_limit


def check_pixels(size: tuple[int, int], cap: int) -> None:
    """Raise :class:`ImageTooLarge` when an image of ``size`` (width, height) is above ``cap`` pixels."""
    width, height = size
    if width * height > cap:
        raise ImageTooLarge(width, height, cap)


def decode_image(data: bytes | None, policy: SourcePolicy = DEFAULT_POLICY) -> np.ndarray:
    """Decode image bytes (any format Pillow reads) to uint8 [H, W, C] within ``policy``'s limits;
    raises :class:`ImageTooLarge` before decoding an image above the cap, and on corrupt data."""
    from PIL import Image

    if not data:
        raise ValueError("empty file (0 bytes)")
    with _pillow_limit_lifted(), Image.open(io.BytesIO(data)) as img:
        check_pixels(img.size, policy.max_image_pixels)  # the header's size: nothing decoded yet
        orientation = None
        if policy.decode_size is not None and img.format in _DRAFTABLE:
            orientation = _orientation(img)
            height, width = policy.decode_size
            if orientation in _QUARTER_TURNS:
                height, width = width, height
            scale = draft_scale(img.size, (width, height))
            if scale > 1:
                img.draft(None, (img.size[0] // scale, img.size[1] // scale))
        img.load()
        check_pixels(img.size, policy.max_image_pixels)  # a frame that grew while it loaded
        if orientation is None:
            orientation = _orientation(img)
        arr = to_uint8_hwc(img)
    return _oriented(arr, orientation)  # Pillow's image is freed: the turn copies the array alone


def draft_scale(size: tuple[int, int], needed: tuple[int, int]) -> int:
    """The largest JPEG DCT scale (8, 4, 2; else 1) that divides both sides of ``size`` (width, height)
    and leaves them at least ``needed`` (width, height)."""
    width, height = size
    for scale in (8, 4, 2):
        if width % scale == 0 and height % scale == 0 and width // scale >= needed[0] and height // scale >= needed[1]:
            return scale
    return 1


def _orientation(img: Any) -> int:
    value = img.getexif().get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _oriented(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` turned as EXIF ``orientation`` says (as ``ImageOps.exif_transpose``); other values keep it."""
    turned = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
              7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: a.transpose(1, 0, 2)[::-1]}.get(orientation)
    return arr if turned is None else np.ascontiguousarray(turned(arr))


def decode_kind(err: BaseException) -> str:
    """The error-row kind of a failed decode: ``too-large`` above the pixel cap, else ``decode``."""
    return "too-large" if isinstance(err, ImageTooLarge) else "decode"


def decode_reason(err: BaseException, where: str, data: bytes | None = None) -> str:
    """A one-line reason naming ``where`` (a file URL, or a row of a file) and the cause; it never
    holds bytes of the file (images are untrusted: the error table is read by people and tools)."""
    from PIL import UnidentifiedImageError

    if isinstance(err, ImageTooLarge):
        return f"cannot decode image {where}: {err}"[:500]
    if not data:
        cause = "empty file (0 bytes)"
    elif isinstance(err, UnidentifiedImageError):
        formats = image_formats()
        cause = (f"not an image format Pillow can read (tried {len(formats)}: {', '.join(formats[:len(_COMMON)])} "
                 f"and {len(formats) - len(_COMMON)} more; {len(data):,} bytes)")
    else:
        cause = f"{type(err).__name__}: {_safe_message(err)}"
    return f"cannot decode image {where}: {cause}"[:500]


def _safe_message(err: BaseException) -> str:
    """Pillow's message without bytes of the file: bytes literals dropped, cut at its first ": "
    (where Pillow appends what it read), printable ASCII only."""
    text = _OBJECT_REPR.sub("the file", _BYTES_LITERAL.sub("<bytes>", str(err)))
    text = text.split(": ", 1)[0]
    text = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return text[:200] or "corrupt data"
