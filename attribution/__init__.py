"""Feature attribution by input-specific network pruning, and the baselines it is compared with.

Pure torch: no Ray, no I/O. Every method shares :class:`Attribution` (one ``attribute`` call
that returns maps, and ``(maps, details)`` on request) and is built by name with :func:`get`.
"""

from . import baselines, controls, gradcam  # noqa: F401  (importing registers the methods)
from .base import MODEL_DETAILS, TEXT, Attribution, AttributionError, Detail, Details
from .pathway import PathwayGrad
from .reduce import REDUCTIONS, reduce_map
from .registry import MethodSpec, available, check_params, get, method_class, parameters, register

__all__ = [
    "MODEL_DETAILS", "TEXT", "Attribution", "AttributionError", "Detail", "Details", "MethodSpec", "PathwayGrad",
    "REDUCTIONS", "available", "check_params", "get", "method_class", "parameters", "reduce_map", "register",
]
