"""Keep freed tensor memory in the process instead of handing it back to the OS each time.

torch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above a
moving threshold (128 KiB at first) by ``mmap`` and gives them back on ``free``, and trims
the top of its heap whenever more than a little is free, so every batch's activations are
fresh pages that fault in again. Pinning the mmap threshold at its 32 MiB maximum and
raising the trim threshold turns those into reused heap blocks: faster batches that stop
varying from run to run (measured in benchmarks/RESULTS.md, "The tuned allocator"). The cost is
that a worker keeps up to ``trim_threshold`` bytes of freed memory as its own, as a CUDA
caching allocator does. GPU memory is not affected; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

#: glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest accepted mmap threshold on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Tune glibc's malloc for repeated same-sized tensors; False where the C library is not glibc.

    Process-wide and idempotent; call it once in each worker process before the work starts.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here; leaving the allocator as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting either also stops glibc's dynamic adjustment.
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
