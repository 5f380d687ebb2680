"""Labels by name: a source's class names against a checkpoint's (storage.sources.classes)."""

from __future__ import annotations

from storage.sources import FASHION_MNIST_CLASSES, match_labels, normalize_class_name
from storage.sources.classes import classes_of


def test_normalization_ignores_case_and_separators():
    for written in ("T-shirt/top", "t_shirt_top", "T SHIRT  TOP", "t-shirt-top", " T_shirt/Top "):
        assert normalize_class_name(written) == "t shirt top"
    assert normalize_class_name("Ankle_boot") == normalize_class_name("ankle boot") == "ankle boot"
    assert normalize_class_name("Sneaker") != normalize_class_name("Sneakers")


def test_names_in_another_order_map_to_the_checkpoint_indices():
    folders = sorted(name.replace("/", "_").replace(" ", "_") for name in FASHION_MNIST_CLASSES)
    assert folders[0] == "Ankle_boot"  # sorted folders are not the checkpoint's order
    match = match_labels(folders, "names", FASHION_MNIST_CLASSES)
    assert match.kind == "model" and match.labels_are_model_classes and match.warning is None
    assert [FASHION_MNIST_CLASSES[i] for i in match.label_map] == sorted(
        FASHION_MNIST_CLASSES, key=lambda n: n.replace("/", "_").replace(" ", "_"))
    subset = match_labels(["bag", "COAT"], "names", FASHION_MNIST_CLASSES)
    assert subset.label_map == (8, 4) and subset.classes == tuple(FASHION_MNIST_CLASSES)
    assert subset.to_dict()["mapped"] == {"bag": 8, "COAT": 4}


def test_unmatched_names_keep_source_indices_with_a_warning():
    match = match_labels(["n01440764", "n01443537", "Bag"], "names", FASHION_MNIST_CLASSES)
    assert match.kind == "source" and not match.labels_are_model_classes and match.label_map is None
    assert match.classes == ("n01440764", "n01443537", "Bag")
    assert "2 of the source's 3 class names ('n01440764', 'n01443537')" in match.warning
    assert "--target label is refused" in match.warning
    twice = match_labels(["T-shirt_top", "t shirt top"], "names", FASHION_MNIST_CLASSES)
    assert twice.kind == "source"  # two source classes on one model class: not a mapping


def test_integer_labels_stay_and_missing_labels_are_none():
    assert match_labels(["0", "1", "2"], "integers", FASHION_MNIST_CLASSES).label_map is None
    too_many = match_labels([str(i) for i in range(12)], "integers", FASHION_MNIST_CLASSES)
    assert too_many.kind == "integers" and "go up to 11" in too_many.warning
    assert match_labels([], "none", FASHION_MNIST_CLASSES).kind == "none"
    assert classes_of([3, "1", None, ""]) == (["0", "1", "2", "3"], "integers")
    assert classes_of(["cat", 1, None]) == (["1", "cat"], "names")
    assert classes_of([None, ""]) == ([], "none")


def test_a_model_that_names_no_classes():
    """Its class names are 0..K-1: a source whose indices are its own data (an IDX labels file, HF
    ClassLabel) keeps them; names in sorted order (folders) cannot be matched and say so."""
    unnamed = [str(i) for i in range(10)]
    idx = match_labels(FASHION_MNIST_CLASSES, "names", unnamed, intrinsic=True)
    assert idx.kind == "integers" and idx.warning is None and idx.labels_are_model_classes
    folders = match_labels(sorted(FASHION_MNIST_CLASSES), "names", unnamed)
    assert folders.kind == "source" and "names no classes" in folders.warning
