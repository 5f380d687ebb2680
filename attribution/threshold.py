"""Exact per-sample percentiles over millions of scores, without sorting them.

Pruning needs, for every sample, the p-th percentile of all its neuron scores (about
10 M for ResNet-50 at 224 px) with numpy's linear interpolation. Sorting, or
``kthvalue`` over the whole batch, costs as much as the forward and backward passes
themselves. Instead :func:`batched_percentile`

1. sorts a small strided subsample per sample and reads off a value band [lo, hi] that
   should hold the two wanted order statistics;
2. counts, in one pass over the scores, how many lie below/at each band edge;
3. gathers only the scores strictly inside the band (a few % of them) and sorts those.

The counts prove whether the band really holds the wanted ranks. The band is narrow (3
standard deviations of the subsample's rank noise), so a sample now and then misses it
(how often: benchmarks/RESULTS.md, "Figures moved from the code"): those samples alone are
redone with a band twice as wide, or sorted whole where that is cheaper. The result is exact
either way: it equals ``numpy.percentile(scores, p)`` for each sample, to the last bit.

On CPU every sort goes through numpy, whose vectorized sort is much faster than ``torch.sort``
here (benchmarks/RESULTS.md, "Figures moved from the code"), and so does the counting pass,
spread over torch's thread count: numpy's comparisons to bool and its boolean gather are faster
than torch's (benchmarks/RESULTS.md, "Attribution", session 4).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

#: Largest subsample per sample used to place the band (it is about N^(2/3) below that).
SAMPLE_SIZE = 1 << 16
#: Band half-width in binomial standard deviations of the subsample rank. Narrow on purpose:
#: the band's values are gathered and sorted, and the rare row whose ranks fall outside its
#: band is redone alone with a band twice as wide, which is cheap.
BAND_SIGMAS = 3.0
#: Widest band tried before a row is sorted whole.
MAX_BAND_SIGMAS = 12.0
#: Below this many scores per batch, sorting everything is cheaper than the band method.
SORT_LIMIT = 1 << 18


def batched_percentile(chunks: Sequence[torch.Tensor], percentile: float, minimum: float | None = None
                       ) -> torch.Tensor:
    """Per-row ``numpy.percentile(row, percentile)`` of the rows concatenated across ``chunks``.

    ``chunks`` are float tensors [B, n_i] (e.g. one per layer); row b of the result is the
    percentile of all scores of sample b. Linear interpolation, as numpy's default.
    ``minimum``, when given, is a bound no score is below (0 for |a * g| scores); it saves a
    counting pass when the percentile falls among scores tied at that bound (dead neurons).
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    total = sum(c.shape[1] for c in chunks)
    if total == 0:
        raise ValueError("cannot take a percentile of zero scores")
    position = (total - 1) * (percentile / 100.0)
    lower = math.floor(position)
    upper = min(lower + 1, total - 1)
    fraction = position - lower
    below, above = _select(chunks, lower, upper, minimum, BAND_SIGMAS)
    return _lerp(below, above, fraction)


def _select(chunks: Sequence[torch.Tensor], lower: int, upper: int, minimum: float | None, sigmas: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The order statistics ``lower`` and ``upper`` of each row: by sorting where the batch holds
    at most SORT_LIMIT scores or the band would be wider than MAX_BAND_SIGMAS, else in a band."""
    if chunks[0].shape[0] * sum(c.shape[1] for c in chunks) <= SORT_LIMIT or sigmas > MAX_BAND_SIGMAS:
        return _select_by_sort(chunks, lower, upper)
    return _select_in_band(chunks, lower, upper, minimum, sigmas)


def _lerp(below: torch.Tensor, above: torch.Tensor, fraction: float) -> torch.Tensor:
    """numpy's interpolation formula, with the weights (fraction or 1 - fraction, taken in
    double precision) rounded to the scores' dtype as numpy rounds them, so q matches numpy's
    to the last bit, ties at q included."""
    diff = above - below
    if fraction >= 0.5:
        return above - diff * torch.tensor(1 - fraction, dtype=below.dtype, device=below.device)
    return below + diff * torch.tensor(fraction, dtype=below.dtype, device=below.device)


def sort_rows(values: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending (NaN last, as torch.sort); numpy's sort on CPU."""
    if values.device.type != "cpu":
        return values.sort(dim=1).values
    return torch.from_numpy(np.sort(values.detach().contiguous().numpy(), axis=1))


def _select_by_sort(chunks: Sequence[torch.Tensor], lower: int, upper: int) -> tuple[torch.Tensor, torch.Tensor]:
    ordered = sort_rows(torch.cat(list(chunks), dim=1))
    return ordered[:, lower], ordered[:, upper]


def count(mask: torch.Tensor) -> torch.Tensor:
    """Per-row number of True in a bool [B, n] tensor, summed as uint8: summing bools directly is
    much slower on CPU (benchmarks/RESULTS.md, "Figures moved from the code")."""
    return mask.view(torch.uint8).sum(1, dtype=torch.int32).long()


def _subsample(chunks: Sequence[torch.Tensor], total: int) -> torch.Tensor:
    """Every ``stride``-th score of the concatenated rows, without concatenating them.

    A few N^(2/3) samples balance the cost of sorting the subsample against the cost of
    sorting the band it leaves (whose width shrinks as 1/sqrt(samples)).
    """
    size = min(SAMPLE_SIZE, max(256, round(4 * total ** (2 / 3))))
    stride = max(1, total // size)
    parts, start = [], 0
    for chunk in chunks:
        offset = (-start) % stride
        if offset < chunk.shape[1]:
            parts.append(chunk[:, offset::stride])
        start += chunk.shape[1]
    return torch.cat(parts, dim=1)


def _band_edges(chunks: Sequence[torch.Tensor], total: int, lower: int, upper: int, sigmas: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    sample = sort_rows(_subsample(chunks, total))
    m = sample.shape[1]
    f_lo, f_hi = lower / total, (upper + 1) / total
    slack_lo = sigmas * math.sqrt(m * f_lo * (1 - f_lo)) + 2
    slack_hi = sigmas * math.sqrt(m * f_hi * (1 - f_hi)) + 2
    j_lo, j_hi = math.floor(f_lo * m - slack_lo), math.ceil(f_hi * m + slack_hi)
    batch = sample.shape[0]
    lo = sample[:, j_lo] if j_lo >= 0 else sample.new_full((batch,), -math.inf)
    hi = sample[:, j_hi] if j_hi < m else sample.new_full((batch,), math.inf)
    return lo, hi


def _order_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2^32) whose order is the order of the float32 values."""
    bits = values.float().contiguous().view(torch.int32)
    signed = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return signed.to(torch.int64) + (1 << 31)


def _from_order_keys(keys: torch.Tensor) -> torch.Tensor:
    """The float32 values of :func:`_order_keys` (the bit flip is its own inverse)."""
    signed = (keys - (1 << 31)).to(torch.int32)
    return (signed ^ ((signed >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _sort_band(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``values`` ordered by (row, value): each row's band values ascending, rows one after another."""
    if values.dtype == torch.float32:  # one sort of packed (row, value) int64 keys
        return _from_order_keys(sort_rows(((rows << 32) | _order_keys(values))[None])[0] & 0xFFFFFFFF)
    order = values.argsort(stable=True)
    return values[order[rows[order].argsort(stable=True)]]


#: dtypes whose CPU counting pass runs in numpy (its comparisons to bool and its boolean gather are
#: faster than torch's: benchmarks/RESULTS.md, "Attribution", session 4); bfloat16 has no numpy dtype.
NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)
#: Rows of a chunk counted by one thread task, at most (keeps both threads busy on one layer).
_TASK_ELEMENTS = 1 << 20


def _numpy_can_run(chunks: Sequence[torch.Tensor]) -> bool:
    """Whether the counting pass and the masks can run in numpy (CPU, a numpy dtype)."""
    return all(c.device.type == "cpu" and c.dtype in NUMPY_DTYPES for c in chunks)


def _count_band_torch(chunks: Sequence[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: count of scores > lo, count strictly inside (lo, hi), those scores and their rows."""
    batch, device = lo.shape[0], lo.device
    lo_col, hi_col = lo[:, None], hi[:, None]
    above_lo = torch.zeros(batch, dtype=torch.long, device=device)
    inside_count = torch.zeros(batch, dtype=torch.long, device=device)
    inside_values, inside_rows = [], []
    rows = torch.arange(batch, device=device)
    for chunk in chunks:
        above = chunk > lo_col
        above_lo += count(above)
        inside = above.logical_and_(chunk < hi_col)
        inside_values.append(chunk[inside])
        counts = count(inside)
        inside_rows.append(torch.repeat_interleave(rows, counts))
        inside_count += counts
    return above_lo, inside_count, torch.cat(inside_values), torch.cat(inside_rows)


def _count_band_numpy(chunks: Sequence[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_count_band_torch` in numpy, row blocks of each chunk spread over torch's thread count.

    numpy releases the GIL inside these calls, so the blocks run in parallel (how much faster than
    torch: benchmarks/RESULTS.md, "Attribution", session 4).
    """
    lo_np, hi_np = lo.numpy(), hi.numpy()
    tasks = []
    for chunk in chunks:
        array = chunk.detach().numpy()
        step = max(1, _TASK_ELEMENTS // max(1, array.shape[1]))
        tasks += [(array, start, min(start + step, array.shape[0])) for start in range(0, array.shape[0], step)]

    def run(task: tuple[np.ndarray, int, int]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        array, start, stop = task
        block = array[start:stop]
        mask = np.greater(block, lo_np[start:stop, None])
        above = np.array([np.count_nonzero(row) for row in mask], dtype=np.int64)
        np.logical_and(mask, np.less(block, hi_np[start:stop, None]), out=mask)
        inside = np.array([np.count_nonzero(row) for row in mask], dtype=np.int64)
        return start, above, inside, block[mask]

    above_lo = np.zeros(lo_np.shape[0], dtype=np.int64)
    inside_count = np.zeros_like(above_lo)
    values, rows = [], []
    for start, above, inside, picked in _thread_pool().map(run, tasks):
        stop = start + above.shape[0]
        above_lo[start:stop] += above
        inside_count[start:stop] += inside
        values.append(picked)
        rows.append(np.repeat(np.arange(start, stop, dtype=np.int64), inside))
    return (torch.from_numpy(above_lo), torch.from_numpy(inside_count),
            torch.from_numpy(np.concatenate(values)), torch.from_numpy(np.concatenate(rows)))


def masks_above(chunks: Sequence[torch.Tensor], thresholds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 masks ``chunk > threshold`` per row (thresholds [B], one per chunk).

    On CPU the comparisons run in numpy over the thread pool: torch's comparisons that
    produce bool are slower (benchmarks/RESULTS.md, "Attribution", session 4).
    """
    columns = [t.reshape(-1, *[1] * (c.dim() - 1)) for c, t in zip(chunks, thresholds)]
    if not _numpy_can_run(chunks):
        return [(c > t).view(torch.uint8) for c, t in zip(chunks, columns)]
    pairs = [(c.detach().numpy(), t.to(c.dtype).numpy()) for c, t in zip(chunks, columns)]
    return [torch.from_numpy(m).view(torch.uint8) for m in _thread_pool().map(lambda p: np.greater(*p), pairs)]


def _thread_pool() -> ThreadPoolExecutor:
    """One pool per process and thread count, sized like torch's intra-op pool.

    Keyed by pid too: a forked child inherits the pool object but not its threads.
    """
    return _pool_of(os.getpid(), torch.get_num_threads())


@functools.lru_cache(maxsize=2)
def _pool_of(pid: int, threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="percentile")


def _select_in_band(chunks: Sequence[torch.Tensor], lower: int, upper: int, minimum: float | None,
                    sigmas: float) -> tuple[torch.Tensor, torch.Tensor]:
    total = sum(c.shape[1] for c in chunks)
    batch, device = chunks[0].shape[0], chunks[0].device
    lo, hi = _band_edges(chunks, total, lower, upper, sigmas)
    counting = _count_band_numpy if _numpy_can_run(chunks) else _count_band_torch
    above_lo, inside_count, values, sample_rows = counting(chunks, lo, hi)
    le_lo = total - above_lo  # scores <= lo
    lt_hi = le_lo + inside_count  # scores < hi
    values = _sort_band(values, sample_rows)
    starts = torch.cumsum(inside_count, 0) - inside_count

    def value_at(rank: int) -> torch.Tensor:
        index = (starts + (rank - le_lo)).clamp(0, max(values.numel() - 1, 0))
        picked = values[index] if values.numel() else lo
        return torch.where(rank < le_lo, lo, torch.where(rank >= lt_hi, hi, picked))

    below, above = value_at(lower), value_at(upper)
    # A rank at or beyond an edge holds the edge's value only if the edge is not crossed:
    # that takes the count strictly below lo (or up to hi), counted only in the rows concerned.
    missed = torch.zeros(batch, dtype=torch.bool, device=device)
    at_lo = le_lo > lower
    if minimum is not None:
        at_lo &= lo > minimum  # nothing lies below the minimum
    if bool(at_lo.any()):
        rows = at_lo.nonzero().squeeze(1)
        below_lo = sum(count(c[rows] < lo[rows, None]) for c in chunks)
        missed[rows] |= below_lo > lower
    at_hi = lt_hi <= upper
    if bool(at_hi.any()):
        rows = at_hi.nonzero().squeeze(1)
        up_to_hi = sum(count(c[rows] <= hi[rows, None]) for c in chunks)
        missed[rows] |= up_to_hi <= upper
    if bool(missed.any()):
        rows = missed.nonzero().squeeze(1)  # a freak subsample: redo these rows with a wider band
        below[rows], above[rows] = _select([c[rows] for c in chunks], lower, upper, minimum, sigmas * 2)
    return below, above
