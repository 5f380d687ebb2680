"""Feature attribution by input-specific network pruning, and the baselines it is compared with.

Pure torch: no Ray, no I/O. Every method shares :class:`Attribution` and is built by
name with :func:`get`.
"""

from . import baselines, controls  # noqa: F401  (importing registers the methods)
from .base import Attribution, AttributionError, available, get, register
from .pathway import PathwayDetails, PathwayGrad
from .reduce import REDUCTIONS, reduce_map

__all__ = [
    "Attribution", "AttributionError", "PathwayDetails", "PathwayGrad", "REDUCTIONS",
    "available", "get", "reduce_map", "register",
]
