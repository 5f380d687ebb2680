"""workers.attributor.ShardAttributor in-process (no Ray): one shard -> committed, deterministic output."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from storage.maps.writer import MapStore
from storage.maps.reader import maps_array, read_errors, read_maps
from storage.sources import open_source
from tests.helpers import every_file
from tests.helpers import fashion_mnist, png_bytes, put, tiny_checkpoint, write_folder
from attribution import MethodSpec
from jobs.mapping.planning import plan_run
from storage.maps.sink import MapSink
from workers.attributor import ShardAttributor
from workers.shard_source import ShardSource
from workers.tasks import JobConfig, ShardTask, block_rows

METHODS = ("pathway", "gradient")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def prepare(source: str, output: str, checkpoint: str, options: dict, shard_size: int, limit: int | None = None
            ) -> tuple[list[ShardTask], JobConfig]:
    """What the driver does before workers start (jobs.mapping.planning.plan_run): the tasks and the config."""
    opened = open_source(source, storage_options=options or None)
    refs = opened.list()
    sink = MapSink(output, options or None)
    planned = plan_run(ShardSource(opened, sink.where), sink, refs[:limit] if limit else refs, shard_size, METHODS,
                       (28, 28))
    config = JobConfig(source=source, checkpoint=checkpoint, output=output,
                       methods=tuple(MethodSpec(m) for m in METHODS), batch_size=8, device="cpu",
                       storage_options=options)
    return list(planned.tasks), config


def test_shard_is_committed_and_a_retry_rewrites_the_same_bytes(storage_root, checkpoint) -> None:
    url, options = storage_root
    tasks, config = prepare("fashion-mnist", url, checkpoint, options, shard_size=12, limit=24)
    worker = ShardAttributor(config.to_dict(), threads=1)  # as Ray hands it over: plain data
    result = worker.process_shard(tasks[1])
    assert (result.shard_id, result.samples, result.errors) == ("000001", 12, 0)
    store = MapStore(url, options or None)
    assert {m: sorted(store.committed(m)) for m in METHODS} == {m: ["000001"] for m in METHODS}
    first = every_file(url, options)
    assert {p for p in first if "/000001." in p} == {f"{kind}/{m}/000001.{ext}" for m in METHODS
                                                     for kind, ext in (("maps", "parquet"), ("errors", "parquet"),
                                                                       ("_manifest", "json"))}
    assert any(p.startswith("zarr/pathway/maps/c/") for p in first)  # the shard's zarr chunk
    maps = read_maps(url, "pathway", options or None)
    assert list(maps.sample_id) == [r.sample_id for r in tasks[1].shard.refs]
    rows = maps_array(url, "pathway", options or None)[:]
    assert np.isnan(rows[:12]).all()  # shard 0 not written
    np.testing.assert_array_equal(rows[12:24], np.stack(maps["map"]))

    # A retry (e.g. after the actor died before Ray saw the result), by a fresh replica: the same
    # bytes in every file, Parquet, zarr chunks and commit records alike, and no other file.
    again = ShardAttributor(config, threads=1).process_shard(tasks[1])
    assert again.samples == 12
    assert every_file(url, options) == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_retry_rewrites_the_same_bytes(tmp_path, checkpoint) -> None:
    """On CUDA the worker runs deterministic kernels (models.determinism), so a retried shard
    repeats every byte there too; with --nondeterministic this would not be promised."""
    url = str(tmp_path / "maps")
    tasks, config = prepare("fashion-mnist", url, checkpoint, {}, shard_size=24, limit=24)
    config = {**config.to_dict(), "device": "cuda"}
    ShardAttributor(config).process_shard(tasks[0])
    first = every_file(url)
    ShardAttributor(config).process_shard(tasks[0])
    assert every_file(url) == first


def test_ray_data_batch_interface_and_method_subset(tmp_path, checkpoint) -> None:
    """__call__ takes the driver's rows (blocks of shards) and returns one summary row per shard."""
    url = str(tmp_path / "maps")
    tasks, config = prepare("fashion-mnist", url, checkpoint, {}, shard_size=5, limit=10)
    worker = ShardAttributor(config, threads=1)
    out = worker(batch_of([replace(t, methods=("gradient",)) for t in tasks], blocks=2))
    assert list(out["shard_id"]) == ["000000", "000001"] and list(out["samples"]) == [5, 5]
    assert set(out) == {"shard_id", "samples", "errors", "seconds", "worker"}
    store = MapStore(url)
    assert sorted(store.committed("gradient")) == ["000000", "000001"] and store.committed("pathway") == {}


def batch_of(tasks: list[ShardTask], blocks: int) -> dict[str, np.ndarray]:
    """The Ray Data batch of the driver's rows for ``tasks``, as __call__ gets it."""
    rows = block_rows(tasks, blocks)
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def test_undecodable_samples_become_errors_and_the_rest_is_mapped(tmp_path, checkpoint) -> None:
    src, url = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 6)
    good = png_bytes(images[0])
    write_folder(src, {}, images, labels, extra={"Bag/zz-truncated.png": good[:40], "Bag/zz-noise.png": b"\x00" * 64})
    tasks, config = prepare(src, url, checkpoint, {}, shard_size=8)
    worker = ShardAttributor(config, threads=1)
    results = [worker.process_shard(task) for task in tasks]
    assert sum(r.samples for r in results) == 6 and sum(r.errors for r in results) == 2
    for method in METHODS:
        errors = read_errors(url, method)
        assert sorted(errors.sample_id) == ["Bag/zz-noise.png", "Bag/zz-truncated.png"]
        assert errors.reason.str.contains("cannot decode image").all()
        maps = read_maps(url, method)
        assert len(maps) == 6 and maps["map"].map(lambda m: np.isfinite(m).all()).all()


def test_in_process_maps_match_the_method_called_directly(tmp_path, checkpoint) -> None:
    """The worker's gradient maps are the method's maps, reduced and stored as float16."""
    import attribution
    from models.preprocess import preprocess
    from storage.checkpoints import load_checkpoint

    url = str(tmp_path / "maps")
    tasks, config = prepare("fashion-mnist", url, checkpoint, {}, shard_size=4, limit=4)
    only_gradient = ShardTask(tasks[0].shard, ("gradient",))
    ShardAttributor(config, threads=1).process_shard(only_gradient)
    stored = read_maps(url, "gradient")
    model, spec = load_checkpoint(checkpoint)
    model.eval()
    images, _ = fashion_mnist("test", 4)
    x = preprocess(spec, images, torch.device("cpu"))
    target = model(x).argmax(1)
    direct = attribution.reduce_map(attribution.get("gradient", model).attribute(x, target=target).float(),
                                    "signed_max_abs").numpy().astype(np.float16)
    assert list(stored.target) == target.tolist()
    np.testing.assert_array_equal(np.stack(stored["map"]), direct)


IMPORT_AHEAD_PROBE = """
import sys, threading
from attribution import MethodSpec
from workers.attributor import ShardAttributor
from workers.tasks import JobConfig
before = [m for m in ("captum.attr", "zarr") if m in sys.modules]
config = JobConfig(source="fashion-mnist", checkpoint=sys.argv[1], output=sys.argv[2],
                   methods=(MethodSpec("pathway"), MethodSpec("gradient")), device="cpu")
ShardAttributor(config.to_dict(), threads=1)
for thread in threading.enumerate():
    if thread.name == "import-ahead":
        thread.join(timeout=60)
print(before, [m for m in ("captum.attr", "zarr") if m in sys.modules])
"""


def test_worker_imports_what_the_first_shard_needs_in_the_background(checkpoint, tmp_path) -> None:
    """zarr (for the first write) loads beside the first shard, not inside it; the default methods
    (pathway, gradient) never import captum."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", IMPORT_AHEAD_PROBE, checkpoint, str(tmp_path / "maps")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['zarr']"


def test_an_all_bad_shard_commits_its_errors_and_mixed_images_are_mapped(tmp_path, checkpoint) -> None:
    """Shards of 4 over a folder sorted so that one shard holds only bad files: it commits with zero
    maps; RGB, RGBA and 56 px images beside grayscale ones reach the 28 px grayscale model."""
    src, url = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 4)
    files = {"a/0.png": png_bytes(images[0]), "a/1.jpg": png_bytes(images[1], "RGB", "JPEG", size=56),
             "a/2.png": png_bytes(images[2], "RGBA"), "a/3.png": png_bytes(images[3], "LA", size=20),
             "b/0.png": b"", "b/1.png": b"not an image", "b/2.jpg": png_bytes(images[0])[:50], "b/3.png": b"\0" * 9}
    for rel, data in files.items():
        put(os.path.join(src, rel), {}, data)
    tasks, config = prepare(src, url, checkpoint, {}, shard_size=4)
    worker = ShardAttributor(config, threads=1)
    results = [worker.process_shard(task) for task in tasks]
    assert [(r.samples, r.errors) for r in results] == [(4, 0), (0, 4)]
    for method in METHODS:
        maps, errors = read_maps(url, method), read_errors(url, method)
        assert list(maps.sample_id) == ["a/0.png", "a/1.jpg", "a/2.png", "a/3.png"]
        assert all(m.shape == (28, 28) and np.isfinite(m).all() for m in maps["map"])
        assert list(errors.sample_id) == ["b/0.png", "b/1.png", "b/2.jpg", "b/3.png"] and set(errors.kind) == {"decode"}
        assert errors.reason.str.contains(str(tmp_path / "folder" / "b")).all()
        assert not errors.reason.str.contains("object at 0x").any()
        assert np.isnan(maps_array(url, method)[4:8]).all()


def test_labels_follow_the_driver_mapping_and_target_label_needs_one(tmp_path, checkpoint) -> None:
    """The worker stores the model's class index the driver mapped names to; with --target label a
    sample without a label is an error row of kind label, the others are explained for their label."""
    from storage.sources import FASHION_MNIST_CLASSES, match_labels

    src, url = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 6)
    for i in range(5):
        put(os.path.join(src, FASHION_MNIST_CLASSES[labels[i]].replace("/", "_"), f"{i}.png"), {}, png_bytes(images[i]))
    put(os.path.join(src, "root.png"), {}, png_bytes(images[5]))
    source = open_source(src)
    match = match_labels(source.classes, source.label_kind, FASHION_MNIST_CLASSES)
    tasks, config = prepare(src, url, checkpoint, {}, shard_size=8)
    config = JobConfig(**{**config.__dict__, "target": "label", "source_format": source.kind,
                          "source_classes": tuple(source.classes), "label_map": match.label_map})
    ShardAttributor(config.to_dict(), threads=1).process_shard(tasks[0])
    maps, errors = read_maps(url, "gradient"), read_errors(url, "gradient")
    expected = {f"{FASHION_MNIST_CLASSES[labels[i]].replace('/', '_')}/{i}.png": int(labels[i]) for i in range(5)}
    assert dict(zip(maps.sample_id, maps.label)) == expected and (maps.target == maps.label).all()
    assert errors.to_dict("records")[0] | {"shard_id": None} == {
        "sample_id": "root.png", "reason": "root.png has no label; --target label needs one", "kind": "label",
        "method": "gradient", "shard_id": None}


def test_a_failure_that_is_not_the_data_s_names_the_shard(tmp_path, checkpoint) -> None:
    """Every sample fails attribution alone (a Grad-CAM layer with no spatial output): the worker raises
    one line naming the shard and the cause, and commits nothing."""
    from workers.attributor import ShardFailed, failure_line

    url = str(tmp_path / "maps")
    tasks, config = prepare("fashion-mnist", url, checkpoint, {}, shard_size=4, limit=4)
    config = JobConfig(**{**config.__dict__, "methods": (MethodSpec("grad_cam", {"layer": "fc"}),)})
    with pytest.raises(ShardFailed) as info:
        ShardAttributor(config, threads=1).process_shard(ShardTask(tasks[0].shard, ("grad_cam",)))
    line = failure_line(info.value)
    assert line.startswith("shard 000000 (4 samples from 'fashion-mnist/test/00000') failed on worker ")
    assert "AttributionError" in line and "fc" in line and "\n" not in line
    assert MapStore(url).committed("grad_cam") == {}


def test_a_plan_segment_that_cannot_be_read_fails_the_block_in_one_line(tmp_path, checkpoint, monkeypatch) -> None:
    """The actor reads its shards' samples from the plan: a read that fails transiently (the store
    throttles past its retry budget) raises TransientShardFailure, which Ray Data retries
    (jobs.mapping.actor_pool); a segment that is gone is a ShardFailed that stops the job. Both in one line
    naming the segment; a retry reads the segment again."""
    from workers import shard_source
    from workers.attributor import ShardFailed, TransientShardFailure, failure_line

    url = str(tmp_path / "out")
    tasks, config = prepare("fashion-mnist", url, checkpoint, {}, shard_size=4, limit=8)
    worker = ShardAttributor(config, threads=1)
    real = shard_source.read_segment
    calls = []

    def throttled(where, segment):
        calls.append(segment)
        if len(calls) == 1:
            raise ConnectionError("SlowDown: please reduce your request rate")
        return real(where, segment)

    monkeypatch.setattr(shard_source, "read_segment", throttled)
    with pytest.raises(TransientShardFailure) as info:
        worker(batch_of(tasks, blocks=1))
    assert failure_line(info.value).startswith("shard plan _plan/shards.parquet could not be read on worker ")
    assert "ConnectionError: SlowDown" in failure_line(info.value)
    assert list(worker(batch_of(tasks, blocks=1))["samples"]) == [4, 4] and len(calls) == 2  # the retry

    (tmp_path / "out" / "_plan" / "shards.parquet").unlink()
    with pytest.raises(ShardFailed) as info:
        ShardAttributor(config, threads=1)(batch_of(tasks, blocks=1))
    assert not isinstance(info.value, TransientShardFailure) and "_plan/shards.parquet" in failure_line(info.value)


def test_a_retried_block_skips_finished_shards_and_finishes_unpublished_ones(tmp_path, checkpoint) -> None:
    """Ray Data hands a block of shard rows to ``__call__`` and retries it whole: shards already
    committed and published are skipped; one whose attempt died after its commit record, before
    publishing, is written again (the same bytes), which publishes it and flags its zarr rows."""
    url = str(tmp_path / "out")
    tasks, config = prepare("fashion-mnist", url, checkpoint, {}, shard_size=6, limit=18)
    worker = ShardAttributor(config, threads=1)
    worker.process_shard(tasks[0])
    worker.process_shard(tasks[1])
    published = tmp_path / "out" / "maps" / "gradient" / "000001.parquet"
    pending = tmp_path / "out" / "_pending" / "maps" / "gradient" / "000001.parquet"
    pending.parent.mkdir(parents=True, exist_ok=True)
    published.rename(pending)  # as if the actor died between shard 1's commit record and its publication
    before = every_file(url)
    out = worker(batch_of(tasks, blocks=1))
    assert list(out["shard_id"]) == ["000000", "000001", "000002"]
    assert list(out["samples"]) == [0, 6, 6]  # shard 0 skipped; shard 1 (gradient only) and 2 computed
    after = every_file(url)
    assert after["maps/gradient/000001.parquet"] == before["_pending/maps/gradient/000001.parquet"]
    assert all(after[p] == b for p, b in before.items() if not p.startswith("_pending/") and "000001" not in p
               and not p.startswith("zarr/"))
    assert not np.isnan(maps_array(url, "gradient")[:18]).any()
