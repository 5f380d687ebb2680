"""The run of issue #27, small: ROAR on a class-sorted image folder with --train-limit / --test-limit and a
one-epoch budget. The subsets hold every class (the old first-N subsets held one or two), the header
says how they were drawn, chance is 1/K, and every printed verdict agrees with the printed numbers."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from jobs import attribute, roar
from jobs.evaluation.roar_summary import AT_CHANCE
from tests.helpers import fashion_mnist, tiny_checkpoint, write_folder
from tests.jobs.roar_claims import check_claims

pytestmark = pytest.mark.slow  # retrains models


def test_roar_on_a_class_sorted_folder_with_limits(tmp_path, capsys) -> None:
    """The subsets and verdicts are the driver's business: the cells run in this process (``--in-process``)."""
    torch.set_num_threads(1)
    folder = tmp_path / "images"
    for split, source_split, n in (("train", "train", 200), ("test", "test", 100)):
        images, labels = fashion_mnist(source_split, n)
        order = np.argsort(labels, kind="stable")  # listed class by class, as any image folder is
        write_folder(str(folder / split), None, images[order], labels[order])
    checkpoint = tiny_checkpoint(tmp_path)
    urls = {s: str(tmp_path / f"maps-{s}") for s in ("train", "test")}
    for split, url in urls.items():
        assert attribute.main(["--source", str(folder), "--split", split, "--checkpoint", checkpoint, "--output", url,
                               "--methods", "pathway", "--shard-size", "100", "--in-process", "--no-progress"]) == 0
    capsys.readouterr()

    out = str(tmp_path / "roar")
    code = roar.main(["--train-maps", urls["train"], "--test-maps", urls["test"], "--output", out, "--methods", "pathway",
                      "--thresholds", "50", "--seeds", "1", "--epochs", "1", "--train-limit", "100", "--test-limit", "50",
                      "--fill", "mean", "--in-process", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # The first 100 / 50 of this folder are one or two classes; the stratified subsets hold all ten.
    assert re.search(r"train images: a stratified by class, seed 0 subset of 100 of 200 \(10 of 10 classes, "
                     r"largest 1\d %\)", printed.out)
    assert re.search(r"test images: a stratified by class, seed 0 subset of 50 of 100 \(10 of 10 classes, "
                     r"largest 1\d %\)", printed.out)
    run = json.loads(open(os.path.join(out, "run.json")).read())
    assert run["subsets"]["test"]["classes_present"] == 10 and not run["subsets"]["test"]["imbalanced"]
    assert run["chance"] == 0.1 and run["majority"] < 0.2
    parsed = check_claims(printed.out)  # every verdict agrees with the numbers printed beside it
    assert parsed["chance"] == 10.0 and parsed["majority"] == round(100 * run["majority"], 1)
    assert len(parsed["cells"]) == 1
    if parsed["model_at_chance"]:  # one epoch on 100 images may learn nothing: then nothing passes
        assert run["budget"]["at_chance"] and not run["budget"]["passed"]
        assert parsed["cells"][0]["verdict"] == AT_CHANCE and run["notes"]
