"""Dataset sources on local disk and S3, built from real Fashion-MNIST images."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage.io.fs import StorageError, join
from storage.sources import (FASHION_MNIST_CLASSES, IDXSource, ImageFolderSource, ParquetSource, Sample, SampleError,
                             SampleRef, load_arrays, open_source)
from tests.helpers import N_IMAGES, chunks, png_bytes, put, write_folder, write_idx, write_parquet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_fashion_mnist_alias(fmnist):
    source = open_source("fashion-mnist")
    refs = source.list()
    assert len(refs) == 10_000 and refs[42] == SampleRef("fashion-mnist/test/00042", 42)
    assert source.classes == list(FASHION_MNIST_CLASSES)
    train = open_source("fashion-mnist", split="train")
    assert len(train.list()) == 60_000 and train.list()[-1].sample_id == "fashion-mnist/train/59999"
    assert len(open_source("fashion-mnist", split="t10k").list()) == 10_000
    images, labels, ids = load_arrays(source, refs[:N_IMAGES])
    assert images.shape == (N_IMAGES, 28, 28, 1) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert ids == [r.sample_id for r in refs[:N_IMAGES]]
    assert labels[:3].tolist() == [9, 2, 1]  # the published first test labels: Ankle boot, Pullover, Trouser


def test_fashion_mnist_missing_names_the_package(monkeypatch, tmp_path):
    import storage.sources as sources

    monkeypatch.setitem(sources._ALIASES, "fashion-mnist", str(tmp_path / "absent"))
    with pytest.raises(StorageError, match="apt-get install dataset-fashion-mnist"):
        open_source("fashion-mnist")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(storage_root, fmnist, gz):
    url, options = storage_root
    images, labels = fmnist
    write_idx(join(url, "fashion-copy"), options, images[..., 0], labels, gz=gz)
    source = open_source(join(url, "fashion-copy"), storage_options=options)
    assert isinstance(source, IDXSource) and source.classes == list(FASHION_MNIST_CLASSES)
    shards = chunks(source.list(), 8)
    assert [len(s) for s in shards] == [8, 8, 8, 6]
    got = list(source.read(shards[2]))
    assert [s.sample_id for s in got] == [f"fashion-copy/test/{i:05d}" for i in range(16, 24)]
    np.testing.assert_array_equal(np.stack([s.image for s in got]), images[16:24])
    assert [s.label for s in got] == labels[16:24].tolist()


def test_idx_shard_reads_only_its_bytes(tmp_path, fmnist):
    """An uncompressed IDX shard is read by offset: a file cut after shard 0 still serves shard 0."""
    images, labels = fmnist
    write_idx(str(tmp_path), {}, images[..., 0], labels)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:16 + 10 * 28 * 28])
    source = open_source(str(tmp_path))
    first = list(source.read(chunks(source.list(), 10)[0]))
    assert all(isinstance(s, Sample) for s in first)
    with pytest.raises(StorageError, match="truncated IDX"):
        list(source.read(chunks(source.list(), 10)[1]))


def test_image_folder_round_trip(storage_root, fmnist):
    url, options = storage_root
    images, labels = fmnist
    rels = write_folder(url, options, images, labels)
    source = open_source(url, storage_options=options)
    assert isinstance(source, ImageFolderSource)
    assert source.classes == sorted({FASHION_MNIST_CLASSES[k].replace("/", "-") for k in labels})
    refs = source.list()
    assert [r.sample_id for r in refs] == rels
    by_id = {f"{FASHION_MNIST_CLASSES[k].replace('/', '-')}/{i:05d}.png": i for i, k in enumerate(labels)}
    for shard in chunks(source.list(), 7):
        for sample in source.read(shard):
            i = by_id[sample.sample_id]
            np.testing.assert_array_equal(sample.image, images[i])
            assert source.classes[sample.label] == FASHION_MNIST_CLASSES[labels[i]].replace("/", "-")
    # an equal Source (refs through JSON, as the driver's plan stores them) reads the same
    again = open_source(url, storage_options=options)
    plan = json.loads(json.dumps([[r.sample_id, r.locator] for r in refs[5:9]]))
    assert [s.sample_id for s in again.read([SampleRef(*p) for p in plan])] == rels[5:9]


def test_image_folder_modes_splits_and_corrupt(storage_root, fmnist):
    url, options = storage_root
    images, _ = fmnist
    for split in ("train", "test"):
        put(join(url, split, "a", "gray.png"), options, png_bytes(images[0]))
        put(join(url, split, "a", "rgb.jpg"), options, png_bytes(images[1], "RGB", "JPEG"))
        put(join(url, split, "b", "palette.png"), options, png_bytes(images[2], "P"))
        put(join(url, split, "b", "rgba.png"), options, png_bytes(images[3], "RGBA"))
        put(join(url, split, "b", "broken.png"), options, png_bytes(images[4])[:60])
        put(join(url, split, "b", "notes.txt"), options, b"not an image")
    source = open_source(url, storage_options=options, split="test")
    assert source.url.endswith("/test") and source.classes == ["a", "b"]
    out = {s.sample_id: s for s in source.read(source.list())}
    assert sorted(out) == ["a/gray.png", "a/rgb.jpg", "b/broken.png", "b/palette.png", "b/rgba.png"]
    assert out["a/gray.png"].image.shape == (28, 28, 1)
    np.testing.assert_array_equal(out["a/gray.png"].image, images[0])
    assert out["a/rgb.jpg"].image.shape == (28, 28, 3) and out["a/rgb.jpg"].label == 0
    assert out["b/palette.png"].image.shape == (28, 28, 3) and out["b/rgba.png"].image.shape == (28, 28, 4)
    np.testing.assert_array_equal(out["b/rgba.png"].image[..., 0], images[3][..., 0])
    assert (out["b/rgba.png"].image[:, :14, 3] == 128).all() and (out["b/rgba.png"].image[:, 14:, 3] == 255).all()
    assert isinstance(out["b/broken.png"], SampleError) and "decode" in out["b/broken.png"].reason
    assert join(url, "test", "b", "broken.png") in out["b/broken.png"].reason
    assert [(s.path, s.reason) for s in source.skipped()] == [("b/notes.txt", "not an image file (no extension "
                                                                              "Pillow decodes)")]
    with pytest.raises(StorageError, match="not 'val'|but not"):
        open_source(url, storage_options=options, split="train2")
    with pytest.raises(StorageError, match=r"\['b'\]"):
        open_source(url, storage_options=options, classes=["a"], kind="folder")


def test_load_arrays_skips_errors(tmp_path, fmnist, caplog):
    images, labels = fmnist
    write_folder(str(tmp_path), {}, images[:6], labels[:6])
    put(str(tmp_path / "Bag" / "zz-bad.png"), {}, b"garbage")
    source = open_source(str(tmp_path))
    x, y, ids = load_arrays(source)
    assert x.shape == (6, 28, 28, 1) and len(y) == 6 and "Bag/zz-bad.png" not in ids
    assert "skipped 1 of 7" in caplog.text


@pytest.mark.parametrize("variant", ["binary", "hf_struct", "sample_ids"])
def test_parquet_round_trip(storage_root, fmnist, variant):
    url, options = storage_root
    images, labels = fmnist
    write_parquet(join(url, "data", "test-00000.parquet"), options, images[:20], labels[:20],
                  hf_struct=variant == "hf_struct", sample_ids=variant == "sample_ids", corrupt_rows=(9,))
    write_parquet(join(url, "data", "test-00001.parquet"), options, images[20:], labels[20:])
    write_parquet(join(url, "data", "train-00000.parquet"), options, images[:3], labels[:3])
    write_parquet(join(url, "data", "validation-00000.parquet"), options, images[:2], labels[:2])
    source = open_source(url, storage_options=options)
    assert isinstance(source, ParquetSource) and source.files == ["data/test-00000.parquet", "data/test-00001.parquet"]
    refs = source.list()
    assert len(refs) == N_IMAGES
    assert refs[0].sample_id == ("img-0000" if variant == "sample_ids" else "data/test-00000.parquet#0")
    assert source.classes == [str(i) for i in range(int(labels.max()) + 1)]
    got = [s for shard in chunks(source.list(), 6) for s in source.read(shard)]
    assert [g.sample_id for g in got] == [r.sample_id for r in refs]
    assert isinstance(got[9], SampleError)
    for i, g in enumerate(got):
        if i != 9:
            np.testing.assert_array_equal(g.image, images[i])
            assert g.label == labels[i]
    assert len(open_source(url, storage_options=options, split="train").list()) == 3
    assert len(open_source(url, storage_options=options, split="validation").list()) == 2


def test_parquet_reads_only_needed_row_groups(tmp_path, fmnist, monkeypatch):
    images, labels = fmnist
    write_parquet(str(tmp_path / "one.parquet"), {}, images, labels, row_group_size=7)
    source = open_source(str(tmp_path / "one.parquet"))
    read_groups = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        read_groups.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    refs = source.list()
    got = list(source.read(refs[8:13]))
    assert read_groups == [[1]] and [g.label for g in got] == labels[8:13].tolist()
    list(source.read(refs[12:16]))
    assert read_groups[-1] == [1, 2]


def test_parquet_hf_class_names(tmp_path, fmnist):
    import pyarrow as pa

    images, labels = fmnist
    write_parquet(str(tmp_path / "x.parquet"), {}, images[:4], labels[:4])
    table = pq.read_table(tmp_path / "x.parquet")
    meta = {"info": {"features": {"label": {"_type": "ClassLabel", "names": FASHION_MNIST_CLASSES}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    pq.write_table(table, tmp_path / "x.parquet")
    assert open_source(str(tmp_path / "x.parquet")).classes == list(FASHION_MNIST_CLASSES)
    del pa


def test_truncated_parquet_names_the_url(storage_root, fmnist):
    url, options = storage_root
    images, labels = fmnist
    write_parquet(join(url, "d", "test.parquet"), options, images[:5], labels[:5])
    from storage.io.fs import open_fs

    fs, path = open_fs(join(url, "d", "test.parquet"), options)
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: len(data) // 2])
    with pytest.raises(StorageError) as info:
        open_source(join(url, "d"), storage_options=options).list()
    assert "d/test.parquet" in str(info.value) and "truncated or corrupt" in str(info.value)


def test_source_travels_to_another_process(storage_root, fmnist, tmp_path):
    """Refs from list() in this process, read by an equal Source opened in a fresh interpreter."""
    url, options = storage_root
    images, labels = fmnist
    write_parquet(join(url, "p.parquet"), options, images, labels)
    source = open_source(join(url, "p.parquet"), storage_options=options)
    refs = source.list()[10:14]
    assert pickle.loads(pickle.dumps(source)).list() == source.list()
    script = (
        "import json, sys\n"
        "from storage.sources import open_source, SampleRef\n"
        "a = json.load(sys.stdin)\n"
        "src = open_source(a['url'], storage_options=a['options'])\n"
        "print(json.dumps([[s.sample_id, s.label, int(s.image.sum())] for s in src.read([SampleRef(*r) for r in a['refs']])]))\n"
    )
    payload = json.dumps({"url": join(url, "p.parquet"), "options": options,
                          "refs": [[r.sample_id, r.locator] for r in refs]})
    out = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=120, check=True)
    got = json.loads(out.stdout)
    assert got == [[r.sample_id, int(labels[10 + i]), int(images[10 + i].sum())] for i, r in enumerate(refs)]


def test_load_arrays_brings_any_images_to_the_model_with_its_spec(tmp_path, fmnist):
    from models import fashion_mnist_spec

    images, labels = fmnist
    put(str(tmp_path / "Bag" / "a.png"), {}, png_bytes(images[0], "RGBA"))
    put(str(tmp_path / "Bag" / "b.jpg"), {}, png_bytes(images[1], "RGB", "JPEG", size=56))
    put(str(tmp_path / "Bag" / "c.png"), {}, png_bytes(images[2]))
    source = open_source(str(tmp_path))
    with pytest.raises(StorageError, match="different shapes.*spec"):
        load_arrays(source)
    x, y, ids = load_arrays(source, spec=fashion_mnist_spec())
    assert x.shape == (3, 28, 28, 1) and ids == ["Bag/a.png", "Bag/b.jpg", "Bag/c.png"]
    np.testing.assert_array_equal(x[2], images[2])


def test_a_parquet_source_of_many_files_holds_none_open(tmp_path, fmnist):
    """300 files under a limit of 128 open files: the source keeps footers, never handles."""
    images, labels = fmnist
    folder = tmp_path / "many"
    for k in range(300):
        write_parquet(str(folder / "test" / f"part-{k:04d}.parquet"), {}, images[k % 8:k % 8 + 1],
                      labels[k % 8:k % 8 + 1])
    script = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from storage.sources import open_source
source = open_source(sys.argv[1])
refs = source.list()
held = len(os.listdir("/proc/self/fd"))
read = [s for s in source.read(refs) if hasattr(s, "image")]
print(len(refs), len(read), held)
"""
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n_refs, n_read, held = map(int, out.stdout.split())
    assert n_refs == n_read == 300 and held < 64


def test_a_limit_reads_only_as_far_as_it_needs(tmp_path, fmnist):
    images, labels = fmnist
    for k in range(3):
        write_parquet(str(tmp_path / "src" / "test" / f"part-{k}.parquet"), {}, images[4 * k:4 * k + 4],
                      labels[4 * k:4 * k + 4], sample_ids=True)
    source = open_source(str(tmp_path / "src"))
    read = []
    column = source._read_column
    source._read_column = lambda rel, name, *groups: read.append(rel) or column(rel, name, *groups)
    assert [r.locator for r in source.list(limit=5)] == ["test/part-0.parquet#0", "test/part-0.parquet#1",
                                                         "test/part-0.parquet#2", "test/part-0.parquet#3",
                                                         "test/part-1.parquet#0"]
    assert read == ["test/part-0.parquet", "test/part-1.parquet"]  # not the third file
    assert len(source.list()) == 12 and source.list(limit=3) == source.list()[:3]
    idx = open_source("fashion-mnist")
    assert idx.list(limit=7) == idx.list()[:7]
