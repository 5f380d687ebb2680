"""The one door through which this project imports torchvision.

torchvision's compiled extension links CUDA libraries. With the CPU-only torch build
that the build machines install, ``import torchvision`` fails while registering meta
kernels for ``torchvision::nms`` ("operator torchvision::nms does not exist").
Defining the missing op schemas first lets the pure-Python parts (models, transforms,
datasets) import. We only do so when the extension really fails to load; on a CUDA
machine with a matching torchvision nothing here changes anything.

Still unusable after the shim: ``torchvision.ops`` and ``torchvision.io`` image codecs.
This project uses Pillow for image I/O.

Tested by tests/attribution/test_any_model.py.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch

_SHIM_LIBRARY = None  # keeps the torch.library.Library alive (it unregisters on GC)


def _extension_loads() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup raises if missing
        return True
    except (AttributeError, RuntimeError):
        return False


def _import_torchvision() -> types.ModuleType:
    global _SHIM_LIBRARY
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms" not in str(err) or _extension_loads():
            raise
    # Drop the half-imported package before retrying with the schemas defined.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _SHIM_LIBRARY = torch.library.Library("torchvision", "DEF")
    _SHIM_LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM_LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("torchvision")


torchvision = _import_torchvision()
models = importlib.import_module("torchvision.models")
transforms = importlib.import_module("torchvision.transforms")

__all__ = ["torchvision", "models", "transforms"]
