"""The Markdown tables of benchmarks/RESULTS.md's evaluation section, printed from the runs' own outputs.

    python benchmarks/evaluation_tables.py outputs/maps/fm-test        # after benchmarks/run_evaluation.sh

Reads ``<maps>/eval/{perturbation,sanity,sanity-reset,roar}``; prints one table per figure quoted in
RESULTS.md, so the numbers there can be regenerated (and checked) from the files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.report import markdown_table  # noqa: E402
from jobs.evaluation.roar_summary import budget_line  # noqa: E402


def perturbation(folder: Path) -> None:
    areas = pd.read_csv(folder / "auc.csv")
    random = areas[areas.order == "random"].set_index("fill")
    for column, what in (("auc", "area under the mean relative drop (MoRF high, LeRF low)"),
                         ("accuracy_auc", "area under ROAD's accuracy (MoRF low, LeRF high)")):
        rows = areas[areas.order != "random"]
        wide = rows.pivot_table(index="method", columns=["fill", "rank", "order"], values=column, sort=False)
        wide.columns = [f"{f} {r} {o}" for f, r, o in wide.columns]
        wide = wide.reset_index()
        reference = {"method": "random order", **{c: random.loc[c.split()[0], column] for c in wide.columns[1:]
                                                 if c.endswith("morf")}}
        print(f"\n{what}\n")
        table = pd.concat([wide, pd.DataFrame([reference])])
        print(markdown_table(table.map(lambda v: f"{v:.3f}" if isinstance(v, float) and v == v else
                                       ("" if isinstance(v, float) else v))))


def sanity(folder: Path, metric_names: dict[str, str]) -> None:
    table = pd.read_csv(folder / "sanity.csv")
    config = json.loads((folder / "sanity.json").read_text())
    print(f"\nsanity: {config['samples']} samples, {config['draws']} draws, {config.get('randomize')}, "
          f"group {config['group']}")
    for metric, title in metric_names.items():
        rows = table[(table.metric == metric) & (table.step > 0)]
        rows = rows.assign(cell=[f"{m:.3f} ± {s:.3f}" for m, s in zip(rows["mean"], rows["sd_draws"])])
        wide = rows.pivot_table(index="method", columns="step_name", values="cell", aggfunc="first", sort=False)
        print(f"\n{title}\n")
        print(markdown_table(wide[list(dict.fromkeys(rows.step_name))].reset_index()))


def roar(folder: Path) -> None:
    summary = pd.read_csv(folder / "summary.csv")
    run = json.loads((folder / "run.json").read_text())
    print("\n" + budget_line(run["budget"]) + f"; chance {100 * run['chance']:.1f} %\n")
    cell = (lambda m, s: f"{100 * m:.1f} ± {100 * s:.1f}" if m == m else "-")
    summary = summary.assign(roar=[cell(m, s) for m, s in zip(summary.accuracy, summary["std"])],
                             mask_only=[cell(m, s) for m, s in zip(summary.mask_accuracy, summary.mask_std)],
                             p=[f"{p:.3g}" if p == p else "-" for p in summary.p_value])
    print(markdown_table(summary[["method", "t", "fill", "roar", "mask_only", "p", "verdict"]]))
    results = pd.read_csv(folder / "results.csv")
    print(f"\n{len(results)} retrains, median {results.seconds.median():.0f} s each, "
          f"{results.train_samples.iloc[0]} train images x {results.epochs.iloc[0]} epochs")


def main() -> None:
    maps = Path(sys.argv[1])
    perturbation(maps / "_eval" / "perturbation")
    names = {"spearman_abs": "Spearman of |map|", "spearman": "Spearman of the signed map", "ssim": "SSIM",
             "hog_pearson": "HOG Pearson"}
    sanity(maps / "_eval" / "sanity", names)
    if (maps / "_eval" / "sanity-reset").exists():
        sanity(maps / "_eval" / "sanity-reset", {"spearman_abs": names["spearman_abs"]})
    if (maps / "_eval" / "roar" / "summary.csv").exists():
        roar(maps / "_eval" / "roar")


if __name__ == "__main__":
    main()
