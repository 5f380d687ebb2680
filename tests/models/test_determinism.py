"""models.determinism: deterministic CUDA kernels for a block, and everything put back after it.

The flag tests run anywhere: naming a CUDA device only sets torch's global switches, it does not
touch a GPU. The repeat-bit-for-bit tests need one and are skipped without it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.determinism import CUBLAS_WORKSPACE_CONFIG, deterministic_kernels
from models.registry import fashion_mnist_spec
from models.training import train_classifier

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def flags() -> tuple:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())


def test_cpu_changes_nothing(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = flags()
    with deterministic_kernels("cpu") as deterministic:
        assert deterministic and flags() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("enabled", [True, False])
def test_cuda_switches_are_set_for_the_block_and_restored_even_after_an_error(monkeypatch, enabled) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = flags()
    with pytest.raises(RuntimeError, match="boom"):
        with deterministic_kernels(torch.device("cuda", 0), enabled) as deterministic:
            assert deterministic is enabled
            if enabled:  # no autotuning, deterministic cuDNN and torch kernels, a fixed cuBLAS workspace
                assert flags() == (False, True, True, True)
                assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
            else:  # the trade for speed: cuDNN autotuning
                assert flags() == (True, False, False, False)
            raise RuntimeError("boom")
    assert flags() == before


def test_a_users_cublas_setting_is_kept(monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_kernels("cuda"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@needs_cuda
def test_a_cuda_retrain_repeats_its_weights_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 512)
    runs = [train_classifier(fashion_mnist_spec(), images, labels, epochs=1, batch_size=64, device="cuda",
                             progress=False)[0].state_dict() for _ in range(2)]
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key
