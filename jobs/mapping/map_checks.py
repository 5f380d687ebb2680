"""What the attribute job says about the maps it committed: how many are degenerate, per method and
reason (the ``degenerate`` detail column: an all-zero map, a pathway with every neuron pruned), and
which layer and resolution Grad-CAM used (its ``layer`` / ``layer_size`` details), warning about a
map too coarse to hold spatial information. A degenerate map is stored like any other so that every
sample appears once; these counts make sure it is never taken for a real one (issue #27).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attribution.gradcam import COARSEST


def _column(output: str, options: dict[str, Any] | None, method: str, columns: list[str], declared: Sequence[str]
            ) -> Any:
    """Those columns of a method's committed maps, or None where the method does not declare them."""
    from storage.io.fs import StorageError
    from storage.maps.reader import read_maps

    if not set(columns) <= set(declared):
        return None
    try:
        return read_maps(output, method, options or None, columns=columns)
    except StorageError:  # format 2 tables before cc2f1b9 (degenerate-map details), resumed: not counted
        return None


def map_quality(output: str, options: dict[str, Any] | None, methods: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``degenerate``: {method: {reason: count}} (every method with the detail, 0 reasons = {});
    ``grad_cam``: {method: [{layer, size, maps}]}; ``warnings``: one line per method with degenerate or
    coarse maps. ``methods``: each method label's declared details (``Attribution.detail_schema``)."""
    degenerate: dict[str, dict[str, int]] = {}
    layers: dict[str, list[dict[str, Any]]] = {}
    warnings: list[str] = []
    for method, declared in methods.items():
        frame = _column(output, options, method, ["degenerate"], declared)
        if frame is not None and "degenerate" in frame:
            counts = frame["degenerate"].dropna().value_counts().sort_index()
            degenerate[method] = {str(k): int(n) for k, n in counts.items()}
            if degenerate[method]:
                total = sum(degenerate[method].values())
                warnings.append(f"{method}: {total} of {len(frame)} maps are degenerate ("
                                + "; ".join(f"{n} {k}" for k, n in degenerate[method].items())
                                + "): they hold no information; the rows say which (column degenerate)")
        frame = _column(output, options, method, ["layer", "layer_size"], declared)
        if frame is None or "layer" not in frame or frame["layer"].isna().all():
            continue
        used = frame.dropna(subset=["layer"]).assign(size=lambda f: [tuple(int(v) for v in s) for s in f.layer_size])
        layers[method] = [{"layer": str(layer), "size": list(size), "maps": int(n)}
                          for (layer, size), n in used.groupby(["layer", "size"]).size().items()]
        for entry in layers[method]:
            if min(entry["size"]) < COARSEST:
                h, w = entry["size"]
                warnings.append(f"{method}: Grad-CAM used layer {entry['layer']!r} with a {h} x {w} map for "
                                f"{entry['maps']} maps, coarser than {COARSEST} x {COARSEST}: upsampled it is a smooth "
                                "wash; choose an earlier layer with layer='<module name>'")
    return {"degenerate": degenerate, "grad_cam": layers, "warnings": warnings}


def quality_lines(quality: dict[str, Any]) -> list[str]:
    """The summary's lines: degenerate maps per method, then Grad-CAM's layers."""
    lines = []
    if quality.get("degenerate"):
        lines.append("degenerate maps: " + ", ".join(f"{m} {sum(c.values())}" for m, c in quality["degenerate"].items()))
    for method, entries in quality.get("grad_cam", {}).items():
        lines.append(f"{method}: Grad-CAM layer " + ", ".join(f"{e['layer']} ({e['size'][0]} x {e['size'][1]}, "
                                                              f"{e['maps']} maps)" for e in entries))
    return lines
