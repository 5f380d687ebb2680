"""Helpers shared by test modules (fixtures live in the conftest files).

Real data only: Fashion-MNIST from the Debian package, written out as the formats users have
(image folders, Parquet of encoded images, IDX), and a small ResNet-8 trained on it.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage.io.fs import join, open_fs
from storage.io.location import put_url
from storage.maps.writer import MapRecords

# --------------------------------------------------------------------------- data

#: How many Fashion-MNIST test images the ``fmnist`` fixture holds.
N_IMAGES = 30


def fashion_mnist(split: str, count: int | None = None, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images [N, 28, 28, 1] and labels of the split from ``start`` (all without count)."""
    from storage.sources import load_arrays, open_source

    source = open_source("fashion-mnist", split=split)
    refs = source.list()
    images, labels, _ = load_arrays(source, refs[start:] if count is None else refs[start:start + count])
    return images, labels


def png_bytes(image: np.ndarray, mode: str = "L", fmt: str = "PNG", size: int | None = None) -> bytes:
    """A [H, W, 1] uint8 image encoded as ``fmt``, resized to ``size`` x ``size`` (bilinear) and converted to
    Pillow ``mode`` first; mode "I;16" scales to 16 bits (x 257), "LA" / "RGBA" get a half-transparent left half."""
    from PIL import Image

    img = Image.fromarray(image[:, :, 0])
    if size is not None:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    elif mode in ("LA", "RGBA"):
        img = img.convert(mode)
        alpha = np.full(img.size[::-1], 255, np.uint8)
        alpha[:, : img.size[0] // 2] = 128
        img.putalpha(Image.fromarray(alpha))
    elif mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def put(url: str, storage_options: dict | None, data: bytes) -> None:
    """``data`` at ``url`` (parent folders made on local disk)."""
    put_url(url, data, storage_options)


def write_folder(url: str, storage_options: dict | None, images: np.ndarray, labels: np.ndarray, first: int = 0,
                 extra: dict[str, bytes] | None = None) -> list[str]:
    """``url/<class>/<first+i:05d>.png`` for every image, plus ``extra`` {relative path: bytes}; returns the
    relative paths in sorted order."""
    from storage.sources import FASHION_MNIST_CLASSES

    files = {f"{FASHION_MNIST_CLASSES[int(y)].replace('/', '-')}/{first + i:05d}.png": png_bytes(im)
             for i, (im, y) in enumerate(zip(images, labels))}
    files.update(extra or {})
    for rel, data in files.items():
        put(join(url, rel), storage_options, data)
    return sorted(files)


def write_parquet(url: str, storage_options: dict | None, images: np.ndarray, labels: np.ndarray, *,
                  row_group_size: int = 7, hf_struct: bool = False, sample_ids: bool = False,
                  corrupt_rows: tuple[int, ...] = ()) -> None:
    """A Parquet file of PNG-encoded images and labels (as a Hugging Face export when ``hf_struct``)."""
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


def write_idx(url: str, storage_options: dict | None, images: np.ndarray, labels: np.ndarray, prefix: str = "t10k",
              gz: bool = False) -> None:
    """The two IDX files of a split, as the Fashion-MNIST distribution ships them."""
    n, h, w = images.shape[:3]
    img = struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes()
    lab = struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes()
    ext = ".gz" if gz else ""
    put(join(url, f"{prefix}-images-idx3-ubyte{ext}"), storage_options, gzip.compress(img) if gz else img)
    put(join(url, f"{prefix}-labels-idx1-ubyte{ext}"), storage_options, gzip.compress(lab) if gz else lab)


# --------------------------------------------------------------------------- map datasets

MAP_SHAPE = (6, 5)
#: Every kind of detail a method can declare (attribution.Detail), as the sink stores them.
DETAIL_TYPES = {"target": "int64", "predicted": "int64", "logit": "float64", "kept_fraction": "float64",
                "threshold": "list<float64>", "prediction_kept": "bool"}


def map_records(ids: list[str], seed: int = 0) -> MapRecords:
    """A shard of maps of ``ids`` (random, seeded) with every kind of detail."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    details = {"target": np.arange(n) % 3, "predicted": (np.arange(n) + 1) % 3, "logit": np.arange(n, dtype=float),
               "kept_fraction": np.linspace(0.2, 0.4, n), "threshold": rng.random((n, 3)),
               "prediction_kept": np.arange(n) % 2 == 0}
    return MapRecords(ids, labels=np.arange(n) % 3, maps=rng.normal(size=(n, *MAP_SHAPE)).astype(np.float32),
                      params={"p": 70, "score": "taylor"}, details=details, detail_types=DETAIL_TYPES)


def every_file(url: str, options: dict | None = None) -> dict[str, bytes]:
    """Every file under ``url`` (local or s3://), as relative path -> bytes."""
    fs, root = open_fs(url, options or None)
    root = root.rstrip("/")
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


def chunks(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------- torch

#: How many times this test process trained a tiny checkpoint (reported at the end of the session).
TRAININGS = 0

#: Where trained tiny checkpoints are kept between test runs (git ignores /.cache/).
CHECKPOINT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tests" / "checkpoints"

#: What a tiny checkpoint is made from: a change to any of these trains it again.
_TRAINING_SOURCES = ("models", "storage/checkpoints.py", "storage/sources")


def one_thread() -> Iterator[None]:
    """Body of the autouse fixtures of test packages with tiny models: one intra-op thread, since
    idle OpenMP threads spinning against other processes make each small op ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint_key(n: int, epochs: int, lr: float) -> str:
    """A digest of everything the tiny checkpoint depends on: the training, model and data-loading code,
    this file, the library versions, the CPU kernels asked for and the data set's files."""
    import hashlib

    from storage.sources import FASHION_MNIST_DIR

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"n={n};epochs={epochs};lr={lr};torch={torch.__version__};numpy={np.__version__};"
                            f"aten={os.environ.get('ATEN_CPU_CAPABILITY', '')}".encode())
    files = [Path(__file__)]
    for name in _TRAINING_SOURCES:
        path = root / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for path in sorted(Path(FASHION_MNIST_DIR).glob("*")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def made_once(done: Path, make: Callable[[], None]) -> None:
    """``make()`` unless ``done`` exists, under a lock beside it (``<done>.lock``), so that test processes
    running at once (pytest-xdist workers, two checkouts) make it once; ``make`` creates ``done`` last."""
    done.parent.mkdir(parents=True, exist_ok=True)
    with open(done.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            make()


def tiny_checkpoint(directory: Path, n: int = 1000, epochs: int = 1, lr: float = 0.05) -> str:
    """A resnet8 trained for ``epochs`` on the first ``n`` Fashion-MNIST train images (seeded, batches of 100,
    SGD at ``lr``), copied into ``directory``.

    Trained once per content (see :func:`_checkpoint_key`) and kept under .cache/, so a second test run
    trains nothing; each caller gets its own copy, so no test can change another's model."""
    cached = CHECKPOINT_CACHE / f"resnet8-tiny-n{n}-e{epochs}-{_checkpoint_key(n, epochs, lr)}.pt"
    made_once(cached, lambda: _train_tiny(cached, n, epochs, lr))
    path = Path(directory) / "resnet8-tiny.pt"
    shutil.copyfile(cached, path)
    return str(path)


def _train_tiny(cached: Path, n: int, epochs: int, lr: float) -> None:
    """Train the tiny checkpoint and write it to ``cached`` (under the lock its caller holds)."""
    global TRAININGS
    from models import fashion_mnist_spec
    from models.training import train_classifier
    from storage.checkpoints import save_checkpoint

    images, labels = fashion_mnist("train", n)
    model, _metrics = train_classifier(fashion_mnist_spec(), images, labels, epochs=epochs, batch_size=100,
                                       lr=lr, seed=0, device="cpu", progress=False, num_threads=1)
    TRAININGS += 1
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    save_checkpoint(str(partial), model.cpu(), fashion_mnist_spec())
    os.replace(partial, cached)  # whole or absent, should a run be killed while it writes


def botocore_attempts(storage_options: dict, attempts: int) -> dict:
    """``storage_options`` with botocore trying each request at most ``attempts`` times (s3fs still repeats a
    throttled one a few times): one, and a test of the job's retry budget (storage.io.retry) waits for that
    budget rather than for botocore's backoff under each of its attempts; two, and a test of faults at a
    high rate sees the job's retries at work without waiting as long."""
    return storage_options | {"config_kwargs": {"retries": {"total_max_attempts": attempts}}}


def class_dir(label: int) -> str:
    """A Fashion-MNIST class name as people name folders: ``T-shirt_top``, ``Ankle_boot``."""
    from storage.sources import FASHION_MNIST_CLASSES

    return FASHION_MNIST_CLASSES[int(label)].replace("/", "_").replace(" ", "_")


def write_index(url: str, storage_options: dict | None, rows: list[dict]) -> None:
    """An index file at ``url``: CSV (header from the first row) or JSONL, by its extension."""
    import csv
    import json

    if url.endswith((".jsonl", ".ndjson")):
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t" if url.endswith(".tsv") else ",")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    put(url, storage_options, text.encode())


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of ``(name, data)`` members, in that order (fixed mtime)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` black pixels, compressed as far as zlib goes
    (12000 x 12000 is about 18 KB): written row by row, so making it allocates nothing image-sized."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row, parts = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
