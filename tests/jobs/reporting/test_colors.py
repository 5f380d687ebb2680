"""The shared colour convention, and the example grid that draws with it."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jobs.reporting import colors
from jobs.reporting.plots import map_grid


def test_signed_range_is_symmetric_and_clipped() -> None:
    m = np.linspace(-1, 1, 1000, dtype=np.float32)
    m[0] = -50.0  # one hot pixel must not wash out the rest
    assert colors.is_signed(m)
    lo, hi = colors.display_range(m)
    assert lo == -hi and 0.9 < hi < 50


def test_non_negative_range_starts_at_zero_and_never_empty() -> None:
    assert not colors.is_signed([np.ones((3, 3)), np.zeros((3, 3))])
    assert colors.display_range(np.arange(10.0))[0] == 0.0
    assert colors.display_range(np.zeros((4, 4))) == (0.0, 1.0)
    assert colors.display_range(np.zeros((4, 4)), signed=True) == (-1.0, 1.0)


def test_colormaps_stops_and_legends() -> None:
    stops = colors.color_stops(True, 5)
    assert len(stops) == 5 and all(s.startswith("#") and len(s) == 7 for s in stops)
    low, mid, high = (tuple(int(s[i:i + 2], 16) for i in (1, 3, 5)) for s in (stops[0], stops[2], stops[-1]))
    assert low[2] > low[0] and high[0] > high[2] and min(mid) > 240  # blue, white, red
    assert colors.colormap(False) == colors.MAGNITUDE_CMAP
    assert "red = raises the target logit of the pruned net" in colors.legend("pathway", True)
    assert "sign not shown" in colors.legend("gradient", False)
    assert "class-activation" in colors.legend("grad_cam", False)


def test_map_grid_draws_a_colour_bar_and_legend_per_method() -> None:
    rng = np.random.default_rng(0)
    images = [(rng.random((28, 28, 1)) * 255).astype(np.uint8) for _ in range(3)]
    maps = {"pathway": [rng.normal(size=(28, 28)).astype(np.float16) for _ in range(3)],
            "grad_cam": [np.abs(rng.normal(size=(28, 28))).astype(np.float16) for _ in range(3)]}
    png = Image.open(io.BytesIO(map_grid(images, maps, ["a", "b", "c"])))
    assert png.format == "PNG" and png.width > 600
    rgb = np.asarray(png.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 2] < 100)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 100)
    assert red.sum() > 500 and blue.sum() > 100  # both signs of the signed row are drawn


def test_map_grid_keeps_the_shape_of_a_non_square_input() -> None:
    """Cells take the model input's shape: a 16 x 48 image is drawn three times as wide as high, not
    squeezed into a square (its black right two thirds, twice as wide as high)."""
    image = np.full((16, 48, 1), 128, np.uint8)
    image[:, 16:] = 0
    png = Image.open(io.BytesIO(map_grid([image], {"gradient": [np.ones((16, 48), np.float32)]}, ["wide"])))
    rgb = np.asarray(png.convert("RGB")).astype(int)
    black = (rgb[: rgb.shape[0] // 2] < 5).all(axis=-1)  # the image row
    rows, cols = np.flatnonzero(black.sum(axis=1) > 20), np.flatnonzero(black.sum(axis=0) > 20)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(width / height - 2.0) < 0.1, (width, height)
