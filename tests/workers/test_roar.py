"""workers.roar in-process on real Fashion-MNIST: a cell retrains, commits its file (local and S3),
a retry rewrites the same result, and bad input is named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import fashion_mnist_spec
from storage.fs import join, open_fs
from storage.sources import load_arrays, open_source
from workers.roar import NONE, cell_arrays, cell_url, channel_mean, remove_pixels, run_cell


@pytest.fixture(scope="module")
def data() -> dict:
    train_src, test_src = open_source("fashion-mnist", split="train"), open_source("fashion-mnist", split="test")
    train_x, train_y, _ = load_arrays(train_src, train_src.list()[:200])
    test_x, test_y, _ = load_arrays(test_src, test_src.list()[:100])
    rng = np.random.default_rng(0)
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y,
            "train_maps": rng.standard_normal((200, 28, 28)).astype(np.float16),
            "test_maps": rng.standard_normal((100, 28, 28)).astype(np.float16)}


def config(output: str, options: dict, fill: list[float]) -> dict:
    return {"spec": fashion_mnist_spec().to_dict(), "kar": False, "fill": fill, "output": output,
            "storage_options": options, "epochs": 1, "batch_size": 50, "lr": 0.05, "optimizer": "sgd",
            "schedule": "onecycle", "weight_decay": 5e-4, "augment": False, "device": "cpu", "threads": 1,
            "fingerprint": "test"}


def test_cell_commits_its_result_and_a_retry_rewrites_it(storage_root, data) -> None:
    torch.set_num_threads(1)
    url, options = storage_root
    cfg = config(url, options, channel_mean(data["train_images"]))
    cell = {"method": "pathway", "t": 50, "seed": 3}
    first = run_cell(cell, cfg, **data)
    fs, _ = open_fs(url, options)
    stored = json.loads(fs.cat_file(cell_url(url, "pathway", 50, 3)))
    assert stored["accuracy"] == first["accuracy"] and stored["removed_per_image"] == 392
    assert stored["train_samples"] == 200 and stored["test_samples"] == 100 and stored["fingerprint"] == "test"
    assert options.get("secret", "<none>") not in json.dumps(stored)
    again = run_cell(cell, cfg, **data)  # what a Ray retry does
    assert again["accuracy"] == first["accuracy"] and again["train_loss"] == first["train_loss"]
    assert json.loads(fs.cat_file(join(url, "cells", "pathway-t50-s3.json")))["finished_at"] == again["finished_at"]


def test_baseline_cell_trains_on_the_images_as_given(data) -> None:
    train, test = cell_arrays(NONE, 0, data["train_images"], data["test_images"], None, None, [73.0], keep=False)
    assert train is data["train_images"] and test is data["test_images"]
    with pytest.raises(ValueError, match="maps for both splits"):
        cell_arrays("pathway", 10, data["train_images"], data["test_images"], None, None, [73.0], keep=False)


def test_remove_pixels_ranks_by_magnitude_and_names_bad_shapes(data) -> None:
    images = np.full((1, 2, 2, 1), 200, np.uint8)
    maps = np.array([[[0.1, -0.9], [0.5, 0.2]]], np.float16)  # |.|: -0.9 is the most relevant pixel
    out = remove_pixels(images, maps, 0.5, [10.0])
    np.testing.assert_array_equal(out[0, :, :, 0], [[200, 10], [10, 200]])
    kept = remove_pixels(images, maps, 0.25, [10.0], keep=True)
    np.testing.assert_array_equal(kept[0, :, :, 0], [[10, 200], [10, 10]])
    with pytest.raises(ValueError, match="do not match images"):
        remove_pixels(data["train_images"], data["test_maps"], 0.1, [0.0])
