"""jobs.mapping.map_checks through the real attribute job: a checkpoint with a zero head (every logit 0, as
torchvision's ViT-B/16 starts) gives degenerate maps, which are stored, flagged per row, counted
per method in the summary and run.json, and warned about; Grad-CAM's layer and resolution are recorded."""

from __future__ import annotations

import pytest
import torch

from jobs import attribute
from jobs.mapping.map_checks import map_quality, quality_lines
from storage.maps.reader import read_maps, read_run

pytestmark = pytest.mark.slow  # trains a tiny model


@pytest.fixture(scope="module")
def zero_head(checkpoint, tmp_path_factory) -> str:
    from storage.checkpoints import load_checkpoint, save_checkpoint

    model, spec = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    path = str(tmp_path_factory.mktemp("zero-head") / "resnet8-zero-head.pt")
    save_checkpoint(path, model, spec)
    return path


def test_a_zero_head_gives_degenerate_maps_that_are_counted(zero_head, tmp_path, capfd) -> None:
    out = str(tmp_path / "maps")
    code = attribute.main(["--checkpoint", zero_head, "--output", out, "--limit", "20", "--shard-size", "10",
                           "--methods", "pathway gradient grad_cam", "--in-process", "--no-progress"])
    printed = capfd.readouterr()
    assert code == 0
    pathway = read_maps(out, "pathway")
    assert len(pathway) == 20 and (pathway.kept_fraction == 0).all()  # stored, every sample once
    assert set(pathway.degenerate) == {"all neuron scores are zero: every neuron pruned"}
    assert set(read_maps(out, "gradient").degenerate) == {"all-zero map"}
    run = read_run(out)
    assert run["degenerate_maps"] == {"pathway": {"all neuron scores are zero: every neuron pruned": 20},
                                      "gradient": {"all-zero map": 20}, "grad_cam": {"all-zero map": 20}}
    assert "degenerate maps: pathway 20, gradient 20, grad_cam 20" in printed.out
    assert "warning: pathway: 20 of 20 maps are degenerate" in printed.err
    assert any(w.startswith("gradient: 20 of 20 maps are degenerate") for w in run["warnings"])
    (layer,) = run["grad_cam_layers"]["grad_cam"]
    cam = read_maps(out, "grad_cam")
    assert layer["maps"] == 20 and list(cam.layer_size.iloc[0]) == layer["size"] and set(cam.layer) == {layer["layer"]}
    assert f"grad_cam: Grad-CAM layer {layer['layer']} ({layer['size'][0]} x {layer['size'][1]}, 20 maps)" in printed.out


def test_a_working_checkpoint_has_no_degenerate_maps(reference) -> None:
    """The undisturbed reference run (tests/jobs/conftest.py) counts no degenerate map and says so."""
    url, options = reference["url"], reference["options"]
    assert reference["code"] == 0
    assert read_run(url, options)["degenerate_maps"] == {"pathway": {}, "gradient": {}}
    for method in ("pathway", "gradient"):
        assert read_maps(url, method, options).degenerate.isna().all()
    quality = map_quality(url, options, {m: ["degenerate"] for m in ("pathway", "gradient")})
    assert quality_lines(quality) == ["degenerate maps: pathway 0, gradient 0"] and not quality["warnings"]
