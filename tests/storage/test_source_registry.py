"""The source format table (storage.sources.registry) is the one home of the formats: a format added as
one row is detected, opened, accepted by --source-format and named in its help and errors, with no
other edit; the rows agree with their Source classes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from jobs.runtime.cli import source_format, source_format_help
from storage.io.fs import InvalidStorageInput
from storage.sources import NO_LABEL, Sample, SampleError, SampleRef, Source, load_arrays, open_source, registry
from storage.sources.registry import REGISTRY, SourceFormat, accepted_names, known_formats


class NpySource(Source):
    """A folder of ``.npy`` files, one uint8 [H, W, C] image each, unlabeled: a format the project does not have."""

    kind = "npy"

    def __init__(self, url: str, split: str = "test", storage_options: dict | None = None,
                 classes: Sequence[str] | None = None):
        self.url, self.storage_options = url, storage_options
        self.classes, self.label_kind = list(classes or ()), "none"

    def list(self, limit: int | None = None) -> list[SampleRef]:
        names = sorted(n for n in os.listdir(self.url) if n.endswith(".npy"))
        return [SampleRef(n, n) for n in names][:limit]

    def read(self, refs: Sequence[SampleRef]) -> Iterator[Sample | SampleError]:
        for ref in refs:
            yield Sample(ref.sample_id, np.load(os.path.join(self.url, str(ref.locator))), NO_LABEL)


NPY = SourceFormat("npy", NpySource, "NumPy .npy files, one image each", aliases=("numpy",), extensions=(".npy",),
                   in_listing=lambda names: any(n.endswith(".npy") for n in names))


@pytest.fixture
def with_npy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "REGISTRY", (*REGISTRY, NPY))


def test_a_format_added_to_the_table_is_detected_opened_and_accepted_everywhere(with_npy, tmp_path) -> None:
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full((4, 5, 1), i, np.uint8))
    source = open_source(str(tmp_path))
    assert isinstance(source, NpySource) and source.kind == "npy"
    images, labels, ids = load_arrays(source)
    assert images.shape == (3, 4, 5, 1) and list(labels) == [NO_LABEL] * 3 and ids == ["0.npy", "1.npy", "2.npy"]
    assert isinstance(open_source(str(tmp_path), kind="NumPy"), NpySource)
    assert registry.by_extension("s3://bucket/x.NPY") == "npy"
    assert source_format("npy") == "npy" and source_format("numpy") == "npy"
    assert "npy (numpy)" in source_format_help() and "npy: NumPy .npy files" in registry.known_formats()
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown source format 'zip'; known formats: .*npy: NumPy"):
        source_format("zip")


def test_the_cli_type_accepts_exactly_the_tables_names_and_aliases() -> None:
    accepted = accepted_names()
    assert len(set(accepted)) == len(accepted), "a name or alias is given to two formats"
    for value in accepted:
        name = source_format(value.upper())
        assert name in registry.format_names() and (value == name or value in registry.get_format(name).aliases)
    for value in ("npy", "zip", "images", "fashion-mnist", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown source format"):
            source_format(value)
    help_text = source_format_help()
    assert all(value in help_text for value in accepted)


def test_each_row_names_its_source_class_and_describes_itself() -> None:
    for fmt in REGISTRY:
        assert fmt.source.kind == fmt.name and fmt.description and fmt.name in known_formats()
    with pytest.raises(InvalidStorageInput, match="known formats: idx: MNIST-style"):
        registry.get_format("zip")


def test_detection_follows_the_table_order_data_files_before_images() -> None:
    assert registry.in_listing(["train-images-idx3-ubyte", "a.parquet"]) == "idx"
    assert registry.in_listing(["a.png", "b.parquet"]) == "parquet"
    assert registry.in_listing(["a.png", "s-0.tar"]) == "webdataset"
    assert registry.in_listing(["a.png", "labels.csv"]) == "labeled-folder"
    assert registry.in_listing(["notes.csv"]) is None  # a lone table beside class folders is not a labels file
    assert registry.in_listing(["a.png"]) == "folder" and registry.in_listing(["a.txt"]) is None
    assert [registry.by_extension(n) for n in ("x.parquet", "x.tar", "x.tsv", "x.jsonl", "x.png")] == [
        "parquet", "webdataset", "index", "index", None]
