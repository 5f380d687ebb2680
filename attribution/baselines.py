"""The baseline attribution methods the pathway gradient is compared with.

Each is an :class:`~attribution.base.Attribution` registered by name:

===========================  ==============================================  ==============
name                         map                                             shape
===========================  ==============================================  ==============
``gradient``                 ``d y_t / d x`` (signed saliency)               [B, C, H, W]
``gradient_x_input``         ``x * d y_t / d x``                             [B, C, H, W]
``integrated_gradients``     zero baseline, 50 steps, right Riemann sum      [B, C, H, W]
``guided_backprop``          gradient with ReLUs passing positive grads only [B, C, H, W]
``grad_cam``                 ReLU(sum_k alpha_k A_k), upsampled bilinearly   [B, 1, H, W]
``smoothgrad``               mean gradient over noisy copies                 [B, C, H, W]
===========================  ==============================================  ==============

``y_t`` is each sample's target logit (pre-softmax). Captum computes gradient,
gradient x input, integrated gradients and Grad-CAM; guided backprop and SmoothGrad
are written here (see their classes for why). No method leaves a trace on the model:
hooks are removed and ReLU flags restored also on error, the model's training flags
are restored by the base class, and only input gradients are ever requested, so no
parameter ``.grad`` is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import Attribution, AttributionError, check_logits, eval_mode, input_gradient
from .registry import register
from .rules import forward_hooks, guided_relus, relu_out_of_place

CAPTUM = ("captum.attr",)


def _captum() -> Any:
    """captum.attr, imported on first use: it costs about 0.35 s, paid by every Ray actor
    that starts, and the default job's methods (pathway, gradient) need it only for gradient."""
    import captum.attr

    return captum.attr


__all__ = [
    "Gradient",
    "GradientXInput",
    "GradCAM",
    "GuidedBackprop",
    "IntegratedGradientsMethod",
    "SmoothGrad",
    "find_gradcam_layer",
]


def _checked_forward(model: nn.Module, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model as a function that fails clearly on non-logit outputs or out-of-range targets."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return check_logits(model(x), x.shape[0], targets)

    return forward


def _grad_leaf(inputs: torch.Tensor) -> torch.Tensor:
    """A fresh leaf that requires grad, so Captum neither warns nor touches the caller's tensor."""
    return inputs.detach().requires_grad_(True)


def _rows_per_pass(internal_batch_size: int | None, batch: int) -> int:
    """How many of a method's steps / noisy copies of the batch go through one forward pass.

    ``internal_batch_size`` bounds the rows per pass; it never splits the batch itself,
    so the smallest pass is one step for every sample.
    """
    if internal_batch_size is None:
        return 1
    return max(1, internal_batch_size // batch)


def _check_internal_batch_size(value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise AttributionError(f"internal_batch_size must be a positive int or None, got {value!r}")
    return value


# --------------------------------------------------------------------------- gradients


@register("gradient")
class Gradient(Attribution):
    """Saliency: the signed gradient of the target logit w.r.t. the input (Simonyan et al. 2014).

    Captum's ``Saliency(abs=False)``; take ``abs`` in the reduction if wanted.
    """

    lazy_imports = CAPTUM

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        method = _captum().Saliency(_checked_forward(self.model, targets))
        return method.attribute(_grad_leaf(inputs), target=targets, abs=False).detach()


@register("gradient_x_input")
class GradientXInput(Attribution):
    """Gradient times input (Shrikumar et al. 2016), Captum's ``InputXGradient``."""

    lazy_imports = CAPTUM

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        method = _captum().InputXGradient(_checked_forward(self.model, targets))
        return method.attribute(_grad_leaf(inputs), target=targets).detach()


_IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@register("integrated_gradients")
class IntegratedGradientsMethod(Attribution):
    """Integrated gradients from the all-zero input (Sundararajan et al. 2017), Captum's.

    ``(x - 0) * sum_k w_k * d y_t / d x (alpha_k x)``. The default quadrature is the
    paper's right Riemann sum, alpha_k = k / n_steps for k = 1..n_steps (the same
    ramp as the pathway method's ``integrated`` score), not Captum's default
    Gauss-Legendre. "Zero" is zero in the model's input space, i.e. after
    normalization (the dataset-mean image for mean/std-normalized inputs).

    ``internal_batch_size`` bounds the images per forward pass (Captum's argument);
    the default None runs one step of the whole batch per pass, the memory of one
    plain gradient. It changes only speed and float rounding, so it is not a stored
    parameter.
    """

    lazy_imports = CAPTUM

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        method: str = "riemann_right",
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(model)
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
            raise AttributionError(f"n_steps must be a positive int, got {n_steps!r}")
        if method not in _IG_METHODS:
            raise AttributionError(f"unknown integration method {method!r}; choose one of {', '.join(_IG_METHODS)}")
        self.n_steps = n_steps
        self.method = method
        self.internal_batch_size = _check_internal_batch_size(internal_batch_size)

    @property
    def params(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps, "method": self.method}

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        batch = inputs.shape[0]
        ig = _captum().IntegratedGradients(_checked_forward(self.model, targets), multiply_by_inputs=True)
        return ig.attribute(
            _grad_leaf(inputs),
            baselines=torch.zeros_like(inputs),
            target=targets,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=batch * _rows_per_pass(self.internal_batch_size, batch),
        ).detach()


@register("guided_backprop")
class GuidedBackprop(Attribution):
    """Guided backprop (Springenberg et al. 2015): gradient where each ReLU passes only
    positive gradients through positive inputs.

    Not Captum's ``GuidedBackprop``: that one clamps the total gradient of each ReLU's
    *input tensor*, which is wrong when the tensor has other consumers besides the
    ReLU (e.g. a residual branch that reads the pre-activation). Here every call of
    every ``nn.ReLU`` module is replaced, during the attribution only, by a ReLU with
    the guided backward rule (:func:`attribution.rules.guided_relus`), with
    in-place ReLUs switched to out-of-place meanwhile. ReLUs called as
    ``torch.nn.functional.relu`` are not modules and keep their plain gradient.
    """

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        with guided_relus(self.model):
            return input_gradient(self.model, inputs, targets)


# --------------------------------------------------------------------------- Grad-CAM


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
    new size); :attr:`resolved_layer` names the layer used by the last call. A module
    called more than once per forward (a shared ReLU) is refused: its map is ambiguous.
    """

    lazy_imports = CAPTUM

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

    @property
    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "interpolation": self.interpolation}

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
        return maps.detach()

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        maps = self.layer_maps(inputs, targets)
        return _captum().LayerAttribution.interpolate(maps, tuple(inputs.shape[-2:]), self.interpolation)


# --------------------------------------------------------------------------- SmoothGrad


@register("smoothgrad")
class SmoothGrad(Attribution):
    """SmoothGrad (Smilkov et al. 2017): the mean signed gradient over noisy copies.

    Copy j of sample i is ``x_i + sigma_i * eps_ij`` with ``eps_ij ~ N(0, I)`` and
    ``sigma_i = noise_level * (max(x_i) - min(x_i))`` over all of the sample's channels
    and pixels. Defaults follow the paper: noise level 15 % and n = 50 copies (their
    figures use 50; smoothing improves little beyond it).

    The noise of sample i comes from its own ``torch.Generator`` seeded with the
    sample's seed, drawn one copy at a time in copy order, so a sample's map does not
    depend on its batch, its position in it or ``internal_batch_size``. Captum's
    ``NoiseTunnel`` draws from the global RNG for the whole batch at once, so a
    sample's noise would depend on the samples before it; hence this implementation.
    The generator lives on the inputs' device: maps are reproducible per device type
    (CPU and CUDA generators give different streams).

    ``internal_batch_size`` bounds the images per forward pass; the default None runs
    one noisy copy of the whole batch per pass (the memory of one plain gradient).
    """

    seeded = True

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 50,
        noise_level: float = 0.15,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(model)
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise AttributionError(f"n_samples must be a positive int, got {n_samples!r}")
        if not isinstance(noise_level, (int, float)) or isinstance(noise_level, bool) or not noise_level >= 0:
            raise AttributionError(f"noise_level must be a number >= 0, got {noise_level!r}")
        self.n_samples = n_samples
        self.noise_level = float(noise_level)
        self.internal_batch_size = _check_internal_batch_size(internal_batch_size)

    @property
    def params(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "noise_level": self.noise_level}

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        batch, shape = inputs.shape[0], inputs.shape[1:]
        flat = inputs.flatten(1)
        sigma = (self.noise_level * (flat.amax(dim=1) - flat.amin(dim=1))).view(1, batch, *([1] * len(shape)))
        generators = [torch.Generator(device=inputs.device).manual_seed(seed) for seed in seeds]
        per_pass = _rows_per_pass(self.internal_batch_size, batch)
        total = torch.zeros_like(inputs)
        done = 0
        while done < self.n_samples:
            copies = min(per_pass, self.n_samples - done)
            noise = torch.empty((copies, batch, *shape), dtype=inputs.dtype, device=inputs.device)
            for i, generator in enumerate(generators):
                for j in range(copies):
                    noise[j, i].normal_(generator=generator)
            noisy = (inputs.unsqueeze(0) + sigma * noise).flatten(0, 1)
            grads = input_gradient(self.model, noisy, targets.repeat(copies))
            total += grads.view(copies, batch, *shape).sum(dim=0)
            done += copies
        return total / self.n_samples

