"""The zarr v3 side of a map dataset: ``zarr/<method>/`` over any fsspec URL.

A group per method holding three arrays along the dimension ``sample``, one row per planned
sample in plan order (the source's order; samples that appear later are appended after them):

- ``maps`` [sample, y, x] float16, NaN where there is no map (an errored sample);
- ``sample_id`` [sample] strings, a coordinate of ``maps`` (CF ``coordinates`` attribute, so
  ``xarray.open_zarr`` labels rows by id);
- ``committed`` [sample] bool, True once the row's shard is committed and the sample has a map.
  Rows of an attempt that never committed stay False (their maps may be written): select
  ``committed`` rows, or read through :func:`storage.maps.reader.maps_array`, which does.

Chunks hold ``shard_size`` rows and shard k owns rows [k*S, (k+1)*S), so no two writers ever touch
one chunk. When a run ends, the driver trims the arrays to the last planned row and consolidates
the metadata; the next run that plans more shards grows them again, so the last shard of an
earlier run, if it was not full, leaves rows with ``sample_id == ""`` and ``committed`` False
before the new ones (documented in docs/format.md).

Tested by tests/storage/maps/test_writer.py and tests/storage/maps/test_sink.py.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.storage

from storage.io.fs import StorageError, StorageNotFound, is_local, normalize_options, open_fs, storage_errors
from storage.io.retry import retrying

log = logging.getLogger(__name__)

ARRAYS = ("maps", "sample_id", "committed")


def zarr_store(url: str, storage_options: Mapping[str, Any] | None = None, read_only: bool = False):
    """A zarr store for ``url``: LocalStore for local paths, FsspecStore for everything else.
    ``storage_options`` None means ``$STORAGE_OPTIONS``'s (:func:`storage.io.fs.resolve_storage_options`)."""
    options = normalize_options(url, storage_options)  # resolved, and a copy: fsspec keeps what it is given
    fs, path = open_fs(url, options)
    if is_local(fs):
        return zarr.storage.LocalStore(path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(url, storage_options=options,
                                             read_only=read_only)


def _create(group: zarr.Group, n: int, height: int, width: int, shard_size: int) -> None:
    group.attrs.update({"shard_size": shard_size, "map_shape": [height, width]})
    maps = group.create_array("maps", shape=(n, height, width), chunks=(shard_size, height, width), dtype="float16",
                              fill_value=np.nan, compressors=zarr.codecs.ZstdCodec(level=3),
                              dimension_names=("sample", "y", "x"), overwrite=True)
    maps.attrs.update({"coordinates": "sample_id", "long_name": "attribution map",
                       "description": "valid where committed is True"})
    group.create_array("sample_id", shape=(n,), chunks=(shard_size,), dtype=str, fill_value="",
                       dimension_names=("sample",), overwrite=True)
    group.create_array("committed", shape=(n,), chunks=(shard_size,), dtype=bool, fill_value=False,
                       dimension_names=("sample",), overwrite=True)


def ensure_arrays(url: str, n: int, shape: tuple[int, int], shard_size: int,
                  storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """Create the group at ``url`` for ``n`` rows, or grow it to ``n``; the driver's job, under its lease.

    Idempotent: an existing group with the same map shape and shard size keeps its rows; a smaller
    N is resized up (incremental runs append shards). A group another process half-created is
    completed rather than refused.
    """
    n, shard_size = int(n), int(shard_size)
    height, width = (int(x) for x in shape)
    if n < 0 or shard_size < 1:
        raise ValueError(f"need n >= 0 and shard_size >= 1, got n={n}, shard_size={shard_size}")
    def ensure() -> zarr.Group:  # idempotent, so a store blip is simply retried
        group = zarr.open_group(store=zarr_store(url, storage_options), mode="a", zarr_format=3)
        if any(name not in group for name in ARRAYS):
            _create(group, n, height, width, shard_size)
            return group
        maps = group["maps"]
        if tuple(maps.shape[1:]) != (height, width) or maps.chunks[0] != shard_size:
            raise StorageError(f"{url} already holds maps of shape {maps.shape[1:]} in chunks of {maps.chunks[0]} "
                               f"rows, not {(height, width)} in chunks of {shard_size}: use another output URL")
        if maps.shape[0] < n:
            resize(group, n)
            consolidate(group.store)  # so that readers opening it consolidated see the new shape
        return group

    with storage_errors(url, "create zarr arrays at", storage_options):
        return retrying(ensure, f"creating zarr arrays at {url}")


def consolidate(store: Any) -> None:
    """``zarr.consolidate_metadata`` without the warning zarr 3 gives on every call (consolidated
    metadata is not in the v3 spec yet): the format documents it (docs/format.md), readers that do
    not know it read the arrays' own metadata, and the line said nothing to the user of a job."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part in the Zarr format 3")
        zarr.consolidate_metadata(store)


def resize(group: zarr.Group, n: int) -> None:
    """Every array of the group to ``n`` rows (the rows kept are untouched)."""
    for name in ARRAYS:
        array = group[name]
        array.resize((n, *array.shape[1:]))


def finish(url: str, rows: int, storage_options: Mapping[str, Any] | None = None) -> None:
    """At the end of a run: trim to the ``rows`` planned rows and consolidate the metadata, so that
    readers see exactly the planned rows and open the group with one request."""
    def trim() -> None:
        store = zarr_store(url, storage_options)
        group = zarr.open_group(store=store, mode="r+", zarr_format=3)
        if group["maps"].shape[0] != rows:
            resize(group, rows)
        consolidate(store)

    with storage_errors(url, "finish zarr arrays at", storage_options):
        retrying(trim, f"finishing zarr arrays at {url}")


def open_for_writing(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, zarr.Array]:
    """The arrays of ``url`` opened for writing rows."""
    with storage_errors(url, "open zarr arrays at", storage_options):
        def arrays() -> dict[str, zarr.Array]:  # every metadata read inside the retry
            group = zarr.open_group(store=zarr_store(url, storage_options), mode="r+", zarr_format=3,
                                    use_consolidated=False)
            return {name: group[name] for name in ARRAYS}

        try:
            return retrying(arrays, f"opening zarr arrays at {url}")
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as err:
            raise StorageNotFound(f"no zarr maps at {url}: the driver must call MapStore.ensure_zarr first "
                                  f"({type(err).__name__})") from None


def fits(arrays: dict[str, zarr.Array], shard_index: int, n: int, shape: tuple[int, ...]) -> bool:
    maps = arrays["maps"]
    size = maps.chunks[0]
    return n <= size and shard_index * size + n <= maps.shape[0] and tuple(shape) == tuple(maps.shape[1:])


def write_rows(url: str, arrays: dict[str, zarr.Array], shard_index: int, sample_ids: list[str],
               maps: np.ndarray, storage_options: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """Write one shard's maps and ids (``maps`` [n, H, W] float16 in source order); returns (start, stop).
    The rows stay uncommitted until :func:`mark_committed`."""
    arr = arrays["maps"]
    size = arr.chunks[0]
    start, stop = shard_index * size, shard_index * size + len(sample_ids)
    if not fits(arrays, shard_index, len(sample_ids), maps.shape[1:]):
        raise StorageError(f"shard {shard_index} ({len(sample_ids)} rows of {maps.shape[1:]}) does not fit {url}: "
                           f"{arr.shape} in chunks of {size} rows; grow it with ensure_zarr")
    ids = np.asarray(sample_ids, dtype=object).astype(str)

    def write() -> None:
        arr[start:stop] = maps
        arrays["sample_id"][start:stop] = ids

    with storage_errors(url, "write zarr rows to", storage_options):
        retrying(write, f"writing zarr rows {start}:{stop} of {url}")
    return start, stop


def mark_committed(url: str, arrays: dict[str, zarr.Array], start: int, mapped: np.ndarray,
                   storage_options: Mapping[str, Any] | None = None) -> None:
    """Flag a committed shard's rows from ``start``: True where the sample has a map."""
    def write() -> None:
        arrays["committed"][start:start + len(mapped)] = mapped

    with storage_errors(url, "write zarr rows to", storage_options):
        retrying(write, f"flagging committed rows of {url}")


def open_group(url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """The method's group, read-only (consolidated metadata where a run wrote it)."""
    with storage_errors(url, "open zarr maps at", storage_options):
        try:
            return zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")
        except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise StorageNotFound(f"no zarr maps at {url} ({type(err).__name__})") from None
