"""``python -m jobs.attribute`` on the sources people have, with a real S3 (SeaweedFS): any image reaches
the model, no shard can kill the job, labels mean what they say, and run.json always ends with a status
and, when failed, the reason. The shards run in the test's process (``--in-process``: the same worker
code as an actor's, jobs.mapping.in_process), since what these check is the job's; a worker's failure
on the real local Ray's actor pool is the last test (the pool's other runs: test_attribute.py)."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs import attribute
from storage.io.fs import join
from storage.io.location import Location
from storage.maps.plan import plan_form
from storage.maps.reader import read_errors, read_maps, read_run, read_sample
from storage.sources import FASHION_MNIST_CLASSES, open_source
from tests.helpers import (class_dir, fashion_mnist, png_bytes, put, tar_bytes, tiny_checkpoint, write_folder,
                           write_index, write_parquet)

pytestmark = pytest.mark.slow  # starts Ray or trains a model

METHODS = ("pathway", "gradient")
QUIET = ["--in-process", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The tiny ResNet-8 of tests/helpers on 6000 train images (about 2/3 accurate, so that accuracy
    is told apart from chance on a few hundred images)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"), n=6000)


def accounted_once(output: str, source_url: str, options: dict | None = None) -> dict:
    """Every sample of the source appears exactly once per method, in maps or in errors."""
    expected = sorted(r.sample_id for r in open_source(source_url, storage_options=options).list())
    frames = {}
    for method in METHODS:
        maps, errors = read_maps(output, method), read_errors(output, method)
        seen = list(maps.sample_id) + list(errors.sample_id)
        assert sorted(seen) == expected, f"{method}: a sample is missing or appears twice"
        assert not errors.reason.str.contains(" object at 0x").any()
        frames[method] = (maps, errors)
    return frames


def test_rgb_jpeg_folder_at_56_px_through_the_grayscale_28_px_model(checkpoint, tmp_path, capsys):
    """The target: class folders named by class (in folder order, not the checkpoint's), RGB JPEGs at
    56 px, a note and an empty file among them. Every file appears once in maps or errors, the labels
    are the checkpoint's indices, and label == predicted is the model's accuracy, not chance."""
    from models.preprocess import preprocess
    from storage.checkpoints import load_checkpoint

    src, out = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 300, start=1000)
    for i, (image, label) in enumerate(zip(images, labels)):
        put(os.path.join(src, class_dir(label), f"{i:04d}.jpg"), {}, png_bytes(image, "RGB", "JPEG", size=56))
    put(os.path.join(src, "notes.txt"), {}, b"collected from the catalogue")
    put(os.path.join(src, "Bag", "empty.jpg"), {}, b"")
    assert attribute.main(["--source", src, "--checkpoint", checkpoint, "--output", out, "--shard-size", "64",
                           *QUIET]) == 0
    printed = capsys.readouterr().out
    assert "notes.txt: not an image file" in printed and "by kind: decode 1" in printed

    maps, errors = accounted_once(out, src)["pathway"]
    assert len(maps) == 300 and errors.to_dict("records")[0]["sample_id"] == "Bag/empty.jpg"
    assert errors.reason[0] == f"cannot decode image {os.path.join(src, 'Bag', 'empty.jpg')}: empty file (0 bytes)"
    expected = {f"{class_dir(y)}/{i:04d}.jpg": int(y) for i, y in enumerate(labels)}
    assert dict(zip(maps.sample_id, maps.label)) == expected  # the checkpoint's indices, by name
    assert maps["map"][0].shape == (28, 28)  # maps are at the model's input size
    # The same files through Pillow's own conversion and resize (what a torchvision PIL pipeline does),
    # in draft mode as the job decodes a JPEG at least twice the input (storage.sources.images): resampling
    # 28 -> 56 -> 28 px blurs, and this small model loses a few points to that, not to the job.
    model, spec = load_checkpoint(checkpoint)

    def by_pillow_of(path: str) -> np.ndarray:
        with Image.open(path) as img:
            img.draft(None, (28, 28))
            return np.asarray(img.convert("L").resize((28, 28), Image.BILINEAR))

    by_pillow = np.stack([by_pillow_of(os.path.join(src, sid)) for sid in maps.sample_id])[..., None]
    with torch.no_grad():
        native = float((model(preprocess(spec, images)).argmax(1).numpy() == labels).mean())
        reference = float((model(preprocess(spec, by_pillow)).argmax(1).numpy() == maps.label.to_numpy()).mean())
    accuracy = float((maps.label == maps.predicted).mean())
    print(f"label == predicted: {accuracy:.3f} through RGB JPEG 56 px (Pillow's pipeline: {reference:.3f}; the "
          f"28 px originals: {native:.3f}; chance: 0.1)")
    assert accuracy > 0.45 and abs(accuracy - reference) <= 0.03, (accuracy, reference, native)

    run = read_run(out)
    assert run["status"] == "complete" and run["labels"]["kind"] == "model" and run["warnings"] == []
    assert run["labels"]["mapped"]["Ankle_boot"] == 9 and run["labels"]["mapped"]["T-shirt_top"] == 0
    assert run["skipped_files"] == {"count": 1, "files": [{"path": "notes.txt", "reason":
                                                         "not an image file (no extension Pillow decodes)"}]}
    assert run["preprocessing"]["resize"] == "plain" and run["model"]["resize"] == "plain"
    assert run["errors_by_kind"] == {"decode": 1} and run["config"]["source_format"] == "folder"


def kind_on_s3(kind: str, url: str, options: dict, images: np.ndarray, labels: np.ndarray) -> str:
    """A source of ``kind`` under ``url``: 12 good samples, then 4 bad ones (one whole shard of 4); returns
    the URL to pass as --source."""
    good = [png_bytes(im, "RGB", "JPEG", size=36) if i % 3 == 0 else png_bytes(im, "RGBA" if i % 3 == 1 else "L")
            for i, im in enumerate(images[:12])]
    bad = [b"", b"GIF89a truncated", png_bytes(images[0])[:40], b"\x00" * 64]
    names = [FASHION_MNIST_CLASSES[y] for y in labels[:12]] + ["Bag"] * 4
    if kind == "webdataset":
        members = []
        for i, data in enumerate(good + bad):
            members += [(f"s{i:02d}.png", data), (f"s{i:02d}.json", json.dumps({"label": names[i]}).encode())]
        put(join(url, "train-0000.tar"), options, tar_bytes(members[:2]))
        put(join(url, "test-0000.tar"), options, tar_bytes(members))
        return url
    files = [f"img/{i:02d}.png" for i in range(16)]
    for rel, data in zip(files, good + bad):
        put(join(url, rel), options, data)
    if kind == "index":
        write_index(join(url, "val.csv"), options, [{"url": f, "label": n} for f, n in zip(files, names)])
        return join(url, "val.csv")
    if kind == "labeled-folder":
        write_index(join(url, "metadata.jsonl"), options, [{"file_name": f, "label": n} for f, n in zip(files, names)])
        return url
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # an HF export built from files
    rows = [{"bytes": None, "path": f"../img/{i:02d}.png"} for i in range(16)]
    table = pa.table({"image": pa.array(rows, struct), "label": pa.array(names)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put(join(url, "data", "test-00000.parquet"), options, buf.getvalue())
    return url


@pytest.mark.parametrize("kind", ["labeled-folder", "index", "webdataset", "parquet"])
def test_each_source_kind_on_s3_with_an_all_bad_shard(kind, checkpoint, s3_server, tmp_path):
    """Sources on SeaweedFS, class names as labels, and a shard whose every sample is bad: the job
    succeeds, the bad shard commits zero maps and its four error rows. Every kind but the folder is
    planned by row ranges, whose ids the workers read; a sample's map is still found by its id."""
    url, options = s3_server.url(f"kind-{kind}"), s3_server.storage_options
    images, labels = fashion_mnist("test", 12)
    source = kind_on_s3(kind, url, options, images, labels)
    out = str(tmp_path / "maps")
    assert attribute.main(["--source", source, "--checkpoint", checkpoint, "--output", out, "--shard-size", "4",
                           "--storage-options", json.dumps(options), *QUIET]) == 0
    maps, errors = accounted_once(out, source, options)["gradient"]
    assert len(maps) == 12 and len(errors) == 4 and set(errors.shard_id) == {"000003"}
    assert sorted(maps.label) == sorted(labels[:12].tolist())  # the class names mapped to the checkpoint's
    run = read_run(out)
    assert run["status"] == "complete" and run["config"]["source_format"] == kind and run["labels"]["kind"] == "model"
    assert options["secret"] not in json.dumps(run)
    assert plan_form(Location(out)) == ("samples" if kind == "labeled-folder" else "ranges")
    first = maps.sample_id.iloc[0]
    assert read_sample(out, first, "gradient")["map"].iloc[0].tobytes() == maps["map"].iloc[0].tobytes()


def test_unmatched_class_names_warn_and_refuse_target_label(checkpoint, tmp_path, capfd):
    src, out = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 6)
    for i in range(6):
        put(os.path.join(src, f"n0{labels[i]}", f"{i}.png"), {}, png_bytes(images[i]))
    args = ["--source", src, "--checkpoint", checkpoint, "--output", out, *QUIET]
    assert attribute.main([*args, "--target", "label"]) == 2  # a refusal (jobs.runtime.cli)
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jobs.attribute: error: --target label:") and "match none of" in err[-1]
    run = read_run(out)
    assert run["status"] == "failed" and run["reason"].startswith("--target label:")

    assert attribute.main(args) == 0
    assert "warning: " in capfd.readouterr().err
    run = read_run(out)
    assert run["status"] == "complete" and run["labels"]["kind"] == "source" and "match none of" in run["warnings"][0]
    assert run["labels"]["classes"] == sorted({f"n0{y}" for y in labels[:6]})


def test_changed_and_deleted_source_files_are_noticed(checkpoint, tmp_path, capfd):
    """A file rewritten and one deleted after they were mapped: the rerun reports both (stderr and
    run.json) and keeps the output; --recompute-changed recomputes only their shards, the deleted one
    becoming an error row instead of keeping the map of a file that is gone; then it is quiet."""
    from storage.maps.writer import MapStore

    src, out = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 13)
    files = write_folder(src, {}, images[:12], labels[:12])
    args = ["--source", src, "--checkpoint", checkpoint, "--output", out, "--shard-size", "4", "--methods",
            "gradient", *QUIET]
    assert attribute.main(args) == 0
    before = read_maps(out).set_index("sample_id")["map"]
    untouched = os.stat(os.path.join(out, "_manifest", "gradient", "000001.json")).st_mtime_ns
    changed, deleted = files[1], files[9]
    put(join(src, changed), {}, png_bytes(images[12]))  # another image under the same name
    os.remove(os.path.join(src, deleted))
    capfd.readouterr()

    assert attribute.main(args) == 0
    err = capfd.readouterr().err
    assert "1 samples changed and 1 deleted" in err and "--recompute-changed" in err
    run = read_run(out)
    assert run["source_changes"]["changed"] == 1 and run["source_changes"]["deleted"] == 1
    assert not run["source_changes"]["recomputed_shards"] and len(read_maps(out)) == 12  # kept, and said so

    assert attribute.main([*args, "--recompute-changed"]) == 0
    assert "recomputing those 2 shards" in capfd.readouterr().out
    maps, errors = read_maps(out).set_index("sample_id")["map"], read_errors(out)
    assert list(errors.sample_id) == [deleted] and "no such file" in errors.reason[0] and errors.kind[0] == "read"
    assert not np.array_equal(maps[changed], before[changed])
    assert all(np.array_equal(maps[s], before[s]) for s in files[4:8])  # shard 000001 was not touched
    for s in (*files[:4], *files[8:]):  # recomputed with a sample fewer: float32 rounds per batch shape
        if s not in (changed, deleted):
            scale = float(np.abs(before[s]).max())
            np.testing.assert_allclose(maps[s].astype(np.float32), before[s].astype(np.float32), rtol=1e-2,
                                       atol=1e-3 * scale)
    assert read_run(out)["source_changes"]["recomputed_shards"] == ["000000", "000002"]
    assert os.stat(os.path.join(out, "_manifest", "gradient", "000001.json")).st_mtime_ns == untouched
    assert sorted(MapStore(out).committed("gradient")) == ["000000", "000001", "000002"]

    assert attribute.main(args) == 0
    assert "changed" not in capfd.readouterr().err and "source_changes" not in read_run(out)


def test_a_parquet_source_is_planned_by_ranges_and_a_rewritten_file_is_noticed(checkpoint, tmp_path,
                                                                               capfd):
    """Two Parquet files of 6 rows, shards of 4: the plan holds row ranges (one across both files);
    new rows appended to the source become a new plan segment; a file rewritten in place changes
    every shard that reads it, and --recompute-changed recomputes those shards only."""
    from storage.maps.writer import MapStore
    from storage.maps.plan import read_plan

    src, out = str(tmp_path / "parquet"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 16)
    write_parquet(join(src, "a.parquet"), {}, images[:6], labels[:6])
    write_parquet(join(src, "b.parquet"), {}, images[6:12], labels[6:12])
    args = ["--source", src, "--checkpoint", checkpoint, "--output", out, "--shard-size", "4", "--methods",
            "gradient", *QUIET]
    assert attribute.main([*args, "--limit", "10"]) == 0
    assert attribute.main(args) == 0  # the last 2 rows of b: a new segment
    assert sorted(os.listdir(os.path.join(out, "_plan"))) == ["ranges-000000.parquet", "ranges-000003.parquet"]
    shards, _ = read_plan(MapStore(out).where)
    assert [[(r.file, r.start, r.stop) for r in s.ranges] for s in shards] == [
        [("a.parquet", 0, 4)], [("a.parquet", 4, 6), ("b.parquet", 0, 2)], [("b.parquet", 2, 4)], [("b.parquet", 4, 6)]]
    before = read_maps(out).set_index("sample_id")["map"]
    assert sorted(before.index) == sorted([f"a.parquet#{i}" for i in range(6)] + [f"b.parquet#{i}" for i in range(6)])
    untouched = os.stat(os.path.join(out, "_manifest", "gradient", "000000.json")).st_mtime_ns
    write_parquet(join(src, "b.parquet"), {}, images[10:16], labels[10:16])  # other images, same name and size
    capfd.readouterr()

    assert attribute.main(args) == 0
    assert "6 samples changed and 0 deleted in the source since they were mapped, in 3 shards" in capfd.readouterr().err
    assert attribute.main([*args, "--recompute-changed"]) == 0
    assert "recomputing those 3 shards" in capfd.readouterr().out
    after = read_maps(out).set_index("sample_id")["map"]
    assert not np.array_equal(after["b.parquet#0"], before["b.parquet#0"])
    moved, was = after["b.parquet#0"].astype(np.float32), before["b.parquet#4"].astype(np.float32)  # images[10]
    np.testing.assert_allclose(moved, was, rtol=1e-2, atol=1e-3 * float(np.abs(was).max()))  # another batch shape
    assert os.stat(os.path.join(out, "_manifest", "gradient", "000000.json")).st_mtime_ns == untouched
    assert attribute.main(args) == 0
    assert "changed" not in capfd.readouterr().err


def test_a_driver_failure_after_run_json_was_written_is_recorded(checkpoint, tmp_path, capfd):
    """Another shard size than the stored plan fails after run.json says "running": it ends "failed" with why."""
    out = str(tmp_path / "maps")
    args = ["--checkpoint", checkpoint, "--output", out, "--limit", "8", "--methods", "gradient", *QUIET]
    assert attribute.main([*args, "--shard-size", "4"]) == 0
    assert read_run(out)["status"] == "complete"
    assert attribute.main([*args, "--shard-size", "8"]) == 2
    assert capfd.readouterr().err.strip().splitlines()[-1].startswith("jobs.attribute: error: ")
    run = read_run(out)
    assert run["status"] == "failed" and "rerun with --shard-size 4" in run["reason"] and "failed_at" in run


def test_a_worker_failure_stops_the_job_in_one_line(checkpoint, ray_session, tmp_path, capfd):
    """Every sample fails attribution alone (a Grad-CAM layer without a spatial output): not the data's
    fault, so the job stops with one line naming the shard and the cause, and run.json says the same.
    (Last in the module: pytest keeps Ray's logged exception, and with it the failed actor pool, until
    the test ends.)"""
    out = str(tmp_path / "maps")
    assert attribute.main(["--checkpoint", checkpoint, "--output", out, "--limit", "8", "--shard-size", "4",
                           "--methods", "grad_cam:layer=fc", "--workers", "1", "--no-progress"]) == 1
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"jobs\.attribute: error: the job stopped with 0 of 2 shards committed: shard 00000[01] \(4 samples from "
                    r"'fashion-mnist/test/0000[04]'\) failed on worker \S+: AttributionError: grad_cam layer 'fc'", last)
    run = read_run(out)
    assert run["status"] == "failed" and "AttributionError: grad_cam layer 'fc'" in run["reason"]
