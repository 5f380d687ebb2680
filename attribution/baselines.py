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
                             (:mod:`attribution.gradcam`)
``smoothgrad``               mean gradient over noisy copies                 [B, C, H, W]
===========================  ==============================================  ==============

``y_t`` is each sample's target logit (pre-softmax). Captum computes gradient x input,
integrated gradients and Grad-CAM; the gradient, guided backprop and SmoothGrad are
written here (see their classes for why). No method leaves a trace on the model:
hooks are removed and ReLU flags restored also on error, the model's training flags
are restored by the base class, and only input gradients are ever requested, so no
parameter ``.grad`` is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import Attribution, AttributionError, check_logits, input_gradient
from .registry import register
from .rules import guided_relus


def _captum() -> Any:
    """captum.attr, imported on first use: a slow import (benchmarks/RESULTS.md, "captum's import"),
    which the default job's methods (pathway, gradient) never pay."""
    import captum.attr

    return captum.attr


__all__ = [
    "Gradient",
    "GradientXInput",
    "GuidedBackprop",
    "IntegratedGradientsMethod",
    "SmoothGrad",
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

    Bit for bit Captum's ``Saliency(abs=False)`` (tests/attribution/test_baselines.py), in one
    backward pass of its own, so that the default methods never import captum, which every Ray
    actor would pay for (benchmarks/RESULTS.md, "captum's import"). Take ``abs`` in the reduction
    if wanted.
    """

    def _attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return input_gradient(self.model, inputs, targets)


@register("gradient_x_input")
class GradientXInput(Attribution):
    """Gradient times input (Shrikumar et al. 2016), Captum's ``InputXGradient``."""

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

