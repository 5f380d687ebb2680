"""jobs.perturb.curve_notes and jobs.reporting.plots: degenerate perturbation curves say what they are (issue #27: every
ROAD accuracy was 0.0000 and the report drew flat panels without a word)."""

from __future__ import annotations

import pandas as pd

from jobs.perturb import curve_notes
from jobs.reporting.plots import perturbation_curves


def table(accuracy: float, flat: bool) -> pd.DataFrame:
    rows = [{"method": m, "fill": "mean", "rank": "abs" if m != "random" else "-",
             "order": o if m != "random" else "random", "fraction": f,
             "mean_drop": 0.2 if flat and m == "pathway" else f * (0.5 if o == "morf" else 0.1),
             "std_drop": 0.1, "accuracy": accuracy, "n_images": 4}
            for m in ("pathway", "gradient", "random") for o in ("morf", "lerf") for f in (0.1, 0.5, 1.0)
            if not (m == "random" and o == "lerf")]
    return pd.DataFrame(rows)


def test_road_accuracy_zero_everywhere_is_noted():
    notes = curve_notes(table(0.0, flat=False))
    assert len(notes) == 1 and notes[0].startswith("ROAD accuracy is 0 for every method and fraction")


def test_a_curve_that_never_moves_is_noted():
    notes = curve_notes(table(0.5, flat=True))
    assert notes == ["pathway morf (fill mean, ranked by abs): the drop is 0.2000 at every fraction; the curve never "
                     "moves", "pathway lerf (fill mean, ranked by abs): the drop is 0.2000 at every fraction; the curve "
                     "never moves"]
    assert curve_notes(table(0.5, flat=False)) == []


def test_the_panels_carry_the_notes():
    plain = perturbation_curves(table(0.0, flat=False))
    noted = perturbation_curves(table(0.0, flat=False), curve_notes(table(0.0, flat=False)))
    assert noted[:8] == b"\x89PNG\r\n\x1a\n" and noted != plain
