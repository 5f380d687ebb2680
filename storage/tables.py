"""The Parquet tables of a map dataset: their schemas and the one way they are written.

Shared by the sink (maps, errors), the plan and the readers, so that none of them imports another.

Column types of per-sample details are named by a short string, so that a method's declared
details (``attribution.Detail``) reach storage as plain data: ``int64``, ``float64``, ``bool``,
or ``list<float64>`` (one list per sample, e.g. one pruning threshold per layer).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ZSTD_LEVEL = 3
#: Parquet writer settings: fixed, so equal tables give equal bytes.
#: No dictionary for the map column: it only costs time and bytes there; byte-stream-split made
#: float16 maps larger (benchmarks/bench_storage.py measured both).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=ZSTD_LEVEL, use_dictionary=["method", "params", "shard_id"],
                       write_statistics=["sample_id", "label", "target", "predicted", "shard_id"],
                       data_page_version="2.0")

ERRORS_SCHEMA = pa.schema([("sample_id", pa.string()), ("reason", pa.string()), ("shard_id", pa.string()),
                           ("method", pa.string())])

_SCALARS = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
#: Columns every maps table has before the method's details, and after them the map itself.
LEADING_COLUMNS = (("sample_id", pa.string()), ("shard_id", pa.string()), ("method", pa.string()),
                   ("params", pa.string()), ("label", pa.int64()))


def detail_type(kind: str) -> pa.DataType:
    """The Arrow type a detail kind names (``int64``, ``float64``, ``bool``, ``list<...>``)."""
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
    return pa.schema([*LEADING_COLUMNS, *((name, detail_type(kind)) for name, kind in (details or {}).items()),
                      ("map", pa.fixed_shape_tensor(pa.float16(), [int(height), int(width)]))])


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
