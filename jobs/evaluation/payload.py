"""The model as a Ray task gets it: plain data the driver puts into Ray once (:func:`model_payload`),
the model rebuilt from it in the task (:func:`rebuild_model`), and a method's maps computed there
(:func:`compute_maps`), reduced as jobs.attribute stores them.

Tested by tests/jobs/test_perturb.py, tests/jobs/test_sanity.py and tests/security/test_code.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def model_payload(model: Any, spec: Any, trust_code: Sequence[str] = ()) -> dict[str, Any]:
    """What a Ray task needs to rebuild the model: the spec, CPU weights (plain data), and the modules
    the operator trusts (--trust-code), which the driver checked the spec's arch against."""
    return {"spec": spec.to_dict(), "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "trust_code": list(trust_code)}


def rebuild_model(payload: dict[str, Any]) -> Any:
    """The model of :func:`model_payload`, in eval mode on the CPU."""
    from models.registry import ModelSpec, build_model

    model = build_model(ModelSpec.from_dict(payload["spec"]), trust_code=payload.get("trust_code") or ())
    model.load_state_dict(payload["state"])
    return model.eval()


def compute_maps(method: Any, x: Any, targets: Any, sample_ids: Sequence[str], reduction: str) -> np.ndarray:
    """One method's maps for a batch, reduced to [N, H, W] float32 (like jobs.attribute stores them)."""
    import attribution

    maps = method.attribute(x, target=targets, sample_ids=list(sample_ids))
    return attribution.reduce_map(maps.float().detach(), reduction).cpu().numpy().astype(np.float32)
