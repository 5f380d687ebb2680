"""Reading a map dataset back: only committed shards, in shard (source) order.

    read_maps(url, method=None)        -> pandas.DataFrame ("map" holds [H, W] float16 arrays)
    read_maps_table(url, method=None)  -> pyarrow.Table ("map" is an arrow.fixed_shape_tensor column)
    read_sample(url, sample_id)        -> one sample's rows, reading only its shard's files
    maps_array(url, method)            -> [N, H, W] float16, lazy (NaN: no committed map)
    read_errors(url, method=None)      -> pandas.DataFrame (sample_id, reason, shard_id, method, kind)
    read_run(url)                      -> dict (_meta/run.json)
    join_with_source(maps_df, source, spec)  -> maps_df with an "image" column: uint8 [H, W, C] as the
                                       model saw it (the maps' size), or as stored with original=True;
                                       ``source`` is a Source or its URL

docs/format.md describes the files and columns, and the one-liners of other readers.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.io.fs import InvalidStorageInput, StorageError, StorageNotFound, join
from storage.io.location import Location
from storage.maps.manifest import check_name, read_commit, read_commits
from storage.sources.base import SampleError, Source
from storage.maps.tables import ERRORS_SCHEMA, RUN_PATH, map_schema
from storage.maps.versions import check_format, parse_run, table_format

# pyarrow's to_pandas imports pandas when a reader needs it; workers never do (what that saves:
# benchmarks/RESULTS.md, "The distributed job").
if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def _committed_tables(url: str, kind: str, method: str | None, storage_options: Mapping[str, Any] | None,
                      columns: Sequence[str] | None = None, shards: int | None = None) -> list[pa.Table]:
    """The committed ``kind`` ("maps" or "errors") Parquet files, in shard order (only the first
    ``shards`` committed shards of each method, when given); read a few at a time, since object
    stores answer slowly but in parallel."""
    where = Location(url, storage_options)
    records = list(read_commits(where, method).values())
    if not records:  # empty, or a layout whose commit records this version does not look for
        check_format(where)
    if shards is not None:
        taken: dict[str, int] = {}
        first = []
        for record in records:
            if taken.get(record["method"], 0) < shards:
                taken[record["method"]] = taken.get(record["method"], 0) + 1
                first.append(record)
        records = first
    return _read_tables(where, records, kind, columns)


def _read_tables(where: Location, records: Sequence[Mapping[str, Any]], kind: str,
                 columns: Sequence[str] | None = None, filters: list | None = None) -> list[pa.Table]:
    """The ``kind`` tables the commit ``records`` name, in their order, read a few at a time (their
    rows that pass ``filters``, where given: pyarrow's filter form)."""
    rels = [f["path"] for rec in records for f in rec["files"]
            if f["path"].startswith(f"{kind}/") and f["path"].endswith(".parquet")]

    def read(rel: str) -> pa.Table:
        data = where.get_optional(rel)
        if data is None:  # committed by an attempt that died before publishing it (MapStore.publish)
            data = where.get(f"_pending/{rel}")
        try:
            names = pq.read_schema(pa.BufferReader(data)).names if columns else []  # only to pick columns
            present = [c for c in columns if c in names] if columns else None
            table = pq.read_table(pa.BufferReader(data), columns=present, filters=filters)
        except pa.ArrowInvalid as err:
            raise StorageError(f"committed file {where.url_of(rel)} is not readable Parquet (truncated or "
                               f"corrupt?): {err}; delete its manifest record to recompute the shard") from None
        if kind == "maps":
            table_format(table.schema, where.url_of(rel))
        # A detail column another method declares, or that format 2 added after this table was written
        # (the degenerate-map details, cc2f1b9: storage.maps.versions): null here.
        for name in columns or ():
            if name not in names:
                table = table.append_column(name, pa.nulls(table.num_rows))
        return table.select(list(columns)) if columns else table

    if len(rels) <= 1:
        return [read(r) for r in rels]
    with ThreadPoolExecutor(max_workers=min(8, len(rels))) as pool:
        return list(pool.map(read, rels))


def read_maps_table(url: str, method: str | None = None, storage_options: Mapping[str, Any] | None = None,
                    columns: Sequence[str] | None = None, shards: int | None = None) -> pa.Table:
    """The committed maps (of one method, or all) as one Arrow table, in shard order; ``map`` is the
    canonical ``arrow.fixed_shape_tensor`` [H, W] (``.to_numpy_ndarray()`` gives [N, H, W]), viewed
    without a copy over the nested lists the files store."""
    if method is not None:
        check_name("method", method)
    tables = _committed_tables(url, "maps", method, storage_options, columns, shards)
    if not tables:
        schema = map_schema(0, 0)
        table = schema.empty_table().select([c for c in columns if c in schema.names]) if columns \
            else schema.empty_table()
    else:
        table = pa.concat_tables(tables, promote_options="default")  # methods declare different details
        unknown = [c for c in columns or () if pa.types.is_null(table.schema.field(c).type)]  # in no file
        if unknown:
            raise InvalidStorageInput(f"{url} has no column(s) {unknown} for {method or 'any method'}; "
                                      "docs/format.md lists the columns")
    return _with_tensor_map(table)


def _with_tensor_map(table: pa.Table) -> pa.Table:
    """``table`` with its ``map`` column (if it has one) as the tensor type (:func:`tensor_column`)."""
    if "map" not in table.column_names:
        return table
    return table.set_column(table.column_names.index("map"), "map", tensor_column(table.column("map")))


def tensor_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Nested fixed-size lists [H][W] as the canonical fixed-shape tensor type (no copy of values)."""
    if isinstance(column.type, pa.FixedShapeTensorType):  # format version 1 stored it so
        return column
    height, width = column.type.list_size, column.type.value_type.list_size
    if height * width == 0:  # an empty dataset, whose map shape is unknown
        return column
    tensor = pa.fixed_shape_tensor(column.type.value_type.value_type, [height, width])
    chunks = [pa.ExtensionArray.from_storage(tensor, pa.FixedSizeListArray.from_arrays(c.flatten().flatten(),
                                                                                     height * width))
              for c in column.chunks]
    return pa.chunked_array(chunks, type=tensor)


def read_maps(url: str, method: str | None = None, storage_options: Mapping[str, Any] | None = None,
              columns: Sequence[str] | None = None, shards: int | None = None) -> pd.DataFrame:
    """The committed maps as a DataFrame; ``map`` holds one float16 [H, W] array per row. ``shards``
    reads only the first that many committed shards of each method (a preview)."""
    return _frame(read_maps_table(url, method, storage_options, columns, shards))


def _frame(table: pa.Table) -> pd.DataFrame:
    """A maps table (``map`` as the tensor type) as a DataFrame with one [H, W] array per row."""
    has_map = "map" in table.column_names
    df = (table.drop_columns(["map"]) if has_map else table).to_pandas()
    if has_map:
        df["map"] = list(table.column("map").combine_chunks().to_numpy_ndarray()) if table.num_rows else []
    return df


def read_shard(url: str, method: str, shard_id: str, storage_options: Mapping[str, Any] | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One committed shard's maps of ``method``, like :func:`read_maps`: its commit record and its
    table, two requests, however large the dataset (a preview that does not list it);
    :class:`StorageNotFound` when the shard is not committed."""
    where = Location(url, storage_options)
    record = read_commit(where, check_name("method", method), shard_id)
    if record is None:
        check_format(where)
        raise StorageNotFound(f"{url} has no committed shard {shard_id!r} of {method!r}")
    return _frame(_with_tensor_map(pa.concat_tables(_read_tables(where, [record], "maps", columns))))


def read_sample(url: str, sample_id: str, method: str | None = None,
                storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One sample's rows (one per method, or of ``method``), like :func:`read_maps`, without scanning
    the maps: the plan says which shard holds the sample, and only that shard's files are read.

    An empty frame when the sample is planned but has no committed map (not done yet, or an error
    row: see :func:`read_errors`); :class:`StorageNotFound` when the dataset never planned it.
    """
    import pandas as pd

    from storage.maps.plan import shard_of

    where = Location(url, storage_options)
    run = check_format(where)
    shard = shard_of(where, str(sample_id))
    if shard is None:
        raise StorageNotFound(f"{url} has no sample {sample_id!r} in its plan")
    if method:
        labels = [check_name("method", method)]
    else:  # the run record check_format already read (read_run says why when there is none)
        labels = _method_labels(run if run is not None else read_run(url, storage_options))
    frames = []
    for label in labels:
        record = read_commit(where, label, shard)
        for table in _read_tables(where, [record] if record else [], "maps",
                                  filters=[("sample_id", "==", str(sample_id))]):
            frames.append(_frame(_with_tensor_map(table)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["sample_id", "method", "map"])


def _method_labels(run: Mapping[str, Any]) -> list[str]:
    """The method labels a run record's config names (a list of method specs, or {label: params})."""
    methods = (run.get("config") or {}).get("methods") or []
    return list(methods) if isinstance(methods, Mapping) else [m.get("label") or m["name"] for m in methods]


def map_arrays(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``map`` column as one float16 array [N, H, W], without a copy per row.

    The same one-liner works for a column read by any Arrow-based reader (pyarrow, Ray Data's
    ``batch_format="pyarrow"``)::

        column.combine_chunks().flatten().flatten().to_numpy().reshape(len(column), H, W)
    """
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(column.type, pa.FixedShapeTensorType):  # read_maps_table's, or format version 1
        return column.to_numpy_ndarray()
    rows = column.flatten()  # also variable-size lists, which some readers turn fixed-size ones into
    values = rows.flatten().to_numpy(zero_copy_only=False)
    if not len(column):
        return values.reshape(0, 0, 0)
    return values.reshape(len(column), len(rows) // len(column), -1)


def read_errors(url: str, method: str | None = None, storage_options: Mapping[str, Any] | None = None
                ) -> pd.DataFrame:
    """The committed errors: one row per sample that could not be processed."""
    tables = [_with_columns(t, ERRORS_SCHEMA) for t in _committed_tables(url, "errors", method, storage_options)]
    return (pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()).to_pandas()


def _with_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order. Every format-2 errors table has them all (``kind``
    came in 5dadd27, before format 2's layout); one that lacks a column (edited by hand) reads it as
    null instead of failing the concatenation."""
    return pa.table({f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
                     for f in schema}, schema=schema)


def maps_array(url: str, method: str | None = None, storage_options: Mapping[str, Any] | None = None
               ) -> CommittedMaps:
    """The method's zarr maps [N, H, W] float16, lazy: index it to read rows. Rows that are not
    committed (a shard not done yet, or an attempt that died) and errored samples read as NaN.

    ``method`` may be left out when the dataset holds one method only.
    """
    from storage.maps.zarr_maps import open_group

    if method is None:
        methods = sorted({rec["method"] for rec in _records(url, storage_options)})
        if len(methods) != 1:
            raise InvalidStorageInput(f"{url} holds methods {methods}: pass method=")
        method = methods[0]
    group = open_group(join(url, "zarr", check_name("method", method)), storage_options)
    if "committed" not in group:
        raise StorageError(f"{url} was written by format version 1 (no committed flags in its zarr arrays); "
                           "read it with that version, or recompute it into a new output")
    return CommittedMaps(group["maps"], group["committed"])


class CommittedMaps:
    """A zarr ``maps`` array seen through its ``committed`` flags (NaN elsewhere)."""

    def __init__(self, maps: Any, committed: Any) -> None:
        self.maps, self.committed = maps, committed

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.maps.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.maps.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.maps.chunks)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        if not isinstance(rows, (slice, int, np.integer)):
            raise TypeError("index the rows with an int or a slice (then numpy for the rest)")
        values = np.array(self.maps[rows])
        valid = np.asarray(self.committed[rows], dtype=bool)
        values[~valid] = np.nan
        return values


def _records(url: str, storage_options: Mapping[str, Any] | None) -> list[dict]:
    return list(read_commits(Location(url, storage_options)).values())


def read_run(url: str, storage_options: Mapping[str, Any] | None = None) -> dict:
    """``run.json`` of the dataset at ``url``."""
    where = Location(url, storage_options)
    try:
        data = where.get(RUN_PATH)
    except StorageNotFound:
        check_format(where)  # format 1 kept run.json at the root: say so rather than "not found"
        raise
    return parse_run(data, url)


def join_with_source(maps_df: pd.DataFrame, source: Source | str, spec: Any = None, *, original: bool = False,
                     split: str | None = None, storage_options: Mapping[str, Any] | None = None,
                     policy: Any = None) -> pd.DataFrame:
    """``maps_df`` plus an ``image`` column read from ``source`` by ``sample_id``.

    ``source`` is a :class:`Source` or its URL (opened with ``split``, by default the one the
    dataset's run record names when ``spec`` is that record, else "test", ``storage_options`` and
    ``policy``, a :class:`storage.sources.SourcePolicy`: by default rows may name files inside the
    source only, whatever the run record's --allow-paths were).

    By default each image is shown as the model saw it (``models.preprocess.model_view``: channels
    converted, resized or cropped to the input size, not normalized), so it lies exactly under its map.
    ``spec`` is the model's :class:`models.ModelSpec`, its dict, or the dataset's ``read_run(url)``
    (which holds it under "model"). ``original=True`` gives the images as the source holds them (any
    size; uint8 [H, W, C] with C = 1, 2, 3 or 4) and needs no spec.

    Only the rows' samples are read. A sample the source lacks, or can no longer read, means it is
    not the source the maps were computed from (or it changed since): an :class:`InvalidStorageInput`
    naming the samples, never a silent gap.
    """
    if isinstance(source, str):
        from storage.io.fs import same_url
        from storage.sources import open_source

        config = spec.get("config", {}) if isinstance(spec, Mapping) else {}
        source = open_source(source, split=split or config.get("split") or "test", storage_options=storage_options,
                             kind=config.get("source_format") if same_url(config.get("source"), source) else None,
                             policy=policy)
    model_spec = None
    if not original:
        if spec is None:
            raise InvalidStorageInput("join_with_source shows images as the model saw them: pass spec= (a ModelSpec, "
                                      "or read_run(url) of the map dataset), or original=True for the stored images")
        from models.registry import ModelSpec

        model_spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec.get("model", spec))
    ids = [str(s) for s in maps_df["sample_id"]]
    by_id = source.find(list(dict.fromkeys(ids)))  # row-addressable sources: from the ids, without listing
    wanted = list(dict.fromkeys(s for s in ids if s in by_id))
    images: dict[str, np.ndarray] = {}
    failed: list[str] = [s for s in dict.fromkeys(ids) if s not in by_id]
    from storage.sources import decoding_for

    # As the job's workers decoded them (JPEGs drafted to the model's input); as stored with original=True.
    with decoding_for(source, model_spec) if model_spec is not None else contextlib.nullcontext(source):
        for item in source.read([by_id[s] for s in wanted]):
            if isinstance(item, SampleError):
                failed.append(f"{item.sample_id}: {item.reason}")
            else:
                images[item.sample_id] = item.image
    if failed:
        raise InvalidStorageInput(
            f"{source.url} is not the source these maps were computed from, or it changed since: {len(failed)} of "
            f"their samples are missing or unreadable there (e.g. {'; '.join(failed[:3])}); pass the source the "
            "run record names (read_run(url)['config']['source'] and its split)")
    if model_spec is not None and images:
        from models.preprocess import model_view

        images = dict(zip(images, model_view(model_spec, list(images.values()))))
    out = maps_df.copy()
    out["image"] = [images.get(s) for s in ids]
    return out


__all__ = ["StorageNotFound", "join_with_source", "maps_array", "read_errors", "read_maps", "read_maps_table",
           "read_run", "read_sample"]
