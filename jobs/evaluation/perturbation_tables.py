"""jobs.perturb's curves as tables: per (method, fill, rank, order, fraction) means over images, the
areas under them, what is degenerate about them, and the summary printed at the end.

Tested by tests/jobs/test_perturb.py and tests/jobs/test_perturb_notes.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RANDOM = "random"
NO_RANK = "-"  # the random order ranks nothing


def summarize(results: dict[tuple[str, str, str, str], dict[int, tuple[np.ndarray, np.ndarray]]],
              fractions: Sequence[float], methods: Sequence[str], labels: np.ndarray) -> Any:
    """Long table: one row per (method, fill, rank, order, fraction), methods in the given order, with
    the mean and std of the drop and ROAD's accuracy (predicted == label) over images (shards
    concatenated in sample order; ``labels`` are the samples' labels in that order)."""
    import pandas as pd

    rows = []
    for (label, how, rank, order), shards in sorted(results.items(), key=lambda item: list(methods).index(item[0][0])):
        drops = np.concatenate([shards[k][0] for k in sorted(shards)], axis=0)
        correct = np.concatenate([shards[k][1] for k in sorted(shards)], axis=0) == labels[:, None]
        for j, fraction in enumerate(fractions):
            rows.append({"method": label, "fill": how, "rank": rank, "order": order, "fraction": float(fraction),
                         "mean_drop": float(drops[:, j].mean()), "std_drop": float(drops[:, j].std()),
                         "accuracy": float(correct[:, j].mean()), "n_images": int(drops.shape[0])})
    return pd.DataFrame(rows)


def areas(table: Any, fractions: Sequence[float]) -> Any:
    """Areas under every (method, fill, rank, order) curve: of the mean drop (``auc``) and of ROAD's
    accuracy (``accuracy_auc``)."""
    import pandas as pd

    from attribution.evaluation import auc

    rows = []
    for (label, how, rank, order), group in table.groupby(["method", "fill", "rank", "order"], sort=False):
        curve = group.sort_values("fraction")
        area = (lambda col: auc(fractions, curve[col].to_numpy()) if len(fractions) > 1 else float("nan"))
        rows.append({"method": label, "fill": how, "rank": rank, "order": order, "auc": area("mean_drop"),
                     "accuracy_auc": area("accuracy"), "n_images": int(curve["n_images"].iloc[0])})
    return pd.DataFrame(rows)


def curve_notes(table: Any) -> list[str]:
    """What is degenerate about the curves, in words: ROAD accuracy 0 at every method and fraction (the
    model never predicts the images' labels), or a method's drop curve that never moves."""
    notes = []
    if len(table) and (table["accuracy"] == 0).all():
        notes.append("ROAD accuracy is 0 for every method and fraction: the model predicts none of the images' "
                     "labels (labels in another class order, or a model at chance); the ROAD panels are flat")
    for (label, how, rank, order), group in table.groupby(["method", "fill", "rank", "order"], sort=False):
        drops = group["mean_drop"].to_numpy()
        if len(drops) > 1 and float(np.ptp(drops)) == 0.0:
            notes.append(f"{label} {order} (fill {how}, ranked by {rank}): the drop is {drops[0]:.4f} at every "
                         "fraction; the curve never moves")
    return notes


def print_summary(table: Any, fractions: Sequence[float], paths: list[str], seconds: float) -> None:
    from storage.io.fs import redact_url

    auc_table = areas(table, fractions)
    print(f"\nareas under the curves ({int(table.n_images.max())} images, {seconds:.1f} s): mean relative drop "
          "of the explained class' probability (MoRF high, LeRF low) | ROAD accuracy (MoRF low, LeRF high)")
    for (how, rank), group in auc_table[auc_table["rank"] != NO_RANK].groupby(["fill", "rank"], sort=False):
        reference = auc_table[(auc_table.fill == how) & (auc_table.order == RANDOM)]
        print(f"  fill {how}, ranked by {rank}:")
        for method, rows in pd_rows(group, reference):
            cells = "  ".join(f"{r.order}={r.auc:.4f}|{r.accuracy_auc:.4f}" for r in rows.itertuples())
            print(f"    {method:24s} {cells}")
    for note in curve_notes(table):
        print(f"note: {note}")
    print("outputs: " + ", ".join(redact_url(p) for p in paths))


def pd_rows(group: Any, reference: Any) -> list[tuple[str, Any]]:
    """(method, its rows) in table order, the random reference last."""
    import pandas as pd

    both = pd.concat([group, reference])
    return [(m, both[both.method == m]) for m in dict.fromkeys(both.method)]
