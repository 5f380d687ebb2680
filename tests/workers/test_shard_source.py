"""workers.shard_source.ShardSource: what a source is planned from, and one shard read as labelled batches."""

from __future__ import annotations

import numpy as np

from storage.maps.plan import update_plan
from storage.maps.sink import MapSink
from storage.sources import FASHION_MNIST_CLASSES, RowFile, match_labels, open_source
from tests.helpers import fashion_mnist, png_bytes, put, write_folder
from workers.shard_source import ShardSource
from workers.tasks import ShardTask


def test_row_addressable_sources_are_planned_by_ranges_and_others_by_samples(tmp_path) -> None:
    idx = open_source("fashion-mnist")
    listing = ShardSource(idx, MapSink(str(tmp_path / "new")).where).listing(limit=30)
    assert all(isinstance(x, RowFile) for x in listing) and sum(f.rows for f in listing) == 30
    # An output planned sample by sample (as every output was before ranges) stays so.
    old = MapSink(str(tmp_path / "old")).where
    update_plan(old, idx.list(limit=10), 5)
    assert ShardSource(idx, old).listing(limit=30) == idx.list(limit=30)
    names = write_folder(str(tmp_path / "folder"), None, np.zeros((2, 28, 28, 1), np.uint8), np.array([4, 4]))
    folder = open_source(str(tmp_path / "folder"))
    assert [r.sample_id for r in ShardSource(folder, MapSink(str(tmp_path / "f")).where).listing()] == names


def test_a_shard_is_read_in_batches_with_its_labels_mapped_and_bad_samples_as_error_rows(tmp_path) -> None:
    """Labels become the model's class indices; with target="label" a sample without one is an error
    row of kind label, like an undecodable file (kind decode); the ids come in source order."""
    src = str(tmp_path / "folder")
    images, labels = fashion_mnist("test", 3)
    for i in range(3):
        put(f"{src}/{FASHION_MNIST_CLASSES[labels[i]].replace('/', '_')}/{i}.png", {}, png_bytes(images[i]))
    put(f"{src}/root.png", {}, png_bytes(images[0]))
    put(f"{src}/zbad.png", {}, b"not an image")
    source = open_source(src)
    match = match_labels(source.classes, source.label_kind, FASHION_MNIST_CLASSES)
    shards = ShardSource(source, MapSink(str(tmp_path / "out")).where, label_map=match.label_map, target="label",
                         num_classes=len(FASHION_MNIST_CLASSES))
    plan, _ = shards.plan(shards.listing(), 8)
    ids, batches = shards.read(ShardTask(plan.shards[0], ("m",)), batch_size=2)
    assert ids == [r.sample_id for r in source.list()]
    batches = list(batches)
    assert [len(samples) + len(errors) for samples, errors in batches] == [2, 2, 1]
    samples = [s for part, _ in batches for s in part]
    errors = {e.sample_id: e.kind for _, part in batches for e in part}
    assert {s.sample_id: s.label for s in samples} == {
        f"{FASHION_MNIST_CLASSES[labels[i]].replace('/', '_')}/{i}.png": int(labels[i]) for i in range(3)}
    assert errors == {"root.png": "label", "zbad.png": "decode"}
