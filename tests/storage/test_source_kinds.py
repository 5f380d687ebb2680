"""Every source kind on local disk and on S3 (SeaweedFS), built from real Fashion-MNIST images encoded
in the modes, sizes and formats people have: each file is read or accounted for, errors name the
file and the cause, and a shard is read from its refs alone by a source opened with the driver's classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.io.fs import InvalidStorageInput, StorageError, join
from storage.sources import (FASHION_MNIST_CLASSES, NO_LABEL, IndexSource, LabeledFolderSource, ParquetSource,
                             Sample, SampleError, SampleRef, Source, SourcePolicy, WebDatasetSource, open_source)
from tests.helpers import chunks, class_dir, png_bytes, put, tar_bytes, write_index


def read_all(source: Source, refs: list[SampleRef] | None = None) -> dict[str, Sample | SampleError]:
    """Every ref read in shards of 4 through JSON (as the plan stores them), by a source opened anew
    with the first one's kind and classes (as a job's workers open it)."""
    refs = source.list() if refs is None else refs
    worker = open_source(source.url, storage_options=source.storage_options, kind=source.kind, classes=source.classes,
                         policy=source.policy)
    out = {}
    for shard in chunks(refs, 4):
        stored = [SampleRef(*pair) for pair in json.loads(json.dumps([[r.sample_id, r.locator] for r in shard]))]
        out.update({item.sample_id: item for item in worker.read(stored)})
    assert list(out) == [r.sample_id for r in refs]
    return out


def test_folder_of_mixed_modes_sizes_and_formats(storage_root, fmnist):
    """One class folder holding every mode and format Pillow decodes, at other sizes; an image in the
    root has no label; other files are listed, never dropped; bad files name themselves."""
    url, options = storage_root
    images, _ = fmnist
    files = {
        "Bag/gray.png": png_bytes(images[0]), "Bag/rgb56.jpg": png_bytes(images[1], "RGB", "JPEG", size=56),
        "Bag/rgba.png": png_bytes(images[2], "RGBA"), "Bag/la.png": png_bytes(images[3], "LA"),
        "Bag/palette.gif": png_bytes(images[4], "P", "GIF"), "Bag/cmyk.jpg": png_bytes(images[5], "CMYK", "JPEG"),
        "Bag/deep16.png": png_bytes(images[6], "I;16"), "Bag/tiny.webp": png_bytes(images[7], "RGB", "WEBP", size=7),
        "Bag/x.BMP": png_bytes(images[8], "RGB", "BMP"), "Coat/sub/x.tif": png_bytes(images[9], "L", "TIFF", size=100),
        "root.png": png_bytes(images[10]), "Coat/empty.jpg": b"", "Coat/text.png": b"plain text, not a png",
        "Coat/notes.txt": b"notes", "Coat/.DS_Store": b"\0", "README": b"readme",
    }
    for rel, data in files.items():
        put(join(url, rel), options, data)
    source = open_source(url, storage_options=options)
    assert source.kind == "folder" and source.classes == ["Bag", "Coat"] and source.label_kind == "names"
    out = read_all(source)
    assert sorted(out) == sorted(r for r in files if r.rsplit(".", 1)[-1].lower() in
                                 ("png", "jpg", "gif", "webp", "bmp", "tif"))
    channels = {rel: s.image.shape for rel, s in out.items() if isinstance(s, Sample)}
    assert channels == {"Bag/gray.png": (28, 28, 1), "Bag/rgb56.jpg": (56, 56, 3), "Bag/rgba.png": (28, 28, 4),
                        "Bag/la.png": (28, 28, 2), "Bag/palette.gif": (28, 28, 3), "Bag/cmyk.jpg": (28, 28, 3),
                        "Bag/deep16.png": (28, 28, 1), "Bag/tiny.webp": (7, 7, 3), "Bag/x.BMP": (28, 28, 3),
                        "Coat/sub/x.tif": (100, 100, 1), "root.png": (28, 28, 1)}
    np.testing.assert_array_equal(out["Bag/deep16.png"].image, images[6])  # 16 bits scaled back exactly
    assert out["Coat/sub/x.tif"].label == 1 and out["Bag/la.png"].label == 0 and out["root.png"].label == NO_LABEL
    empty, text = out["Coat/empty.jpg"], out["Coat/text.png"]
    assert empty.kind == text.kind == "decode"
    assert empty.reason == f"cannot decode image {join(source.url, 'Coat/empty.jpg')}: empty file (0 bytes)"
    assert join(source.url, "Coat/text.png") in text.reason and "not an image format Pillow can read" in text.reason
    assert " object at 0x" not in text.reason
    assert {(f.path, f.reason.split(" (")[0]) for f in source.skipped()} == {
        ("Coat/notes.txt", "not an image file"), ("README", "not an image file"), ("Coat/.DS_Store", "hidden file")}


def test_numbered_class_folders_keep_their_numbers(tmp_path, fmnist):
    images, _ = fmnist
    for label in (0, 2, 10):
        put(str(tmp_path / str(label) / "a.png"), {}, png_bytes(images[label]))
    source = open_source(str(tmp_path))
    assert source.label_kind == "integers" and len(source.classes) == 11
    assert {s.sample_id: s.label for s in source.read(source.list())} == {"0/a.png": 0, "10/a.png": 10, "2/a.png": 2}


@pytest.mark.parametrize("layout", ["labels.csv", "hf-metadata"])
def test_labeled_folder(storage_root, fmnist, layout):
    """A flat folder + labels.csv, or a Hugging Face imagefolder (split dirs with metadata.jsonl)."""
    url, options = storage_root
    images, labels = fmnist
    base = url if layout == "labels.csv" else join(url, "test")
    rows = []
    for i in range(8):
        put(join(base, f"{'images/' if layout == 'labels.csv' else ''}{i:03d}.png"), options, png_bytes(images[i]))
        rows.append({"file_name": f"{'images/' if layout == 'labels.csv' else ''}{i:03d}.png",
                     "label": FASHION_MNIST_CLASSES[labels[i]]})
    rows.append({"file_name": "gone.png", "label": "Bag"})
    put(join(base, "stray.jpg"), options, png_bytes(images[9], "RGB", "JPEG"))  # no row: no label
    if layout == "labels.csv":
        write_index(join(url, "labels.csv"), options, rows)
    else:
        write_index(join(base, "metadata.jsonl"), options, rows)
        write_index(join(url, "train", "metadata.jsonl"), options, rows[:1])
        put(join(url, "train", "000.png"), options, png_bytes(images[0]))
    source = open_source(url, storage_options=options)
    assert isinstance(source, LabeledFolderSource) and source.label_kind == "names"
    assert source.classes == sorted({FASHION_MNIST_CLASSES[k] for k in labels[:8]})  # the samples' classes
    out = read_all(source)
    stem = "images/" if layout == "labels.csv" else ""
    assert sorted(out) == sorted([f"{stem}{i:03d}.png" for i in range(8)] + ["stray.jpg"])
    for i in range(8):
        sample = out[f"{stem}{i:03d}.png"]
        np.testing.assert_array_equal(sample.image, images[i])
        assert source.classes[sample.label] == FASHION_MNIST_CLASSES[labels[i]]
    assert out["stray.jpg"].label == NO_LABEL
    assert [(f.path, f.reason.split(" but")[0]) for f in source.skipped()] == [
        ("gone.png", f"listed in {'labels.csv' if layout == 'labels.csv' else 'metadata.jsonl'}")]


def test_labels_matched_by_file_name_and_stem(tmp_path, fmnist):
    """ImageNet's val labels name images without their extension (ImageId)."""
    images, labels = fmnist
    for i in range(3):
        put(str(tmp_path / f"ILSVRC_{i}.JPEG"), {}, png_bytes(images[i], "RGB", "JPEG"))
    write_index(str(tmp_path / "LOC_val_solution.csv"), {}, [{"ImageId": f"ILSVRC_{i}", "label": int(labels[i])}
                                                              for i in range(3)])
    source = open_source(str(tmp_path), kind="labeled-folder")
    assert source.label_kind == "integers"
    assert [s.label for s in source.read(source.list())] == labels[:3].tolist()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_index_of_paths_and_urls(storage_root, fmnist, fmt):
    """Relative paths resolve against the index's folder (.. included), absolute URLs are read as they are,
    where the operator allows what lies outside the index's folder (--allow-paths; without it those rows
    are outside-source error rows, not read); a missing file is an error row naming it; rows without a
    path and repeated ids are listed."""
    url, options = storage_root
    images, labels = fmnist
    put(join(url, "data", "img", "a.png"), options, png_bytes(images[0]))
    put(join(url, "data", "b.jpg"), options, png_bytes(images[1], "RGB", "JPEG", size=40))
    put(join(url, "elsewhere", "c.png"), options, png_bytes(images[2]))
    rows = [{"path": "img/a.png", "label": int(labels[0])}, {"path": "b.jpg", "label": int(labels[1])},
            {"path": join(url, "elsewhere", "c.png"), "label": int(labels[2])},
            {"path": "../elsewhere/c.png", "label": int(labels[2])}, {"path": "missing.png", "label": 3},
            {"path": "", "label": 1}, {"path": "b.jpg", "label": 4}]
    index = join(url, "data", f"index.{fmt}")
    write_index(index, options, rows)
    confined = read_all(open_source(index, storage_options=options))
    outside = [join(url, "elsewhere", "c.png"), "../elsewhere/c.png"]
    assert [confined[s].kind for s in outside] == ["outside-source"] * 2
    assert all(f"the row's path {s} leads outside the source {join(url, 'data')}" in confined[s].reason and
               "--allow-paths" in confined[s].reason for s in outside)
    assert isinstance(confined["img/a.png"], Sample)
    source = open_source(index, storage_options=options, policy=SourcePolicy(allow_paths=[join(url, "elsewhere")]))
    assert isinstance(source, IndexSource) and source.label_kind == "integers"
    out = read_all(source)
    assert list(out) == ["img/a.png", "b.jpg", join(url, "elsewhere", "c.png"), "../elsewhere/c.png", "missing.png"]
    np.testing.assert_array_equal(out["img/a.png"].image, images[0])
    assert out["b.jpg"].image.shape == (40, 40, 3)
    np.testing.assert_array_equal(out["../elsewhere/c.png"].image, out[join(url, "elsewhere", "c.png")].image)
    assert [s.label for s in list(out.values())[:4]] == [labels[0], labels[1], labels[2], labels[2]]
    assert out["missing.png"].kind == "read"
    assert out["missing.png"].reason == f"cannot read {join(url, 'data', 'missing.png')}: no such file"
    line = 3 if fmt == "csv" else 2  # the CSV header is line 1
    assert [f.reason for f in source.skipped()] == ["no 'path'", f"repeats sample 'b.jpg' of line {line}"]


def test_index_with_names_and_no_labels(tmp_path, fmnist):
    images, _ = fmnist
    put(str(tmp_path / "a.png"), {}, png_bytes(images[0]))
    write_index(str(tmp_path / "i.tsv"), {}, [{"url": "a.png", "class": "Ankle boot"}])
    named = open_source(str(tmp_path / "i.tsv"))
    assert named.classes == ["Ankle boot"] and named.label_kind == "names"
    write_index(str(tmp_path / "n.jsonl"), {}, [{"image": "a.png"}])
    unlabeled = open_source(str(tmp_path / "n.jsonl"))
    assert unlabeled.label_kind == "none" and next(unlabeled.read(unlabeled.list())).label == NO_LABEL
    write_index(str(tmp_path / "bad.csv"), {}, [{"name": "a.png", "label": 1}])
    with pytest.raises(StorageError, match="no image column.*'name'"):
        open_source(str(tmp_path / "bad.csv"))


def webdataset(url: str, options: dict, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Two tar shards: .cls labels (integers) in the first, .json class names in the second, with a
    key without an image and a grayscale PNG / RGB JPEG mix; returns the image keys."""
    keys, shards = [], []
    for shard in range(2):
        members = []
        for i in range(shard * 6, shard * 6 + 6):
            key = f"fm_{i:04d}"
            keys.append(f"shard-{shard:03d}.tar#{key}")
            image = png_bytes(images[i]) if i % 2 else png_bytes(images[i], "RGB", "JPEG", size=32)
            members.append((f"{key}.{'png' if i % 2 else 'jpg'}", image))
            members.append((f"{key}.cls", str(int(labels[i])).encode()) if shard == 0 else
                           (f"{key}.json", json.dumps({"label": int(labels[i])}).encode()))
        members.append(("orphan.cls", b"3"))
        shards.append(tar_bytes(members))
    for shard, data in enumerate(shards):
        put(join(url, f"shard-{shard:03d}.tar"), options, data)
    return keys


def test_webdataset(storage_root, fmnist):
    url, options = storage_root
    images, labels = fmnist
    keys = webdataset(url, options, images, labels)
    put(join(url, "old.tar.gz"), options, b"\x1f\x8b")
    source = open_source(url, storage_options=options)
    assert isinstance(source, WebDatasetSource) and source.label_kind == "integers"
    out = read_all(source)
    assert list(out) == keys
    for i, key in enumerate(keys):
        assert out[key].label == labels[i]
        if i % 2:
            np.testing.assert_array_equal(out[key].image, images[i])
        else:
            assert out[key].image.shape == (32, 32, 3)
    assert sorted((f.path, f.reason.split(" (")[0].split(":")[0]) for f in source.skipped()) == [
        ("old.tar.gz", "a compressed tar cannot be read by byte range"),
        ("shard-000.tar#orphan", "no image member"), ("shard-001.tar#orphan", "no image member")]
    one = open_source(join(url, "shard-001.tar"), storage_options=options)  # one tar as the URL
    assert [r.sample_id for r in one.list()] == [k.replace("shard-001.tar#", "shard-001.tar#") for k in keys[6:]]


def test_webdataset_class_names_and_a_corrupt_tail(tmp_path, fmnist):
    images, labels = fmnist
    members = [(f"k{i}.png", png_bytes(images[i])) for i in range(3)]
    members += [(f"k{i}.json", json.dumps(FASHION_MNIST_CLASSES[labels[i]]).encode()) for i in range(3)]
    data = tar_bytes(sorted(members))
    broken = data[:2048] + b"\x07" * 512 + data[2048:]  # a garbage header after the first member
    put(str(tmp_path / "good.tar"), {}, data)
    put(str(tmp_path / "broken.tar"), {}, broken)
    good = open_source(str(tmp_path / "good.tar"))
    assert good.label_kind == "names" and good.classes == sorted(FASHION_MNIST_CLASSES[k] for k in labels[:3])
    assert [good.classes[s.label] for s in good.read(good.list())] == [FASHION_MNIST_CLASSES[k] for k in labels[:3]]
    bad = open_source(str(tmp_path / "broken.tar"))
    assert len(bad.list()) < 3 and "not a readable tar" in bad.skipped()[-1].reason


def test_parquet_path_only_rows_read_the_files_they_name(storage_root, fmnist):
    """A Hugging Face export built from files (image.bytes = None, image.path set): the path is read
    relative to the Parquet file; a path naming nothing is an error row that says where it looked."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    url, options = storage_root
    images, labels = fmnist
    put(join(url, "data", "pics", "0.png"), options, png_bytes(images[0]))
    put(join(url, "other", "elsewhere.png"), options, png_bytes(images[1], "RGB", "JPEG"))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    values = [{"bytes": None, "path": "pics/0.png"}, {"bytes": None, "path": join(url, "other", "elsewhere.png")},
              {"bytes": None, "path": "0001.png"}, {"bytes": png_bytes(images[3]), "path": None},
              {"bytes": None, "path": None}]
    table = pa.table({"image": pa.array(values, struct), "label": pa.array(["Bag", "Coat", "Bag", "Coat", "Bag"])})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put(join(url, "data", "test-00000.parquet"), options, buf.getvalue())
    put(join(url, "README.md"), options, b"# dataset card")
    source = open_source(url, storage_options=options)
    assert isinstance(source, ParquetSource) and source.classes == ["Bag", "Coat"] and source.label_kind == "names"
    out = list(read_all(source).values())
    np.testing.assert_array_equal(out[0].image, images[0])
    assert out[1].image.shape == (28, 28, 3) and [out[i].label for i in (0, 1, 3)] == [0, 1, 1]
    assert out[2].reason == (f"data/test-00000.parquet#2 has no image bytes; its path: cannot read "
                             f"{join(url, 'data', '0001.png')}: no such file")
    assert out[4].reason == f"row 4 of {join(url, 'data', 'test-00000.parquet')} has neither image bytes nor a path"
    assert [(f.path, f.reason) for f in source.skipped()] == [("README.md", "not a .parquet file")]


@pytest.mark.parametrize("name, kind", [("folder", "folder"), ("flat", "labeled-folder"), ("x.csv", "index"),
                                        ("wds", "webdataset"), ("pq", "parquet"), ("split-folder", "folder")])
def test_detection(tmp_path, fmnist, name, kind):
    images, labels = fmnist
    root = tmp_path / name
    if kind == "folder":
        prefix = "test/" if name == "split-folder" else ""
        put(str(root / f"{prefix}{class_dir(labels[0])}" / "a.png"), {}, png_bytes(images[0]))
        if prefix:
            put(str(root / "train" / "Bag" / "b.png"), {}, png_bytes(images[1]))
    elif kind == "labeled-folder":
        put(str(root / "a.png"), {}, png_bytes(images[0]))
        write_index(str(root / "labels.csv"), {}, [{"filename": "a.png", "label": 3}])
    elif kind == "index":
        put(str(tmp_path / "a.png"), {}, png_bytes(images[0]))
        write_index(str(root), {}, [{"path": "a.png", "label": 3}])
    elif kind == "webdataset":
        put(str(root / "s-0.tar"), {}, tar_bytes([("a.png", png_bytes(images[0])), ("a.cls", b"1")]))
    else:
        from tests.helpers import write_parquet

        write_parquet(str(root / "data" / "test-0.parquet"), {}, images[:2], labels[:2])
    source = open_source(str(root))
    assert source.kind == kind and len(source.list()) >= 1


def test_unknown_layouts_name_the_known_formats(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(InvalidStorageInput) as info:
        open_source(str(tmp_path))
    assert "cannot tell what kind of dataset" in str(info.value) and "model.bin" in str(info.value)
    assert all(kind in str(info.value) for kind in ("folder", "labeled-folder", "index", "webdataset", "parquet"))
    with pytest.raises(InvalidStorageInput, match="known formats"):
        open_source(str(tmp_path / "model.bin"))
    with pytest.raises(InvalidStorageInput, match="unknown source format 'zip'"):
        open_source(str(tmp_path), kind="zip")
    with pytest.raises(StorageError, match="no such object or directory"):
        open_source(str(tmp_path / "absent"))


def test_samples_carry_the_stamp_of_the_file_they_come_from(storage_root, fmnist):
    """WebDataset samples carry their tar's size and version, labeled-folder images their own: a rerun
    compares them with the plan's to notice files rewritten in place (storage.maps.plan.source_changes)."""
    url, options = storage_root
    images, labels = fmnist
    webdataset(join(url, "wds"), options, images, labels)
    before = {r.sample_id: r.stamp for r in open_source(join(url, "wds"), storage_options=options).list()}
    assert all(before.values()) and len({before[k] for k in before if k.startswith("shard-000")}) == 1
    put(join(url, "wds", "shard-001.tar"), options, tar_bytes([("fm_0100.png", png_bytes(images[0]))]))
    after = {r.sample_id: r.stamp for r in open_source(join(url, "wds"), storage_options=options).list()}
    assert {k: after[k] for k in after if k.startswith("shard-000")} == \
        {k: before[k] for k in before if k.startswith("shard-000")}
    assert after["shard-001.tar#fm_0100"] not in {before[k] for k in before}

    put(join(url, "flat", "a.png"), options, png_bytes(images[0]))
    put(join(url, "flat", "b.png"), options, png_bytes(images[1]))
    write_index(join(url, "flat", "labels.csv"), options, [{"file_name": "a.png", "label": 1},
                                                          {"file_name": "b.png", "label": 2}])
    stamps = {r.sample_id: r.stamp for r in open_source(join(url, "flat"), storage_options=options).list()}
    assert set(stamps) == {"a.png", "b.png"} and stamps["a.png"].startswith(f"{len(png_bytes(images[0]))}:")
