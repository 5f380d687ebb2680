"""Images are untrusted: decoding is bounded by the operator's ``--max-image-pixels``, read from the
header before any pixel is decoded, on every source's decode path; and no error row holds bytes of a
file (issue #24, storage.sources.images).

The bomb is a valid 18 KB PNG that declares 12000 x 12000 pixels: decoded in full it costs hundreds of
MB (a batch of them exhausts a worker, and its shard failed the job).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.sources import Sample, SampleError, SourcePolicy, open_source
from tests.helpers import fashion_mnist, png_bomb, png_bytes, put, tar_bytes, write_folder, write_index
from tests.ray_cluster import ROOT

BOMB = 12000
PASSWD = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
QUIET = ["--in-process", "--no-progress", "--shard-size", "8"]


def sources_with(tmp: str, bad: bytes) -> dict[str, str]:
    """One source of every kind that decodes files (IDX decodes none), each holding two good PNGs and
    ``bad`` as the third sample; returns {kind: URL}."""
    images, _ = fashion_mnist("test", 2)
    blobs = [png_bytes(images[0]), png_bytes(images[1]), bad]
    names = ["a.png", "b.png", "c.png"]
    urls = {}
    for rel, data in zip(names, blobs):
        put(os.path.join(tmp, "folder", "Bag", rel), None, data)
        put(os.path.join(tmp, "index", "img", rel), None, data)
        put(os.path.join(tmp, "labeled", rel), None, data)
    urls["folder"] = os.path.join(tmp, "folder")
    write_index(os.path.join(tmp, "index", "val.csv"), None, [{"path": f"img/{n}", "label": "Bag"} for n in names])
    urls["index"] = os.path.join(tmp, "index", "val.csv")
    write_index(os.path.join(tmp, "labeled", "labels.csv"), None, [{"file": n, "label": "Bag"} for n in names])
    urls["labeled-folder"] = os.path.join(tmp, "labeled")
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array([8, 8, 8], pa.int64())}), buf)
    put(os.path.join(tmp, "parquet", "test-0000.parquet"), None, buf.getvalue())
    urls["parquet"] = os.path.join(tmp, "parquet")
    members = []
    for i, data in enumerate(blobs):
        members += [(f"s{i}.png", data), (f"s{i}.cls", b"8")]
    put(os.path.join(tmp, "wds", "test-0000.tar"), None, tar_bytes(members))
    urls["webdataset"] = os.path.join(tmp, "wds")
    return urls


def read_all(url: str, kind: str, policy: SourcePolicy | None = None) -> list[Sample | SampleError]:
    source = open_source(url, kind=kind, policy=policy)
    return list(source.read(source.list()))


@pytest.mark.parametrize("kind", ["folder", "index", "labeled-folder", "parquet", "webdataset"])
def test_every_source_refuses_a_bomb_as_a_too_large_row(kind, tmp_path):
    url = sources_with(str(tmp_path), png_bomb(BOMB, BOMB))[kind]
    items = read_all(url, kind)
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "SampleError"]
    row = items[2]
    assert row.kind == "too-large"
    assert "image is 12000x12000 (144,000,000 pixels), above --max-image-pixels 40,000,000; raise it to map " \
           "this image" in row.reason


@pytest.mark.parametrize("kind", ["folder", "parquet", "webdataset"])
def test_the_operators_cap_is_what_every_source_decodes_under(kind, tmp_path):
    url = sources_with(str(tmp_path), png_bomb(3000, 3000))[kind]
    refused = read_all(url, kind, SourcePolicy(max_image_pixels=1_000_000))[2]
    assert isinstance(refused, SampleError) and refused.kind == "too-large" and "1,000,000" in refused.reason
    admitted = read_all(url, kind, SourcePolicy(max_image_pixels=10_000_000))[2]
    assert isinstance(admitted, Sample) and admitted.image.shape == (3000, 3000, 1)


@pytest.mark.parametrize("kind", ["folder", "index", "parquet", "webdataset"])
def test_a_row_for_a_file_that_is_not_an_image_holds_none_of_its_bytes(kind, tmp_path):
    row = read_all(sources_with(str(tmp_path), PASSWD)[kind], kind)[2]
    assert isinstance(row, SampleError) and row.kind == "decode"
    assert "not an image format Pillow can read (tried " in row.reason
    assert "root:" not in row.reason and "x:0" not in row.reason and "bin/bash" not in row.reason


PEAK = """
import json, resource, sys
from storage.sources.base import decoded_sample
from storage.sources.policy import SourcePolicy
from tests.helpers import png_bomb

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

side, cap = int(sys.argv[1]), int(sys.argv[2])
data = png_bomb(side, side)
decoded_sample("warm", png_bomb(64, 64), 0, "warm.png", policy=SourcePolicy())  # Pillow's plugins imported
try:  # the peak restarts from here (Linux 4.0+), so pages the imports touched and the kernel reclaimed do not count
    open("/proc/self/clear_refs", "w").write("5")
    peak = lambda: status("VmHWM:")
except OSError:
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = status("VmRSS:")
row = decoded_sample("bomb", data, 0, "bomb.png", policy=SourcePolicy(max_image_pixels=cap))
print(json.dumps({"grew": peak() - before, "kind": getattr(row, "kind", "sample")}))
"""


def peak_growth(side: int, cap: int) -> dict:
    """How far a fresh process's peak RSS rose above its RSS while it decoded a ``side`` px bomb (an
    upper bound on what the decode allocated)."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(side), str(cap)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_refusing_a_bomb_allocates_nothing_image_sized():
    """Refused from its header, the bomb costs the process almost nothing; admitted (the operator
    raised the cap), the same file takes hundreds of MB, which shows the measurement sees a decode."""
    refused = peak_growth(BOMB, 40_000_000)
    assert refused["kind"] == "too-large" and refused["grew"] < 20_000_000, refused
    admitted = peak_growth(BOMB, 200_000_000)
    assert admitted["kind"] == "sample" and admitted["grew"] > 144_000_000, admitted  # one byte a pixel at least


# -- a real job (its shards in the test's process: --in-process) ------------------------------------

@pytest.mark.slow
def test_a_job_maps_the_good_images_and_records_the_bomb(checkpoint, tmp_path):
    """jobs.attribute over a folder holding a 12000 px bomb, a 3000 px one and a passwd file among 12
    good images: the job completes, the good maps are committed, the bombs are too-large rows under the
    cap, and raising --max-image-pixels admits the smaller bomb."""
    from jobs import attribute
    from storage.maps.reader import read_errors, read_maps, read_run

    src = str(tmp_path / "src")
    images, labels = fashion_mnist("test", 12)
    good = write_folder(src, None, images, labels, extra={"Bag/bomb.png": png_bomb(BOMB, BOMB),
                                                          "Bag/large.png": png_bomb(3000, 3000),
                                                          "Coat/passwd.png": PASSWD})
    good = [g for g in good if g not in ("Bag/bomb.png", "Bag/large.png", "Coat/passwd.png")]
    runs = {}
    for cap in (1_000_000, 10_000_000):
        out = str(tmp_path / f"maps-{cap}")
        assert attribute.main(["--source", src, "--checkpoint", checkpoint, "--output", out, "--methods", "gradient",
                               "--max-image-pixels", str(cap), *QUIET]) == 0
        runs[cap] = (read_maps(out, "gradient"), read_errors(out, "gradient"), read_run(out))

    maps, errors, run = runs[1_000_000]
    assert sorted(maps.sample_id) == sorted(good) and run["status"] == "complete"
    assert all(np.isfinite(m).all() for m in maps["map"])
    by_id = {r["sample_id"]: r for r in errors.to_dict("records")}
    assert sorted(by_id) == ["Bag/bomb.png", "Bag/large.png", "Coat/passwd.png"]
    assert by_id["Bag/bomb.png"]["kind"] == by_id["Bag/large.png"]["kind"] == "too-large"
    assert "image is 12000x12000 (144,000,000 pixels), above --max-image-pixels 1,000,000; raise it" \
           in by_id["Bag/bomb.png"]["reason"]
    assert "3000x3000 (9,000,000 pixels)" in by_id["Bag/large.png"]["reason"]
    passwd = by_id["Coat/passwd.png"]
    assert passwd["kind"] == "decode" and not any(b in passwd["reason"] for b in ("root:", "x:0", "bin/bash"))
    assert run["errors_by_kind"] == {"decode": 1, "too-large": 2}

    maps, errors, run = runs[10_000_000]
    assert sorted(maps.sample_id) == sorted(good + ["Bag/large.png"])
    assert dict(zip(errors.sample_id, errors.kind)) == {"Bag/bomb.png": "too-large", "Coat/passwd.png": "decode"}
    assert run["errors_by_kind"] == {"decode": 1, "too-large": 1}
