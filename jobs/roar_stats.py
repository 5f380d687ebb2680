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

from jobs.evaluation.roar_claims import claim_lines, claims
from jobs.runtime.cli import JobError, job_parser, run_main, storage_flags, storage_options_from


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
