"""PNG figures the jobs leave next to their outputs (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def map_grid(images: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]], titles: Sequence[str]) -> bytes:
    """One column per sample: the image on top, then one row per method's map.

    Signed maps are drawn with a diverging colormap centred on 0 and scaled per map by
    its largest magnitude, so red is evidence for the target and blue against it.
    """
    rows, cols = 1 + len(maps), len(images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for c, image in enumerate(images):
        ax = axes[0][c]
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(titles[c], fontsize=7)
        for r, (name, method_maps) in enumerate(maps.items(), start=1):
            m = np.asarray(method_maps[c], dtype=np.float32)
            scale = float(np.nanmax(np.abs(m))) or 1.0
            axes[r][c].imshow(m, cmap="bwr", vmin=-scale, vmax=scale)
            if c == 0:
                axes[r][c].set_ylabel(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
