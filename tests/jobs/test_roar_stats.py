"""The paper's ROAR claims over seeds, on constructed grids: paired tests, verdict words, the reasons."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from jobs.evaluation.roar_claims import BLUR_NOTE, FAILS, HOLDS, UNTESTABLE, claim_lines, claims, paired_greater
from jobs.evaluation.roar_summary import LEAKS, NO_CONTROL, VALID_CHANCE

PASSED = {"passed": True, "verdict": "within 3 points of the checkpoint"}


def _grid(accuracy: dict[str, list[float]], t: int = 50, fill: str = "nli") -> pd.DataFrame:
    rows = [{"method": m, "t": t, "seed": s, "input": "pixels", "fill": fill, "accuracy": a}
            for m, values in accuracy.items() for s, a in enumerate(values)]
    rows += [{"method": "none", "t": 0, "seed": s, "input": "pixels", "fill": "none", "accuracy": 0.9} for s in range(3)]
    return pd.DataFrame(rows)


def _verdicts(methods, t: int = 50, fill: str = "nli", leaking: tuple[str, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "t": t, "fill": fill,
                          "verdict": LEAKS if m in leaking else (NO_CONTROL if m == "random" else VALID_CHANCE)}
                         for m in methods])


def _row(frame: pd.DataFrame, claim: str) -> pd.Series:
    return frame.set_index("claim").loc[claim]


def test_paired_greater_pairs_by_seed() -> None:
    # The seeds differ a lot, the pairs by a steady 0.01: paired, a is clearly above b.
    a, b = np.array([0.50, 0.70, 0.90]), np.array([0.49, 0.69, 0.885])
    assert paired_greater(a, b) < 0.01
    assert paired_greater(b, a) > 0.99
    assert paired_greater(a + 0.1, a) == 0.0 and paired_greater(a, a) == 1.0  # constant differences
    assert math.isnan(paired_greater(a[:1], b[:1]))


def test_pathway_beats_gradient_and_random_but_not_the_blur_control() -> None:
    grid = _grid({"pathway": [0.40, 0.42, 0.41], "gradient": [0.60, 0.63, 0.61], "random": [0.80, 0.82, 0.81],
                  "blur": [0.40, 0.43, 0.40]})
    frame = claims(grid, _verdicts(["pathway", "gradient", "random", "blur"]), PASSED)
    assert _row(frame, "pathway beats gradient").verdict == HOLDS
    assert _row(frame, "pathway beats random").verdict == HOLDS
    blur = _row(frame, "pathway beats the blur control")
    assert blur.verdict == FAILS and blur.p_value >= 0.05 and blur.n == 3
    assert blur.accuracy_better == pytest.approx(0.41) and blur.accuracy_other == pytest.approx(1.23 / 3)
    lines = claim_lines(frame)
    assert any("'pathway beats gradient' t=50 nli: holds (41.0 vs 61.3 %, n=3, p=" in line for line in lines)
    assert lines[-1] == f"  t=50 nli: {BLUR_NOTE}"  # ROAR is rewarding blur, and the lines say so


def test_kar_reverses_the_direction() -> None:
    grid = _grid({"pathway": [0.80, 0.82, 0.81], "gradient": [0.60, 0.63, 0.61]})
    frame = claims(grid, _verdicts(["pathway", "gradient"]), PASSED, kar=True)
    assert _row(frame, "pathway beats gradient").verdict == HOLDS
    assert claims(grid, _verdicts(["pathway", "gradient"]), PASSED).set_index("claim").loc[
        "pathway beats gradient"].verdict == FAILS


@pytest.mark.parametrize("case, reason", [
    ("missing", "no ROAR cell of blur at t=50"),
    ("one seed", "1 shared seed(s); the test needs at least 2"),
    ("under-trained", "the budget check failed: UNDER-TRAINED"),
    ("leaks", "the leakage control marks gradient not valid"),
])
def test_not_testable_here_says_why(case: str, reason: str) -> None:
    accuracy = {"pathway": [0.40, 0.42, 0.41], "gradient": [0.60, 0.63, 0.61], "blur": [0.5, 0.5, 0.5]}
    check, leaking = PASSED, ()
    if case == "missing":
        accuracy.pop("blur")
    if case == "one seed":
        accuracy = {m: v[:1] for m, v in accuracy.items()}
    if case == "under-trained":
        check = {"passed": False, "verdict": "UNDER-TRAINED: 5.0 points below the checkpoint (more than 3)"}
    if case == "leaks":
        leaking = ("gradient",)
    frame = claims(_grid(accuracy), _verdicts(list(accuracy), leaking=leaking), check)
    claim = "pathway beats the blur control" if case == "missing" else "pathway beats gradient"
    row = _row(frame, claim)
    assert row.verdict == UNTESTABLE and row.reason.startswith(reason)
    assert _row(frame, "pathway beats random").verdict == UNTESTABLE  # no random in these grids


def test_one_row_per_claim_t_and_fill() -> None:
    grid = pd.concat([_grid({"pathway": [0.4, 0.5], "gradient": [0.6, 0.7]}, t=t, fill=fill)
                      for t in (30, 70) for fill in ("mean", "nli")])
    verdicts = pd.concat([_verdicts(["pathway", "gradient"], t, fill) for t in (30, 70) for fill in ("mean", "nli")])
    frame = claims(grid, verdicts, PASSED)
    assert len(frame) == 3 * 2 * 2
    assert sorted(set(zip(frame.t, frame.fill))) == [(30, "mean"), (30, "nli"), (70, "mean"), (70, "nli")]
    assert (frame[frame.claim == "pathway beats gradient"].verdict == HOLDS).all()


def test_rereads_a_stored_grid_and_refuses_a_folder_that_is_not_one(tmp_path, capsys) -> None:
    import json

    from jobs.roar_stats import main

    grid = _grid({"pathway": [0.40, 0.42, 0.41], "gradient": [0.60, 0.63, 0.61]})
    grid.to_csv(tmp_path / "results.csv", index=False)
    _verdicts(["pathway", "gradient"]).to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "run.json").write_text(json.dumps({"budget": PASSED, "settings": {"kar": False}}))
    assert main(["--roar", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "'pathway beats gradient' t=50 nli: holds (41.0 vs 61.3 %, n=3" in out
    assert "'pathway beats random' t=50 nli: not testable here (no data): no ROAR cell of random" in out
    assert main(["--roar", str(tmp_path / "elsewhere")]) == 2
    assert "is not a finished jobs.roar output" in capsys.readouterr().err
