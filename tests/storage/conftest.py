"""Small real datasets for storage tests: Fashion-MNIST images written as folders, Parquet and IDX."""

from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.fs import join, open_fs
from storage.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_arrays, open_source

N_IMAGES = 30


@pytest.fixture(scope="session")
def fmnist() -> tuple[np.ndarray, np.ndarray]:
    """The first N_IMAGES Fashion-MNIST test images (uint8 [N, 28, 28, 1]) and labels."""
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist")
    source = open_source("fashion-mnist")
    images, labels, _ = load_arrays(source, source.list()[:N_IMAGES])
    return images, labels


def png_bytes(image: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    from PIL import Image

    img = Image.fromarray(image[:, :, 0])
    if mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def put(url: str, storage_options: dict, data: bytes) -> None:
    fs, path = open_fs(url, storage_options)
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def write_folder(url: str, storage_options: dict, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """root/<class>/<i>.png for every image; returns the relative paths in sorted order."""
    rels = []
    for i, (image, label) in enumerate(zip(images, labels)):
        rel = f"{FASHION_MNIST_CLASSES[label].replace('/', '-')}/{i:03d}.png"
        put(join(url, rel), storage_options, png_bytes(image))
        rels.append(rel)
    return sorted(rels)


def write_parquet(url: str, storage_options: dict, images: np.ndarray, labels: np.ndarray, *,
                  row_group_size: int = 7, hf_struct: bool = False, sample_ids: bool = False,
                  corrupt_rows: tuple[int, ...] = ()) -> None:
    blobs = [b"\x89PNG not really" if i in corrupt_rows else png_bytes(im) for i, im in enumerate(images)]
    cols = {"label": pa.array(labels.astype(np.int64))}
    if hf_struct:
        cols["image"] = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)],
                                 pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        cols["image"] = pa.array(blobs, pa.binary())
    if sample_ids:
        cols["sample_id"] = pa.array([f"img-{i:04d}" for i in range(len(images))])
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, row_group_size=row_group_size)
    put(url, storage_options, buf.getvalue())


def write_idx(url: str, storage_options: dict, images: np.ndarray, labels: np.ndarray, prefix: str = "t10k",
              gz: bool = False) -> None:
    n, h, w = images.shape[:3]
    img = struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes()
    lab = struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes()
    ext = ".gz" if gz else ""
    put(join(url, f"{prefix}-images-idx3-ubyte{ext}"), storage_options, gzip.compress(img) if gz else img)
    put(join(url, f"{prefix}-labels-idx1-ubyte{ext}"), storage_options, gzip.compress(lab) if gz else lab)
