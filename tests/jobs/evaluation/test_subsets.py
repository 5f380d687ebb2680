"""jobs.evaluation.subsets: the seeded, class-stratified subsets behind every --*-limit, on the case of issue #27 (a
class-sorted folder, where "the first N" is one class)."""

from __future__ import annotations

import numpy as np

from jobs.evaluation.subsets import describe, ref_labels, stratified_indices, subset_record
from storage.sources import open_source
from tests.helpers import fashion_mnist, write_folder

SORTED = np.repeat(np.arange(10), 100)  # a class-sorted split of 1000: what an image folder lists


def test_a_class_sorted_split_gives_every_class_its_share():
    keep = stratified_indices(SORTED, 100, seed=0)
    assert keep.size == 100 and np.all(np.diff(keep) > 0)  # source order, no repeats
    assert np.bincount(SORTED[keep]).tolist() == [10] * 10
    assert np.bincount(SORTED[:100]).max() == 100  # the old "first 100": one class


def test_it_is_seeded_exact_and_keeps_unequal_shares():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    a, b = stratified_indices(labels, 7, seed=3), stratified_indices(labels, 7, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, stratified_indices(labels, 7, seed=4))
    # shares 3.5, 2.1, 1.4: floors 3, 2, 1 and the one left over to the largest remainder (class 0)
    assert np.bincount(labels[a]).tolist() == [4, 2, 1]
    assert stratified_indices(labels, None).tolist() == list(range(100))
    assert stratified_indices(labels, 500).tolist() == list(range(100))


def test_the_record_says_how_and_warns_about_an_imbalanced_subset():
    fine = subset_record(SORTED[stratified_indices(SORTED, 100)], 10, total=1000, limit=100)
    assert fine["subset"] == "stratified by class, seed 0" and not fine["imbalanced"] and fine["warning"] is None
    assert describe(fine) == ("samples: a stratified by class, seed 0 subset of 100 of 1000 (10 of 10 classes, "
                              "largest 10 %)")
    one_class = subset_record(SORTED[:100], 10, total=1000, limit=100)
    assert one_class["imbalanced"] and one_class["largest_class_share"] == 1.0
    assert "largest class holds 100 %" in one_class["warning"] and "1 of 10 classes" in one_class["warning"]
    # Two classes of ten at 50 % each: above 2 x 1/10.
    assert subset_record(np.array([0, 1] * 10), 10, total=20, limit=None)["imbalanced"]
    assert not subset_record(np.array([0, 1] * 10), 2, total=20, limit=None)["imbalanced"]


def test_labels_are_known_without_decoding_for_idx_and_class_folders(tmp_path):
    idx = open_source("fashion-mnist", split="test")
    refs = idx.list()[:50]
    assert ref_labels(idx, refs).tolist() == fashion_mnist("test", 50)[1].tolist()
    images, labels = fashion_mnist("test", 30)
    order = np.argsort(labels, kind="stable")
    write_folder(str(tmp_path / "folder"), None, images[order], labels[order])
    folder = open_source(str(tmp_path / "folder"))
    refs = folder.list()
    expected = [folder.classes.index(r.sample_id.split("/")[0]) for r in refs]
    assert ref_labels(folder, refs).tolist() == expected


def test_folder_labels_become_the_models_class_indices(tmp_path):
    """An image folder numbers classes in sorted name order ('Ankle boot' first); the model's order differs."""
    from jobs.evaluation.inputs import load_samples
    from models import fashion_mnist_spec

    images, labels = fashion_mnist("test", 40)
    write_folder(str(tmp_path / "folder"), None, images, labels)
    folder = open_source(str(tmp_path / "folder"))
    _, got, ids = load_samples(folder, 20, spec=fashion_mnist_spec())
    assert folder.classes[0] == "Ankle boot"  # its own index 0; the model's 9
    by_file = {int(s.split("/")[1].split(".")[0]): y for s, y in zip(ids, got)}  # write_folder numbers the images
    assert len(by_file) == 20 and all(by_file[i] == int(labels[i]) for i in by_file)
    assert len(set(got.tolist())) >= 8  # stratified: not the first classes of the folder only
