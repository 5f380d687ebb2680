"""Model specs, and building the model a spec names. Pure torch: no file or network I/O
except torchvision's own download of pretrained weights when asked for.

A :class:`ModelSpec` holds everything a job needs to rebuild a classifier and feed it: the
architecture (:mod:`models.archs`) and its keyword arguments, its input shape, the
normalization and the class names. Checkpoints
store the spec next to the weights, so preprocessing travels with the model, not with
the data reader.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models import archs, trust
from models.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD


class ModelError(ValueError):
    """A spec that cannot be built: unknown arch, inconsistent fields, input too small, no weights."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: How images reach the model's input size (``ModelSpec.resize``; models.preprocess does it):
#: ``plain`` resizes to (H, W), not keeping the aspect ratio (what jobs.train has always trained with);
#: ``center_crop`` resizes the shorter side to ``resize_size`` and crops the center (H, W), as
#: torchvision's eval transforms (Resize(resize_size) + CenterCrop(H, W)) do.
RESIZE_POLICIES = ("plain", "center_crop")


@dataclass(frozen=True)
class ModelSpec:
    """What a classifier is and how its inputs are prepared.

    ``input_size`` is (H, W) of the tensor the model sees; ``mean`` / ``std`` have one
    entry per input channel and apply to pixels scaled to [0, 1]. ``class_names`` may be
    left empty, in which case the classes are named "0" .. "K-1".

    ``resize`` (one of :data:`RESIZE_POLICIES`) and ``resize_size`` (the shorter side before the
    center crop; default the larger of H and W) say how any image reaches ``input_size``;
    ``background`` is the gray level in [0, 1] that transparent pixels are composited on. Specs
    stored without these fields (checkpoint format 1 as written before dda3aa8) get the defaults,
    which are what those checkpoints were trained with: a plain resize, and no transparency in the
    training data.
    """

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    resize: str = "plain"
    resize_size: int | None = None
    background: float = 0.0

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ModelError(f"invalid ModelSpec for arch {self.arch!r}: {msg}")

        if not isinstance(self.arch, str) or not self.arch:
            fail("arch must be a non-empty string")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{name} must be a positive int, got {value!r}")
        size = tuple(self.input_size) if isinstance(self.input_size, Sequence) else (self.input_size,)
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            fail(f"input_size must be (H, W) positive ints, got {self.input_size!r}")
        try:  # a checkpoint's spec is untrusted data: a field of the wrong type is one line, not a traceback
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
        except (TypeError, ValueError):
            fail(f"mean and std must be lists of numbers, got mean={reprlib.repr(self.mean)}, "
                 f"std={reprlib.repr(self.std)}")
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            fail(f"mean and std need one value per input channel ({self.in_channels}), got {len(mean)} and {len(std)}")
        if any(not math.isfinite(v) for v in mean) or any(not (math.isfinite(v) and v > 0) for v in std):
            fail(f"mean must be finite and std finite and > 0, got mean={mean}, std={std}")
        if isinstance(self.class_names, (str, bytes, Mapping)) or not isinstance(self.class_names, Iterable):
            fail(f"class_names must be a list of names, got {reprlib.repr(self.class_names)}")
        names = [str(n) for n in self.class_names] or [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            fail(f"{len(names)} class_names for num_classes={self.num_classes}")
        if not isinstance(self.arch_kwargs or {}, Mapping):
            fail(f"arch_kwargs must be a JSON object of keyword arguments, got {reprlib.repr(self.arch_kwargs)}")
        kwargs = dict(self.arch_kwargs or {})
        try:
            json.dumps(kwargs, allow_nan=False)
        except (TypeError, ValueError):
            fail(f"arch_kwargs must be plain JSON data (they are stored in the checkpoint), got {kwargs!r}")
        object.__setattr__(self, "arch_kwargs", kwargs)
        if self.resize not in RESIZE_POLICIES:
            fail(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        if self.resize_size is not None:
            if isinstance(self.resize_size, bool) or not isinstance(self.resize_size, int) or self.resize_size < 1:
                fail(f"resize_size must be a positive int or None, got {self.resize_size!r}")
            if self.resize != "center_crop":
                fail(f"resize_size applies to resize='center_crop', not {self.resize!r}")
            if self.resize_size < max(size):
                fail(f"resize_size {self.resize_size} is smaller than the crop {tuple(size)}: the shorter side "
                     "must be at least the crop's larger side")
        if isinstance(self.background, bool) or not isinstance(self.background, (int, float)) \
                or not 0.0 <= float(self.background) <= 1.0:
            fail(f"background must be a gray level in [0, 1], got {self.background!r}")
        object.__setattr__(self, "background", float(self.background))
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "class_names", names)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, not tuples)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
            "arch_kwargs": dict(self.arch_kwargs),
            "resize": self.resize,
            "resize_size": self.resize_size,
            "background": self.background,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ModelError(f"a ModelSpec must be a mapping, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        # Checkpoint format 1 saved before f21e580 (arch_kwargs) or dda3aa8 (resize, resize_size,
        # background) lacks some of these: they take their defaults.
        optional = {f.name for f in fields if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING}
        missing = sorted(known - set(data) - optional)
        if missing:
            raise ModelError(f"ModelSpec is missing field(s) {missing}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"ModelSpec has unknown field(s) {unknown}")
        return cls(**{k: data[k] for k in known if k in data})

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- known specs


def fashion_mnist_spec(arch: str = "resnet8") -> ModelSpec:
    """The default model: ResNet-8 on 28x28 grayscale Fashion-MNIST."""
    return ModelSpec(
        arch=arch, num_classes=10, in_channels=1, input_size=(28, 28),
        mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, class_names=list(FASHION_MNIST_CLASSES),
    )


def imagenet_spec(arch: str = "resnet50", input_size: tuple[int, int] = (224, 224)) -> ModelSpec:
    """An ImageNet classifier with torchvision's normalization, eval transform (shorter side to the
    weights' resize size, e.g. 232 or 256, then a center crop) and the 1000 class names (they ship
    with torchvision's code; no download)."""
    archs.resolve(arch)
    categories: list[str] = []
    resize_size = round(max(input_size) * 256 / 224)  # torchvision's classic Resize(256) + CenterCrop(224)
    try:
        weights = archs.tv_models().get_model_weights(arch).DEFAULT
        categories = list(weights.meta["categories"])
        crop, shorter = weights.transforms.keywords.get("crop_size"), weights.transforms.keywords.get("resize_size")
        if crop and shorter:
            resize_size = round(max(input_size) * int(shorter) / int(crop))
    except (ValueError, KeyError, AttributeError, TypeError):
        pass
    return ModelSpec(
        arch=arch, num_classes=1000, in_channels=3, input_size=input_size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=categories,
        resize="center_crop", resize_size=resize_size,
    )


# --------------------------------------------------------------------------- building


def available_archs() -> list[str]:
    """Named archs (ours and torchvision's); ``timm:<name>`` and import paths work too."""
    return archs.available()


def build_model(spec: ModelSpec, pretrained: bool = False, *, trust_code: str | Iterable[str] | None = ()) -> nn.Module:
    """Build the classifier ``spec`` names (:mod:`models.archs`), in train mode (call ``.eval()``
    to explain it), checked to take ``spec.input_size`` and to return ``num_classes`` logits.

    ``pretrained=True`` loads torchvision's default ImageNet weights (downloaded by torchvision
    into ``$TORCH_HOME``); a head of another size than 1000 classes and a first conv for
    ``in_channels != 3`` are then replaced (the new conv starts from the pretrained RGB filters,
    summed or repeated across channels).

    ``trust_code`` names the modules an import-path arch may import (models.trust): a spec read from
    a checkpoint is untrusted, and its code runs only where the caller says so.
    """
    arch = archs.resolve(spec.arch, trust_code=trust_code)
    if arch.torchvision:  # on meta, before initializing or downloading weights (torchvision imports torch._dynamo anyway)
        _check_forward(_on_meta(arch, spec), spec)
    if pretrained:
        model = _pretrained(spec, arch)
    else:
        model = arch.build(spec)
    if arch.torchvision:
        _check_parameters(model, spec)
    else:  # one real pass costs less than the meta kernels' import of torch._dynamo
        _check_forward(model, spec)
    return model


def _pretrained(spec: ModelSpec, arch: archs.Arch) -> nn.Module:
    if not arch.torchvision:
        raise ModelError(f"arch {spec.arch!r} has no pretrained weights here; train it with jobs.train, or save "
                         "your own weights as a checkpoint (python -m jobs.convert)")
    trust.check_builtin_kwargs(spec.arch, spec.arch_kwargs, archs.OWNED)
    try:
        weights = archs.tv_models().get_model_weights(spec.arch).DEFAULT
    except ValueError as err:
        raise ModelError(f"torchvision has no pretrained weights for {spec.arch!r}") from err
    try:
        model = archs.tv_models().get_model(spec.arch, weights=weights, **spec.arch_kwargs)
    except Exception as err:  # urllib / OSError / hash mismatch: all mean "no usable weights"
        raise ModelError(
            f"could not get pretrained weights for {spec.arch!r} from {weights.url}: {type(err).__name__}: {err}. "
            "The machine may have no network access; download the file elsewhere and place it in "
            f"{torch.hub.get_dir()}/checkpoints/, or train the model with jobs.train."
        ) from err
    head = next((n for n, m in reversed(list(model.named_modules()))
                 if isinstance(m, nn.Linear) and m.out_features == 1000), None)
    if head is not None and spec.num_classes != 1000:
        old = model.get_submodule(head)
        parent, _, attr = head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Linear(old.in_features, spec.num_classes))
    if spec.in_channels != 3:
        archs.replace_first_conv(model, spec.in_channels, pretrained=True)
    return model


def check_input_size(spec: ModelSpec, *, trust_code: str | Iterable[str] | None = ()) -> None:
    """Raise :class:`ModelError` when the architecture cannot take ``spec.input_size``.

    Builds the arch on the meta device and runs one forward pass there: exact, no memory and
    no math, but torch's meta kernels import torch._dynamo (once per process, and slow:
    benchmarks/RESULTS.md, "The distributed job"), so
    :func:`build_model` checks on the model it has just built instead.
    """
    _check_forward(_on_meta(archs.resolve(spec.arch, trust_code=trust_code), spec), spec)


def _on_meta(arch: archs.Arch, spec: ModelSpec) -> nn.Module:
    with torch.device("meta"):
        return arch.build(spec)


def _check_parameters(model: nn.Module, spec: ModelSpec) -> torch.device:
    """The device of ``model``'s first parameter; a :class:`ModelError` when it has none (nothing to load
    from a checkpoint, nothing to train: not a classifier)."""
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ModelError(f"arch {spec.arch!r} builds {type(model).__name__}, which has no parameters; an arch must "
                         "build a classifier with weights")
    return first.device


def _check_forward(model: nn.Module, spec: ModelSpec) -> None:
    """One forward pass of one blank input on ``model``'s device, in eval mode, without gradients."""
    h, w = spec.input_size
    device = _check_parameters(model, spec)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, spec.in_channels, h, w, device=device))
    except (RuntimeError, ValueError) as err:
        raise ModelError(f"arch {spec.arch!r} cannot take {h}x{w} inputs: too small, choose a larger input_size "
                         f"(images are resized to it) or a smaller arch such as resnet8 ({err})") from None
    finally:
        for module, training in flags:
            module.training = training
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"arch {spec.arch!r} returns a {type(out).__name__} for one {h}x{w} input, expected a "
                         f"logits tensor of shape (1, {spec.num_classes})")
    if tuple(out.shape) != (1, spec.num_classes):
        raise ModelError(f"arch {spec.arch!r} returns shape {tuple(out.shape)} for one {h}x{w} input, "
                         f"expected (1, {spec.num_classes})")
