"""jobs.evaluation.roar_summary's verdicts on constructed numbers, built from the case of issue #27: a class-sorted
folder and a small budget, where the mask-only net reached 64 % on 10 classes and 'chance' (the majority
rate of a one-class test subset) was 100 %, and a checkpoint at 0 % passed the budget check."""

from __future__ import annotations

import numpy as np
import pandas as pd

from jobs.evaluation.roar_summary import (AT_CHANCE, COLUMNS, LEAKS, VALID_ABOVE, VALID_CHANCE, budget, chance_levels, grid_notes,
                               validity, verdict_lines)
from tests.jobs.roar_claims import check_claims


def grid(cells: dict[tuple[str, int, str], list[float]]) -> pd.DataFrame:
    """Results rows: {(method, t, input): accuracy per seed}; method "none" is the unmodified retrain."""
    rows = []
    for (method, t, inp), accuracies in cells.items():
        for seed, accuracy in enumerate(accuracies):
            rows.append({"method": method, "t": t, "seed": seed, "input": inp,
                         "fill": "-" if inp == "mask" or method == "none" else "mean", "accuracy": accuracy})
    return pd.DataFrame(rows, columns=COLUMNS)


ONE_CLASS_TEST = np.zeros(100, np.int64)  # the first 100 test images of a class-sorted folder


def test_chance_is_one_over_k_and_the_majority_rate_is_only_reported():
    levels = chance_levels(ONE_CLASS_TEST, 10)
    assert levels == {"chance": 0.1, "num_classes": 10, "majority": 1.0}


def test_a_mask_at_64_percent_on_10_classes_is_not_at_chance():
    table = grid({("none", 0, "pixels"): [0.9, 0.91, 0.9], ("pathway", 50, "pixels"): [0.62, 0.63, 0.61],
                  ("pathway", 50, "mask"): [0.64, 0.65, 0.63]})
    levels = chance_levels(ONE_CLASS_TEST, 10)
    (row,) = validity(table, levels["chance"]).itertuples()
    assert row.verdict == LEAKS  # under the old chance (100 %) this was "valid: the mask alone is at chance"
    check = budget(table, 0.91, 3.0, levels)
    assert check["verdict"].startswith("within") and check["passed"] and not check["at_chance"]
    check_claims("\n".join(verdict_lines(validity(table, levels["chance"]), check)))


def test_a_checkpoint_at_0_never_passes_the_budget_check_and_nothing_is_valid():
    table = grid({("none", 0, "pixels"): [0.0], ("pathway", 50, "pixels"): [0.0], ("pathway", 50, "mask"): [0.64]})
    levels = chance_levels(ONE_CLASS_TEST, 10)
    check = budget(table, 0.0, 3.0, levels)
    assert check["at_chance"] and not check["passed"] and check["under_trained"]
    assert check["verdict"].startswith("NOT VALID: the model is at chance on these images (checkpoint 0.0 %, "
                                       "unmodified retrain 0.0 %; chance 10.0 % = 1/10")
    verdicts = validity(table, levels["chance"], model_at_chance=check["at_chance"])
    assert set(verdicts.verdict) == {AT_CHANCE}
    parsed = check_claims("\n".join(verdict_lines(verdicts, check)))
    assert parsed["model_at_chance"] and parsed["majority"] == 100.0 and parsed["chance"] == 10.0


def test_within_5_points_of_chance_is_at_chance_either_way():
    levels = chance_levels(np.arange(100) % 10, 10)
    table = grid({("none", 0, "pixels"): [0.14, 0.15, 0.14]})
    assert budget(table, 0.9, 3.0, levels)["at_chance"]  # the retrain learned nothing: not "under-trained" only
    assert budget(grid({("none", 0, "pixels"): [0.9]}), 0.149, 3.0, levels)["at_chance"]
    assert not budget(grid({("none", 0, "pixels"): [0.9]}), 0.151, 3.0, levels)["at_chance"]


def test_the_mask_verdicts_follow_one_over_k():
    levels = chance_levels(np.arange(100) % 10, 10)
    table = grid({("none", 0, "pixels"): [0.9, 0.9, 0.9],
                  ("pathway", 50, "pixels"): [0.5, 0.52, 0.51], ("pathway", 50, "mask"): [0.12, 0.14, 0.13],
                  ("gradient", 50, "pixels"): [0.5, 0.52, 0.51], ("gradient", 50, "mask"): [0.3, 0.31, 0.29],
                  ("sobel", 50, "pixels"): [0.3, 0.32, 0.31], ("sobel", 50, "mask"): [0.3, 0.33, 0.31]})
    verdicts = validity(table, levels["chance"]).set_index("method").verdict
    assert verdicts.to_dict() == {"gradient": VALID_ABOVE, "pathway": VALID_CHANCE, "sobel": LEAKS}
    check_claims("\n".join(verdict_lines(validity(table, levels["chance"]), budget(table, 0.91, 3.0, levels))))


def test_degenerate_grids_say_what_they_are():
    zeros = grid({("none", 0, "pixels"): [0.0], ("pathway", 50, "pixels"): [0.0], ("pathway", 90, "pixels"): [0.0]})
    (note,) = grid_notes(zeros)
    assert note.startswith("every accuracy in the grid is 0")
    flat = grid({("none", 0, "pixels"): [0.9], ("pathway", 50, "pixels"): [0.4], ("pathway", 90, "pixels"): [0.4],
                 ("gradient", 50, "pixels"): [0.5], ("gradient", 90, "pixels"): [0.3]})
    assert grid_notes(flat) == ["pathway (mean): accuracy 40.0 % at every t: the curve never moves"]
    lines = verdict_lines(validity(flat, 0.1), budget(flat, 0.9, 3.0, chance_levels(np.arange(10), 10)),
                          grid_notes(flat))
    assert lines[-1] == "note: pathway (mean): accuracy 40.0 % at every t: the curve never moves"
