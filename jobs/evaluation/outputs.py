"""What an evaluation job writes under its output: tables (Parquet and CSV) and single files, each atomically.

Tested by tests/jobs/test_perturb.py, tests/jobs/test_sanity.py and tests/jobs/test_roar.py (the tables they write).
"""

from __future__ import annotations

from typing import Any


def write_table(output: str, name: str, frame: Any, options: dict[str, Any]) -> list[str]:
    """``<output>/<name>.parquet`` (zstd) and ``.csv``, each written atomically; returns their URLs."""
    from storage.io.location import Location

    where = Location(output, options)
    where.put(f"{name}.parquet", frame.to_parquet(index=False, compression="zstd"))
    where.put(f"{name}.csv", frame.to_csv(index=False).encode())
    return [where.url_of(f"{name}.parquet"), where.url_of(f"{name}.csv")]


def write_file(output: str, name: str, data: bytes, options: dict[str, Any]) -> str:
    """``<output>/<name>`` written atomically; returns its URL."""
    from storage.io.location import Location

    where = Location(output, options)
    where.put(name, data)
    return where.url_of(name)

