"""Model specs and the architectures a spec can name. Pure torch: no file or network I/O
except torchvision's own download of pretrained weights when asked for.

A :class:`ModelSpec` holds everything a job needs to rebuild a classifier and feed it:
the architecture, its input shape, the normalization and the class names. Checkpoints
store the spec next to the weights, so preprocessing travels with the model, not with
the data reader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.small import resnet8


class ModelError(ValueError):
    """A spec that cannot be built: unknown arch, inconsistent fields, input too small, no weights."""


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Per-channel mean / std of the Fashion-MNIST train split, pixels scaled to [0, 1].
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a classifier is and how its inputs are prepared.

    ``input_size`` is (H, W) of the tensor the model sees; ``mean`` / ``std`` have one
    entry per input channel and apply to pixels scaled to [0, 1]. ``class_names`` may be
    left empty, in which case the classes are named "0" .. "K-1".
    """

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)

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
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            fail(f"mean and std need one value per input channel ({self.in_channels}), got {len(mean)} and {len(std)}")
        if any(not math.isfinite(v) for v in mean) or any(not (math.isfinite(v) and v > 0) for v in std):
            fail(f"mean must be finite and std finite and > 0, got mean={mean}, std={std}")
        names = [str(n) for n in self.class_names] or [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            fail(f"{len(names)} class_names for num_classes={self.num_classes}")
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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ModelError(f"a ModelSpec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(known - set(data) - {"class_names"})
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
    """An ImageNet classifier with torchvision's normalization and the 1000 class names
    (the names ship with torchvision's code; no download)."""
    _arch_entry(arch)
    try:
        categories = list(_tv_models().get_model_weights(arch).DEFAULT.meta["categories"])
    except (ValueError, KeyError, AttributeError):
        categories = []
    return ModelSpec(
        arch=arch, num_classes=1000, in_channels=3, input_size=input_size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=categories,
    )


# --------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class _Arch:
    build: Callable[..., nn.Module]  # (num_classes=..., weights=...) or (num_classes, in_channels)
    torchvision: bool
    first_conv: str  # dotted path of the conv that sees the input
    head: str  # dotted path of the final nn.Linear


def _tv_models() -> Any:
    """torchvision.models, imported on first use (about 0.9 s; the default ResNet-8 needs none)."""
    from models.tv import models

    return models


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return getattr(_tv_models(), name)(**kwargs)

    return build


_ARCHS: dict[str, _Arch] = {"resnet8": _Arch(resnet8, False, "conv1", "fc")}
# Only architectures whose nonlinearities are all nn.ReLU modules (the attribution
# method hooks ReLU calls; DenseNet's functional relu or MobileNet's ReLU6 would escape).
for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
              "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d"):
    _ARCHS[_name] = _Arch(_torchvision(_name), True, "conv1", "fc")
for _name in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "alexnet"):
    _ARCHS[_name] = _Arch(_torchvision(_name), True, "features.0", "classifier.6")


def available_archs() -> list[str]:
    return sorted(_ARCHS)


def _arch_entry(arch: str) -> _Arch:
    try:
        return _ARCHS[arch]
    except KeyError:
        raise ModelError(f"unknown arch {arch!r}; known: {', '.join(available_archs())}") from None


def build_model(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    """Build the classifier ``spec`` names, in train mode (call ``.eval()`` to explain it).

    ``pretrained=True`` loads torchvision's default ImageNet weights (downloaded by
    torchvision into ``$TORCH_HOME``); a head of another size than 1000 classes and a
    first conv for ``in_channels != 3`` are then replaced (the new conv starts from the
    pretrained RGB filters, summed or repeated across channels).
    """
    entry = _arch_entry(spec.arch)
    if entry.torchvision:  # on meta, before initializing or downloading weights (torchvision imports torch._dynamo anyway)
        check_input_size(spec)
    model = _construct(spec, entry, pretrained)
    if not entry.torchvision:  # our small archs: one real pass costs less than the meta kernels' import of torch._dynamo
        _check_forward(model, spec)
    return model


def _construct(spec: ModelSpec, entry: _Arch, pretrained: bool) -> nn.Module:
    if pretrained:
        if not entry.torchvision:
            raise ModelError(f"arch {spec.arch!r} has no pretrained weights; train it with jobs.train")
        model = _pretrained(spec.arch, entry)
        if _get(model, entry.head).out_features != spec.num_classes:
            old = _get(model, entry.head)
            _set(model, entry.head, nn.Linear(old.in_features, spec.num_classes))
    elif entry.torchvision:
        model = entry.build(weights=None, num_classes=spec.num_classes)
    else:
        model = entry.build(num_classes=spec.num_classes, in_channels=spec.in_channels)
    if entry.torchvision and spec.in_channels != 3:
        old = _get(model, entry.first_conv)
        new = nn.Conv2d(spec.in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                        padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None)
        if pretrained:
            with torch.no_grad():
                w = old.weight
                if spec.in_channels == 1:
                    new.weight.copy_(w.sum(dim=1, keepdim=True))
                else:
                    reps = math.ceil(spec.in_channels / 3)
                    new.weight.copy_(w.repeat(1, reps, 1, 1)[:, : spec.in_channels] * (3.0 / spec.in_channels))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
        _set(model, entry.first_conv, new)
    return model


def _pretrained(arch: str, entry: _Arch) -> nn.Module:
    try:
        weights = _tv_models().get_model_weights(arch).DEFAULT
    except ValueError as err:
        raise ModelError(f"torchvision has no pretrained weights for {arch!r}") from err
    try:
        return entry.build(weights=weights)
    except Exception as err:  # urllib / OSError / hash mismatch: all mean "no usable weights"
        raise ModelError(
            f"could not get pretrained weights for {arch!r} from {weights.url}: {type(err).__name__}: {err}. "
            "The machine may have no network access; download the file elsewhere and place it in "
            f"{torch.hub.get_dir()}/checkpoints/, or train the model with jobs.train."
        ) from err


def check_input_size(spec: ModelSpec) -> None:
    """Raise :class:`ModelError` when the architecture cannot take ``spec.input_size``.

    Builds the arch on the meta device and runs one forward pass there: exact, no memory and
    no math, but torch's meta kernels import torch._dynamo (about 1 s, once per process), so
    :func:`build_model` checks on the model it has just built instead.
    """
    with torch.device("meta"):
        model = _construct(spec, _arch_entry(spec.arch), pretrained=False)
    _check_forward(model, spec)


def _check_forward(model: nn.Module, spec: ModelSpec) -> None:
    """One forward pass of one blank input on ``model``'s device, in eval mode, without gradients."""
    h, w = spec.input_size
    device = next(model.parameters()).device
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
    if tuple(out.shape) != (1, spec.num_classes):
        raise ModelError(f"arch {spec.arch!r} returns shape {tuple(out.shape)} for one {h}x{w} input, "
                         f"expected (1, {spec.num_classes})")


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
