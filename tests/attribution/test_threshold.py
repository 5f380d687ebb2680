"""batched_percentile must equal numpy.percentile exactly, on every path it can take."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch

from attribution import threshold


def numpy_percentile(chunks: list[torch.Tensor], p: float) -> np.ndarray:
    rows = torch.cat(chunks, dim=1).numpy()
    return np.array([np.percentile(row, p) for row in rows], dtype=rows.dtype)


def relu_like_scores(batch: int, sizes: list[int], dead: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    """Scores shaped like a ReLU network's: a share of exact zeros (dead neurons), the rest continuous."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(batch, n, generator=generator).pow(3) * (torch.rand(batch, n, generator=generator) > dead)
        for n in sizes
    ]


@pytest.fixture(params=["sort", "band", "band-torch"])
def path(request, monkeypatch) -> str:
    """Run each test through the full sort and through the band selection, counted in numpy
    (CPU) and in torch (CUDA, and dtypes numpy lacks)."""
    monkeypatch.setattr(threshold, "SORT_LIMIT", 10**12 if request.param == "sort" else 0)
    if request.param == "band-torch":
        monkeypatch.setattr(threshold, "NUMPY_DTYPES", ())
    return request.param


@pytest.mark.parametrize("p", [0.0, 0.1, 12.5, 33.3, 49.0, 50.0, 70.0, 90.0, 99.99, 100.0])
def test_equals_numpy_with_dead_neurons(path: str, p: float) -> None:
    chunks = relu_like_scores(3, [1000, 40000, 7, 150000])
    assert np.array_equal(threshold.batched_percentile(chunks, p).numpy(), numpy_percentile(chunks, p))


@pytest.mark.parametrize("minimum", [None, 0.0])
def test_equals_numpy_when_percentile_falls_in_a_tie(path: str, minimum: float | None) -> None:
    chunks = relu_like_scores(4, [60000, 60000], dead=0.8)  # 80 % zeros: q at p=70 is 0 exactly
    got = threshold.batched_percentile(chunks, 70.0, minimum=minimum)
    assert np.array_equal(got.numpy(), numpy_percentile(chunks, 70.0))
    assert torch.all(got == 0)
    near_edge = threshold.batched_percentile(chunks, 80.5, minimum=minimum)  # just past the zeros
    assert np.array_equal(near_edge.numpy(), numpy_percentile(chunks, 80.5))


def test_equals_numpy_for_negative_and_repeated_values(path: str) -> None:
    generator = torch.Generator().manual_seed(1)
    chunks = [torch.randint(-50, 50, (2, 90000), generator=generator).float() / 7, torch.randn(2, 30000, generator=generator)]
    for p in (3.0, 50.0, 97.0):
        assert np.array_equal(threshold.batched_percentile(chunks, p).numpy(), numpy_percentile(chunks, p))


def test_unrepresentative_subsample_falls_back_to_exact(monkeypatch) -> None:
    """Values that the strided subsample never sees still give the exact answer."""
    monkeypatch.setattr(threshold, "SORT_LIMIT", 0)
    monkeypatch.setattr(threshold, "SAMPLE_SIZE", 1000)
    n = 200_000
    stride = n // 1000
    row = torch.linspace(0, 1, n)
    row[::stride] = 1000.0  # every sampled score is huge: the band misses the true ranks
    chunks = [row[None].clone(), torch.linspace(0, 1, n)[None]]
    exact_calls = []
    sort = threshold._select_by_sort
    monkeypatch.setattr(threshold, "_select_by_sort", lambda *a: exact_calls.append(1) or sort(*a))
    assert np.array_equal(threshold.batched_percentile(chunks, 40.0).numpy(), numpy_percentile(chunks, 40.0))
    assert exact_calls, "the band should have missed and the exact fallback should have run"


def test_rounds_the_interpolation_weight_as_numpy_does(path: str) -> None:
    """With 4008 scores p = 70 sits at index 2804.9: numpy rounds 1 - 0.9 (taken in double) to
    float32; rounding 0.9 first and subtracting in float32 is one ulp off in some rows."""
    chunks = relu_like_scores(16, [3000, 1008], seed=0)
    assert np.array_equal(threshold.batched_percentile(chunks, 70.0).numpy(), numpy_percentile(chunks, 70.0))


def test_missed_rows_alone_are_redone_with_a_wider_band(monkeypatch) -> None:
    """A row whose subsample misses its ranks is retried alone, with a band twice as wide,
    before anything is sorted whole; the other rows keep their first answer."""
    monkeypatch.setattr(threshold, "SORT_LIMIT", 0)
    monkeypatch.setattr(threshold, "SAMPLE_SIZE", 1000)
    n = 200_000
    freak = torch.linspace(0, 1, n)
    freak[:: n // 1000] = 1000.0  # the strided subsample sees only huge values
    chunks = [torch.stack([torch.linspace(0, 1, n), freak, torch.linspace(0, 2, n)])]
    calls = []
    band = threshold._select_in_band
    monkeypatch.setattr(threshold, "_select_in_band",
                        lambda c, *a: calls.append((c[0].shape[0], a[3])) or band(c, *a))
    assert np.array_equal(threshold.batched_percentile(chunks, 40.0).numpy(), numpy_percentile(chunks, 40.0))
    sigmas = threshold.BAND_SIGMAS
    assert calls[:2] == [(3, sigmas), (1, 2 * sigmas)], calls


def test_rows_are_independent(path: str) -> None:
    chunks = relu_like_scores(5, [30000, 90000], seed=3)
    whole = threshold.batched_percentile(chunks, 70.0)
    for row in range(5):
        alone = threshold.batched_percentile([c[row : row + 1] for c in chunks], 70.0)
        assert alone.item() == whole[row].item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_numpy_count_split_into_row_blocks_equals_numpy(monkeypatch, dtype: torch.dtype) -> None:
    monkeypatch.setattr(threshold, "SORT_LIMIT", 0)
    monkeypatch.setattr(threshold, "_TASK_ELEMENTS", 50000)  # 1-2 rows per task
    chunks = [c.to(dtype) for c in relu_like_scores(7, [20000, 61000, 3], seed=5)]
    expected = numpy_percentile(chunks, 70.0)
    np.testing.assert_array_equal(threshold.batched_percentile(chunks, 70.0, minimum=0.0).numpy(), expected)


def test_masks_above_gives_uint8_masks_of_scores_over_each_rows_threshold(path: str) -> None:
    chunks = [c.view(4, -1, 10) for c in relu_like_scores(4, [3000, 500], seed=5)]
    q = threshold.batched_percentile([c.flatten(1) for c in chunks], 60.0)
    masks = threshold.masks_above(chunks, [q, q.flip(0)])
    assert [m.dtype for m in masks] == [torch.uint8, torch.uint8]
    assert torch.equal(masks[0], (chunks[0] > q[:, None, None]).to(torch.uint8))
    assert torch.equal(masks[1], (chunks[1] > q.flip(0)[:, None, None]).to(torch.uint8))


def test_rejects_bad_percentiles() -> None:
    with pytest.raises(ValueError, match="percentile"):
        threshold.batched_percentile([torch.rand(1, 10)], 101.0)
    with pytest.raises(ValueError, match="zero scores"):
        threshold.batched_percentile([torch.rand(1, 0)], 50.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_equals_numpy_on_cuda() -> None:
    chunks = relu_like_scores(3, [500000, 300000])
    got = threshold.batched_percentile([c.cuda() for c in chunks], 70.0).cpu()
    assert np.array_equal(got.numpy(), numpy_percentile(chunks, 70.0))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_numpy_count_works_in_a_forked_child_after_the_parent_used_it(monkeypatch) -> None:
    """A forked process (e.g. a DataLoader worker) gets its own thread pool instead of the parent's dead one."""
    monkeypatch.setattr(threshold, "SORT_LIMIT", 0)
    chunks = relu_like_scores(4, [30000, 9000], seed=7)
    expected = threshold.batched_percentile(chunks, 70.0)  # the parent's pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(threshold.batched_percentile, (chunks, 70.0)).get(timeout=60)
    assert torch.equal(child, expected)
