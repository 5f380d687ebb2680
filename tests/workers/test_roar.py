"""workers.roar in-process on real Fashion-MNIST: a cell retrains on its prepared images, commits its
file (local and S3), a retry rewrites the same result; the images are exactly what the removal says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attribution.evaluation import linear_imputation
from models import fashion_mnist_spec
from storage.io.fs import join, open_fs
from storage.sources import load_arrays, open_source
from workers.roar import NONE, cell_name, cell_url, prepare, run_cell
from workers.roar_data import MASK, RandomRemoval, Removal, channel_mean, remove_pixels, removed_images


@pytest.fixture(scope="module")
def data() -> dict:
    train_src, test_src = open_source("fashion-mnist", split="train"), open_source("fashion-mnist", split="test")
    train_x, train_y, _ = load_arrays(train_src, train_src.list()[:200])
    test_x, test_y, _ = load_arrays(test_src, test_src.list()[:100])
    rng = np.random.default_rng(0)
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y,
            "train_maps": rng.standard_normal((200, 28, 28)).astype(np.float16),
            "test_maps": rng.standard_normal((100, 28, 28)).astype(np.float16),
            "train_seeds": list(range(200)), "test_seeds": list(range(1000, 1100))}


def config(output: str, options: dict, fill: list[float], per_read: bool = False) -> dict:
    return {"spec": fashion_mnist_spec().to_dict(), "kar": False, "fill": fill, "noise": [0.9], "output": output,
            "storage_options": options, "epochs": 1, "batch_size": 50, "lr": 0.05, "optimizer": "sgd",
            "schedule": "onecycle", "weight_decay": 5e-4, "augment": False, "device": "cpu", "threads": 1,
            "fingerprint": "test", "per_read": per_read}


def prepared(cell: dict, cfg: dict, data: dict) -> tuple[np.ndarray, np.ndarray]:
    return prepare(cell, cfg, data["train_images"], data["train_maps"], data["train_seeds"], data["test_images"],
                   data["test_maps"], data["test_seeds"])


def test_cell_commits_its_result_and_a_retry_rewrites_it(storage_root, data) -> None:
    torch.set_num_threads(1)
    url, options = storage_root
    cfg = config(url, options, channel_mean(data["train_images"]))
    cell = {"method": "pathway", "t": 50, "seed": 3, "input": "pixels", "fill": "nli"}
    train_x, test_x = prepared(cell, cfg, data)
    first = run_cell(cell, cfg, train_x, data["train_labels"], test_x, data["test_labels"])
    fs, _ = open_fs(url, options)
    stored = json.loads(fs.cat_file(cell_url(url, "pathway", 50, 3, "pixels", "nli")))
    assert stored["accuracy"] == first["accuracy"] and stored["removed_per_image"] == 392
    assert stored["input"] == "pixels" and stored["fill"] == "nli" and stored["per_read"] is False
    assert stored["train_samples"] == 200 and stored["test_samples"] == 100 and stored["fingerprint"] == "test"
    assert options.get("secret", "<none>") not in json.dumps(stored)
    train_again, test_again = prepared(cell, cfg, data)  # what a rerun after a crash does
    np.testing.assert_array_equal(train_again, train_x)
    again = run_cell(cell, cfg, train_again, data["train_labels"], test_again, data["test_labels"])
    assert again["accuracy"] == first["accuracy"] and again["train_loss"] == first["train_loss"]
    assert json.loads(fs.cat_file(join(url, "cells", "pathway-t50-s3-nli.json")))["finished_at"] == again["finished_at"]


def test_cell_names() -> None:
    assert cell_name(NONE, 0, 2) == "none-t0-s2"
    assert cell_name("pathway", 50, 1, "pixels", "mean") == "pathway-t50-s1-mean"
    assert cell_name("pathway", 50, 1, MASK, "-") == "pathway-t50-s1-mask"


def test_baseline_cell_sees_the_images_as_given(data) -> None:
    cfg = config("unused", {}, [73.0])
    train, test = prepared({"method": NONE, "t": 0, "seed": 0, "input": "pixels", "fill": "-"}, cfg, data)
    assert train is data["train_images"] and test is data["test_images"]
    with pytest.raises(ValueError, match="maps are needed"):
        prepare({"method": "pathway", "t": 10, "seed": 0, "input": "pixels", "fill": "mean"}, cfg,
                data["train_images"], None, data["train_seeds"], data["test_images"], None, data["test_seeds"])


def test_mask_images_and_nli_images_are_exactly_the_removal(data) -> None:
    images, maps, seeds = data["test_images"][:20], data["test_maps"][:20], data["test_seeds"][:20]
    top = np.zeros((20, 784), bool)
    order = np.argsort(-np.abs(maps.astype(np.float32)).reshape(20, -1), axis=1, kind="stable")
    np.put_along_axis(top, order[:, :235], True, axis=1)  # round(0.3 * 784)
    top = top.reshape(20, 28, 28)
    mask = removed_images(images, maps, Removal(0.3, input=MASK, mean=(73.0,)), seeds)
    np.testing.assert_array_equal(mask[..., 0], np.where(top, 255, 0))
    clean = removed_images(images, maps, Removal(0.3, fill="nli", mean=(73.0,), noise=(0.0,)), seeds)
    exact = linear_imputation(images.astype(np.float64), top)
    np.testing.assert_array_equal(clean, np.clip(np.round(exact), 0, 255).astype(np.uint8))
    noisy = removed_images(images, maps, Removal(0.3, fill="nli", mean=(73.0,), noise=(20.0,)), seeds)
    assert (noisy[~top] == images[~top]).all() and (noisy[top] != clean[top]).mean() > 0.5
    kar = removed_images(images, maps, Removal(0.3, keep=True, fill="nli", mean=(73.0,), noise=(0.0,)), seeds)
    assert (kar[top] == images[top]).all()


def test_remove_pixels_ranks_by_magnitude_and_names_bad_shapes(data) -> None:
    images = np.full((1, 2, 2, 1), 200, np.uint8)
    maps = np.array([[[0.1, -0.9], [0.5, 0.2]]], np.float16)  # |.|: -0.9 is the most relevant pixel
    out = remove_pixels(images, maps, 0.5, [10.0])
    np.testing.assert_array_equal(out[0, :, :, 0], [[200, 10], [10, 200]])
    kept = remove_pixels(images, maps, 0.25, [10.0], keep=True)
    np.testing.assert_array_equal(kept[0, :, :, 0], [[10, 200], [10, 10]])
    with pytest.raises(ValueError, match="do not match images"):
        remove_pixels(data["train_images"], data["test_maps"], 0.1, [0.0])


def test_random_per_read_draws_a_new_mask_each_read_and_repeats_per_seed(data, tmp_path) -> None:
    batch = torch.from_numpy(data["train_images"][:8])
    removal = RandomRemoval(Removal(0.5, mean=(73.0,)))
    gen = torch.Generator().manual_seed(0)
    first, second = removal(batch, gen), removal(batch, gen)
    for out in (first, second):  # half of every image is the mean, the rest as it was
        filled = (out == 73)[..., 0] & (batch != 73)[..., 0]
        kept = (out == batch)[..., 0]
        assert bool((filled | kept).all()) and (filled.sum(dim=(1, 2)) <= 392).all()
        assert ((~kept).sum(dim=(1, 2)) >= 392 - (batch == 73).sum(dim=(1, 2, 3))).all()
    assert not torch.equal(first, second)
    assert torch.equal(removal(batch, torch.Generator().manual_seed(0)), first)
    torch.set_num_threads(1)
    cfg = config(str(tmp_path), {}, [73.0], per_read=True)
    cell = {"method": "random", "t": 50, "seed": 0, "input": "pixels", "fill": "mean"}
    train_x, test_x = prepared(cell, cfg, data)
    assert train_x is data["train_images"] and not np.array_equal(test_x, data["test_images"])
    result = run_cell(cell, cfg, train_x, data["train_labels"], test_x, data["test_labels"])
    assert result["per_read"] is True
    assert run_cell(cell, cfg, train_x, data["train_labels"], test_x, data["test_labels"])["accuracy"] == \
        result["accuracy"]
