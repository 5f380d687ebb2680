"""Labels by name: a source's class names against a model's, and raw labels to class indices.

A source's labels are indices into its ``classes``. Jobs store labels as the *model's* class indices
whenever that is possible (:func:`match_labels`):

- the source's labels are integers already (IDX, Parquet without class names, a labels column of
  numbers, class directories named 0, 1, ...): they are kept as they are;
- the source has class names, and every one of them equals one of the model's ``class_names`` after
  :func:`normalize_class_name` (case, and ``_``, ``-``, ``/`` or spaces between words): labels become
  the model's indices, whatever order the source lists its classes in;
- the model names no classes (its ``class_names`` are the default "0".."K-1") and the source's label
  indices are its own data rather than an order of names (IDX labels files, Parquet label columns,
  ``Source.intrinsic_indices``): they are kept, as integers are;
- otherwise the labels stay the source's own indices into its class list, and the match carries a
  warning saying so (``label == predicted`` then means nothing, and a job refuses ``--target label``).

Tested by tests/storage/test_labels.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_SEPARATORS = re.compile(r"[\s_/\-]+")


def normalize_class_name(name: str) -> str:
    """``"Ankle_boot"``, ``"ankle-boot"`` and ``"Ankle boot"`` -> ``"ankle boot"``; ``"T-shirt/top"`` and
    ``"t_shirt_top"`` -> ``"t shirt top"``: case folded, runs of spaces, ``_``, ``-`` and ``/`` made
    one space, the ends stripped."""
    return _SEPARATORS.sub(" ", str(name).casefold()).strip()


def integer_label(value: object) -> int | None:
    """``value`` as a non-negative class index if it is one (an int, or text such as "7"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def classes_of(raw_labels: Iterable[object]) -> tuple[list[str], str]:
    """The class list and label kind of a source whose samples carry ``raw_labels`` (None = no label):
    integers -> ("0".."max", "integers"); any name -> (sorted names, "names"); none -> ([], "none")."""
    present = [label for label in raw_labels if label is not None and str(label).strip() != ""]
    if not present:
        return [], "none"
    numbers = [integer_label(label) for label in present]
    if all(n is not None for n in numbers):
        return [str(i) for i in range(max(numbers) + 1)], "integers"  # type: ignore[type-var]
    return sorted({str(label).strip() for label in present}), "names"


def kind_of_classes(classes: Sequence[str]) -> str:
    """The label kind of a given class list: "none" when empty, "integers" for "0".."K-1", else "names"."""
    if not classes:
        return "none"
    return "integers" if list(classes) == [str(i) for i in range(len(classes))] else "names"


@dataclass(frozen=True)
class LabelMatch:
    """How a job stores a source's labels for one model.

    ``kind``: ``"model"`` (names matched: labels are the model's indices via ``label_map``),
    ``"integers"`` (kept), ``"source"`` (names did not match: the source's own indices) or ``"none"``.
    ``classes`` is the list the stored labels index; ``warning`` is set when labels are not the model's.
    """

    kind: str
    classes: tuple[str, ...]
    label_map: tuple[int, ...] | None = None
    warning: str | None = None
    source_classes: tuple[str, ...] = ()

    @property
    def labels_are_model_classes(self) -> bool:
        return self.kind in ("model", "integers")

    @property
    def describe(self) -> str:
        """How labels are stored, in words (for job summaries)."""
        return {"model": "class names matched to the checkpoint's indices", "integers": "integer labels, kept",
                "source": "the source's own class indices (names do not match the checkpoint's)",
                "none": "none (the source has no labels)"}[self.kind]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "classes": list(self.classes), "warning": self.warning,
                "mapped": None if self.label_map is None else dict(zip(self.source_classes, self.label_map))}


def match_labels(source_classes: Sequence[str], label_kind: str, model_classes: Sequence[str],
                 intrinsic: bool = False) -> LabelMatch:
    """Decide how labels of a source with ``source_classes`` (its ``label_kind``; ``intrinsic``: its
    label indices are data, not an order of names) are stored for a model with ``model_classes``
    (see the module docstring)."""
    model = [str(c) for c in model_classes]
    unnamed = kind_of_classes(model) == "integers"
    if label_kind == "none":
        return LabelMatch("none", ())
    if label_kind == "integers" or (unnamed and intrinsic and label_kind == "names"):
        warning = None
        if len(source_classes) > len(model):
            warning = (f"the source's integer labels go up to {len(source_classes) - 1}, but the model has "
                       f"{len(model)} classes: labels above {len(model) - 1} name no class of the model")
        return LabelMatch("integers", tuple(model), warning=warning)
    by_name: dict[str, list[int]] = {}
    for index, name in enumerate(model):
        by_name.setdefault(normalize_class_name(name), []).append(index)
    mapping, unmatched = [], []
    for name in source_classes:
        hits = by_name.get(normalize_class_name(name), [])
        if len(hits) == 1:
            mapping.append(hits[0])
        else:
            unmatched.append(name)
    if not unmatched and len(set(mapping)) == len(mapping):
        return LabelMatch("model", tuple(model), tuple(mapping), source_classes=tuple(source_classes))
    shown = ", ".join(repr(n) for n in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
    if unnamed:
        warning = (f"the checkpoint names no classes (class_names are 0..{len(model) - 1}), so the source's "
                   f"{len(source_classes)} class names ({shown}) cannot be matched: labels are stored as the source's "
                   "own indices in sorted name order (run.json labels.classes), which are the model's only if it was "
                   "trained with that order; --target label is refused")
        return LabelMatch("source", tuple(source_classes), warning=warning, source_classes=tuple(source_classes))
    warning = (f"{len(unmatched) or 'some'} of the source's {len(source_classes)} class names ({shown}) match none of "
               f"the model's class_names ({', '.join(repr(n) for n in model[:5])}{' ...' if len(model) > 5 else ''}) "
               "after normalizing case and _ - / spaces: labels are stored as the source's own class indices "
               "(run.json labels.classes), so label == predicted means nothing and --target label is refused")
    return LabelMatch("source", tuple(source_classes), warning=warning, source_classes=tuple(source_classes))
