"""Every deterministic method gives on CUDA the maps it gives on CPU.

In float64 the two devices' scores differ by rounding only (~1e-16 relative), far too little
to move a neuron across a pruning threshold, so the maps must agree to float64 precision.
SmoothGrad and the random control draw their noise from a generator on the inputs' device,
so their maps are reproducible per device type, not across devices; they are left out.
Skipped where no GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from attribution import get
from attribution.pathway import PathwayGrad
from models.tv import models as tv_models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

METHODS = [
    ("pathway", {}),
    ("pathway", {"per_layer": True}),
    ("pathway", {"scores": "integrated", "steps": 3}),
    ("pathway", {"scores": "greedy", "steps": 2}),
    ("gradient", {}),
    ("gradient_x_input", {}),
    ("integrated_gradients", {"n_steps": 8}),
    ("guided_backprop", {}),
    ("grad_cam", {}),
    ("sobel", {}),
]


def resnet18_and_images(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(2)
    model = tv_models.resnet18(num_classes=10).eval().to(dtype)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    return model, x


def maps_on(device: str, name: str, params: dict, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    model, x = resnet18_and_images(dtype)
    method = get(name, model.to(device), **params)
    return method.attribute(x.to(device), target=[1, 4, 7]).cpu()


@pytest.mark.parametrize(("name", "params"), METHODS, ids=lambda v: str(v) if isinstance(v, dict) else v)
def test_cuda_maps_equal_cpu_maps_in_float64(name: str, params: dict) -> None:
    cpu = maps_on("cpu", name, params)
    cuda = maps_on("cuda", name, params)
    scale = cpu.abs().max().item()
    assert scale > 0, "the CPU map is all zeros: the comparison would prove nothing"
    torch.testing.assert_close(cuda, cpu, rtol=1e-7, atol=1e-9 * scale)


def test_pathway_details_agree_across_devices() -> None:
    model, x = resnet18_and_images(torch.float64)
    _, cpu = PathwayGrad(model).attribute(x, return_details=True)
    _, cuda = PathwayGrad(model.cuda()).attribute(x.cuda(), return_details=True)
    assert torch.equal(cuda.target.cpu(), cpu.target)
    assert torch.equal(cuda.kept_fraction.cpu(), cpu.kept_fraction)
    torch.testing.assert_close(cuda.threshold.cpu(), cpu.threshold, rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_on_cuda_prunes_about_as_much_as_float32(dtype: torch.dtype) -> None:
    model, x = resnet18_and_images(torch.float32)
    model, x = model.cuda(), x.cuda()
    _, single = PathwayGrad(model).attribute(x, return_details=True)
    half, details = PathwayGrad(model.to(dtype)).attribute(x.to(dtype), target=single.target, return_details=True)
    assert half.dtype == dtype and torch.isfinite(half).all()
    torch.testing.assert_close(details.kept_fraction.float(), single.kept_fraction, atol=0.02, rtol=0)
