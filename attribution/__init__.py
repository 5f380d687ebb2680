"""Feature attribution by input-specific network pruning, and the baselines it is compared with.

Pure torch: no Ray, no I/O. Every method shares :class:`Attribution` and is built by
name with :func:`get`.
"""

from .base import Attribution, AttributionError, available, get, register
from .reduce import REDUCTIONS, reduce_map

__all__ = ["Attribution", "AttributionError", "REDUCTIONS", "available", "get", "reduce_map", "register"]
