"""What a ROAR grid means: accuracy per cell, the mask-leakage verdict, the budget check, and the files.

**Leakage control.** For each method x t the job also trains, with the same budget, on the
binary removal mask alone (no pixel of the image). ROAR reads a falling accuracy as "the removed
pixels held the class information"; that reading fails when the *pattern* of removal tells the
class, because a retrained model can learn the pattern instead. A cell is:

* ``valid: the mask alone is at chance`` when the mask-only accuracy is at most ``chance + 5``
  points (chance = 1/K, K the model's number of classes; the share of the most frequent test
  label is reported beside it, never used: on a one-class subset it is 100 %): the mask carries no class;
* ``valid: above mask-only`` when ROAR's accuracy is higher than the mask-only accuracy by a
  one-sided Welch t-test over the seeds at alpha = 0.05: the remaining pixels add information
  the mask does not have, so the accuracy is not the mask's;
* otherwise ``not valid: the mask leaks the class``: ROAR's accuracy cannot be told from what
  the mask alone gives (or is below it), so it says nothing about the removed pixels.

**Budget check.** ROAR compares retrained models, so each retrain must be trained well enough:
the unmodified retrain (mean over seeds) must come within ``tolerance`` points (3) of the fully
trained checkpoint's accuracy on the same test images, else every cell is marked under-trained.

**A model at chance.** When the checkpoint or the unmodified retrain is within 5 points of chance
(or below it) on the test images, a falling accuracy has nowhere to fall from: every cell is
``not valid: the model is at chance on these images`` and the budget check fails, whatever the gap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALPHA = 0.05
CHANCE_MARGIN = 0.05
VALID_CHANCE = "valid: the mask alone is at chance"
VALID_ABOVE = "valid: above mask-only"
LEAKS = "not valid: the mask leaks the class"
NO_CONTROL = "no mask control"
AT_CHANCE = "not valid: the model is at chance on these images"
COLUMNS = ["method", "t", "seed", "input", "fill", "accuracy", "epochs", "seconds", "mode", "per_read",
           "train_samples", "test_samples", "removed_per_image", "train_accuracy", "device", "num_threads",
           "finished_at"]


def welch_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Welch t-test p-value for mean(a) > mean(b); NaN with fewer than 2 values per side.
    Two constant samples give 0 (a above b) or 1 (not above)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return float("nan")
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() > b.mean() else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def chance_levels(labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Chance (1/K over the classes the model predicts) and, beside it, the test subset's majority-class rate."""
    labels = np.asarray(labels, dtype=np.int64)
    majority = float(np.bincount(labels[labels >= 0]).max() / labels.size) if (labels >= 0).any() else float("nan")
    return {"chance": 1.0 / max(1, int(num_classes)), "num_classes": int(num_classes), "majority": majority}


def at_chance(accuracy: float | None, chance: float) -> bool:
    """An accuracy within ``CHANCE_MARGIN`` of chance, or below it: the model tells no class apart."""
    return accuracy is not None and accuracy == accuracy and accuracy <= chance + CHANCE_MARGIN


def verdict(roar: np.ndarray, mask: np.ndarray, chance: float, model_at_chance: bool = False) -> tuple[float, str]:
    """(p-value, verdict) of one method x t x fill cell; see the module docstring."""
    if model_at_chance:
        return (welch_greater(roar, mask) if mask.size else float("nan")), AT_CHANCE
    if mask.size == 0:
        return float("nan"), NO_CONTROL
    p = welch_greater(roar, mask)
    if float(np.mean(mask)) <= chance + CHANCE_MARGIN:
        return p, VALID_CHANCE
    return p, (VALID_ABOVE if p < ALPHA else LEAKS)


def validity(table: Any, chance: float, model_at_chance: bool = False) -> Any:
    """One row per (method, t, fill) of ROAR cells: accuracy and mask-only accuracy (mean, std, n over
    seeds), the Welch p-value and the verdict (all :data:`AT_CHANCE` when ``model_at_chance``)."""
    import pandas as pd

    rows = []
    roar = table[(table["input"] == "pixels") & (table["method"] != "none")]
    masks = table[table["input"] == "mask"]
    for (method, t, fill), group in roar.groupby(["method", "t", "fill"], sort=True):
        acc = group["accuracy"].to_numpy()
        control = masks[(masks["method"] == method) & (masks["t"] == t)]["accuracy"].to_numpy()
        p, text = verdict(acc, control, chance, model_at_chance)
        rows.append({"method": method, "t": int(t), "fill": fill, "accuracy": acc.mean(),
                     "std": acc.std(ddof=1) if acc.size > 1 else float("nan"), "n": int(acc.size),
                     "mask_accuracy": control.mean() if control.size else float("nan"),
                     "mask_std": control.std(ddof=1) if control.size > 1 else float("nan"),
                     "mask_n": int(control.size), "p_value": p, "verdict": text})
    return pd.DataFrame(rows, columns=["method", "t", "fill", "accuracy", "std", "n", "mask_accuracy", "mask_std",
                                       "mask_n", "p_value", "verdict"])


def budget(table: Any, checkpoint_accuracy: float | None, tolerance: float,
           levels: dict[str, Any] | None = None) -> dict[str, Any]:
    """The budget check: the unmodified retrains against the checkpoint on the same test images; it
    fails where either is at chance (``levels``: :func:`chance_levels`)."""
    base = table[table["method"] == "none"]["accuracy"].to_numpy()
    record: dict[str, Any] = {"checkpoint_accuracy": checkpoint_accuracy, "tolerance_points": tolerance,
                              "unmodified_mean": float(base.mean()) if base.size else None,
                              "unmodified_std": float(base.std(ddof=1)) if base.size > 1 else None,
                              "seeds": int(base.size), **(levels or {})}
    if levels is not None:
        low = [f"{name} {100 * value:.1f} %" for name, value in
               (("checkpoint", checkpoint_accuracy), ("unmodified retrain", record["unmodified_mean"]))
               if at_chance(value, levels["chance"])]
        record["at_chance"] = bool(low)
        if low:
            gap = None if checkpoint_accuracy is None or not base.size else \
                100.0 * (checkpoint_accuracy - float(base.mean()))
            record.update(gap_points=gap, under_trained=True, passed=False,
                          verdict=f"NOT VALID: the model is at chance on these images ({', '.join(low)}; chance "
                                  f"{100 * levels['chance']:.1f} % = 1/{levels['num_classes']}, "
                                  f"+{100 * CHANCE_MARGIN:g} points)")
            return record
    if not base.size or checkpoint_accuracy is None:
        record.update(gap_points=None, verdict="not checked (no unmodified retrain or no checkpoint accuracy)")
        return record
    gap = 100.0 * (checkpoint_accuracy - float(base.mean()))
    record["gap_points"] = gap
    record["verdict"] = (f"within {tolerance:g} points of the checkpoint" if gap <= tolerance else
                         f"UNDER-TRAINED: {gap:.1f} points below the checkpoint (more than {tolerance:g})")
    record["under_trained"] = gap > tolerance
    record["passed"] = gap <= tolerance
    return record


def summarize(table: Any) -> Any:
    """Mean, std and count of accuracy per (method, t, input, fill), for the plot."""
    grouped = table.groupby(["method", "t", "input", "fill"])["accuracy"]
    return grouped.agg(["mean", "std", "count"]).reset_index()


def write_outputs(output: str, options: dict, records: list[dict], kar: bool, title: str, run_record: dict,
                  chance: float, controls: tuple[str, ...]) -> tuple[Any, Any]:
    """``results.parquet|csv`` (one row per cell), ``summary.csv`` (the verdicts), ``claims.csv`` (the paper's
    claims tested, jobs.evaluation.roar_claims; their lines go to ``run_record["claims"]``), the PNG and ``run.json``."""
    import pandas as pd

    from jobs.evaluation.outputs import write_table
    from jobs.reporting.plots import roar_curves
    from storage.io.location import Location

    table = pd.DataFrame(records, columns=COLUMNS).sort_values(["method", "t", "input", "fill", "seed"])
    table = table.reset_index(drop=True)
    check = run_record.get("budget", {})
    verdicts = validity(table, chance, bool(check.get("at_chance")))
    notes = ([f"the model is at chance on these images: {check['verdict']}"] if check.get("at_chance") else [])
    run_record["notes"] = notes + grid_notes(table)  # the summary, the PNG and the report carry them
    write_table(output, "results", table, options)
    where = Location(output, options)
    where.put("summary.csv", verdicts.to_csv(index=False).encode())
    from jobs.evaluation.roar_claims import claim_lines, claims

    tested = claims(table, verdicts, check, kar)  # the paper's claims, paired over seeds (jobs.evaluation.roar_claims)
    where.put("claims.csv", tested.to_csv(index=False).encode())
    run_record["claims"] = claim_lines(tested)
    where.put("kar.png" if kar else "roar.png", roar_curves(summarize(table), kar, title, controls, "none",
                                                            check.get("checkpoint_accuracy"), chance,
                                                            notes=run_record["notes"]))
    where.put_json("run.json", run_record)
    return table, verdicts


def _cell(mean: float, std: float) -> str:
    return "-" if math.isnan(mean) else f"{100 * mean:.1f} ± {0.0 if math.isnan(std) else 100 * std:.1f}"


def chance_line(check: dict[str, Any]) -> str:
    """Chance and the test subset's majority-class rate in one line ("" for a record without them)."""
    if check.get("chance") is None:
        return ""
    return (f"chance: {100 * check['chance']:.1f} % (1/{check['num_classes']} classes the model predicts); "
            f"majority class of the test images: {100 * check['majority']:.1f} %")


def budget_line(check: dict[str, Any]) -> str:
    """The budget check in one line (the job's summary and the report share it)."""
    mean, std = check.get("unmodified_mean"), check.get("unmodified_std")
    reference = check.get("checkpoint_accuracy")
    return (f"budget check: unmodified retrain {_cell(math.nan if mean is None else mean, math.nan if std is None else std)} % "
            f"vs checkpoint {math.nan if reference is None else 100 * reference:.1f} % on the same test images: "
            f"{check.get('verdict', 'not checked')}")


def grid_notes(table: Any) -> list[str]:
    """What a degenerate grid is, in words: every accuracy 0, or a method whose accuracy never moves with t."""
    notes = []
    cells = table[table["method"] != "none"]
    if len(table) and (table["accuracy"] == 0).all():
        notes.append("every accuracy in the grid is 0: no retrain and no checkpoint cell predicts a test label "
                     "(labels from another class order?)")
    elif len(cells):
        for (method, inp, fill), rows in cells.groupby(["method", "input", "fill"], sort=True):
            means = rows.groupby("t")["accuracy"].mean()
            if len(means) > 1 and float(means.max() - means.min()) == 0.0:
                what = "mask only" if inp == "mask" else fill
                notes.append(f"{method} ({what}): accuracy {100 * float(means.iloc[0]):.1f} % at every t: the curve "
                             "never moves")
    return notes


def verdict_lines(verdicts: Any, check: dict[str, Any], notes: list[str] = ()) -> list[str]:
    """The chance line, the budget line, then one line per ROAR cell with its verdict, then the notes."""
    lines = [line for line in (chance_line(check), budget_line(check)) if line]
    for row in verdicts.itertuples():
        lines.append(f"  {row.method:>20s} t={row.t:>2d} {row.fill:>4s}: ROAR {_cell(row.accuracy, row.std)}, "
                     f"mask only {_cell(row.mask_accuracy, row.mask_std)} (p={row.p_value:.3g}): {row.verdict}")
    return lines + [f"note: {note}" for note in notes]


def print_summary(table: Any, verdicts: list[str], results: list[dict], reused: int, seconds: float, output: str,
                  kar: bool) -> None:
    """What jobs.roar prints at the end: cells computed and reused, accuracy per method and t, the verdicts."""
    busy = [r["seconds"] for r in results]
    print(f"\ncomputed {len(results)} cells in {seconds:.1f} s"
          f"{f' (median {float(np.median(busy)):.1f} s per cell)' if busy else ''}; reused {reused}")
    print("test accuracy, mean +- std over seeds:")
    for (method, inp, fill), rows in table.groupby(["method", "input", "fill"], sort=True):
        stats = rows.groupby("t")["accuracy"].agg(["mean", "std", "count"])
        cells = ", ".join(f"t={int(t)}: {r['mean']:.4f} +- {0 if np.isnan(r['std']) else r['std']:.4f} "
                          f"(n={int(r['count'])})" for t, r in stats.iterrows())
        what = "" if method == "none" else (" mask only" if inp == "mask" else f" {fill}")
        print(f"  {method + what:>24}: {cells}")
    print("\n".join(verdicts))
    print(f"results: {output}/results.parquet, results.csv, summary.csv, claims.csv, {'kar' if kar else 'roar'}.png")
