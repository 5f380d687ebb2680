"""PNG figures the jobs leave next to their outputs (matplotlib, headless).

Tested by tests/jobs/reporting/test_colors.py and tests/jobs/test_perturb_notes.py.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: The gap between two cells of the example grid, in a row's data units (a cell is 1 high).
_GAP = 0.1


def map_grid(images: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]], titles: Sequence[str]) -> bytes:
    """One column per sample: the image on top, then one row per method's map, each row with a colour
    bar and a one-line legend saying what its colours mean (jobs.reporting.colors: the convention the report and
    the viewer share). Each map is scaled by its own clip percentile, so the bar reads in units of
    that scale: maps differ in magnitude by orders between samples, and one scale would blank most.

    A row is one axes holding its cells side by side (not an axes per cell): drawing costs a
    fraction of a second at the end of every job (benchmarks/RESULTS.md, "Test suite")."""
    from matplotlib.patches import Rectangle

    from jobs.reporting import colors

    cols = len(images)
    cell = images[0].shape[1] / images[0].shape[0] if cols else 1.0  # every cell has the model's input shape
    step = cell + _GAP
    width, heights = max(1.6 * cols + 1.0, 6.5), [1.75] + [2.0] * len(maps)
    total = sum(heights)
    fig = plt.figure(figsize=(width, total))
    left, right = 0.45 / width, 1.0 - 0.95 / width  # room for a row's name, and for its colour bar

    def row(i: int, below: float) -> "plt.Axes":
        """Row ``i``'s axes: 0.32 in above it (titles), ``below`` inches under it (the legend)."""
        top, height = sum(heights[:i]) + 0.32, heights[i] - 0.32 - below
        ax = fig.add_axes((left, 1.0 - (top + height) / total, right - left, height / total))
        ax.set_xlim(-_GAP / 2, cols * step - _GAP / 2)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_axis_off()
        return ax

    def cells(ax: "plt.Axes", arrays: Sequence[np.ndarray], framed: bool, **style: object) -> object:
        """Each array in a cell of ``ax`` (framed: a map's white is a value, not the page); the last image."""
        handle = None
        for c, array in enumerate(arrays):
            handle = ax.imshow(array, extent=(c * step, c * step + cell, 0.0, 1.0), interpolation="nearest", **style)
            if framed:
                ax.add_patch(Rectangle((c * step, 0.0), cell, 1.0, fill=False, linewidth=0.6, edgecolor="black"))
        return handle

    top = row(0, 0.05)
    cells(top, [im.squeeze(-1) if im.shape[-1] == 1 else im for im in images], False, cmap="gray")
    for c, title in enumerate(titles[:cols]):
        top.text(c * step + cell / 2, 1.04, title, ha="center", va="bottom", fontsize=7)
    for i, (name, method_maps) in enumerate(maps.items(), start=1):
        arrays = [np.asarray(m, dtype=np.float32) for m in method_maps[:cols]]
        signed = colors.is_signed(arrays)
        ax = row(i, 0.3)
        scaled = [m / colors.display_range(m, signed)[1] for m in arrays]
        handle = cells(ax, scaled, True, cmap=colors.colormap(signed), vmin=-1.0 if signed else 0.0, vmax=1.0)
        ax.text(-0.12, 0.5, name, rotation=90, ha="right", va="center", fontsize=7)
        ax.text((cols * step - _GAP) / 2, -0.1, colors.legend(name, signed), ha="center", va="top", fontsize=7)
        if handle is not None:
            box = ax.get_position()
            bar = fig.colorbar(handle, cax=fig.add_axes((right + 0.15 / width, box.y0 + 0.1 * box.height,
                                                         0.12 / width, 0.8 * box.height)))
            bar.set_ticks([-1.0, 0.0, 1.0] if signed else [0.0, 1.0])
            bar.ax.tick_params(labelsize=6)
            bar.set_label(f"× each map's p{colors.CLIP_PERCENTILE:g} |value|", fontsize=6)
    return _png(fig)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 8) -> bytes:
    """Sample images (uint8 [H, W, C]) in a grid, each titled (e.g. with its class)."""
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _png(fig: "plt.Figure") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _notes(fig, notes: Sequence[str]) -> None:  # noqa: ANN001 - a matplotlib Figure
    """Write what is degenerate about the data under the panels (a flat panel must not pass for a result)."""
    if notes:
        fig.subplots_adjust(bottom=min(0.5, fig.subplotpars.bottom + 0.05 * len(notes)))
        fig.text(0.01, 0.005, "\n".join(f"NOTE: {n}" for n in notes), fontsize=8, color="darkred", va="bottom",
                 ha="left")


def perturbation_curves(table, notes: Sequence[str] = ()) -> bytes:  # noqa: ANN001 - a pandas DataFrame
    """One row of panels per (fill, ranking): MoRF and LeRF mean relative probability drop vs the
    removed fraction (one line per method, the random order dashed: the reference line of each
    panel), and ROAD's accuracy (MoRF solid, LeRF dotted, random dashed).

    ``table`` has columns method, fill, rank, order ("morf" / "lerf" / "random"), fraction,
    mean_drop, accuracy; the random order's rows have rank "-".
    """
    combos = [c for c in dict.fromkeys(zip(table["fill"], table["rank"])) if c[1] != "-"]
    fig, axes = plt.subplots(len(combos), 3, figsize=(14, 3.9 * len(combos)), squeeze=False)
    methods = [m for m in dict.fromkeys(table["method"]) if m != "random"]
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for row, (fill, rank) in zip(axes, combos):
        part = table[(table["fill"] == fill) & (table["rank"].isin([rank, "-"]))]
        random = part[part["order"] == "random"].sort_values("fraction")
        for ax, order, title in zip(row, ("morf", "lerf"), ("MoRF (most relevant first)", "LeRF (least relevant first)")):
            for method in methods:
                rows = part[(part["method"] == method) & (part["order"] == order)].sort_values("fraction")
                ax.plot(100 * rows["fraction"], rows["mean_drop"], "o-", ms=3, color=colors[method], label=method)
            if len(random):
                ax.plot(100 * random["fraction"], random["mean_drop"], "k--", label="random")
            ax.set_title(f"{title}\nfill {fill}, ranked by {rank}", fontsize=9)
            ax.set_ylabel("mean relative drop of p(class)")
        ax = row[2]
        for method in methods:
            for order, style in (("morf", "-"), ("lerf", ":")):
                rows = part[(part["method"] == method) & (part["order"] == order)].sort_values("fraction")
                ax.plot(100 * rows["fraction"], rows["accuracy"], style, color=colors[method],
                        label=f"{method} {order.upper()}" if method == methods[0] or order == "morf" else None)
        if len(random):
            ax.plot(100 * random["fraction"], random["accuracy"], "k--", label="random")
        ax.set_title(f"ROAD accuracy (MoRF solid: low is good; LeRF dotted: high)\nfill {fill}, ranked by {rank}",
                     fontsize=9)
        ax.set_ylabel("accuracy on perturbed images")
        for ax in row:
            ax.set_xlabel("pixels removed (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[0][2].legend(fontsize=6)
    fig.tight_layout()
    _notes(fig, notes)
    return _png(fig)


def sanity_curves(table, metrics: Sequence[str]) -> bytes:  # noqa: ANN001 - a pandas DataFrame
    """Adebayo et al.'s figure: one panel per similarity metric, x = cascading randomization
    steps from the original model and the logits down to the first layer, one line per method
    (mean, with a band of +- the sd over randomization draws, or over samples for a table without
    draws). A method that passes falls towards 0.

    ``table`` has columns method, step, step_name, metric, mean, and sd_draws or std.
    """
    spread = "sd_draws" if "sd_draws" in table.columns else "std"
    draws = int(table["draws"].max()) if "draws" in table.columns else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), sharey=True, squeeze=False)
    steps = table[["step", "step_name"]].drop_duplicates().sort_values("step")
    methods = list(dict.fromkeys(table["method"]))
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            rows = table[(table["method"] == method) & (table["metric"] == metric)].sort_values("step")
            color = plt.cm.tab10(i % 10)
            ax.plot(rows["step"], rows["mean"], "o-", ms=3, color=color, label=method)
            std = rows[spread].fillna(0).to_numpy()
            ax.fill_between(rows["step"], rows["mean"] - std, rows["mean"] + std, color=color, alpha=0.12)
        ax.set_xticks(steps["step"].to_numpy())
        ax.set_xticklabels(steps["step_name"].to_numpy(), rotation=60, ha="right", fontsize=7)
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_title(metric if draws is None else f"{metric} (band: +- sd over {draws} draws)", fontsize=9)
        ax.set_xlabel("randomized down to")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("similarity to the original map")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def roar_curves(summary, kar: bool, title: str, controls: Sequence[str], unmodified: str,  # noqa: ANN001
                checkpoint: float | None = None, chance: float | None = None, tolerance: float = 3.0,
                notes: Sequence[str] = ()) -> bytes:
    """Accuracy vs t, one panel per fill: one line per method (mean +- std over seeds; controls dashed),
    the same method trained on the removal mask alone dotted in its colour, each line starting at the
    unmodified model's accuracy (star); the checkpoint's accuracy with its budget band (``tolerance``
    points below) and chance as horizontal references.

    ``summary`` has columns method, t, mean, std and, for grids with a leakage control, input
    ("pixels" / "mask") and fill.
    """
    import pandas as pd

    if "input" not in summary.columns:
        summary = summary.assign(input="pixels", fill="mean")
    base = summary[summary.method == unmodified]
    fills = [f for f in dict.fromkeys(summary[summary.input == "pixels"].fill) if f != "-"] or ["mean"]
    fig, axes = plt.subplots(1, len(fills), figsize=(6.8 * len(fills), 4.8), squeeze=False, sharey=True)
    methods = sorted(set(summary.method) - {unmodified})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, fill in zip(axes[0], fills):
        for method in methods:
            for inp, style, label in (("pixels", "--" if method in controls else "-", method),
                                      ("mask", ":", f"{method}, mask only")):
                rows = summary[(summary.method == method) & (summary.input == inp)
                               & ((summary.fill == fill) if inp == "pixels" else True)]
                if rows.empty:
                    continue
                rows = (rows if base.empty else pd.concat([base, rows])).sort_values("t")
                ax.errorbar(rows.t, rows["mean"], yerr=rows["std"].fillna(0), fmt=f"o{style}", ms=4, capsize=3,
                            color=colors[method], label=label, alpha=1.0 if inp == "pixels" else 0.7)
        if not base.empty:
            ax.errorbar(base.t, base["mean"], yerr=base["std"].fillna(0), fmt="k*", ms=10, capsize=3,
                        label="unmodified retrain")
        if checkpoint is not None:
            ax.axhline(checkpoint, color="green", lw=1, label="checkpoint (full training)")
            ax.axhspan(checkpoint - tolerance / 100, checkpoint, color="green", alpha=0.08,
                       label=f"budget check: within {tolerance:g} points")
        if chance is not None:
            ax.axhline(chance, color="gray", lw=1, ls="--", label="chance")
        ax.set(xlabel=f"% pixels {'kept (KAR)' if kar else 'removed (ROAR)'}", title=f"{title}\nfill: {fill}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy after retraining")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _notes(fig, notes)
    return _png(fig)


def training_curves(metrics: dict) -> bytes:
    """Train loss over (fractional) epochs, and train / test accuracy per epoch (jobs.train's metrics)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps_per_epoch = max(1, math.ceil(metrics["steps"] / metrics["epochs"]))
    if metrics["train_loss_steps"]:
        s, loss = zip(*metrics["train_loss_steps"])
        ax_loss.plot(np.asarray(s) / steps_per_epoch, loss, lw=1, alpha=0.6, label="train (running)")
    epochs = np.arange(1, len(metrics["train_loss"]) + 1)
    ax_loss.plot(epochs - 0.5, metrics["train_loss"], "o-", label="train (epoch mean)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(epochs, metrics["train_accuracy"], "o-", label="train")
    if metrics["test_accuracy_curve"]:
        e, acc = zip(*metrics["test_accuracy_curve"])
        ax_acc.plot(e, acc, "s-", label="test")
        ax_acc.annotate(f"{acc[-1]:.2%}", (e[-1], acc[-1]), textcoords="offset points", xytext=(-10, -15))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(f"{metrics['arch']} on {metrics.get('source', '?')}: {metrics['epochs']} epochs, "
                 f"bs {metrics['batch_size']}, lr {metrics['lr']}, seed {metrics['seed']}")
    fig.tight_layout()
    return _png(fig)
