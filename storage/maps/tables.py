"""The Parquet tables of a map dataset: their schemas and the one way they are written.

Shared by the sink (maps, errors), the plan and the readers, so that none of them imports another.

Column types of per-sample details are named by a short string, so that a method's declared
details (``attribution.Detail``) reach storage as plain data: ``int64``, ``float64``, ``bool``,
or ``list<float64>`` (one list per sample, e.g. one pruning threshold per layer).

Tested by tests/storage/maps/test_writer.py and tests/storage/maps/test_versions.py.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: What a map dataset is, in the Parquet key-value metadata and run.json (commit records name their own format).
FORMAT = "pathway-attribution.maps"
FORMAT_VERSION = 2
#: Key of that metadata in each Parquet file's schema.
METADATA_KEY = b"pathway_attribution"


# Where everything that is not a data table lives: folders that start with an underscore, which
# pyarrow, Ray Data, Spark and DuckDB's Hive discovery skip, so that no reader takes them for rows.
#: Commit records and their index segments (storage.maps.manifest).
MANIFEST_DIR = "_manifest"
#: The shard plan (storage.maps.plan).
PLAN_DIR = "_plan"
#: The run record and its pictures.
RUN_PATH = "_meta/run.json"
EXAMPLES_PATH = "_meta/examples.png"
#: Evaluations of the maps (jobs.perturb, jobs.roar) by default.
EVAL_DIR = "_eval"
#: Where jobs.analyze writes its per-method strategy clusters, inside the map dataset.
ANALYSIS_DIR = "_analysis"


def data_path(kind: str, method: str, shard_id: str) -> str:
    """Where a committed shard's table lives: ``maps/<method>/<shard>.parquet`` (or ``errors/``).

    Not Hive partitions (``method=<m>``): the ``method`` column is in every file, because HF
    ``datasets`` does not read partition columns, and pyarrow refuses a column that is both in the
    files and in the folder names (measured; docs/format.md)."""
    return f"{kind}/{method}/{shard_id}.parquet"


def pending_path(kind: str, method: str, shard_id: str) -> str:
    """Where a shard's table is written before its commit record: ``_pending/`` is skipped by every
    reader that globs (a leading underscore), so no reader sees rows of an uncommitted attempt."""
    return f"_pending/{data_path(kind, method, shard_id)}"

ZSTD_LEVEL = 3
#: Parquet writer settings: fixed, so equal tables give equal bytes.
#: No dictionary for the map column: it only costs time and bytes there; byte-stream-split made
#: float16 maps larger (benchmarks/bench_storage.py measured both).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=ZSTD_LEVEL, use_dictionary=["method", "params", "shard_id"],
                       write_statistics=["sample_id", "method", "label", "target", "predicted", "shard_id"],
                       data_page_version="2.0")

#: ``kind`` (storage.sources.base.ERROR_KINDS: read, decode, too-large, preprocess, label, attribution,
#: outside-source) came last, before format 2's layout: every format-2 errors table has it
#: (storage.maps.versions lists what format 2 added since).
ERRORS_SCHEMA = pa.schema([("sample_id", pa.string()), ("reason", pa.string()), ("shard_id", pa.string()),
                           ("method", pa.string()), ("kind", pa.string())])

_SCALARS = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
#: Columns every maps table has before the method's details, and after them the map itself.
LEADING_COLUMNS = (("sample_id", pa.string()), ("shard_id", pa.string()), ("method", pa.string()),
                   ("params", pa.string()), ("label", pa.int64()))


def map_type(height: int, width: int) -> pa.DataType:
    """A map as nested fixed-size lists, float16 [H][W] row-major: every reader tried understands it
    as a 2-D array (polars Array, DuckDB FLOAT[][], HF datasets, numpy), where the canonical
    ``arrow.fixed_shape_tensor`` extension type is refused by HF datasets and is flat in DuckDB
    (docs/format.md has the measurements)."""
    return pa.list_(pa.list_(pa.float16(), int(width)), int(height))


def detail_type(kind: str) -> pa.DataType:
    """The Arrow type a detail kind names (``int64``, ``float64``, ``bool``, ``string``, ``list<...>``)."""
    if kind.startswith("list<") and kind.endswith(">"):
        return pa.list_(detail_type(kind[5:-1]))
    try:
        return _SCALARS[kind]
    except KeyError:
        raise ValueError(f"unknown detail type {kind!r}; use one of {sorted(_SCALARS)} or list<...>") from None


def map_schema(height: int, width: int, details: Mapping[str, str] | None = None) -> pa.Schema:
    """The maps Parquet schema for [H, W] maps and a method's details (name -> kind), in order."""
    reserved = {name for name, _ in LEADING_COLUMNS} | {"map"}
    clash = reserved & set(details or {})
    if clash:
        raise ValueError(f"detail names {sorted(clash)} clash with the table's own columns")
    fields = [*LEADING_COLUMNS, *((name, detail_type(kind)) for name, kind in (details or {}).items()),
              ("map", map_type(height, width))]
    about = {"format": FORMAT, "version": FORMAT_VERSION, "map_shape": [int(height), int(width)],
             "map_dtype": "float16", "map_layout": "row-major nested fixed-size lists [H][W]"}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(about).encode(),
                                       b"huggingface": json.dumps(_hf_features(fields, height, width)).encode()})


def _hf_features(fields: list[tuple[str, pa.DataType]], height: int, width: int) -> dict:
    """The table's Hugging Face ``datasets`` features, so ``load_dataset("parquet", ...)`` types every
    column (the map as a fixed 2-D list of float16)."""
    value = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}
    features: dict[str, Any] = {}
    for name, dtype in fields:
        if name == "map":
            row = {"feature": {"dtype": "float16", "_type": "Value"}, "length": int(width), "_type": "List"}
            features[name] = {"feature": row, "length": int(height), "_type": "List"}
        elif pa.types.is_list(dtype):
            features[name] = {"feature": {"dtype": value[dtype.value_type], "_type": "Value"}, "_type": "List"}
        else:
            features[name] = {"dtype": value[dtype], "_type": "Value"}
    return {"info": {"features": features}}


def errors_table(sample_ids: list[str], reasons: list[str], shard_id: str, method: str,
                 kinds: list[str | None] | None = None) -> pa.Table:
    """A shard's error rows (a table is written for every shard, even with no rows, so that globbing
    ``errors/`` works on a clean run); ``kinds`` says at which step each sample failed."""
    n = len(sample_ids)
    kinds = [k or None for k in kinds] if kinds is not None else [None] * n
    return pa.table({"sample_id": sample_ids, "reason": reasons, "shard_id": [shard_id] * n, "method": [method] * n,
                     "kind": kinds}, schema=ERRORS_SCHEMA)


def parquet_bytes(table: pa.Table, **overrides: Any) -> bytes:
    """``table`` as Parquet bytes with the fixed settings (one row group)."""
    options = {**PARQUET_OPTIONS, **overrides}
    if "map" not in table.column_names:
        options["write_statistics"] = True
        options["use_dictionary"] = [c for c in ("method", "shard_id") if c in table.column_names]
    else:
        options["write_statistics"] = [c for c in options["write_statistics"] if c in table.column_names]
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, table.num_rows), **options)
    return buf.getvalue()
