"""How the map explorer colours a map: the reference for view_static/view.js, which does the
same arithmetic in the browser, so a test can check that the drawn pixels come from the stored
map (tests/jobs/test_view_browser.py).

Vertex Explainable AI's display conventions: the magnitude is clipped at an upper percentile
(default 99.9: a few extreme pixels do not wash out the rest) and values under a lower
percentile are not coloured (default 62: noise stays white). The polarity picks what is shown:
``both`` (signed: red raises the target logit, blue lowers it), ``positive``, ``negative`` or
``absolute``. Zero is (nearly) white; over the image the map is drawn with its clipped magnitude
as alpha. The colour maps are jobs/reporting/colors.py's, the one convention of every map picture.

Tested by tests/jobs/test_view.py.
"""

from __future__ import annotations

import math

import numpy as np

POLARITIES = ("both", "positive", "negative", "absolute")
DEFAULT_LOWER, DEFAULT_UPPER = 62.0, 99.9


def lut(polarity: str) -> np.ndarray:
    """The 256 RGB colours of ``polarity``'s scale, uint8 [256, 3], from the project's one colour
    convention (jobs/reporting/colors.py): its diverging map for ``both`` (index 128 is zero, 0 and 255 the
    clip at either sign), its sequential map for ``positive`` and ``absolute``, blues for
    ``negative``. The page draws with these very numbers (``/api/info``'s ``luts``)."""
    from matplotlib import colormaps

    from jobs.reporting.colors import MAGNITUDE_CMAP, SIGNED_CMAP

    i = np.arange(256, dtype=np.float64)
    if polarity == "both":
        where = (np.where(i < 128, (i - 128) / 128, (i - 128) / 127) + 1) / 2
        name = SIGNED_CMAP
    elif polarity in ("positive", "absolute", "negative"):
        where, name = i / 255, {"negative": "Blues"}.get(polarity, MAGNITUDE_CMAP)
    else:
        raise ValueError(f"polarity {polarity!r}: use one of {', '.join(POLARITIES)}")
    return np.floor(colormaps[name](where)[:, :3] * 255 + 0.5).astype(np.uint8)


def luts() -> dict[str, list[int]]:
    """Every polarity's scale, flat RGB, for the page."""
    return {p: lut(p).ravel().tolist() for p in POLARITIES}


def percentile(sorted_values: np.ndarray, p: float) -> float:
    """The p-th percentile of ascending values, linear interpolation, written as view.js writes it
    (numpy's own rounds differently in the last bit)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    pos = (n - 1) * p / 100.0
    i = int(math.floor(pos))
    if i >= n - 1:
        return float(sorted_values[n - 1])
    frac = pos - i
    a, b = float(sorted_values[i]), float(sorted_values[i + 1])
    return a + (b - a) * frac


def colour_indices(values: np.ndarray, polarity: str = "both", lower: float = DEFAULT_LOWER,
                   upper: float = DEFAULT_UPPER) -> tuple[np.ndarray, float, float]:
    """Each pixel's index into :func:`lut` ([H, W] int), and the clip range (lo, hi) of the shown
    magnitude; non-finite values count as zero."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, 0.0)
    s = {"both": v, "positive": np.maximum(v, 0), "negative": np.maximum(-v, 0), "absolute": np.abs(v)}[polarity]
    m = np.abs(s)
    ordered = np.sort(m.ravel())
    lo, hi = percentile(ordered, lower), percentile(ordered, upper)
    if hi > lo:
        t = np.clip((m - lo) / (hi - lo), 0.0, 1.0)
    else:
        t = (m > lo).astype(np.float64)
    if polarity == "both":
        signed = np.sign(s) * t
        index = np.floor(128 + signed * np.where(signed < 0, 128, 127) + 0.5)
    else:
        index = np.floor(t * 255 + 0.5)
    return index.astype(np.int64), lo, hi


def colorize(values: np.ndarray, polarity: str = "both", lower: float = DEFAULT_LOWER,
             upper: float = DEFAULT_UPPER) -> np.ndarray:
    """The map as the explorer draws it: uint8 RGB [H, W, 3]."""
    index, _, _ = colour_indices(values, polarity, lower, upper)
    return lut(polarity)[index]
