"""The planted-shortcut proof (jobs.shortcut) at a small size: the model trained on stamped images
uses the stamp, and jobs.analyze isolates the stamped test images of the class in one cluster."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from jobs import shortcut


def test_isolation_scores_the_cluster_holding_most_stamped_ids() -> None:
    table = pd.DataFrame({"sample_id": list("abcdefgh"), "cluster": [0, 0, 0, 0, 1, 1, 1, 2]})
    got = shortcut.isolation(table, {"e", "f", "h"})
    assert got["cluster"] == 1 and got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
    assert got["clusters"] == 3 and got["cluster_size"] == 3


@pytest.mark.slow
def test_the_model_uses_the_stamp_and_analyze_isolates_it(tmp_path) -> None:
    """The proof, without Ray (its jobs' Ray runs: their own tests)."""
    args = shortcut.parse_args(["--workdir", str(tmp_path), "--train-limit", "3000", "--test-limit", "500",
                                "--epochs", "3", "--methods", "pathway", "--in-process"])
    result = shortcut.prove(args)
    r = result["reliance"]
    assert r["stamped_images"] >= 10
    assert r["accuracy_with_stamp"] - r["accuracy_stamp_removed"] >= 0.3, r  # removing the stamp costs the class
    assert r["others_to_class_pasted"] - r["others_to_class_plain"] >= 0.3, r  # and pasting it adds it
    pathway = result["methods"]["pathway"]
    assert pathway["precision"] >= 0.9 and pathway["recall"] >= 0.9, pathway
    assert json.loads((tmp_path / "shortcut.json").read_text())["methods"]["pathway"] == pathway
