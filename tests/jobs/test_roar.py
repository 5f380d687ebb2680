"""``python -m jobs.roar`` end to end on a real local Ray: real Fashion-MNIST, a real tiny checkpoint,
train and test maps written by jobs.attribute, real retrains (1 epoch, tiny grid), resume."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

from jobs import attribute, roar
from tests.helpers import tiny_checkpoint
from workers.roar import NONE, prepare
from workers.roar_data import channel_mean

pytestmark = pytest.mark.slow  # starts Ray or trains a model

TRAIN, TEST = 300, 200
GRID = ["--thresholds", "30,70", "--seeds", "2", "--epochs", "1", "--workers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def maps(tmp_path_factory, ray_session) -> dict[str, str]:
    """Pathway maps of the first 300 train and 200 test images, from a resnet8 trained in the fixture."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("roar")
    checkpoint = tiny_checkpoint(root)
    urls = {"train": str(root / "maps-train"), "test": str(root / "maps-test")}
    for split, n in (("train", TRAIN), ("test", TEST)):
        code = attribute.main(["--checkpoint", checkpoint, "--split", split, "--limit", str(n), "--output",
                               urls[split], "--methods", "pathway", "--shard-size", "150", "--batch-size", "50",
                               "--in-process", "--no-progress"])
        assert code == 0
    return {**urls, "root": str(root), "checkpoint": checkpoint}


def cell_files(output: str) -> dict[str, float]:
    directory = os.path.join(output, "cells")
    return {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in sorted(os.listdir(directory))
            if name.endswith(".json")}


def counts(text: str) -> tuple[int, int]:
    """(already done, to compute) from the job's plan line."""
    match = re.search(r"(\d+) already done, (\d+) to compute", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def test_roar_end_to_end_and_resume(maps, capsys) -> None:
    args = ["--train-maps", maps["train"], "--test-maps", maps["test"], *GRID, "--mask-skip", "", "--fill", "mean"]
    output = os.path.join(maps["test"], "_eval", "roar")  # the default

    # An interrupted run: only some methods got done, without the mask control.
    assert roar.main([*args, "--methods", "pathway random", "--no-mask-control"]) == 0
    assert counts(capsys.readouterr().out) == (0, 2 + 2 * 2 * 2)
    first = cell_files(output)
    assert len(first) == 10 and "pathway-t30-s0-mean.json" in first and "none-t0-s1.json" in first

    # The full run computes only what is missing: sobel, and every method's mask control; here without
    # Ray (``--in-process``: one cell at a time, each on the threads a worker of a local Ray would have).
    at = args.index("--workers")
    one_at_a_time = [*args[:at], *args[at + 2:]]
    assert roar.main([*one_at_a_time, "--in-process"]) == 0
    out = capsys.readouterr().out
    assert counts(out) == (10, 3 * 2 * 2 * 2 - 8)
    assert "16 cells one at a time in this process (1 CPU thread each)" in out
    table = pd.read_parquet(os.path.join(output, "results.parquet"))
    methods = ("pathway", "random", "sobel")
    expected = {(NONE, 0, s, "pixels", "-") for s in (0, 1)}
    expected |= {(m, t, s, "pixels", "mean") for m in methods for t in (30, 70) for s in (0, 1)}
    expected |= {(m, t, s, "mask", "-") for m in methods for t in (30, 70) for s in (0, 1)}
    assert set(zip(table.method, table.t, table.seed, table.input, table.fill)) == expected
    assert len(table) == len(expected)
    assert table.accuracy.between(0, 1).all() and (table.epochs == 1).all() and (table.seconds > 0).all()
    assert (table.train_samples == TRAIN).all() and (table.test_samples == TEST).all()
    removed = table[table.method != NONE]
    assert (removed.removed_per_image.to_numpy() == np.floor(removed.t.to_numpy() * 784 / 100 + 0.5)).all()
    csv = pd.read_csv(os.path.join(output, "results.csv"))
    assert len(csv) == len(table) and list(csv.columns[:6]) == ["method", "t", "seed", "input", "fill", "accuracy"]
    with open(os.path.join(output, "roar.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    second = cell_files(output)
    assert {k: second[k] for k in first} == first  # finished cells were not rewritten
    assert "pathway" in out and "sobel" in out and "budget check" in out

    # The verdicts: one row per method x t x fill, next to the mask-only accuracy of the same seeds.
    summary = pd.read_csv(os.path.join(output, "summary.csv"))
    assert set(zip(summary.method, summary.t, summary.fill)) == {(m, t, "mean") for m in methods for t in (30, 70)}
    for row in summary.itertuples():
        mine = table[(table.method == row.method) & (table.t == row.t)]
        assert row.accuracy == pytest.approx(mine[mine.input == "pixels"].accuracy.mean())
        assert row.mask_accuracy == pytest.approx(mine[mine.input == "mask"].accuracy.mean())
        assert row.n == row.mask_n == 2 and row.verdict.startswith(("valid", "not valid: the mask leaks the class"))
    run = json.load(open(os.path.join(output, "run.json")))
    check = run["budget"]
    assert 0 < check["checkpoint_accuracy"] <= 1 and check["seeds"] == 2
    assert check["gap_points"] == pytest.approx(100 * (check["checkpoint_accuracy"] - check["unmodified_mean"]))
    assert check["verdict"].startswith(("within 3 points", "UNDER-TRAINED"))
    assert check["under_trained"] == (check["gap_points"] > 3)

    # Delete one cell: a rerun recomputes exactly that cell, on Ray now, to the accuracy it had without.
    cell = os.path.join(output, "cells", "sobel-t70-s1-mean.json")
    with open(cell) as fh:
        before = json.load(fh)
    os.remove(cell)
    assert roar.main(args) == 0
    assert counts(capsys.readouterr().out) == (25, 1)
    third = cell_files(output)
    changed = sorted(k for k in third if third[k] != second.get(k))
    assert changed == ["sobel-t70-s1-mean.json"]
    with open(cell) as fh:
        assert json.load(fh)["accuracy"] == before["accuracy"]
    rerun = pd.read_parquet(os.path.join(output, "results.parquet"))
    pick = (lambda t: t[(t.method == "sobel") & (t.t == 70) & (t.seed == 1) & (t.input == "pixels")])
    assert float(pick(rerun).accuracy.iloc[0]) == float(pick(table).accuracy.iloc[0])  # same seed, same data
    run = json.load(open(os.path.join(output, "run.json")))
    assert run["status"] == "complete" and run["computed"] == 1 and run["reused"] == 25

    # Other settings (epochs) are other cells: nothing is reused. Controls alone use the samples that have maps.
    assert roar.main([*args[:-2], "--fill", "nli", "--methods", "sobel random", "--thresholds", "30", "--seeds", "1",
                      "--epochs", "2", "--mask-skip", "random"]) == 0
    assert counts(capsys.readouterr().out) == (0, 4)
    other = pd.read_parquet(os.path.join(output, "results.parquet"))
    assert sorted(zip(other.method, other.input, other.fill)) == [(NONE, "pixels", "-"), ("random", "pixels", "nli"),
                                                                   ("sobel", "mask", "-"), ("sobel", "pixels", "nli")]
    verdicts = pd.read_csv(os.path.join(output, "summary.csv")).set_index("method").verdict
    assert verdicts["random"] == "no mask control" and verdicts["sobel"] != "no mask control"
    assert (other.train_samples == TRAIN).all() and (other.test_samples == TEST).all() and (other.epochs == 2).all()


def test_kar_keeps_top_pixels(maps, capsys) -> None:
    output = os.path.join(maps["root"], "kar")
    assert roar.main(["--train-maps", maps["train"], "--test-maps", maps["test"], "--kar", "--methods", "pathway",
                      "--thresholds", "20", "--seeds", "1", "--epochs", "1", "--output", output, "--no-mask-control",
                      "--in-process", "--no-progress"]) == 0  # what KAR keeps is the cell's business: no Ray
    table = pd.read_parquet(os.path.join(output, "results.parquet"))
    assert sorted(zip(table.method, table.t, table.fill)) == [(NONE, 100, "-"), ("pathway", 20, "nli")]
    assert (table["mode"] == "kar").all()
    assert int(table[table.method == "pathway"].removed_per_image.iloc[0]) == 784 - 157
    assert os.path.exists(os.path.join(output, "kar.png"))


@pytest.mark.parametrize("kar", [False, True])
def test_training_images_have_exactly_the_top_pixels_mean_filled(maps, kar) -> None:
    """The arrays a cell trains on: the top round(t * H * W) pixels by |map| are the train mean, the rest untouched."""
    train = roar.load_split(maps["train"], ["pathway"], {}, None, subset_seed=0)
    test = roar.load_split(maps["test"], ["pathway"], {}, None, subset_seed=None)
    fill = channel_mean(train["images"])
    config = {"kar": kar, "fill": fill, "noise": [0.9]}
    cell = {"method": "pathway", "t": 30, "seed": 0, "input": "pixels", "fill": "mean"}
    train_x, test_x = prepare(cell, config, train["images"], train["maps"]["pathway"], train["seeds"],
                              test["images"], test["maps"]["pathway"], test["seeds"])
    value = np.uint8(round(fill[0]))
    for original, changed, m in ((train["images"], train_x, train["maps"]["pathway"]),
                                 (test["images"], test_x, test["maps"]["pathway"])):
        magnitude = np.abs(m.astype(np.float32)).reshape(len(m), -1)
        order = np.argsort(-magnitude, axis=1, kind="stable")  # ties: lower raster index first
        top = np.zeros_like(magnitude, dtype=bool)
        np.put_along_axis(top, order[:, :235], True, axis=1)  # round(0.3 * 784) = 235
        replaced = (~top if kar else top).reshape(original.shape)
        assert (replaced.reshape(len(m), -1).sum(1) == (784 - 235 if kar else 235)).all()
        expected = np.where(replaced, value, original)
        np.testing.assert_array_equal(changed, expected)
        assert changed.dtype == np.uint8 and changed is not original
    assert 60 < fill[0] < 90  # Fashion-MNIST's mean pixel is about 0.286 * 255 = 73


def test_bad_inputs(maps, capsys) -> None:
    base = ["--train-maps", maps["train"], "--test-maps", maps["test"], "--no-progress"]
    assert roar.main([*base, "--methods", "gradient"]) == 2
    err = capsys.readouterr().err
    assert "gradient" in err and "jobs.attribute" in err
    assert roar.main(["--train-maps", maps["test"], "--test-maps", maps["test"]]) == 2
    assert "same dataset" in capsys.readouterr().err
    assert roar.main([*base, "--train-maps", os.path.join(maps["root"], "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        roar.parse_args([*base, "--thresholds", "0,50"])
