"""The paper's ROAR claims tested over seeds (paired one-sided t-test): "holds", "does not hold" or
"not testable here" with the reason. jobs.roar writes their lines and ``claims.csv``
(jobs.evaluation.roar_summary); ``python -m jobs.roar_stats`` rereads a stored grid, and its help
says what each claim compares and when it is not testable.

Tested by tests/jobs/test_roar_stats.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALPHA = 0.05
HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable here"
#: (claim, the method that should be better, the one it should beat)
CLAIMS = (("pathway beats gradient", "pathway", "gradient"),
          ("pathway beats random", "pathway", "random"),
          ("pathway beats the blur control", "pathway", "blur"))
COLUMNS = ["claim", "t", "fill", "better", "other", "accuracy_better", "accuracy_other", "n", "p_value", "verdict",
           "reason"]
BLUR_NOTE = ("the pathway does not beat the gradient blurred to its smoothness: under ROAR its advantage over the "
             "gradient is what blur alone gives (ROAR rewards blur, arXiv 2304.13836)")


def paired_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided paired t-test p-value for mean(a - b) > 0; NaN for fewer than 2 pairs. Constant
    differences give 0 (a above b) or 1 (not above)."""
    from scipy import stats

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size < 2:
        return float("nan")
    if np.ptp(diff) <= 1e-12:  # constant up to rounding (scipy's t is then 0/0)
        return 0.0 if diff.mean() > 0 else 1.0
    return float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)


def _by_seed(table: Any, method: str, t: int, fill: str) -> dict[int, float]:
    rows = table[(table["input"] == "pixels") & (table["method"] == method) & (table["t"] == t) & (table["fill"] == fill)]
    return {int(s): float(a) for s, a in zip(rows["seed"], rows["accuracy"])}


def claims(table: Any, verdicts: Any, check: dict[str, Any], kar: bool = False) -> Any:
    """One row per claim x t x fill of the grid in ``table`` (results.csv) with ``verdicts``
    (summary.csv) and ``check`` (run.json's budget record): accuracies, n, p-value, verdict, reason."""
    import pandas as pd

    rows = []
    cells = table[(table["input"] == "pixels") & (table["method"] != "none")]
    valid = {(r.method, int(r.t), r.fill): str(r.verdict) for r in verdicts.itertuples()}
    budget_failed = check.get("passed") is False or bool(check.get("at_chance"))
    for t, fill in sorted(set(zip(cells["t"].astype(int), cells["fill"]))):
        for claim, better, other in CLAIMS:
            a, b = _by_seed(table, better, t, fill), _by_seed(table, other, t, fill)
            seeds = sorted(set(a) & set(b))
            acc_a = np.array([a[s] for s in seeds])
            acc_b = np.array([b[s] for s in seeds])
            # ROAR: the better map leaves the LOWER accuracy; KAR keeps the top t %: the HIGHER one.
            p = paired_greater(acc_a, acc_b) if kar else paired_greater(acc_b, acc_a)
            reason = ""
            missing = [m for m, got in ((better, a), (other, b)) if not got]
            leaking = [m for m in (better, other) if valid.get((m, t, fill), "").startswith("not valid")]
            if missing:
                reason = f"no ROAR cell of {', '.join(missing)} at t={t} ({fill})"
            elif len(seeds) < 2:
                reason = f"{len(seeds)} shared seed(s); the test needs at least 2"
            elif budget_failed:
                reason = f"the budget check failed: {check.get('verdict', '')}"
            elif leaking:
                reason = f"the leakage control marks {', '.join(leaking)} not valid"
            verdict = UNTESTABLE if reason else (HOLDS if p < ALPHA else FAILS)
            rows.append({"claim": claim, "t": t, "fill": fill, "better": better, "other": other,
                         "accuracy_better": acc_a.mean() if seeds else float("nan"),
                         "accuracy_other": acc_b.mean() if seeds else float("nan"), "n": len(seeds),
                         "p_value": p if seeds else float("nan"), "verdict": verdict, "reason": reason})
    return pd.DataFrame(rows, columns=COLUMNS)


def claim_lines(frame: Any) -> list[str]:
    """One line per claim x t x fill, then the blur note wherever ROAR is rewarding blur."""
    lines = []
    for r in frame.itertuples():
        numbers = (f"{100 * r.accuracy_better:.1f} vs {100 * r.accuracy_other:.1f} %, n={r.n}, p={r.p_value:.3g}"
                   if r.n else "no data")
        lines.append(f"  claim {r.claim!r} t={r.t} {r.fill}: {r.verdict} ({numbers})"
                     + (f": {r.reason}" if r.reason else ""))
    for t, fill in sorted(set(zip(frame["t"], frame["fill"]))):
        here = frame[(frame["t"] == t) & (frame["fill"] == fill)].set_index("claim")["verdict"]
        if here.get("pathway beats gradient") == HOLDS and here.get("pathway beats the blur control") == FAILS:
            lines.append(f"  t={t} {fill}: {BLUR_NOTE}")
    return lines
