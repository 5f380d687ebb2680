"""Storage benchmark: MapStore writes against plain pyarrow, and float16+zstd map bytes.

1. Throughput: the same shards written through ``MapStore.write_shard`` (table building,
   deterministic Parquet settings, commit record; with and without zarr rows) and with a plain
   ``pq.write_table(table, ..., compression="zstd")`` of the same, prebuilt table, to a local
   directory and to S3 (SeaweedFS on loopback, started here). MB/s counts the float16 map
   bytes (N*H*W*2); the target ratio MapStore/plain is >= 0.8.
   The plain writer is timed two ways: straight to the filesystem (pyarrow streams through
   fsspec) and into memory followed by one PUT; the ratio uses the faster of the two.
2. Size: the maps as float16 Parquet (MapStore settings) against float32 Parquet + zstd
   (pyarrow's defaults, and MapStore's settings with float32), for maps of real Fashion-MNIST
   test images. No trained model ships with the project: by default a ResNet-8 is trained
   here for one short epoch on 12k training images (about 45 s on 2 cores); ``--no-train``
   uses the random initialisation instead. The output says which. Target <= 50 %.

3. Readers: one method's maps read into numpy [N, H, W] by pyarrow, the project's readers,
   pandas, polars, DuckDB, HF datasets, Ray Data and xarray, against pyarrow alone on the same
   files (``benchmarks/bench_readers.py``); target <= 1.5x.

4. Decode: large photo-like JPEGs (gradients, blobs and noise, Pillow quality 90) brought to a
   224 px model input (ImageNet's eval geometry: shorter side to 256, center 224), decoded in full
   and in draft mode (``SourcePolicy.decode_size``, as the workers decode), side by side: time per
   image (best of ``--repeats``), the decoded size, how far the model input moves (mean |delta| in
   gray levels), and the peak memory of one decode (a fresh process per case: its peak RSS above
   its RSS before the decode). Then the peak memory of one full decode per format and mode, in
   bytes per pixel, at the largest side: what ``DEFAULT_MAX_IMAGE_PIXELS`` is sized by.

Run: ``python benchmarks/bench_storage.py [--n 4096] [--shard-size 512] [--no-train] [--no-s3] [--no-readers]
[--decode-sides 2000 3000 4000] [--only-decode]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import MapRecords, MapStore, load_arrays, open_source  # noqa: E402
from storage.io.fs import join, open_fs  # noqa: E402
from storage.maps.tables import parquet_bytes  # noqa: E402

#: The details every method with a model reports (attribution.MODEL_DETAILS), as the job stores them.
DETAIL_TYPES = {"target": "int64", "predicted": "int64", "logit": "float64"}


def compute_maps(n: int, methods: list[str], train: bool) -> tuple[dict[str, MapRecords], dict[str, np.ndarray], str]:
    """Maps of the first ``n`` Fashion-MNIST test images per method: records and the float32 maps."""
    import attribution
    from models.preprocess import preprocess
    from models.registry import build_model, fashion_mnist_spec
    from models.training import train_classifier

    source = open_source("fashion-mnist")
    images, labels, ids = load_arrays(source, source.list()[:n])
    spec = fashion_mnist_spec()
    torch.manual_seed(0)
    if train:
        train_source = open_source("fashion-mnist", split="train")
        train_images, train_labels, _ = load_arrays(train_source, train_source.list()[:12_000])
        model, info = train_classifier(spec, train_images, train_labels, epochs=1, device="cpu", progress=False,
                                       test_images=images, test_labels=labels)
        origin = (f"ResNet-8 trained here for 1 epoch on 12k train images (test accuracy "
                  f"{info['test_accuracy']:.1%} on these {n}; {info['seconds']:.0f} s)")
    else:
        origin = "random-init ResNet-8 (seed 0; no trained model)"
    model = model.eval() if train else build_model(spec).eval()
    out, raw = {}, {}
    for method in methods:
        explainer = attribution.get(method, model)
        chunks, targets = [], []
        for start in range(0, n, 256):
            x = preprocess(spec, images[start:start + 256])
            with torch.no_grad():
                target = model(x).argmax(1)
            chunks.append(attribution.reduce_map(explainer.attribute(x, target, sample_ids=ids[start:start + 256])))
            targets.append(target)
        target = torch.cat(targets).numpy()
        raw[method] = torch.cat(chunks).detach().numpy().astype(np.float32)
        details = {"target": target, "predicted": target, "logit": np.zeros(n)}
        out[method] = MapRecords(ids, labels, raw[method], params=explainer.params, details=details,
                                 detail_types=DETAIL_TYPES)
    return out, raw, origin + " on real Fashion-MNIST test images"


def float32_bytes(records: MapRecords, maps32: np.ndarray, mapstore_settings: bool) -> int:
    """Parquet bytes of the same table with a float32 map column."""
    table = records.to_table("m", "s")
    tensor32 = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(maps32, dtype=np.float32))
    table = table.set_column(table.schema.get_field_index("map"), "map", tensor32)
    if mapstore_settings:
        return len(parquet_bytes(table))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return len(buf.getvalue())


def with_maps(records: MapRecords, maps: np.ndarray, rows: slice = slice(None)) -> MapRecords:
    """``records``' rows ``rows`` with other maps (a shard, or upsampled maps)."""
    return MapRecords(records.sample_ids[rows], records.labels[rows], maps, params=records.params,
                      details={k: v[rows] for k, v in records.details.items()}, detail_types=records.detail_types)


def shards_of(records: MapRecords, size: int) -> list[MapRecords]:
    out = []
    for s in range(0, len(records), size):
        sl = slice(s, s + size)
        out.append(with_maps(records, records.maps[sl], sl))
    return out


def time_writes(url: str, options: dict, shards: list[MapRecords], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds to write all shards, per way of writing."""
    fs, root = open_fs(url, options)
    n, h, w = sum(len(s) for s in shards), *shards[0].shape
    tables = [s.to_table("m", f"s{k:05d}") for k, s in enumerate(shards)]
    best = {"plain to fs": np.inf, "plain via memory": np.inf, "MapStore": np.inf, "MapStore + zarr": np.inf}
    for r in range(repeats):
        base = join(url, f"r{r}-{uuid.uuid4().hex[:6]}")
        _, plain_root = open_fs(join(base, "plain"), options)
        fs.makedirs(plain_root, exist_ok=True)
        t = time.perf_counter()
        for k, table in enumerate(tables):
            pq.write_table(table, join(plain_root, f"s{k:05d}.parquet"), filesystem=fs, compression="zstd")
        best["plain to fs"] = min(best["plain to fs"], time.perf_counter() - t)
        t = time.perf_counter()
        for k, table in enumerate(tables):
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            fs.pipe_file(join(plain_root, f"m{k:05d}.parquet"), buf.getvalue())
        best["plain via memory"] = min(best["plain via memory"], time.perf_counter() - t)
        store = MapStore(join(base, "store"), options)
        t = time.perf_counter()
        for k, s in enumerate(shards):
            store.write_shard(f"s{k:05d}", None, "m", s)
        best["MapStore"] = min(best["MapStore"], time.perf_counter() - t)
        zstore = MapStore(join(base, "zstore"), options)
        zstore.ensure_zarr("m", n, (h, w), len(shards[0]))
        t = time.perf_counter()
        for k, s in enumerate(shards):
            zstore.write_shard(f"s{k:05d}", k, "m", s)
        best["MapStore + zarr"] = min(best["MapStore + zarr"], time.perf_counter() - t)
    return best


def upsample(records: MapRecords, size: int) -> MapRecords:
    maps = torch.nn.functional.interpolate(torch.from_numpy(records.maps.astype(np.float32))[:, None], size=(size, size),
                                           mode="bilinear", align_corners=False)[:, 0].numpy()
    return with_maps(records, maps)


@contextlib.contextmanager
def storage_targets(tmp: Path, prefix: str, s3: bool = True) -> Iterator[list[tuple[str, str, dict]]]:
    """The benchmarks' stores as (name, URL, storage options): a local directory and, with ``s3``, a
    prefix on a SeaweedFS server started here on loopback and stopped when the block ends."""
    targets = [("local", str(tmp / prefix), {})]
    with contextlib.ExitStack() as stack:
        if s3:
            from tests.servers import seaweedfs

            server = stack.enter_context(seaweedfs(tmp / "seaweedfs"))
            targets.append(("s3 (SeaweedFS, loopback)", server.url(prefix), server.storage_options))
        yield targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="maps (Fashion-MNIST test images)")
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--large", type=int, default=224, help="also time maps upsampled to this size (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS run")
    parser.add_argument("--no-readers", dest="readers", action="store_false",
                        help="skip timing the readers (benchmarks/bench_readers.py)")
    parser.add_argument("--no-train", action="store_true", help="maps of a random-init model (skips ~45 s)")
    parser.add_argument("--decode-sides", type=int, nargs="*", default=[2000, 3000, 4000],
                        help="long sides of the JPEGs the decode part times (none: skip it)")
    parser.add_argument("--only-decode", action="store_true", help="run the decode part alone")
    args = parser.parse_args()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"pyarrow {pa.__version__}")
    if args.decode_sides:
        time_decodes(args.decode_sides, args.repeats)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.only_decode:
        return

    t = time.perf_counter()
    maps, raw, origin = compute_maps(args.n, ["gradient", "pathway"], train=not args.no_train)
    print(f"maps: {args.n} x 28x28 per method from {origin} ({time.perf_counter() - t:.1f} s)\n")

    print("== bytes: float16 Parquet (MapStore: zstd-3, no dictionary) vs float32 Parquet ==")
    for method, rec in maps.items():
        f16 = len(parquet_bytes(rec.to_table(method, "all")))
        f32 = float32_bytes(rec, raw[method], mapstore_settings=False)
        f32_same = float32_bytes(rec, raw[method], mapstore_settings=True)
        print(f"{method:>10}: float16 {f16 / 1e6:6.3f} MB; float32 (pyarrow zstd defaults) {f32 / 1e6:6.3f} MB "
              f"-> {f16 / f32:5.1%}; float32 (MapStore settings) {f32_same / 1e6:6.3f} MB -> {f16 / f32_same:5.1%} "
              f"(target <= 50%); raw float32 {raw[method].nbytes / 1e6:.3f} MB, zero values "
              f"{np.mean(raw[method] == 0):.0%}")
        if method != "gradient" and "gradient" in raw:
            print(f"{'':>10}  max |{method} - gradient| = {np.abs(raw[method] - raw['gradient']).max():.3g}")

    cases = [("28x28", maps["pathway"])]
    if args.large:
        n_large = max(args.shard_size, min(args.n, 1024))
        small = shards_of(maps["pathway"], n_large)[0]
        cases.append((f"{args.large}x{args.large}", upsample(small, args.large)))

    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    with storage_targets(tmp, "bench", not args.no_s3) as targets:
        print("\n== write throughput (MB/s of float16 maps; best of %d) ==" % args.repeats)
        for label, rec in cases:
            shards = shards_of(rec, args.shard_size)
            mb = rec.maps.nbytes / 1e6
            for name, url, options in targets:
                best = time_writes(join(url, label), options, shards, args.repeats)
                plain = mb / min(best["plain to fs"], best["plain via memory"])
                row = ", ".join(f"{k} {mb / v:7.1f}" for k, v in best.items())
                print(f"{label:>8} {name:>26}: {len(shards)} shards x {args.shard_size}: {row}; "
                      f"ratio MapStore/plain {mb / best['MapStore'] / plain:.2f} "
                      f"(+zarr {mb / best['MapStore + zarr'] / plain:.2f}) (target >= 0.8)")
        if args.readers:
            from benchmarks.bench_readers import write_and_time  # starts Ray around the Ray Data reader

            for name, url, options in targets:
                write_and_time(name, join(url, "readers"), options, "pathway", maps["pathway"], args.shard_size,
                               args.repeats)


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like RGB JPEG (quality 90): gradients, soft blobs and sensor-like noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 160.0
    blobs = np.asarray(Image.fromarray(rng.integers(0, 255, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8))
                       .resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    rgb += blobs * 0.35 + rng.normal(0.0, 10.0, rgb.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


DECODE_PEAK = """
import json, sys
sys.path.insert(0, sys.argv[3])
from storage.sources.images import decode_image
from storage.sources.policy import SourcePolicy

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

data = open(sys.argv[1], "rb").read()
size = json.loads(sys.argv[2])
policy = SourcePolicy(max_image_pixels=10**9, decode_size=tuple(size) if size else None)
import io
from PIL import Image
warm = io.BytesIO()
Image.new("RGB", (16, 16)).save(warm, format="JPEG")
decode_image(warm.getvalue(), policy)  # Pillow's plugins imported before the peak restarts
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts here
before = status("VmRSS:")
image = decode_image(data, policy)
print(json.dumps({"peak": status("VmHWM:") - before, "shape": list(image.shape)}))
"""


def decode_peak(path: str, size: tuple[int, int] | None) -> int:
    """Peak RSS (bytes) one decode of the file at ``path`` adds to a fresh process."""
    import json
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", DECODE_PEAK, path, json.dumps(size), root], capture_output=True,
                         text=True, check=True, timeout=600)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def time_decodes(sides: list[int], repeats: int) -> None:
    """Part 4 of the module docstring: full decode against draft mode, to a 224 px model input."""
    from models.preprocess import decode_size, prepare
    from models.registry import imagenet_spec
    from storage.sources.images import decode_image
    from storage.sources.policy import SourcePolicy

    spec = imagenet_spec("resnet50")
    torch.set_num_threads(1)  # one image at a time, as a worker's decode thread; the resize on one core too
    full = SourcePolicy(max_image_pixels=10**9)
    draft = dataclasses.replace(full, decode_size=decode_size(spec))
    print(f"\n== decode: photo-like JPEGs (quality 90) to {spec.input_size[0]} px ({spec.resize}, shorter side "
          f"{spec.resize_size}); full decode vs draft mode; best of {repeats} ==")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for side in sides:
            width, height = side, side * 3 // 4
            data = photo_jpeg(width, height)
            path = os.path.join(tmp, f"{side}.jpg")
            Path(path).write_bytes(data)
            row, inputs = [], {}
            for name, policy in (("full", full), ("draft", draft)):
                decode, total = float("inf"), float("inf")
                for _ in range(repeats):
                    t = time.perf_counter()
                    image = decode_image(data, policy)
                    t_decoded = time.perf_counter()
                    x = prepare(spec, [image], "cpu")
                    decode, total = min(decode, t_decoded - t), min(total, time.perf_counter() - t)
                inputs[name] = x
                peak = decode_peak(path, policy.decode_size)
                row.append(f"{name}: decode {decode * 1e3:6.1f} ms, to the input {total * 1e3:6.1f} ms "
                           f"({image.shape[1]}x{image.shape[0]}, peak {peak / 1e6:5.1f} MB)")
            delta = float((inputs["full"] - inputs["draft"]).abs().mean() * 255)
            print(f"{width}x{height} ({len(data) / 1e6:.2f} MB): {'; '.join(row)}; "
                  f"input mean |delta| {delta:.2f} gray levels")
        width, height = max(sides), max(sides) * 3 // 4
        print(f"\n== peak memory of one decode, {width}x{height}, bytes per pixel of the declared size ==")
        for name, data in formats_of(width, height):
            path = os.path.join(tmp, "format")
            Path(path).write_bytes(data)
            full_peak, draft_peak = decode_peak(path, None), decode_peak(path, draft.decode_size)
            print(f"{name:>28}: full {full_peak / (width * height):5.1f}, drafted to {spec.resize_size} px "
                  f"{draft_peak / (width * height):5.1f} ({len(data) / 1e6:.1f} MB file)")


def formats_of(width: int, height: int) -> Iterator[tuple[str, bytes]]:
    """The photo of part 4 in the formats and modes whose decodes cost the most memory."""
    from PIL import Image

    with Image.open(io.BytesIO(photo_jpeg(width, height))) as img:
        rgb = img.convert("RGB")
    gray = np.asarray(rgb.convert("L"))
    cases = [("PNG L", rgb.convert("L"), "PNG", {}), ("PNG RGB", rgb, "PNG", {}),
             ("PNG RGBA", rgb.convert("RGBA"), "PNG", {}),
             ("PNG 16-bit gray", Image.fromarray(gray.astype(np.uint16) * 257), "PNG", {}),
             ("TIFF float", Image.fromarray(gray.astype(np.float32) / 255), "TIFF", {}),
             ("JPEG baseline 4:2:0", rgb, "JPEG", {"quality": 90}),
             ("JPEG progressive 4:2:0", rgb, "JPEG", {"quality": 90, "progressive": True}),
             ("JPEG progressive 4:4:4", rgb, "JPEG", {"quality": 90, "progressive": True, "subsampling": 0})]
    for name, image, fmt, params in cases:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **({"compress_level": 1} if fmt == "PNG" else params))
        yield name, buf.getvalue()


if __name__ == "__main__":
    main()
