"""Readers and writers over fsspec URLs (local paths, ``s3://``, anything fsspec speaks).

Sources (``storage.sources``)::

    source = open_source("fashion-mnist")            # or an image folder / Parquet URL
    refs = source.list()                             # SampleRef(sample_id, locator), cheap
    for item in source.read(refs[:256]): ...         # Sample(sample_id, image uint8 HWC, label) | SampleError
    images, labels, ids = load_arrays(source)

Map datasets (``storage.maps.writer``, ``storage.maps.reader``; layout in storage/maps/writer.py)::

    store = MapStore("s3://bucket/run1", storage_options)
    store.write_run({"config": ..., "params": ...})                  # driver, at start and end
    store.ensure_zarr("pathway", n=len(refs), shape=(28, 28), shard_size=256)   # driver, once
    done = store.committed("pathway")                                # driver: shards to skip
    store.write_shard(shard_id, k, "pathway", MapRecords(...), errors, sample_ids=[...])  # worker
    df = read_maps("s3://bucket/run1", "pathway", storage_options)  # committed shards only

Everything under one prefix goes through a :class:`storage.io.location.Location` (fs, root, URL and
options, opened once); the Parquet schemas and writer settings are in :mod:`storage.maps.tables`.

Every reader and writer here takes ``storage_options``; left out (None) they are ``$STORAGE_OPTIONS``'s
(JSON or ``@file.json``), exactly as the jobs read it, so ``storage.read_maps(url)`` reaches the store
a job wrote to with the same environment; ``{}`` means none. The options are copied, never changed
(:func:`storage.io.fs.resolve_storage_options`).

Errors are :class:`StorageError` (an ``OSError``; ``StorageNotFound`` / ``StorageAccessDenied``
also subclass ``FileNotFoundError`` / ``PermissionError``); messages name the URL and a fix and
never contain credentials. Model checkpoints live in ``storage.checkpoints``.
"""

from storage.io.fs import (InvalidStorageInput, StorageAccessDenied, StorageError, StorageNotFound, open_fs,
                        parse_storage_options, resolve_storage_options)
from storage.maps.batches import quantus_batch
from storage.io.location import Location, put_url
from storage.maps.writer import MapRecords, MapStore
from storage.maps.reader import (join_with_source, maps_array, read_errors, read_maps, read_maps_table, read_run,
                            read_sample, read_shard)
from storage.sources import Sample, SampleError, SampleRef, Source, load_arrays, open_source

__all__ = ["InvalidStorageInput", "Location", "MapRecords", "MapStore", "put_url", "quantus_batch", "Sample", "SampleError", "SampleRef", "Source", "StorageAccessDenied",
           "StorageError", "StorageNotFound", "join_with_source", "load_arrays", "maps_array", "open_fs",
           "open_source", "parse_storage_options", "read_errors", "read_maps", "read_maps_table", "read_run",
           "read_sample", "read_shard", "resolve_storage_options"]
