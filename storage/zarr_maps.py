"""The zarr v3 side of a map dataset: ``zarr/<method>/{maps,sample_id}`` over any fsspec URL.

``maps`` is [N, H, W] float16 (fill NaN: no map, e.g. an errored sample or a shard not yet
written) and ``sample_id`` is [N] strings, both in source order and chunked by ``shard_size``
rows, so shard k owns rows [k*S, (k+1)*S) and exactly one chunk of each array. The driver creates
(or grows) the arrays once with :func:`ensure_arrays`; workers only write their own rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.storage

from storage.fs import StorageError, StorageNotFound, is_local, normalize_options, open_fs, storage_errors

log = logging.getLogger(__name__)


def zarr_store(url: str, storage_options: Mapping[str, Any] | None = None, read_only: bool = False):
    """A zarr store for ``url``: LocalStore for local paths, FsspecStore for everything else."""
    fs, path = open_fs(url, storage_options)
    if is_local(fs):
        return zarr.storage.LocalStore(path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(url, storage_options=normalize_options(url, storage_options),
                                             read_only=read_only)


def ensure_arrays(url: str, n: int, shape: tuple[int, int], shard_size: int,
                  storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """Create the group at ``url`` with ``maps`` and ``sample_id`` for ``n`` rows, or grow it to ``n``.

    Idempotent: an existing group with the same map shape and shard size is kept (its rows stay);
    a smaller existing N is resized up (incremental runs append shards); a larger one is kept.
    """
    n, shard_size = int(n), int(shard_size)
    height, width = (int(x) for x in shape)
    if n < 0 or shard_size < 1:
        raise ValueError(f"need n >= 0 and shard_size >= 1, got n={n}, shard_size={shard_size}")
    with storage_errors(url, "create zarr arrays at", storage_options):
        group = zarr.open_group(store=zarr_store(url, storage_options), mode="a", zarr_format=3)
        if "maps" not in group:
            group.attrs.update({"shard_size": shard_size, "map_shape": [height, width]})
            group.create_array("maps", shape=(n, height, width), chunks=(shard_size, height, width),
                               dtype="float16", fill_value=np.nan, compressors=zarr.codecs.ZstdCodec(level=3),
                               dimension_names=("sample", "y", "x"))
            group.create_array("sample_id", shape=(n,), chunks=(shard_size,), dtype=str, fill_value="",
                               dimension_names=("sample",))
            return group
        maps, ids = group["maps"], group["sample_id"]
        if tuple(maps.shape[1:]) != (height, width) or maps.chunks[0] != shard_size:
            raise StorageError(f"{url} already holds maps of shape {maps.shape[1:]} in chunks of {maps.chunks[0]} "
                               f"rows, not {(height, width)} in chunks of {shard_size}: use another output URL")
        if maps.shape[0] < n:
            maps.resize((n, height, width))
            ids.resize((n,))
        elif maps.shape[0] > n:
            log.warning("%s holds %d rows, more than the %d asked for; keeping them", url, maps.shape[0], n)
        return group


def open_for_writing(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[zarr.Array, zarr.Array]:
    """The (maps, sample_id) arrays of ``url`` opened for writing rows."""
    with storage_errors(url, "open zarr arrays at", storage_options):
        try:
            group = zarr.open_group(store=zarr_store(url, storage_options), mode="r+", zarr_format=3)
            return group["maps"], group["sample_id"]
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as err:
            raise StorageNotFound(f"no zarr maps at {url}: the driver must call MapStore.ensure_zarr first "
                                  f"({type(err).__name__})") from None


def fits(arrays: tuple[zarr.Array, zarr.Array], shard_index: int, n: int, shape: tuple[int, ...]) -> bool:
    maps = arrays[0]
    size = maps.chunks[0]
    return n <= size and shard_index * size + n <= maps.shape[0] and tuple(shape) == tuple(maps.shape[1:])


def write_rows(url: str, arrays: tuple[zarr.Array, zarr.Array], shard_index: int, sample_ids: list[str],
               maps: np.ndarray, storage_options: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """Write one shard's rows (``maps`` [n, H, W] float16 in source order); returns (start, stop)."""
    arr, ids = arrays
    size = arr.chunks[0]
    start, stop = shard_index * size, shard_index * size + len(sample_ids)
    if not fits(arrays, shard_index, len(sample_ids), maps.shape[1:]):
        raise StorageError(f"shard {shard_index} ({len(sample_ids)} rows of {maps.shape[1:]}) does not fit {url}: "
                           f"{arr.shape} in chunks of {size} rows; grow it with ensure_zarr")
    with storage_errors(url, "write zarr rows to", storage_options):
        arr[start:stop] = maps
        ids[start:stop] = np.asarray(sample_ids, dtype=object).astype(str)
    return start, stop


def open_maps(url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Array:
    """The ``maps`` array of ``url`` read-only (lazy: index it to read rows)."""
    with storage_errors(url, "open zarr maps at", storage_options):
        try:
            return zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")["maps"]
        except (KeyError, zarr.errors.GroupNotFoundError) as err:
            raise StorageNotFound(f"no zarr maps at {url} ({type(err).__name__})") from None
