"""The one colour convention for drawing maps: the examples grid, the report and the browser viewer.

Why one place: a reader compares pictures from different tools; if one draws red as "raises the
target" with a symmetric range and another stretches [min, max] of each map, the same map looks
different and the sign reads wrong. Everything that draws a map asks this module.

    SIGNED_CMAP, MAGNITUDE_CMAP, CLIP_PERCENTILE    the convention itself
    is_signed(maps)              -> bool: any value below 0 (then the map has a sign to show)
    display_range(maps, signed)  -> (lo, hi): [-s, s] for signed maps, [0, s] otherwise, with s the
                                    CLIP_PERCENTILE-th percentile of |map| (one hot pixel does not
                                    wash the rest out)
    colormap(signed)             -> the matplotlib colormap name
    color_stops(signed, n=11)    -> n "#rrggbb" strings from lo to hi (a CSS linear-gradient / a canvas LUT)
    legend(method, signed)       -> one line: what red / blue (or intensity) mean for that method
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Diverging, red = positive, white = 0, blue = negative (matplotlib "RdBu_r").
SIGNED_CMAP = "RdBu_r"
#: Sequential, white = 0, dark red = most relevant: red keeps meaning "relevant" in both cases.
MAGNITUDE_CMAP = "Reds"
#: Percentile of |map| that sets the colour range (values beyond it are drawn at full colour).
CLIP_PERCENTILE = 99.5

#: Methods whose map is relevance itself rather than a derivative of the logit (their red is "more relevant").
_NON_GRADIENT = {"gradcam": "class-activation weight", "grad_cam": "class-activation weight",
                 "random": "random noise (a control)", "sobel": "edge strength (a control)"}


def _values(maps: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(m, dtype=np.float32).ravel() for m in ([maps] if isinstance(maps, np.ndarray) else maps)]
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
    return values[np.isfinite(values)]


def is_signed(maps: np.ndarray | Iterable[np.ndarray]) -> bool:
    """Whether the maps (one array, or several of one method) hold negative values; a method's maps
    are drawn alike, so pass all of them."""
    values = _values(maps)
    return bool(values.size and values.min() < 0)


def display_range(maps: np.ndarray | Iterable[np.ndarray], signed: bool | None = None) -> tuple[float, float]:
    """The colour range of one map (or of several, drawn on one scale): symmetric around 0 when signed,
    so white is always 0; never empty (an all-zero map gets (-1, 1) or (0, 1))."""
    values = _values(maps)
    signed = is_signed(values) if signed is None else signed
    scale = float(np.percentile(np.abs(values), CLIP_PERCENTILE)) if values.size else 0.0
    if not scale > 0:
        scale = float(np.abs(values).max()) if values.size else 0.0
    scale = scale if scale > 0 else 1.0
    return (-scale, scale) if signed else (0.0, scale)


def colormap(signed: bool) -> str:
    """The matplotlib colormap name for a signed or a non-negative map."""
    return SIGNED_CMAP if signed else MAGNITUDE_CMAP


def color_stops(signed: bool, n: int = 11) -> list[str]:
    """``n`` evenly spaced colours of the colormap, lo to hi, as "#rrggbb" (for viewers without matplotlib)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps[colormap(signed)]
    return [to_hex(cmap(i / (n - 1))) for i in range(n)]


def legend(method: str, signed: bool) -> str:
    """One line under a method's maps saying what its colours mean."""
    base = method.split(":")[0].split("[")[0].lower()
    if base in _NON_GRADIENT:
        return f"{method}: darker red = more {_NON_GRADIENT[base]}" + ("; blue = negative" if signed else "")
    if not signed:
        return f"{method}: darker red = larger |effect| on the target logit (sign not shown)"
    where = " of the pruned net" if base.startswith("pathway") else ""
    return f"{method}: red = raises the target logit{where}, blue = lowers it, white = no effect"


__all__ = ["CLIP_PERCENTILE", "MAGNITUDE_CMAP", "SIGNED_CMAP", "color_stops", "colormap", "display_range", "is_signed",
           "legend"]
