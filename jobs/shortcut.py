"""The proof that dataset-wide analysis finds a planted shortcut ("Clever Hans", Lapuschkin et al. 2019).

    python -m jobs.shortcut --workdir outputs/shortcut --train-limit 10000 --test-limit 2000 --epochs 4
    python -m jobs.shortcut --train-limit 3000 --test-limit 500 --epochs 3 --in-process   # no Ray

Steps, each the project's own job: ``jobs.make_dataset --stamp CLASS:FRACTION`` plants a 4 x 4
checkerboard on a fraction of one class's images (and, with the same seed and no stamp, the same
test images unmarked); ``jobs.train`` trains the default ResNet-8 on the stamped set;
:func:`reliance` measures that the model uses the stamp (its accuracy on the stamped test images of
the class, with the stamp and with it removed, and how often the stamp pasted on other classes'
images pulls them to the class); ``jobs.attribute`` maps the stamped test split with each method;
``jobs.analyze`` clusters each method's maps per label, and :func:`isolation` scores the cluster
that holds most stamped images of the class: its precision and recall against the stamped ids.
Prints one table and writes ``shortcut.json`` under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jobs.runtime.cli import JobError, job_parser, positive_int, run_main

#: Methods compared: the paper's pathway map and two baselines (jobs.attribute --methods syntax).
METHODS = "pathway gradient grad_cam"


def checked_stamp(text: str) -> str:
    """``--stamp`` as make_dataset reads it (checked here, so a bad one is refused before any work),
    kept as text to hand on."""
    from jobs.make_dataset import stamp_spec

    stamp_spec(text)
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.shortcut", __doc__, [])
    p.add_argument("--workdir", default="outputs/shortcut", help="local folder for the datasets, model and maps")
    p.add_argument("--train-limit", type=positive_int, default=10_000, help="train images")
    p.add_argument("--test-limit", type=positive_int, default=2000, help="test images (mapped and analyzed)")
    p.add_argument("--epochs", type=positive_int, default=4, help="training epochs")
    p.add_argument("--stamp", type=checked_stamp, default="0:0.5", metavar="CLASS:FRACTION",
                   help="the class and share of its images jobs.make_dataset --stamp marks")
    p.add_argument("--methods", default=METHODS, help="methods to map and analyze")
    p.add_argument("--max-per-class", type=positive_int, default=2000, help="jobs.analyze --max-per-class")
    p.add_argument("--seed", type=int, default=0, help="dataset, training and analysis seed")
    p.add_argument("--in-process", action="store_true",
                   help="map and analyze in this process, without Ray (jobs.attribute and jobs.analyze --in-process)")
    return p.parse_args(argv)


def isolation(clusters: Any, stamped: set[str]) -> dict[str, Any]:
    """Precision and recall of the cluster that holds most ``stamped`` ids (``clusters``: one class's
    jobs.analyze table with sample_id and cluster)."""
    hits = clusters.assign(hit=clusters["sample_id"].isin(stamped)).groupby("cluster")["hit"].agg(["sum", "size"])
    best = int(hits["sum"].idxmax())
    found = int(hits.loc[best, "sum"])
    return {"cluster": best, "precision": found / int(hits.loc[best, "size"]), "recall": found / max(len(stamped), 1),
            "cluster_size": int(hits.loc[best, "size"]), "stamped": len(stamped), "clusters": len(hits)}


def reliance(checkpoint: str, stamped_url: str, plain_url: str, label: int, ids: Sequence[str]) -> dict[str, Any]:
    """How much the model leans on the stamp: accuracy on the class's stamped test images with the
    stamp and without it (the same images, unmarked), and the share of other classes' images the
    stamp, pasted on, turns into the class."""
    from jobs.make_dataset import apply_stamp
    from models.training import predict
    from storage.checkpoints import load_checkpoint
    from storage.sources import load_arrays, open_source

    model, spec = load_checkpoint(checkpoint)
    marked, labels, sample_ids = load_arrays(open_source(stamped_url, split="test"))
    plain, _, _ = load_arrays(open_source(plain_url, split="test"))
    chosen = np.isin(sample_ids, list(ids))
    if not chosen.any():
        raise JobError(f"{stamped_url}: no stamped test image of class {label}; use more --test-limit")
    others = labels != label
    with_stamp = float((predict(model, spec, marked[chosen]).numpy() == label).mean())
    without = float((predict(model, spec, plain[chosen]).numpy() == label).mean())
    unstamped = float((predict(model, spec, plain[(labels == label) & ~chosen]).numpy() == label).mean())
    pasted = predict(model, spec, apply_stamp(plain[others], np.ones(int(others.sum()), bool))).numpy()
    before = predict(model, spec, plain[others]).numpy()
    return {"stamped_images": int(chosen.sum()), "accuracy_with_stamp": with_stamp,
            "accuracy_stamp_removed": without, "accuracy_unstamped_images": unstamped,
            "others_to_class_plain": float((before == label).mean()),
            "others_to_class_pasted": float((pasted == label).mean())}


def _job(module: Any, argv: list[str]) -> None:
    if module.main(argv) != 0:
        raise JobError(f"{module.__name__} {' '.join(argv)} failed (see above)")


def prove(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole proof; returns what :func:`run` prints (jobs run in this process, so a test
    shares its Ray)."""
    import pandas as pd

    from jobs import analyze, attribute, make_dataset, train

    work = Path(args.workdir).resolve()
    stamped_url, plain_url = str(work / "stamped"), str(work / "plain")
    label = int(args.stamp.split(":")[0])
    limits = ["--train-limit", str(args.train_limit), "--test-limit", str(args.test_limit), "--seed", str(args.seed)]
    if not (work / "stamped" / "dataset.json").exists():
        _job(make_dataset, ["--output", stamped_url, *limits, "--stamp", args.stamp])
    if not (work / "plain" / "dataset.json").exists():
        _job(make_dataset, ["--output", plain_url, "--train-limit", "1", "--test-limit", str(args.test_limit),
                            "--seed", str(args.seed)])
    checkpoint = str(work / "resnet8.pt")
    if not Path(checkpoint).exists():
        _job(train, ["--source", stamped_url, "--epochs", str(args.epochs), "--threads", "1", "--seed",
                     str(args.seed), "--output", checkpoint, "--no-progress"])
    ids = json.loads((work / "stamped" / "dataset.json").read_text())["stamp"]["stamped"]["test"]
    result: dict[str, Any] = {"train_limit": args.train_limit, "test_limit": args.test_limit, "epochs": args.epochs,
                              "stamp": args.stamp, "reliance": reliance(checkpoint, stamped_url, plain_url, label, ids)}
    maps = str(work / "maps")
    here = ["--in-process"] if args.in_process else []
    _job(attribute, ["--source", stamped_url, "--split", "test", "--checkpoint", checkpoint, "--methods",
                     args.methods, "--output", maps, "--workers", "1", "--no-progress", *here])
    result["methods"] = {}
    for method in args.methods.split():
        _job(analyze, [maps, "--method", method, "--max-per-class", str(args.max_per_class), "--seed",
                       str(args.seed), "--no-progress", *here])
        table = pd.read_parquet(work / "maps" / "_analysis" / method / "clusters" / f"class-{label:04d}.parquet")
        result["methods"][method] = isolation(table, set(ids))
    (work / "shortcut.json").write_text(json.dumps(result, indent=2))
    return result


def run(args: argparse.Namespace) -> int:
    result = prove(args)
    r = result["reliance"]
    print(f"class {args.stamp}: accuracy on its {r['stamped_images']} stamped test images "
          f"{r['accuracy_with_stamp']:.3f} with the stamp, {r['accuracy_stamp_removed']:.3f} without; "
          f"other classes called it {r['others_to_class_plain']:.3f} -> {r['others_to_class_pasted']:.3f} "
          f"with the stamp pasted on")
    for method, m in result["methods"].items():
        print(f"  {method}: cluster {m['cluster']} of {m['clusters']}: precision {m['precision']:.3f}, "
              f"recall {m['recall']:.3f} ({m['stamped']} stamped)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.shortcut", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
