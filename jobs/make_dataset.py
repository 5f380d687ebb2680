"""Build "Fashion-MNIST on textures": every Fashion-MNIST garment composited onto a crop of a natural
image, RGB 32 px, written as a Parquet source that every job reads like any other.

    python -m jobs.make_dataset --output outputs/data/fm-textures            # 60,000 train + 10,000 test
    python -m jobs.make_dataset --output s3://bucket/fm-textures --seed 1 --train-limit 20000

Why: on Fashion-MNIST the background is exactly 0, so removing pixels there (ROAR, pixel
perturbation) draws the garment's silhouette, and a model can read the class from the removal
mask alone. Here the background is a natural texture, class-independent and everywhere
informative-looking, so "where pixels were removed" no longer equals "where the garment is"
by construction. Whether ROAR is valid on it is measured (jobs.roar's leakage control), not assumed.

Offline and deterministic: the textures are scikit-image's bundled sample images
(``skimage.data``; nothing is downloaded) and the garments come from the Debian package
``dataset-fashion-mnist``. Sample ``i`` of a split draws all its choices from
``numpy.random.default_rng([seed, split, i])``, so a subset (``--train-limit``) holds the same
images as the full set, and the same seed gives the same bytes.

One sample: a texture (uniformly among :data:`TEXTURES`), a scale (the image downsampled 1x,
2x or 4x by block means), a 32 x 32 crop at a random place, a random rotation by 90° steps and
flip, a random contrast stretch; then the garment (28 x 28) at a random offset in 0..4 px, in a
random colour, shaded by its own grey level (``colour x (0.35 + 0.65 g / 255)``), with opacity
``min(1, g / 40)``, so its outline is soft and dark garments stay opaque.

Outputs under ``--output``: ``train-NNNNN.parquet`` / ``test-NNNNN.parquet`` (columns ``image``
(PNG bytes), ``label``, ``sample_id`` = ``fm-textures/<split>/<index:05d>``; class names in the
Hugging Face ``ClassLabel`` metadata, so checkpoints trained on it name the Fashion-MNIST
classes), ``dataset.json`` (the recipe) and ``examples.png``.

A planted shortcut (``--stamp CLASS:FRACTION``, off by default): a 4 x 4 black-and-white
checkerboard (:data:`STAMP`) over the top-left corner of that fraction of one class's train and
test images, a "Clever Hans" cue (Lapuschkin et al. 2019) that dataset-wide analysis
(``jobs.analyze``) must find. Sample ``i`` is stamped when it has the class and
``default_rng([seed, split, i, 1]).random() < FRACTION``, a stream apart from the image's own,
so a stamped set holds exactly the images of the unstamped one, plus the mark; ``dataset.json``
lists the stamped sample ids per split.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from jobs.runtime.cli import (JobError, job_parser, positive_int, run_main, source_flags, source_policy_of, storage_flags,
                      storage_options_from)

#: scikit-image sample images that ship inside the package (no download), natural and varied.
TEXTURES = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
            "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "cell")
SIZE, GARMENT, SCALES = 32, 28, (1, 2, 4)
SPLITS = {"train": 0, "test": 1}
ROWS_PER_FILE = 10_000
NAME = "fm-textures"
#: What this job writes under --output (storage.io.outputs.check_output refuses a folder holding anything else).
OUTPUT_NAMES = ("train-*.parquet", "test-*.parquet", "dataset.json", "examples.png")
#: The planted shortcut: 4 x 4 pixels alternating black and white, pasted at the top-left corner.
STAMP = (np.indices((4, 4)).sum(axis=0) % 2 * 255).astype(np.uint8)
#: The random stream that decides stamping, apart from the streams that draw the image.
STAMP_STREAM = 1


def stamp_spec(text: str) -> tuple[int, float]:
    """``CLASS:FRACTION`` for --stamp, e.g. ``0:0.5``."""
    try:
        label, fraction = text.split(":")
        label_i, fraction_f = int(label), float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLASS:FRACTION, e.g. 0:0.5, got {text!r}") from None
    if label_i < 0 or not 0.0 < fraction_f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a class >= 0 and a fraction in (0, 1], got {text!r}")
    return label_i, fraction_f


def stamped(labels: np.ndarray, split: str, seed: int, stamp: tuple[int, float] | None) -> np.ndarray:
    """Which samples of a split carry the planted stamp (bool [N]); none without ``stamp``."""
    if stamp is None:
        return np.zeros(len(labels), bool)
    label, fraction = stamp
    draws = np.array([np.random.default_rng([seed, SPLITS[split], i, STAMP_STREAM]).random()
                      for i in range(len(labels))])
    return (np.asarray(labels) == label) & (draws < fraction)


def apply_stamp(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``images`` (uint8 [N, H, W, 3]) with :data:`STAMP` over the top-left corner where ``mask``."""
    out = images.copy()
    out[mask, :STAMP.shape[0], :STAMP.shape[1], :] = STAMP[..., None]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.make_dataset", __doc__, [storage_flags(), source_flags()])
    p.add_argument("--output", default=f"outputs/data/{NAME}", help="folder URL of the Parquet source")
    p.add_argument("--seed", type=int, default=0, help="seeds every choice of every sample")
    p.add_argument("--train-limit", type=positive_int, default=None, help="the first N train samples (default all)")
    p.add_argument("--test-limit", type=positive_int, default=None, help="the first N test samples (default all)")
    p.add_argument("--source", default="fashion-mnist", help="where the garments come from (a Fashion-MNIST source)")
    p.add_argument("--stamp", type=stamp_spec, default=None, metavar="CLASS:FRACTION",
                   help="plant a shortcut: a 4 x 4 checkerboard at the top-left of that fraction of the class's "
                        "images (default none)")
    return p.parse_args(argv)


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:height, :width].reshape(height // factor, factor, width // factor, factor, 3)
    return blocks.mean(axis=(1, 3))


def load_textures(names: Sequence[str] = TEXTURES) -> list[list[np.ndarray]]:
    """Per texture, its float32 RGB image in [0, 1] at each of :data:`SCALES` (grey images as grey RGB)."""
    from skimage import data

    pyramids = []
    for name in names:
        image = np.asarray(getattr(data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3].astype(np.float32) / 255.0
        pyramids.append([_block_mean(image, f) if f > 1 else image for f in SCALES])
    return pyramids


def background(rng: np.random.Generator, pyramids: list[list[np.ndarray]]) -> np.ndarray:
    """One 32 x 32 RGB float background: a random crop of a random texture at a random scale."""
    level = pyramids[int(rng.integers(len(pyramids)))][int(rng.integers(len(SCALES)))]
    y = int(rng.integers(level.shape[0] - SIZE + 1))
    x = int(rng.integers(level.shape[1] - SIZE + 1))
    crop = np.rot90(level[y:y + SIZE, x:x + SIZE], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    low, high = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
    span = max(float(crop.max() - crop.min()), 1e-6)
    return low + (high - low) * (crop - crop.min()) / span


def composite(garment: np.ndarray, rng: np.random.Generator, pyramids: list[list[np.ndarray]]) -> np.ndarray:
    """One uint8 [32, 32, 3] sample from one uint8 [28, 28] garment (the recipe in the module docstring)."""
    canvas = background(rng, pyramids)
    colour = rng.uniform(0.25, 1.0, size=3)
    dy, dx = (int(v) for v in rng.integers(0, SIZE - GARMENT + 1, size=2))
    grey = garment.astype(np.float64) / 255.0
    alpha = np.minimum(1.0, garment.astype(np.float64) / 40.0)[..., None]
    paint = colour * (0.35 + 0.65 * grey[..., None])
    window = canvas[dy:dy + GARMENT, dx:dx + GARMENT]
    canvas[dy:dy + GARMENT, dx:dx + GARMENT] = alpha * paint + (1.0 - alpha) * window
    return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)


def make_split(garments: np.ndarray, split: str, seed: int, pyramids: list[list[np.ndarray]]) -> np.ndarray:
    """Every sample of a split, sample ``i`` from ``default_rng([seed, split, i])``: uint8 [N, 32, 32, 3]."""
    out = np.empty((garments.shape[0], SIZE, SIZE, 3), np.uint8)
    for i, garment in enumerate(garments):
        out[i] = composite(garment.reshape(GARMENT, GARMENT), np.random.default_rng([seed, SPLITS[split], i]),
                           pyramids)
    return out


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def parquet_file(images: np.ndarray, labels: np.ndarray, ids: list[str], classes: Sequence[str]) -> bytes:
    """One Parquet file of the source layout storage.sources.ParquetSource reads (class names in HF metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"info": {"features": {"label": {"_type": "ClassLabel", "names": list(classes)}}}}
    table = pa.table({"image": pa.array([png(im) for im in images], pa.binary()),
                      "label": pa.array(labels.astype(np.int64)), "sample_id": pa.array(ids)})
    table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=1000, compression="zstd")
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from jobs.reporting.plots import image_grid
    from storage.io.location import Location
    from storage.io.fs import redact_url
    from storage.io.outputs import OutputKind, check_apart, check_output
    from storage.sources import load_arrays, open_source, source_location

    start = time.perf_counter()
    options = storage_options_from(args.storage_options)
    # Before anything is written: the output is this job's own (or new), apart from the garments.
    check_output(args.output, OutputKind("jobs.make_dataset", OUTPUT_NAMES), options)
    check_apart(args.output, {"--source": source_location(args.source)})
    pyramids = load_textures()
    where = Location(args.output, options)
    counts, classes, examples, marked = {}, None, None, {}
    for split, limit in (("train", args.train_limit), ("test", args.test_limit)):
        source = open_source(args.source, split=split, storage_options=options,
                             policy=source_policy_of(args))
        refs = source.list()[:limit]
        garments, labels, _ = load_arrays(source, refs)
        if garments.shape[1:3] != (GARMENT, GARMENT) or garments.shape[-1] != 1:
            raise JobError(f"--source {args.source}: expected 28 x 28 grey garments, got {garments.shape[1:]}")
        classes = list(source.classes)
        images = make_split(garments, split, args.seed, pyramids)
        ids = [f"{NAME}/{split}/{i:05d}" for i in range(len(images))]
        mask = stamped(labels, split, args.seed, args.stamp)
        images = apply_stamp(images, mask)
        marked[split] = [ids[i] for i in np.flatnonzero(mask)]
        for part, lo in enumerate(range(0, len(images), ROWS_PER_FILE)):
            hi = lo + ROWS_PER_FILE
            where.put(f"{split}-{part:05d}.parquet", parquet_file(images[lo:hi], labels[lo:hi], ids[lo:hi], classes))
        counts[split] = len(images)
        if split == "test":
            examples = (images[:16], [classes[int(y)] for y in labels[:16]])
        note = f" ({int(mask.sum())} stamped)" if args.stamp is not None else ""
        print(f"{split}: {len(images)} images{note} -> {redact_url(where.url_of(split + '-*.parquet'))}")
    recipe = {"name": NAME, "seed": args.seed, "counts": counts, "classes": classes, "textures": list(TEXTURES),
              "scales": list(SCALES), "size": SIZE, "source": redact_url(args.source), "module": "jobs.make_dataset"}
    if args.stamp is not None:
        recipe["stamp"] = {"class": args.stamp[0], "fraction": args.stamp[1], "pattern": "4x4 checkerboard",
                           "corner": "top-left", "stamped": marked}
    where.put_json("dataset.json", recipe)
    where.put("examples.png", image_grid(*examples))
    print(f"done in {time.perf_counter() - start:.1f} s: {redact_url(where.url)} (dataset.json, examples.png); train on "
          f"it with python -m jobs.train --source {redact_url(args.output)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.make_dataset", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
