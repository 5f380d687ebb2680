"""Deterministic kernels on CUDA, so that a retried shard or ROAR cell repeats its bytes.

On the CPU, torch's kernels give the same result for the same shapes and thread count, so
nothing needs to change there. On CUDA they do not by default:

- cuDNN autotunes (``benchmark``) and may pick another convolution algorithm in each process;
- several cuDNN backward algorithms and some torch kernels accumulate with atomics, whose order
  varies from run to run;
- cuBLAS splits reductions by the size of its workspace unless ``CUBLAS_WORKSPACE_CONFIG`` fixes it.

:func:`deterministic_kernels` switches all three off for a block (and puts the previous settings
back afterwards, like every model change in this project). ``enabled=False`` is the explicit
trade the other way: cuDNN autotuning on, for speed, and retries that may differ in the last bits.
Operations with no deterministic CUDA implementation warn (``warn_only``) instead of failing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

#: cuBLAS's documented setting for reproducible reductions (8 buffers of 4 MiB each).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def _state() -> tuple[bool, bool, bool, bool]:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())


def _set(benchmark: bool, deterministic: bool, algorithms: bool, warn_only: bool) -> None:
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)


@contextlib.contextmanager
def deterministic_kernels(device: torch.device | str, enabled: bool = True) -> Iterator[bool]:
    """Within the block, CUDA work on ``device`` repeats bit for bit (``enabled``), or runs with
    cuDNN autotuning (``enabled=False``). Yields whether results are deterministic. A CPU device
    changes nothing (its kernels already are).

    ``CUBLAS_WORKSPACE_CONFIG`` is read when cuBLAS creates its handle, so it is set here (unless
    the user set it) before the block's first CUDA call; a process that used cuBLAS earlier keeps
    its old workspace, and torch then warns at the first matmul that it cannot be deterministic.
    """
    if torch.device(device).type != "cuda":
        yield True
        return
    saved = _state()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
        _set(benchmark=False, deterministic=True, algorithms=True, warn_only=True)
    else:
        _set(benchmark=True, deterministic=False, algorithms=False, warn_only=False)
    try:
        yield enabled
    finally:
        _set(*saved)
