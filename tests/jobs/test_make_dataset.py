"""``python -m jobs.make_dataset``: real Fashion-MNIST garments on scikit-image's bundled textures, written as
a Parquet source that storage.sources reads back, the same bytes for the same seed, the garment visible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import make_dataset
from storage.sources import load_arrays, open_source
from tests.helpers import fashion_mnist


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("fmt") / "fm-textures")
    assert make_dataset.main(["--output", out, "--train-limit", "60", "--test-limit", "40", "--seed", "3"]) == 0
    return out


def test_a_parquet_source_of_rgb_32px_garments_with_the_fashion_mnist_labels(built) -> None:
    for split, n in (("train", 60), ("test", 40)):
        source = open_source(built, split=split)
        images, labels, ids = load_arrays(source)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert ids[:2] == [f"fm-textures/{split}/00000", f"fm-textures/{split}/00001"]
        np.testing.assert_array_equal(labels, fashion_mnist(split, n)[1])  # labels are the garments' own
        assert source.classes[:2] == ["T-shirt/top", "Trouser"] and len(source.classes) == 10
        assert images.reshape(n, -1, 3).std(axis=1).max(axis=1).min() > 10  # no flat images
    recipe = json.loads(open(f"{built}/dataset.json").read())
    assert recipe["counts"] == {"train": 60, "test": 40} and recipe["seed"] == 3 and len(recipe["textures"]) >= 10
    assert open(f"{built}/examples.png", "rb").read(4) == b"\x89PNG"


def painted_colour_spread(image: np.ndarray, garment: np.ndarray, dy: int, dx: int) -> float:
    """How far the opaque garment pixels at offset (dy, dx) are from one colour shaded by the grey level."""
    opaque = garment >= 40
    shade = 255.0 * (0.35 + 0.65 * garment[opaque] / 255.0)
    colour = image[dy:dy + 28, dx:dx + 28][opaque] / shade[:, None]
    return float(np.abs(colour - np.median(colour, axis=0)).max())


def test_the_garment_is_painted_where_fashion_mnist_has_it_on_a_textured_background() -> None:
    garments, _ = fashion_mnist("test", 20)
    pyramids = make_dataset.load_textures()
    images = make_dataset.make_split(garments[..., 0], "test", 0, pyramids).astype(np.float64)
    corners = []
    for image, garment in zip(images, garments[..., 0]):
        # One offset in 0..4 px shows the opaque garment as one colour times its shade: rounding to uint8 moves
        # a channel by at most 0.5 / (255 * 0.45) < 0.005 (0.45: the darkest opaque shade).
        spreads = [painted_colour_spread(image, garment, dy, dx) for dy in range(5) for dx in range(5)]
        assert min(spreads) < 0.005
        corners.append(image[[0, 0, -1, -1], [0, -1, 0, -1]].std())  # Fashion-MNIST corners are background
    assert np.median(corners) > 1.0  # a texture, not a constant background
    again = make_dataset.make_split(garments[:5, ..., 0], "test", 0, pyramids)
    np.testing.assert_array_equal(again, images[:5].astype(np.uint8))  # sample i depends only on (seed, split, i)
    other = make_dataset.make_split(garments[:5, ..., 0], "test", 1, pyramids)
    assert not np.array_equal(other, again)


def test_same_seed_same_bytes(built, tmp_path) -> None:
    again = str(tmp_path / "again")
    assert make_dataset.main(["--output", again, "--train-limit", "60", "--test-limit", "40", "--seed", "3"]) == 0
    for name in ("train-00000.parquet", "test-00000.parquet", "dataset.json"):
        assert open(f"{built}/{name}", "rb").read() == open(f"{again}/{name}", "rb").read()


def test_a_planted_stamp_marks_only_its_class_and_changes_nothing_else(built, tmp_path) -> None:
    out = str(tmp_path / "stamped")
    assert make_dataset.main(["--output", out, "--train-limit", "60", "--test-limit", "40", "--seed", "3",
                              "--stamp", "0:0.5"]) == 0
    recipe = json.loads((tmp_path / "stamped" / "dataset.json").read_text())
    assert recipe["stamp"]["class"] == 0 and recipe["stamp"]["fraction"] == 0.5
    for split in ("train", "test"):
        plain, labels, ids = load_arrays(open_source(built, split=split))
        marked, _, _ = load_arrays(open_source(out, split=split))
        stamped = np.isin(ids, recipe["stamp"]["stamped"][split])
        assert 0 < stamped.sum() < (labels == 0).sum() and (labels[stamped] == 0).all()
        np.testing.assert_array_equal(marked[~stamped], plain[~stamped])  # the same images, unstamped ones intact
        assert (marked[stamped, :4, :4] == make_dataset.STAMP[None, ..., None]).all()
        np.testing.assert_array_equal(marked[stamped, 4:], plain[stamped, 4:])


def test_stamp_flag_is_checked() -> None:
    assert make_dataset.stamp_spec("2:0.25") == (2, 0.25)
    for bad in ("2", "x:0.5", "1:0", "1:1.5", "-1:0.5"):
        with pytest.raises(Exception, match="CLASS:FRACTION|fraction"):
            make_dataset.stamp_spec(bad)
