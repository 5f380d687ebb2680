"""``python -m jobs.sanity`` end to end on a real local Ray and a real trained checkpoint.

Step 0 recomputes the maps on the unrandomized model, so every similarity is 1 for these
deterministic methods; once the whole network is random, the plain gradient's map no
longer looks like the original one.
"""

from __future__ import annotations

import pytest

import json
import os

import numpy as np
import pandas as pd
import torch

from attribution.evaluation import METRICS, cascade
from jobs import sanity
from storage.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # starts Ray or trains a model

METHODS = ["gradient", "pt=pathway:scores=taylor", "grad_cam"]
LABELS = ["gradient", "pt", "grad_cam"]
N = 6


def test_cascade_curves(checkpoint, ray_session, tmp_path, capsys) -> None:
    out = str(tmp_path / "sanity")
    code = sanity.main(["--checkpoint", checkpoint, "--limit", str(N), "--methods", " ".join(METHODS),
                        "--draws", "2", "--output", out, "--no-progress"])
    assert code == 0
    table = pd.read_parquet(f"{out}/sanity.parquet")
    model, _ = load_checkpoint(checkpoint)
    steps = ["original"] + [name for name, _ in cascade(model, example=torch.zeros(1, 1, 28, 28))]
    assert steps == ["original", "fc", "layer3.0", "layer2.0", "layer1.0", "bn1", "conv1"]

    cells = list(zip(table.method, table.step, table.step_name, table.metric))
    expected = {(m, i, s, k) for m in LABELS for i, s in enumerate(steps) for k in METRICS}
    assert len(cells) == len(set(cells)) and set(cells) == expected
    pd.testing.assert_frame_equal(pd.read_csv(f"{out}/sanity.csv"), table, check_dtype=False)

    defined = table[table.n > 0]
    assert np.isfinite(defined["mean"]).all() and (defined["mean"].abs() <= 1 + 1e-9).all()
    assert (table[table.method != "grad_cam"].n == N).all()  # gradient maps are never constant
    original = table[table.step == 0]
    assert (original.n == N).all() and np.allclose(original["mean"], 1.0, atol=1e-6)
    assert (original.draws == 1).all() and (table[table.step > 0].draws == 2).all()
    draws = pd.read_parquet(f"{out}/sanity_draws.parquet")
    assert len(draws) == len(LABELS) * len(METRICS) * (1 + 2 * (len(steps) - 1))
    spread = draws[draws.step > 0].groupby(["method", "step", "metric"])["mean"]
    merged = table[table.step > 0].set_index(["method", "step", "metric"])
    np.testing.assert_allclose(spread.mean().loc[merged.index], merged["mean"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(spread.std(ddof=1).loc[merged.index], merged["sd_draws"], rtol=0, atol=1e-12)
    gradient_fc = merged.loc[("gradient", 1, "spearman_abs")]
    assert gradient_fc["sd_draws"] > 0  # two draws of the random fc give two different curves

    def mean(method: str, step: str, metric: str = "spearman_abs") -> float:
        row = table[(table.method == method) & (table.step_name == step) & (table.metric == metric)]
        return float(row["mean"].iloc[0])

    for method in ("gradient", "pt"):  # a fully random network explains differently
        assert mean(method, "conv1") < 0.6 and mean(method, "conv1", "ssim") < 0.6
        assert mean(method, "conv1") < mean(method, "original")

    config = json.loads(open(f"{out}/sanity.json").read())
    assert [s["name"] for s in config["steps"]] == steps[1:] and config["samples"] == N
    assert config["draws"] == 2 and config["randomize"] == "normal"
    assert config["steps"][0]["modules"] == ["fc"]
    with open(f"{out}/sanity.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Spearman |map|" in capsys.readouterr().out


def test_reset_mode_module_by_module(checkpoint, tmp_path) -> None:
    """Quantus' configuration: reset_parameters(), one module per step; the cascade ends fully random
    (the steps in this process: what they compute is not Ray's business)."""
    out = str(tmp_path / "reset")
    assert sanity.main(["--checkpoint", checkpoint, "--limit", "4", "--methods", "gradient", "--randomize", "reset",
                        "--group", "module", "--draws", "1", "--output", out, "--in-process", "--no-progress"]) == 0
    table = pd.read_parquet(f"{out}/sanity.parquet")
    names = list(dict.fromkeys(table.sort_values("step").step_name))
    assert names[:3] == ["original", "fc", "layer3.0.downsample.1"] and names[-1] == "conv1"
    assert table.sd_draws.isna().all()  # one draw: no spread to report
    last = table[(table.step_name == "conv1") & (table.metric == "spearman_abs")]["mean"].iloc[0]
    assert last < 0.6


def test_unknown_method_exits_2(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert sanity.main(["--checkpoint", checkpoint, "--methods", "gradient nosuch", "--output", str(out),
                        "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nosuch'" in err and "guided_backprop" in err
    assert not out.exists()


def test_bad_method_parameter_exits_2(checkpoint, tmp_path, capsys) -> None:
    assert sanity.main(["--checkpoint", checkpoint, "--methods", "pathway:scores=bogus", "--output",
                        str(tmp_path / "o"), "--no-progress"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tmp_path, capsys) -> None:
    missing = str(tmp_path / "none.pt")
    assert sanity.main(["--checkpoint", missing, "--methods", "gradient", "--output", str(tmp_path / "o"),
                        "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "jobs.sanity: error" in err and "none.pt" in err


def test_units_are_stored_and_a_rerun_computes_only_what_is_missing(checkpoint, ray_session, tmp_path,
                                                                    capsys) -> None:
    """Each (method, draw, step) is stored as it finishes: a rerun after a stop computes the missing
    units only, with the numbers of an uninterrupted run (here without Ray: ``--in-process``); more
    --draws add units; other settings are refused."""
    out = str(tmp_path / "sanity")
    args = ["--checkpoint", checkpoint, "--limit", "4", "--methods", "gradient", "--draws", "2", "--output", out,
            "--no-progress"]
    assert sanity.main(args) == 0
    assert "13 steps, 0 already done, 13 to compute" in capsys.readouterr().out  # 1 original + 2 draws x 6 steps
    whole = pd.read_parquet(f"{out}/sanity_draws.parquet")
    units = sorted(name[:-13] for name in os.listdir(f"{out}/units") if name.endswith(".npz"))  # less the samples
    assert len(units) == 13 and "gradient-original" in units and "gradient-seed1-step6" in units

    for name in os.listdir(f"{out}/units"):  # as a run stopped before these two
        if name.startswith(("gradient-original-", "gradient-seed1-step3-")):
            os.remove(os.path.join(out, "units", name))
    os.remove(f"{out}/sanity_draws.parquet")
    assert sanity.main([*args, "--in-process"]) == 0
    assert "13 steps, 11 already done, 2 to compute" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(f"{out}/sanity_draws.parquet"), whole)

    assert sanity.main([*args[:-5], "--draws", "3", "--output", out, "--no-progress"]) == 0
    assert "19 steps, 13 already done, 6 to compute" in capsys.readouterr().out
    assert sanity.main([*args, "--std", "0.5"]) == 2
    assert "another configuration: std was 0.1, is 0.5" in capsys.readouterr().err
