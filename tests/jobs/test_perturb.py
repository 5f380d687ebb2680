"""``python -m jobs.perturb`` end to end on a real local Ray, a real trained checkpoint and real S3.

The checkpoint is a ResNet-8 trained for one epoch on 1000 Fashion-MNIST images; a trained
model must lose more probability when its most relevant pixels go first (MoRF) than when
its least relevant ones do (LeRF).
"""

from __future__ import annotations

import pytest

import io
import json
import os
import re

import numpy as np
import pandas as pd

from jobs import attribute, perturb
from storage.io.fs import join, open_fs

pytestmark = pytest.mark.slow  # starts Ray or trains a model

FRACTIONS = [0.0, 0.02, 0.05, 0.1, 0.3, 0.6, 1.0]
FRACTIONS_ARG = ",".join(str(f) for f in FRACTIONS)


def check_table(table: pd.DataFrame, methods: list[str], n: int, fills=("mean",), ranks=("abs",)) -> None:
    """Every (method, fill, rank, order, fraction) cell once, finite, 0 at fraction 0, counted over n images."""
    cells = {(m, f, r, o, x) for m in methods for f in fills for r in ranks for o in ("morf", "lerf") for x in FRACTIONS}
    cells |= {("random", f, "-", "random", x) for f in fills for x in FRACTIONS}
    got = list(zip(table.method, table.fill, table["rank"], table.order, table.fraction))
    assert len(got) == len(set(got)) and set(got) == cells
    assert np.isfinite(table.mean_drop).all() and (table.n_images == n).all()
    assert np.allclose(table[table.fraction == 0].mean_drop, 0.0)
    assert (table.mean_drop <= 1.0).all() and table.accuracy.between(0, 1).all()
    unperturbed = table[table.fraction == 0].accuracy  # the model's own accuracy, the same in every row
    assert unperturbed.nunique() == 1


def curve(table: pd.DataFrame, method: str, order: str, fill: str = "mean", column: str = "mean_drop") -> np.ndarray:
    rows = table[(table.method == method) & (table.order == order) & (table.fill == fill)]
    return rows[rows["rank"].isin(["abs", "-"])].sort_values("fraction")[column].to_numpy()


def test_maps_computed_in_process(checkpoint, ray_session, tmp_path, capsys) -> None:
    out = str(tmp_path / "perturbation")
    code = perturb.main(["--checkpoint", checkpoint, "--limit", "40", "--shard-size", "16",
                         "--methods", "gradient gxi=gradient_x_input", "--fractions", FRACTIONS_ARG,
                         "--fill", "mean,nli", "--rank", "abs,signed", "--output", out, "--no-progress"])
    assert code == 0
    table = pd.read_parquet(f"{out}/perturbation.parquet")
    check_table(table, ["gradient", "gxi"], 40, fills=("mean", "nli"), ranks=("abs", "signed"))
    pd.testing.assert_frame_equal(pd.read_csv(f"{out}/perturbation.csv"), table, check_dtype=False)
    for fill in ("mean", "nli"):
        for method in ("gradient", "gxi"):  # the most relevant pixels matter more than the least relevant
            assert curve(table, method, "morf", fill).mean() > curve(table, method, "lerf", fill).mean()
    summary = json.loads(open(f"{out}/auc.json").read())
    areas = pd.read_csv(f"{out}/auc.csv")
    assert len(areas) == len(summary["areas"]) == 2 * (2 * 2 * 2 + 1)  # fills x (methods x ranks x orders + random)
    assert {"auc", "accuracy_auc"} <= set(areas.columns)
    grad = areas[(areas.method == "gradient") & (areas["rank"] == "abs")].set_index(["fill", "order"]).auc
    assert grad["mean", "morf"] > grad["mean", "lerf"] and grad["nli", "morf"] > grad["nli", "lerf"]
    config = summary["config"]
    assert config["mean"] == [0.0] and config["rank"] == ["abs", "signed"] and config["fill"] == ["mean", "nli"]
    with open(f"{out}/perturbation.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "areas under the curves" in capsys.readouterr().out


def test_stored_maps_on_s3(checkpoint, s3_server, capsys) -> None:
    """Maps written by jobs.attribute to S3 are read back; outputs land next to them by default (both jobs
    without Ray: the driver reads the maps)."""
    url, options = s3_server.url("perturb-maps"), s3_server.storage_options
    opts = ["--storage-options", json.dumps(options)]
    assert attribute.main(["--checkpoint", checkpoint, "--output", url, "--methods", "gradient pathway",
                           "--limit", "30", "--shard-size", "15", "--in-process", "--no-progress", *opts]) == 0
    # --fill train: the old spelling of --fill mean --mean train
    code = perturb.main(["--maps", url, "--methods", "gradient", "--fractions", FRACTIONS_ARG, "--fill", "train",
                         "--shard-size", "12", "--in-process", "--no-progress", *opts])
    assert code == 0
    fs, root = open_fs(url, options)
    table = pd.read_parquet(io.BytesIO(fs.cat_file(join(root, "_eval/perturbation/perturbation.parquet"))))
    check_table(table, ["gradient"], 30)
    assert fs.cat_file(join(root, "_eval/perturbation/perturbation.png"))[:4] == b"\x89PNG"
    summary = json.loads(fs.cat_file(join(root, "_eval/perturbation/auc.json")))
    # --mean train: the Fashion-MNIST train mean is the spec's normalization mean, so about 0 in input units
    assert summary["config"]["mean_from"] == "train" and abs(summary["config"]["mean"][0]) < 0.01
    assert summary["config"]["fill"] == ["mean"]
    assert summary["config"]["samples"] == 30 and summary["config"]["methods"] == ["gradient"]


def test_missing_maps_url_exits_2(tmp_path, capsys) -> None:
    missing = str(tmp_path / "no-maps-here")
    assert perturb.main(["--maps", missing, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no map dataset there" in err and missing in err and "jobs.attribute" in err


def test_unknown_method_exits_2(checkpoint, tmp_path, capsys) -> None:
    assert perturb.main(["--checkpoint", checkpoint, "--methods", "gradient nosuch", "--output",
                         str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nosuch'" in err and "gradient" in err
    assert not (tmp_path / "o").exists()


def test_method_not_in_map_dataset_exits_2(checkpoint, tmp_path, capsys) -> None:
    """A stored dataset names its methods; asking for another says which ones it holds."""
    maps = tmp_path / "maps"
    (maps / "_meta").mkdir(parents=True)
    methods = [{"label": "gradient", "name": "gradient", "params": {}}]
    (maps / "_meta" / "run.json").write_text(json.dumps({"config": {"methods": methods, "source": "fashion-mnist",
                                                          "checkpoint": checkpoint}}))
    assert perturb.main(["--maps", str(maps), "--methods", "pathway", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pathway" in err and "holds gradient" in err


def unit_files(output: str) -> dict[str, int]:
    folder = os.path.join(output, "units")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)
            if name.endswith(".npz")}


def test_a_stopped_run_resumes_computing_only_the_missing_units_with_the_same_numbers(checkpoint, ray_session,
                                                                                       tmp_path, capsys) -> None:
    """Every unit (a method's shard, or the random order's) is stored as it finishes, bound to the
    configuration: a rerun computes only the units that are not there and gives the numbers of an
    uninterrupted run, also when it runs without Ray (``--in-process``); a rerun with other settings
    into the same output is refused in one line."""
    out = str(tmp_path / "perturbation")
    args = ["--checkpoint", checkpoint, "--limit", "24", "--shard-size", "8", "--methods", "gradient",
            "--fractions", FRACTIONS_ARG, "--fill", "mean,nli", "--output", out, "--no-progress"]
    assert perturb.main(args) == 0
    assert "6 tasks, 0 already done, 6 to compute" in capsys.readouterr().out
    whole = pd.read_parquet(f"{out}/perturbation.parquet")
    first = unit_files(out)  # a method's (or the random order's) shard: its first row and its samples
    assert [name[:-13] for name in sorted(first)] == [f"{m}-{lo:06d}" for m in ("gradient", "random-order")
                                                      for lo in (0, 8, 16)]
    assert all(re.fullmatch(r"[a-z-]+-\d{6}-[0-9a-f]{8}\.npz", name) for name in first), first

    # As a run stopped after four of its six units: the tables were never written, two units are missing.
    missing = sorted(n for n in first if n.startswith(("gradient-000008-", "random-order-000016-")))
    for path in [*(os.path.join(out, "units", n) for n in missing), f"{out}/perturbation.parquet", f"{out}/auc.json"]:
        os.remove(path)
    assert perturb.main([*args, "--in-process"]) == 0  # the rerun's tasks in this process: the same numbers
    assert "6 tasks, 4 already done, 2 to compute in this process" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(f"{out}/perturbation.parquet"), whole)
    again = unit_files(out)
    assert sorted(k for k in again if again[k] != first.get(k)) == missing  # only those were computed

    # Everything stored: nothing is computed, the same tables are written again.
    assert perturb.main(args) == 0
    assert "6 tasks, 6 already done, 0 to compute" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(f"{out}/perturbation.parquet"), whole)

    # A new method label adds its units beside the others; a changed one is refused, as with maps.
    grown = [*args[:args.index("gradient")], "gradient gxi=gradient_x_input", *args[args.index("gradient") + 1:]]
    assert perturb.main(grown) == 0
    assert "9 tasks, 6 already done, 3 to compute" in capsys.readouterr().out
    grown[grown.index("gradient gxi=gradient_x_input")] = "gradient gxi=integrated_gradients"
    assert perturb.main(grown) == 2
    assert "method 'gxi' was" in capsys.readouterr().err
    again = unit_files(out)

    other = [*args[:args.index("--fractions")], "--fractions", "0,0.5,1", *args[args.index("--fractions") + 2:]]
    assert perturb.main(other) == 2
    err = capsys.readouterr().err
    assert "another configuration: fractions was" in err and "Write to a new --output" in err
    assert unit_files(out) == again  # nothing of the refused run was written
