"""storage.maps.reader and every other reader of the storage package reach the store as the jobs do: given
no storage_options, from ``$STORAGE_OPTIONS`` (JSON or ``@file``), against the real S3 server; the
options a caller passes are never changed (issue #26: ``storage.read_maps('s3://…')`` went to AWS)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from storage import (MapStore, SampleError, StorageError, open_source, read_errors, read_maps, read_maps_table,
                     read_run, read_shard)
from storage.checkpoints import load_checkpoint, load_metrics
from storage.io.fs import STORAGE_OPTIONS_ENV, join
from storage.io.location import put_url
from storage.io.outputs import top_entries
from storage.maps.reader import maps_array
from tests.helpers import MAP_SHAPE, fashion_mnist, map_records, write_folder

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "weights" / "resnet8-fashion-mnist.pt"
IDS = [f"id{i:02d}" for i in range(8)]


@pytest.fixture
def written(s3_server) -> tuple[str, dict]:
    """A small map dataset on S3 (two shards, one error row, run.json), written with explicit options."""
    url, options = s3_server.url(f"reader-{uuid.uuid4().hex[:10]}"), s3_server.storage_options
    store = MapStore(url, options)
    store.write_run({"config": {"methods": ["pathway"]}, "params": {}})
    store.ensure_zarr("pathway", n=8, shape=MAP_SHAPE, shard_size=4)
    store.write_shard("s0", 0, "pathway", map_records(IDS[:4]), sample_ids=IDS[:4])
    store.write_shard("s1", 1, "pathway", map_records(IDS[4:7], seed=1), [SampleError(IDS[7], "broken")],
                      sample_ids=IDS[4:])
    return url, options


def every_reader(url: str, options: dict | None) -> dict[str, object]:
    """What each reader of a map dataset gives, called with ``options`` (None: the environment's)."""
    return {"read_maps": read_maps(url, "pathway", options).sample_id.tolist(),
            "read_maps_table": read_maps_table(url, None, options).num_rows,
            "read_shard": read_shard(url, "pathway", "s1", options).sample_id.tolist(),
            "read_errors": read_errors(url, "pathway", options).sample_id.tolist(),
            "read_run": read_run(url, options)["config"],
            "maps_array": int(np.isfinite(maps_array(url, "pathway", options)[:]).all(axis=(1, 2)).sum()),
            "MapStore": sorted(MapStore(url, options).committed("pathway")),
            "top_entries": sorted(top_entries(url, options))}


EXPECTED = {"read_maps": IDS[:7], "read_maps_table": 7, "read_shard": IDS[4:7], "read_errors": [IDS[7]],
            "read_run": {"methods": ["pathway"]}, "maps_array": 7, "MapStore": ["s0", "s1"]}


def test_every_map_reader_follows_the_variable_and_its_file_form(written, monkeypatch, tmp_path):
    url, options = written
    given = copy.deepcopy(options)
    explicit = every_reader(url, given)
    assert given == options  # nothing the readers call changed the caller's dict
    assert {k: explicit[k] for k in EXPECTED} == EXPECTED
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(options))
    assert every_reader(url, None) == explicit
    (tmp_path / "o.json").write_text(json.dumps(options))
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, f"@{tmp_path}/o.json")
    assert every_reader(url, None) == explicit


def test_wrong_options_in_the_variable_are_the_stores_refusal(written, monkeypatch):
    """The variable is really what the readers use: a wrong secret there is refused by the store."""
    url, options = written
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({**options, "secret": "wr0ng-S3CRET-env"}))
    with pytest.raises(StorageError, match="credentials") as err:
        read_maps(url, "pathway")
    assert "wr0ng-S3CRET-env" not in str(err.value)
    assert read_maps(url, "pathway", options).sample_id.tolist() == IDS[:7]  # given options win


def test_sources_and_checkpoints_follow_the_variable(s3_server, monkeypatch):
    root, options = s3_server.url(f"reach-{uuid.uuid4().hex[:10]}"), s3_server.storage_options
    images, labels = fashion_mnist("test", 4)
    write_folder(join(root, "images"), options, images, labels)
    put_url(join(root, "model.pt"), SHIPPED.read_bytes(), options)
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(options))
    source = open_source(join(root, "images"))
    assert len(source.list()) == 4
    assert source.storage_options == options and source.storage_options is not options
    model, spec = load_checkpoint(join(root, "model.pt"))
    assert spec.arch == "resnet8" and load_metrics(join(root, "model.pt")) == load_metrics(str(SHIPPED))
