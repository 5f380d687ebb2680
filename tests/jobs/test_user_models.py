"""A user's own model class in the job: converted from a plain state_dict, imported by the driver and
every Ray worker (PYTHONPATH locally, runtime_env py_modules under ray job submit), and a clear
one-line error when the workers cannot import it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from jobs import attribute, convert
from storage.checkpoints import load_checkpoint
from storage.maps.reader import read_maps, read_run
from tests.ray_cluster import ROOT, job_env, ray_head, short_tmp, submit_job

pytestmark = pytest.mark.slow  # starts Ray

USERNETS = '''
import torch
import torch.nn.functional as F
from torch import nn


class SmallNet(nn.Module):
    """A user's classifier: functional ReLUs, its own width."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))
'''
SPEC = ["--arch", "usernets:SmallNet", "--arch-kwargs", json.dumps({"num_classes": 10, "width": 12}),
        "--num-classes", "10", "--in-channels", "1", "--input-size", "28", "--mean", "0.286", "--std", "0.353"]


@pytest.fixture(scope="module")
def user_checkpoint(tmp_path_factory) -> tuple[str, str]:
    """(directory holding the ``usernets`` package, a checkpoint converted from its plain state_dict)."""
    root = tmp_path_factory.mktemp("user")
    (root / "usernets").mkdir()
    (root / "usernets" / "__init__.py").write_text(USERNETS)
    sys.path.insert(0, str(root))
    try:
        import usernets

        torch.manual_seed(0)
        net = usernets.SmallNet(num_classes=10, width=12)
        torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, root / "weights.pt")
        checkpoint = str(root / "ckpt.pt")
        assert convert.main(["--state-dict", str(root / "weights.pt"), *SPEC, "--output", checkpoint]) == 0
        model, spec = load_checkpoint(checkpoint, trust_code=["usernets"])
        assert type(model).__name__ == "SmallNet" and spec.arch_kwargs == {"num_classes": 10, "width": 12}
        for key, value in net.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("usernets", None)
    return str(root), checkpoint


def test_converter_refuses_weights_that_do_not_fit(user_checkpoint, tmp_path, capsys) -> None:
    root, _ = user_checkpoint
    sys.path.insert(0, root)
    try:
        torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
        code = convert.main(["--state-dict", str(tmp_path / "other.pt"), *SPEC, "--output", str(tmp_path / "x.pt")])
    finally:
        sys.path.remove(root)
        sys.modules.pop("usernets", None)
    assert code == 2
    err = capsys.readouterr().err
    assert "do not fit arch 'usernets:SmallNet'" in err and "Traceback" not in err


def test_a_users_model_class_runs_in_the_job(user_checkpoint, tmp_path) -> None:
    """``PYTHONPATH=<their code> python -m jobs.attribute --checkpoint ckpt.pt``, with its own local Ray."""
    root, checkpoint = user_checkpoint
    out = str(tmp_path / "maps")
    ray_tmp = short_tmp("ru")
    env = job_env(ray_tmp, PYTHONPATH=f"{ROOT}{os.pathsep}{root}")
    command = [sys.executable, "-m", "jobs.attribute", "--checkpoint", checkpoint, "--output", out, "--limit", "60",
               "--shard-size", "30", "--methods", "pathway gradient guided_backprop", "--workers", "1",
               "--no-progress", "--trust-code", "usernets"]
    try:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    maps = read_maps(out, "pathway")
    assert len(maps) == 60 and (maps.neuron_calls == 2).all() and maps.kept_fraction.between(0.25, 0.31).all()
    run = read_run(out)
    assert run["model"]["arch"] == "usernets:SmallNet" and run["config"]["trust_code"] == ["usernets"]


def test_workers_that_cannot_import_the_users_module_stop_the_job_with_one_line(user_checkpoint, ray_session,
                                                                               tmp_path, capsys) -> None:
    """The driver imports it (it is on this process's path), the running Ray's workers cannot."""
    root, checkpoint = user_checkpoint
    sys.path.insert(0, root)
    try:
        code = attribute.main(["--checkpoint", checkpoint, "--output", str(tmp_path / "maps"), "--limit", "10",
                               "--shard-size", "10", "--workers", "1", "--no-progress", "--trust-code", "usernets"])
    finally:
        sys.path.remove(root)
        sys.modules.pop("usernets", None)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "the Ray workers cannot import 'usernets'" in err and "--working-dir" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_users_model_under_ray_job_submit_with_py_modules(user_checkpoint, tmp_path) -> None:
    root, checkpoint = user_checkpoint
    out = str(tmp_path / "maps")
    runtime_env = json.dumps({"working_dir": str(ROOT), "py_modules": [os.path.join(root, "usernets")]})
    with ray_head() as (address, env):
        result = submit_job(address, env, "--runtime-env-json", runtime_env, "--submission-id", "user-model-1", "--",
                            "python", "-m", "jobs.attribute", "--checkpoint", checkpoint, "--output", out, "--limit",
                            "40", "--shard-size", "20", "--workers", "1", "--no-progress", "--trust-code", "usernets")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert len(read_maps(out, "pathway")) == 40
