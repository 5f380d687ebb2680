"""Grad-CAM (Selvaraju et al. 2017), a baseline the pathway gradient is compared with, and how it
finds its layer in a model it has not seen: the last spatial feature map before pooling.

Registered as ``grad_cam``; its shared plumbing (Captum on first use, checked forwards) is in
:mod:`attribution.baselines`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import MODEL_DETAILS, TEXT, Attribution, AttributionError, Detail, eval_mode
from .baselines import _captum, _checked_forward, _grad_leaf
from .registry import register
from .rules import forward_hooks, relu_out_of_place

__all__ = ["COARSEST", "GradCAM", "find_gradcam_layer"]

#: A layer map with fewer rows or columns than this is a smooth wash once upsampled: warned about.
COARSEST = 4


def _is_pooling(module: nn.Module) -> bool:
    return "Pool" in type(module).__name__


def _probe_layers(model: nn.Module, inputs: torch.Tensor) -> tuple[list[tuple[str, bool, bool]], Counter]:
    """Run one sample and record, in the order modules *finish*, each module call's name, whether
    it is a Grad-CAM candidate, and whether its output is a token sequence; count the calls per name.

    A candidate's output is a 4-D tensor with more than one spatial position that is not
    the output of a pooling layer (a pooling module itself, or a container whose output
    tensor was last produced by a pooling leaf). A token sequence is a 3-D output [1, N, D]
    with N > 1 (a transformer's hidden states).
    """
    events: list[tuple[str, bool, bool]] = []
    calls: Counter = Counter()
    keep: list[torch.Tensor] = []  # keeps output tensors alive so their id()s stay unique
    pooled_by_id: dict[int, bool] = {}
    names = {id(m): n for n, m in model.named_modules() if n}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        name = names[id(module)]
        calls[name] += 1
        if not isinstance(output, torch.Tensor):
            events.append((name, False, False))
            return
        keep.append(output)
        leaf = next(module.children(), None) is None
        if leaf:
            pooled_by_id[id(output)] = _is_pooling(module)
        pooled = _is_pooling(module) or pooled_by_id.get(id(output), False)
        spatial = output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1
        events.append((name, spatial and not pooled, output.dim() == 3 and output.shape[1] > 1))

    modules = [m for n, m in model.named_modules() if n]
    with eval_mode(model), relu_out_of_place(model), forward_hooks(modules, hook), torch.no_grad():
        model(inputs[:1])
    return events, calls


def find_gradcam_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """Name of the layer Grad-CAM uses by default for inputs shaped like ``inputs``.

    The last module to finish whose output is a 4-D feature map with spatial size > 1
    (H * W > 1) and not a pooling result, among modules called once per forward. On
    torchvision ResNets at 224 px this is ``layer4``; at 32 px, where layer4 is 1 x 1,
    it is ``layer3``. On VGG it is the last ReLU of ``features`` (before the last max
    pool), as in the Grad-CAM paper. When token sequences follow that map (a vision
    transformer, whose only 4-D map is its patch embedding), there is no spatial layer near
    the output, and the caller must choose one.
    """
    events, calls = _probe_layers(model, inputs)
    for position in range(len(events) - 1, -1, -1):
        name, candidate, _ = events[position]
        if candidate and calls[name] == 1:
            if any(tokens for _, _, tokens in events[position + 1:]):
                raise AttributionError(
                    f"grad_cam: the last spatial feature map of this model ({name!r}) is followed by token "
                    "sequences (a transformer), so no spatial layer sits near the output; pass layer='<module "
                    "name>' (one whose output is [B, C, H, W]) to choose one"
                )
            return name
    raise AttributionError(
        "grad_cam found no module with a 4-D output of spatial size > 1 that runs once per forward; "
        "pass layer='<module name>' (a name from model.named_modules())"
    )


@register("grad_cam")
class GradCAM(Attribution):
    """Grad-CAM (Selvaraju et al. 2017) via Captum's ``LayerGradCam``.

    ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of ``d y_t / d A_k``,
    for the feature maps ``A`` of one layer, upsampled to the input size with
    Captum's ``LayerAttribution.interpolate`` (bilinear, ``align_corners=False``, so the
    map stays >= 0; ``interpolation="bicubic"`` may overshoot below 0).

    Returns ``[B, 1, H, W]``: the map has no channel dimension. All reductions of
    :mod:`attribution.reduce` accept C = 1 (``signed_max_abs`` gives the map itself).

    ``layer`` is a module name from ``model.named_modules()`` or ``"auto"``, which picks
    :func:`find_gradcam_layer` for each input size (one extra one-sample forward pass per
    new size); :attr:`resolved_layer` names the layer used by the last call, and the details
    ``layer`` and ``layer_size`` record it and its resolution per sample. A module called more
    than once per forward (a shared ReLU) is refused: its map is ambiguous. A layer whose map is
    1 x 1 is refused too (upsampled, it is a constant: no spatial information at all), and one
    coarser than ``COARSEST`` x ``COARSEST`` is warned about (ResNet-18's layer3 at 32 px is 2 x 2).
    """

    def __init__(self, model: nn.Module, layer: str = "auto", interpolation: str = "bilinear") -> None:
        super().__init__(model)
        if not isinstance(layer, str) or not layer:
            raise AttributionError(f"layer must be a module name or 'auto', got {layer!r}")
        if layer != "auto":
            self._module(layer)
        if interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            raise AttributionError(
                f"unknown interpolation {interpolation!r}; choose bilinear, bicubic, nearest or area"
            )
        self.layer = layer
        self.interpolation = interpolation
        self.resolved_layer: str | None = None if layer == "auto" else layer
        self._resolved: dict[tuple[int, ...], str] = {}
        self._warned: set[tuple[str, tuple[int, ...]]] = set()
        self.resolved_size: tuple[int, int] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "interpolation": self.interpolation}

    @property
    def detail_schema(self) -> dict[str, Detail]:
        return {**MODEL_DETAILS, "layer": Detail(TEXT, "the module whose feature map Grad-CAM used"),
                "layer_size": Detail(torch.int64, "[h, w] of that feature map, before upsampling", "list")}

    def _module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise AttributionError(
                f"grad_cam layer {name!r} is not a module of the model; "
                "use a name from model.named_modules() or 'auto'"
            ) from None

    def _layer_for(self, inputs: torch.Tensor) -> str:
        key = tuple(inputs.shape[1:])
        if key not in self._resolved:
            if self.layer == "auto":
                self._resolved[key] = find_gradcam_layer(self.model, inputs)
            else:
                _, calls = _probe_layers(self.model, inputs)
                if calls[self.layer] != 1:
                    raise AttributionError(
                        f"grad_cam layer {self.layer!r} runs {calls[self.layer]} times per forward; "
                        "choose a module that runs exactly once"
                    )
                self._resolved[key] = self.layer
        return self._resolved[key]

    def layer_maps(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Grad-CAM at the layer's own resolution, [B, 1, h, w] (before upsampling)."""
        name = self._layer_for(inputs)
        self.resolved_layer = name
        cam = _captum().LayerGradCam(_checked_forward(self.model, targets), self._module(name))
        # Captum's layer hook hands a clone of the layer output to the rest of the net, so a
        # later in-place ReLU cannot overwrite the saved activations (tested with conv2 of
        # the tiny net in tests/attribution/test_baselines.py).
        maps = cam.attribute(_grad_leaf(inputs), target=targets, relu_attributions=True, attr_dim_summation=True)
        if maps.dim() != 4:
            raise AttributionError(
                f"grad_cam layer {name!r} gives maps of shape {tuple(maps.shape)}; it needs a 4-D [B, K, h, w] output"
            )
        self._check_resolution(name, tuple(maps.shape[-2:]), tuple(inputs.shape[-2:]))
        return maps.detach()

    def _check_resolution(self, name: str, size: tuple[int, int], input_size: tuple[int, int]) -> None:
        """Refuse a 1 x 1 layer map (a constant once upsampled); warn once about one coarser than COARSEST."""
        h, w = size
        if h * w == 1:
            raise AttributionError(
                f"grad_cam layer {name!r} has a 1 x 1 feature map at {input_size[0]} x {input_size[1]} px inputs, "
                "so the upsampled map is a constant; pass layer='<module name>' with a larger map (an earlier "
                "layer), or use larger inputs"
            )
        if min(h, w) < COARSEST and (name, size) not in self._warned:
            self._warned.add((name, size))
            warnings.warn(
                f"grad_cam layer {name!r} gives a {h} x {w} map at {input_size[0]} x {input_size[1]} px inputs, coarser "
                f"than {COARSEST} x {COARSEST}: upsampled it is a smooth wash; pass layer='<module name>' to choose an "
                "earlier layer", stacklevel=5)
        self.resolved_size = (int(h), int(w))

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
        maps = self.layer_maps(inputs, targets)
        batch = inputs.shape[0]
        details = {"layer": np.array([self.resolved_layer] * batch, dtype=object),
                   "layer_size": torch.tensor([list(self.resolved_size)] * batch, dtype=torch.int64)}
        return _captum().LayerAttribution.interpolate(maps, tuple(inputs.shape[-2:]), self.interpolation), details
