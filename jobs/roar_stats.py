"""The paper's ROAR claims, each tested over seeds: "holds", "does not hold" or "not testable here".

    python -m jobs.roar_stats --roar outputs/maps/fmt-test/_eval/roar     # reread a finished grid

jobs.roar prints these lines and writes ``claims.csv`` beside ``summary.csv``; this module also
rereads a stored grid. Per t and fill, each claim compares two methods' ROAR accuracies:

* ``pathway beats gradient``, ``pathway beats random``: the pathway's maps remove more of what the
  class needs, so its retrained accuracy is LOWER (under ``--kar``, which keeps the top t %, HIGHER);
* ``pathway beats the blur control``: the same against ``blur`` (the gradient blurred until its
  maps are as autocorrelated as the pathway's, jobs.blur_sigma). If this does not hold while the
  pathway beats the gradient, the gain is smoothness: ROAR is rewarding blur (arXiv 2304.13836).

The test is paired by seed (a seed fixes a retrain's initialization and data order for every
method): a one-sided paired t-test over the shared seeds, alpha = 0.05. "holds": p < alpha;
"does not hold": p >= alpha; "not testable here" (with the reason): a method missing, fewer than
2 shared seeds, the budget check failed (under-trained or at chance), or a cell the leakage
control marks not valid (jobs.evaluation.roar_summary).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.runtime.cli import JobError, job_parser, run_main, storage_flags, storage_options_from

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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.roar_stats", __doc__, [storage_flags()])
    p.add_argument("--roar", required=True, help="a finished jobs.roar output (results.csv, summary.csv, run.json)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    import io

    import pandas as pd

    from storage.io.fs import StorageNotFound
    from storage.io.location import Location

    where = Location(args.roar, storage_options_from(args.storage_options))
    try:
        table = pd.read_csv(io.BytesIO(where.get("results.csv")))
        verdicts = pd.read_csv(io.BytesIO(where.get("summary.csv")))
        record = where.get_json("run.json")
    except StorageNotFound as err:
        raise JobError(f"{args.roar} is not a finished jobs.roar output ({err}); run python -m jobs.roar first") from None
    frame = claims(table, verdicts, record.get("budget", {}), bool((record.get("settings") or {}).get("kar")))
    print("\n".join(claim_lines(frame)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.roar_stats", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
