"""A model's structural fingerprint: catches a checkpoint whose arch no longer builds its network.

``load_state_dict(strict=True)`` checks parameter names and shapes only. A ResNet-18 whose
max-pool was replaced by ``nn.Identity`` before training loads into a stock ResNet-18 without a
word, and its outputs are off by ~1. The fingerprint saved with a checkpoint holds

- ``modules``: every module's name and type, parameter-free ones included (pools, activations,
  identities), so a swapped module is named in the error;
- ``probe``: the logits of one fixed, deterministic input, so a changed ``forward`` with the same
  modules is caught too. The comparison allows float32 rounding, which differs between CPUs and
  kernels by ~1e-6 relative, not structural changes, which move logits by far more.

Tested by tests/storage/test_checkpoints.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: |probe logits - saved| <= PROBE_RTOL * max(1, max |saved|): 1000x float32 kernel rounding.
PROBE_RTOL = 1e-3


def module_types(model: nn.Module) -> list[str]:
    """``name=package.module.Type`` for every module, in registration order (root named '.')."""
    return [f"{name or '.'}={type(m).__module__}.{type(m).__qualname__}" for name, m in model.named_modules()]


def probe_input(in_channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A fixed input in [-2, 2] that exercises every pixel and channel differently (no RNG)."""
    h, w = size
    n = in_channels * h * w
    ramp = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    return torch.sin(ramp * 7.3).mul(2.0).reshape(1, in_channels, h, w).float()


def probe_logits(model: nn.Module, in_channels: int, size: tuple[int, int]) -> list[float]:
    """The model's eval-mode logits for :func:`probe_input`, on the model's device; every module's
    training flag is put back."""
    device = next(model.parameters(), torch.empty(0)).device
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe_input(in_channels, size).to(device))
    finally:
        for module, flag in flags:
            module.training = flag
    return [float(v) for v in out.reshape(-1).double().cpu()]


def fingerprint(model: nn.Module, in_channels: int, size: tuple[int, int]) -> dict[str, Any]:
    return {"modules": module_types(model), "probe": probe_logits(model, in_channels, size)}


def _name(entry: str) -> str:
    """``layer1.0.relu=torch.nn.modules.activation.ReLU`` -> ``layer1.0.relu``."""
    return entry.partition("=")[0]


def _type(entry: str) -> str:
    """``layer1.0.relu=torch.nn.modules.activation.ReLU`` -> ``ReLU``."""
    return entry.rpartition(".")[2]


def differences(saved: dict[str, Any], model: nn.Module, in_channels: int, size: tuple[int, int]) -> str | None:
    """None when ``model`` (with its weights loaded) is the network ``saved`` describes, else why not.
    ``saved`` comes from a checkpoint (untrusted data): one of the wrong shape is a reason, not a crash."""
    if not _well_formed(saved):
        return "its stored fingerprint is damaged: expected {\"modules\": [text, ...], \"probe\": [number, ...]}"
    now = module_types(model)
    before = list(saved.get("modules") or [])
    if now != before:
        changed = [f"{_name(b)} is {_type(b)} in the saved network, {_type(a)} in the built one"
                   for b, a in zip(before, now) if b != a][:3]
        if len(now) != len(before):
            changed.append(f"{len(before)} modules saved, {len(now)} built")
        return "its modules differ: " + "; ".join(changed)
    probe = probe_logits(model, in_channels, size)
    reference = [float(v) for v in saved.get("probe") or []]
    if len(probe) != len(reference):
        return f"its probe output has {len(probe)} logits, {len(reference)} when saved"
    scale = max(1.0, max((abs(v) for v in reference), default=1.0))
    worst = max((abs(a - b) for a, b in zip(probe, reference)), default=0.0)
    if worst > PROBE_RTOL * scale:
        return (f"the same modules compute other logits for a fixed probe input (off by up to {worst:.3g}): "
                "its forward pass changed")
    return None


def _well_formed(saved: Any) -> bool:
    """Whether ``saved`` has the shape :func:`fingerprint` writes."""
    if not isinstance(saved, dict):
        return False
    modules, probe = saved.get("modules") or [], saved.get("probe") or []
    return (isinstance(modules, list) and all(isinstance(m, str) for m in modules) and isinstance(probe, list)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in probe))
