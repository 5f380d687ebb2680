"""storage.sources.images: the pixel cap read from the header, JPEG draft decoding to the model's
decode size, strip-wise conversion that gives the same pixels as a whole-image one, EXIF turns, and
error reasons that hold no bytes of the file."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from models.preprocess import model_view
from models.registry import ModelSpec
from storage.maps.reader import join_with_source
from storage.sources import SampleError, decoding_for, load_arrays, model_policy, open_source
from storage.sources import images as decoding
from storage.sources.base import decoded_sample
from storage.sources.images import ImageTooLarge, decode_image, decode_reason, draft_scale, to_uint8_hwc
from storage.sources.policy import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_POLICY, SourcePolicy
from tests.helpers import png_bomb


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: gradients plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    rgb += rng.normal(0, 12, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def spec_of(input_size: tuple[int, int], resize: str = "plain", resize_size: int | None = None) -> ModelSpec:
    return ModelSpec(arch="resnet8", num_classes=10, in_channels=3, input_size=input_size, mean=(0.5,) * 3,
                     std=(0.5,) * 3, resize=resize, resize_size=resize_size)


# -- the pixel cap ---------------------------------------------------------------------------------

def test_an_image_above_the_cap_is_refused_from_its_header_naming_size_cap_and_flag():
    bomb = png_bomb(12000, 12000)
    assert len(bomb) < 40_000
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(bomb)
    assert str(caught.value) == (f"image is 12000x12000 (144,000,000 pixels), above --max-image-pixels "
                                 f"{DEFAULT_MAX_IMAGE_PIXELS:,}; raise it to map this image")
    row = decoded_sample("bomb.png", bomb, 0, "/data/bomb.png", policy=DEFAULT_POLICY)
    assert isinstance(row, SampleError) and row.kind == "too-large"
    assert row.reason.startswith("cannot decode image /data/bomb.png: image is 12000x12000")


def test_the_operators_cap_refuses_and_admits():
    bomb = png_bomb(3000, 3000)
    with pytest.raises(ImageTooLarge, match="above --max-image-pixels 1,000,000"):
        decode_image(bomb, SourcePolicy(max_image_pixels=1_000_000))
    image = decode_image(bomb, SourcePolicy(max_image_pixels=10_000_000))
    assert image.shape == (3000, 3000, 1) and not image.any()
    assert decode_image(bomb, SourcePolicy(max_image_pixels=9_000_000)).shape == (3000, 3000, 1)  # the cap is inclusive


def test_pillows_global_limit_neither_refuses_under_a_larger_cap_nor_refuses_first(monkeypatch):
    """Pillow's own limit (DecompressionBombWarning / Error) is never what decides: under a larger
    operator cap the image decodes without a warning, above the cap the refusal is ours, and Pillow's
    setting is as it was afterwards."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = png_bomb(3000, 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(bomb, SourcePolicy(max_image_pixels=10_000_000)).shape == (3000, 3000, 1)
        with pytest.raises(ImageTooLarge):
            decode_image(bomb, SourcePolicy(max_image_pixels=100))
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_a_drafted_jpeg_is_capped_by_its_header_size():
    """The cap is on the size the file declares, drafted or not (a progressive JPEG's coefficients are
    held at full size whatever the scale)."""
    data = encoded(photo(1200, 900), "JPEG", quality=90)
    policy = SourcePolicy(max_image_pixels=1_000_000, decode_size=(28, 28))
    with pytest.raises(ImageTooLarge, match="1200x900"):
        decode_image(data, policy)


# -- JPEG draft ------------------------------------------------------------------------------------

def test_a_large_jpeg_decodes_at_the_smallest_dct_scale_that_covers_the_decode_size():
    data = encoded(photo(2000, 1500), "JPEG", quality=90)
    full = decode_image(data)
    drafted = decode_image(data, SourcePolicy(decode_size=(224, 224)))
    assert full.shape == (1500, 2000, 3)
    assert drafted.shape == (375, 500, 3)  # 1/4: 1/8 would be 188 rows, under 224
    # 1/8 would cover 28 px, but 1500 rows are not whole 8-row blocks: the last drafted row would be a
    # partial block, and the image would shift under the resize. 1/4 tiles it exactly.
    assert decode_image(data, SourcePolicy(decode_size=(28, 28))).shape == (375, 500, 3)
    assert decode_image(data, SourcePolicy(decode_size=(100, 300))).shape == (375, 500, 3)
    square = encoded(photo(1600, 1200), "JPEG", quality=90)
    assert decode_image(square, SourcePolicy(decode_size=(28, 28))).shape == (150, 200, 3)  # 1/8
    # What the model sees from the drafted decode is what it sees from the full one, up to rounding.
    spec = spec_of((224, 224))
    seen_full, seen_drafted = model_view(spec, [full, drafted])
    assert np.abs(seen_full.astype(int) - seen_drafted.astype(int)).mean() < 2.0


def test_draft_scale_covers_the_size_with_whole_blocks():
    assert draft_scale((4000, 3000), (224, 224)) == 8
    assert draft_scale((4000, 3000), (400, 400)) == 4  # 375 rows at 1/8 are too few
    assert draft_scale((3000, 2250), (224, 224)) == 2  # 2250 rows are not whole 4- or 8-row blocks
    assert draft_scale((447, 600), (224, 224)) == 1
    assert draft_scale((448, 448), (224, 224)) == 2


def test_small_jpegs_and_other_formats_decode_exactly_as_without_a_decode_size():
    policy = SourcePolicy(decode_size=(224, 224))
    small = encoded(photo(447, 600), "JPEG", quality=90)  # under twice 224 wide: no draft
    np.testing.assert_array_equal(decode_image(small, policy), decode_image(small))
    assert decode_image(small, policy).shape == (600, 447, 3)
    png = encoded(photo(1000, 900))
    np.testing.assert_array_equal(decode_image(png, policy), decode_image(png))


def test_an_exif_turned_jpeg_drafts_to_cover_the_size_as_shown():
    """Orientation 6 shows the file's width as height: the decode size is turned before drafting."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(photo(800, 200), "JPEG", quality=90, exif=exif.tobytes())
    assert decode_image(data).shape == (800, 200, 3)
    assert decode_image(data, SourcePolicy(decode_size=(400, 100))).shape == (400, 100, 3)


def test_load_arrays_join_with_source_and_the_job_decode_at_the_same_size(tmp_path):
    """load_arrays(spec=) reads JPEGs at the spec's decode size, as the workers (model_policy) do, and
    leaves the source's own policy as it was."""
    for i in range(2):
        path = tmp_path / "src" / "a" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded(photo(1600, 1200, seed=i), "JPEG", quality=90))
    source = open_source(str(tmp_path / "src"), kind="folder")
    spec = spec_of((56, 56), "center_crop", 64)
    images, _, ids = load_arrays(source, spec=spec)
    assert source.policy == DEFAULT_POLICY
    worker_policy = model_policy(DEFAULT_POLICY, spec)
    assert worker_policy.decode_size == (64, 64)
    as_worker = [decode_image((tmp_path / "src" / sid).read_bytes(), worker_policy) for sid in ids]
    assert as_worker[0].shape == (150, 200, 3)  # 1/8 of 1600x1200 still covers 64
    np.testing.assert_array_equal(images, np.stack(model_view(spec, as_worker)))
    with decoding_for(source, spec):
        assert source.policy == worker_policy
    assert source.policy == DEFAULT_POLICY
    # join_with_source shows the same image under a map; original=True the file as stored.
    joined = join_with_source(pd.DataFrame({"sample_id": ids}), source, spec)
    np.testing.assert_array_equal(np.stack(list(joined["image"])), images)
    original = join_with_source(pd.DataFrame({"sample_id": ids}), source, original=True)
    assert original["image"][0].shape == (1200, 1600, 3) and source.policy == DEFAULT_POLICY


# -- conversion ------------------------------------------------------------------------------------

def mode_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(1)
    rgb = photo(97, 61)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    wide = Image.fromarray(rng.integers(0, 60000, (61, 97)).astype(np.int32))
    narrow = Image.fromarray(rng.integers(0, 255, (61, 97)).astype(np.int32))
    unit = Image.fromarray(rng.random((61, 97)).astype(np.float32))
    unit.putpixel((5, 5), float("nan"))
    return {"1": rgb.convert("1"), "L": rgb.convert("L"), "LA": rgb.convert("LA"), "RGB": rgb,
            "RGBA": rgb.convert("RGBA"), "P": palette, "P+t": transparent, "CMYK": rgb.convert("CMYK"),
            "I;16": Image.fromarray(rng.integers(0, 65535, (61, 97)).astype(np.uint16)),
            "I wide": wide, "I narrow": narrow, "F unit": unit,
            "F wide": Image.fromarray((rng.random((61, 97)) * 400 - 50).astype(np.float32))}


@pytest.mark.parametrize("name", sorted(mode_images()))
def test_strips_convert_as_the_whole_image_does(name, monkeypatch):
    image = mode_images()[name]
    assert image.mode == {"P+t": "P"}.get(name, name.split()[0])
    whole = to_uint8_hwc(image)
    monkeypatch.setattr(decoding, "_STRIP_PIXELS", 500)  # 5 rows a strip: 13 strips
    np.testing.assert_array_equal(to_uint8_hwc(image), whole)
    assert whole.dtype == np.uint8 and whole.shape[:2] == (61, 97)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_as_pillow_does(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(photo(40, 24), "PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), expected)


# -- reasons ---------------------------------------------------------------------------------------

def test_not_an_image_names_the_formats_tried_and_no_bytes():
    data = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
    row = decoded_sample("passwd.png", data, 0, "/data/passwd.png", policy=DEFAULT_POLICY)
    assert isinstance(row, SampleError) and row.kind == "decode"
    assert row.reason.startswith("cannot decode image /data/passwd.png: not an image format Pillow can read (tried ")
    assert ": PNG, JPEG, WEBP, GIF, TIFF, BMP and " in row.reason and row.reason.endswith(f"more; {len(data)} bytes)")
    assert "root" not in row.reason.replace("/data/passwd.png", "") and "x:0" not in row.reason


def test_pillows_messages_lose_the_bytes_they_quote():
    data = b"\x89PNG...."
    for err, shown in [(SyntaxError("broken PNG file (chunk b'root')"), "SyntaxError: broken PNG file (chunk <bytes>)"),
                       (SyntaxError("Syntax error in IM header: root:x:0:0"), "SyntaxError: Syntax error in IM header"),
                       (OSError("image file is truncated (3 bytes not processed)"),
                        "OSError: image file is truncated (3 bytes not processed)"),
                       (OSError("bad \x00\x01 data\n"), "OSError: bad ?? data?")]:
        assert decode_reason(err, "f.png", data) == f"cannot decode image f.png: {shown}"


def test_a_truncated_png_is_a_decode_row_without_its_bytes():
    data = encoded(photo(64, 64))
    row = decoded_sample("t.png", data[: len(data) // 2], 0, "t.png", policy=DEFAULT_POLICY)
    assert isinstance(row, SampleError) and row.kind == "decode" and "b'" not in row.reason and 'b"' not in row.reason


def test_decode_size_is_checked():
    with pytest.raises(ValueError, match="decode_size"):
        SourcePolicy(decode_size=(0, 5))
    assert dataclasses.replace(DEFAULT_POLICY, decode_size=[3, 4]).decode_size == (3, 4)
