"""The default model ships with the project (jobs.runtime.cli.DEFAULT_CHECKPOINT): it loads, it is small, its
``.metrics.json`` says how it was made, and the test accuracy it records is what it scores today on
the 10,000 Fashion-MNIST test images."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.runtime.cli import DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT_COMMAND
from storage.sources import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / DEFAULT_CHECKPOINT
METRICS = Path(f"{SHIPPED}.metrics.json")

#: The logit margin (top-1 minus top-2) below which a prediction may differ between CPUs. float32
#: kernels differ between instruction sets (AVX-512 / AVX2 / the portable ones of
#: ATEN_CPU_CAPABILITY=default) and thread counts in the order they sum, so a logit moves by a few
#: float32 ulps per layer. Measured on this model and the 10,000 test images (AMD EPYC, AVX-512):
#: AVX-512 against the portable kernels, at most 4.8e-6 on logits up to 19.6; 1 against 2 threads,
#: identical. A margin of 1e-3 is 200x that, so an image with a larger margin is classified the same
#: everywhere. The smallest margin here is 1.15e-3 (8 images below 1e-2, none below 1e-3), so on
#: such CPUs the count of correct predictions must match exactly.
NEAR_TIE = 1e-3
#: The count of correct predictions may move by at most the number of test images whose margin is
#: below NEAR_TIE (each can flip at most one prediction); that number is itself bounded, so a model
#: with many near-ties (tolerance growing silently) fails rather than passes.
MAX_NEAR_TIES = 5


@pytest.fixture(scope="module")
def metrics() -> dict:
    assert METRICS.is_file(), f"{METRICS} is missing: git checkout -- {METRICS.relative_to(ROOT)}"
    return json.loads(METRICS.read_text())


def test_shipped_checkpoint_is_tracked_small_and_loads():
    from storage.checkpoints import load_checkpoint

    assert SHIPPED.is_file(), f"{SHIPPED} is missing: git checkout -- {DEFAULT_CHECKPOINT}"
    assert SHIPPED.stat().st_size < 1_000_000, f"{SHIPPED} is {SHIPPED.stat().st_size} bytes"
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    # Ray's --working-dir upload skips what .gitignore names: the default model must not be among it.
    assert not any(DEFAULT_CHECKPOINT.startswith(line.strip().strip("/") + "/") for line in ignore
                   if line.strip() and not line.startswith("#")), ".gitignore hides the shipped model"
    model, spec = load_checkpoint(str(SHIPPED))
    assert (spec.arch, spec.num_classes, spec.in_channels, tuple(spec.input_size)) == ("resnet8", 10, 1, (28, 28))
    assert not model.training


def test_jobs_default_to_the_shipped_checkpoint(monkeypatch, tmp_path):
    from jobs.runtime.cli import JobError, checkpoint_or_default

    monkeypatch.chdir(ROOT)
    assert checkpoint_or_default(None) == DEFAULT_CHECKPOINT
    assert checkpoint_or_default("s3://b/m.pt") == "s3://b/m.pt"
    # Elsewhere (an installed package run from another directory): the copy inside the models package.
    monkeypatch.chdir(tmp_path)
    assert Path(checkpoint_or_default(None)).resolve() == SHIPPED.resolve()
    # Missing: one line on how to get it back, never a training run.
    monkeypatch.setattr("models.__file__", str(tmp_path / "models" / "__init__.py"))
    with pytest.raises(JobError, match=r"git checkout -- models/weights/resnet8-fashion-mnist\.pt.*python -m jobs\.train"):
        checkpoint_or_default(None)


def test_metrics_file_records_how_the_checkpoint_was_made(metrics):
    from storage.checkpoints import load_metrics

    assert metrics["command"] == DEFAULT_CHECKPOINT_COMMAND
    assert metrics["seed"] == 0 and "--seed 0" in metrics["command"]
    versions = metrics["versions"]
    for key in ("python", "torch", "numpy"):
        assert re.match(r"\d+\.\d+", versions[key]), (key, versions[key])
    assert re.fullmatch(r"[0-9a-f]{40}", versions["git_commit"])
    assert metrics["arch"] == "resnet8" and metrics["source"] == "fashion-mnist" and metrics["test_samples"] == 10_000
    assert metrics["test_accuracy"] == metrics["test_accuracy_curve"][-1][1] > 0.9
    # The checkpoint stores the same metrics inside (what jobs.train wrote into both).
    stored = json.loads(json.dumps(load_metrics(str(SHIPPED)), default=float))
    assert stored == metrics


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="sudo apt-get install dataset-fashion-mnist")
def test_recorded_accuracy_matches_a_fresh_evaluation(metrics):
    from models.preprocess import preprocess
    from storage.checkpoints import load_checkpoint
    from tests.helpers import fashion_mnist

    model, spec = load_checkpoint(str(SHIPPED))
    images, labels = fashion_mnist("test")
    assert images.shape[0] == metrics["test_samples"] == 10_000
    logits = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], 500):  # jobs.train evaluates in batches of 500 too
            logits.append(model(preprocess(spec, images[start:start + 500])).float())
    logits = torch.cat(logits)
    top2 = logits.topk(2, dim=1).values
    near_ties = int((top2[:, 0] - top2[:, 1] < NEAR_TIE).sum())
    correct = int((logits.argmax(1) == torch.as_tensor(np.asarray(labels))).sum())
    recorded = round(metrics["test_accuracy"] * metrics["test_samples"])
    assert near_ties <= MAX_NEAR_TIES, f"{near_ties} test images have top-2 logits within {NEAR_TIE}"
    assert abs(correct - recorded) <= near_ties, (correct, recorded, near_ties)
