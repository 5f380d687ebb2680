"""``python -m jobs.train`` end to end on a small Fashion-MNIST subset, local and on S3."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from jobs import train as train_job
from jobs.runtime.cli import STORAGE_OPTIONS_ENV
from models import fashion_mnist_spec
from models.training import evaluate
from storage.checkpoints import load_checkpoint, load_metrics
from storage.sources import load_arrays, open_source
from tests.helpers import write_folder

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--limit", "2000", "--epochs", "1", "--batch-size", "32", "--no-progress", "--threads", "1"]


def _read(url: str, options: dict) -> bytes:
    with fsspec.open(url, "rb", **options) as fh:
        return fh.read()


@pytest.mark.slow  # trains a model or imports torch in a new process
def test_trains_and_writes_checkpoint_metrics_and_plot(tmp_path, capsys) -> None:
    url = str(tmp_path / "models" / "fm.pt")
    argv = [*SMALL, "--output", url]
    assert train_job.main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and url in out

    model, spec = load_checkpoint(url)
    assert spec.arch == "resnet8" and spec.in_channels == 1 and spec.input_size == (28, 28)
    assert spec.class_names == fashion_mnist_spec().class_names
    # The spec's normalization is measured on the train split: Fashion-MNIST's known values.
    assert spec.mean == pytest.approx(fashion_mnist_spec().mean, abs=2e-3)
    assert spec.std == pytest.approx(fashion_mnist_spec().std, abs=2e-3)

    metrics = json.loads(_read(f"{url}.metrics.json", {}))
    assert metrics["train_samples"] == 2000 and metrics["test_samples"] == 10_000 and metrics["epochs"] == 1
    assert metrics["source"] == "fashion-mnist" and metrics["seed"] == 0
    assert metrics["command"] == " ".join(["python -m jobs.train", *argv])  # no word here needs quoting
    assert metrics["versions"]["torch"] == str(torch.__version__)
    assert metrics["test_accuracy"] > 0.5  # chance: 0.1
    assert load_metrics(url)["test_accuracy"] == metrics["test_accuracy"]
    assert _read(f"{url}.metrics.png", {})[:8] == b"\x89PNG\r\n\x1a\n"

    # The stored model is the trained one: it reproduces the reported accuracy.
    test_images, test_labels, _ = load_arrays(open_source("fashion-mnist", split="test"))
    # (abs 2e-4: another thread count may flip one borderline argmax in 10k)
    assert evaluate(model, spec, test_images, test_labels) == pytest.approx(metrics["test_accuracy"], abs=2e-4)


@pytest.mark.slow  # trains a model or imports torch in a new process
def test_writes_checkpoint_metrics_and_plot_to_s3_with_options_from_the_environment(s3_server, monkeypatch,
                                                                                   capsys) -> None:
    """The same files on s3://, the options from $STORAGE_OPTIONS as on a cluster (a smaller run: what
    the trained model scores is the test above's; a checkpoint's round trip through S3 is
    tests/storage/test_checkpoints.py's)."""
    options = s3_server.storage_options
    url = s3_server.url("models") + "/fm.pt"
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(options))
    argv = ["--limit", "200", "--epochs", "1", "--batch-size", "50", "--test-split", "none", "--no-progress",
            "--threads", "1", "--output", url]
    assert train_job.main(argv) == 0
    assert url in capsys.readouterr().out

    _, spec = load_checkpoint(url, storage_options=options)
    assert spec.arch == "resnet8" and spec.class_names == fashion_mnist_spec().class_names
    metrics = json.loads(_read(f"{url}.metrics.json", options))
    assert metrics["train_samples"] == 200 and metrics["test_samples"] is None and metrics["test_accuracy"] is None
    assert metrics["command"] == " ".join(["python -m jobs.train", *argv])
    assert metrics["checkpoint"] == url and load_metrics(url, storage_options=options) == metrics
    assert options["secret"] not in json.dumps(metrics)
    assert _read(f"{url}.metrics.png", options)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # trains a model or imports torch in a new process
def test_limit_is_a_seeded_subset(tmp_path) -> None:
    a, b, c = (str(tmp_path / f"{n}.pt") for n in "abc")
    common = ["--limit", "300", "--epochs", "1", "--batch-size", "100", "--no-progress", "--test-split", "none",
              "--threads", "1"]
    assert train_job.main([*common, "--output", a]) == 0
    assert train_job.main([*common, "--output", b]) == 0
    assert train_job.main([*common, "--output", c, "--seed", "1"]) == 0
    wa, wb, wc = (load_checkpoint(u)[0].fc.weight for u in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert load_metrics(a)["test_accuracy"] is None


@pytest.mark.slow  # reads the whole training split before most of these refusals
@pytest.mark.parametrize("args, code, message", [
    (["--epochs", "0"], 2, "--epochs: expected a positive integer"),
    (["--lr", "-1"], 2, "--lr: expected a positive number"),
    (["--arch", "resnet9"], 2, "--arch: unknown arch 'resnet9'; use resnet8, a torchvision"),
    (["--source", "/nonexistent/data"], 2, "jobs.train: error: .*nonexistent/data"),
    (["--storage-options", '{"secret": "hunter2"'], 2, "--storage-options is not valid JSON"),
    (["--arch", "vgg16"], 2, "vgg16.*28x28.*larger input_size"),
])
def test_bad_input_exits_nonzero_with_a_clear_message(tmp_path, capsys, args, code, message) -> None:
    argv = ["--output", str(tmp_path / "x.pt"), "--limit", "64", "--epochs", "1", "--no-progress", "--threads", "1",
            *args]
    try:
        returned = train_job.main(argv)
    except SystemExit as exit_:  # argparse
        returned = exit_.code
    stderr = capsys.readouterr().err
    assert returned == code, stderr
    assert re.search(message, stderr), stderr
    assert "hunter2" not in stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow  # trains a model or imports torch in a new process
def test_module_entry_point_reports_errors_without_traceback(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--source", str(tmp_path / "missing"), "--output", str(tmp_path / "x.pt")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert "jobs.train: error:" in result.stderr and "missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_record_the_command_and_versions_without_secrets() -> None:
    """What made a checkpoint (jobs.train.provenance): the command, credentials redacted, and the versions."""
    record = train_job.provenance(["--output", "s3://KEY:SECRET@bucket/m.pt", "--storage-options", '{"secret": "s"}',
                                   "--seed", "3"])
    assert record["command"] == "python -m jobs.train --output s3://bucket/m.pt --storage-options '<redacted>' --seed 3"
    assert train_job.provenance(["--storage-options=@creds.json"])["command"].endswith("--storage-options=@creds.json")
    versions = record["versions"]
    assert versions["torch"] == str(torch.__version__) and versions["numpy"] and versions["python"].count(".") == 2
    assert versions["git_commit"] is None or len(versions["git_commit"]) == 40


@pytest.mark.parametrize("shape, step_of", [((7, 5, 5, 1), 1), ((40, 9, 11, 3), 4), ((3, 2, 2, 4), 1)])
def test_channel_stats_equal_the_float64_formula(shape, step_of) -> None:
    """The histogram count gives numpy's float64 mean and std of the pixels scaled to [0, 1], over every
    ``N // max_samples``-th image, to the 4 decimals a spec keeps; a constant channel gets the 1e-3 floor."""
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    images[..., 0] = 17  # constant
    max_samples = shape[0] // step_of
    sample = images[::step_of].reshape(-1, shape[-1]).astype(np.float64) / 255.0
    expected = (tuple(round(float(v), 4) for v in sample.mean(axis=0)),
                tuple(round(float(v), 4) for v in np.maximum(sample.std(axis=0), 1e-3)))
    assert train_job.channel_stats(images, max_samples=max_samples) == expected
    assert expected[1][0] == 0.001


def test_channel_stats_take_a_fraction_of_the_memory_of_a_float64_copy() -> None:
    """Peak memory stays far under a float64 copy of the images (8 bytes a pixel: 120 MB here)."""
    import tracemalloc

    images = np.random.default_rng(0).integers(0, 256, (100, 224, 224, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        train_job.channel_stats(images)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < images.nbytes * 3, f"{peak / 2**20:.0f} MiB for {images.nbytes / 2**20:.0f} MiB of pixels"


def test_a_limit_decodes_only_its_subset_and_the_statistics_share(fmnist, tmp_path, monkeypatch, caplog) -> None:
    """``--limit`` of a large split decodes the seeded subset and every ``N // STATS_SAMPLES``-th sample
    (here 30 images and a share of 6: every 5th), and gets what decoding everything gives: the same
    subset, the same statistics' images, the same classes. A sample that does not decode is logged and
    skipped, counted among those read."""
    images, labels = fmnist
    write_folder(str(tmp_path / "train"), None, images, labels)
    monkeypatch.setattr(train_job, "STATS_SAMPLES", 6)
    source = open_source(str(tmp_path), split="train")
    whole, whole_labels, _ = load_arrays(source)
    keep = np.sort(np.random.default_rng(3).choice(len(whole), size=4, replace=False))
    got = train_job.training_set(source, limit=4, seed=3)
    assert np.array_equal(got.images, whole[keep]) and np.array_equal(got.labels, whole_labels[keep])
    assert np.array_equal(got.stats_images, whole[::5]) and got.listed == 30
    assert got.classes == source.classes
    everything = train_job.training_set(source, limit=None, seed=3)
    assert np.array_equal(everything.images, whole) and np.array_equal(everything.stats_images, whole[::5])

    first = sorted(p for p in (tmp_path / "train").rglob("*.png"))[0]  # listed first: in the statistics' share
    first.write_bytes(b"not a png")
    with caplog.at_level("WARNING"):
        train_job.training_set(open_source(str(tmp_path), split="train"), limit=4, seed=3)
    read = len(np.union1d(keep, np.arange(0, 30, 5)))
    assert f"skipped 1 of {read} samples" in caplog.text and read < 30
