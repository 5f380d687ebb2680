"""What the map explorer (jobs.view) shows beside the maps: jobs.analyze's strategy clusters and the
evaluation jobs' results, read from the output's ``_analysis/`` and ``_eval/`` folders.

Clusters are joined to the maps by ``sample_id`` only: a gallery filtered to one cluster reads that
class's cluster table (two small columns) and passes its ids to the maps scan as an ``isin`` filter,
so the rule of jobs.reporting.view_query holds (filtering reads small columns, never ``map``). Evaluation
results are shown as the jobs wrote them: jobs.perturb, jobs.sanity and jobs.roar store aggregates
per method (curves, areas, verdicts), not per-sample scores, so there is no per-sample score to sort
by or to show; the sample page shows the aggregates of its methods and says so.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.reporting.view_query import ViewError, _dataset, _records
from storage.io.fs import StorageNotFound, storage_errors
from storage.maps.manifest import check_name
from storage.maps.tables import ANALYSIS_DIR

#: The evaluation outputs under ``<output>/_eval/<job>/`` the page shows, and the table each writes.
EVAL_TABLES = {"perturbation": "auc.csv", "sanity": "sanity.csv", "roar": "summary.csv"}
#: The most points of a class's 2-D embedding the clusters page draws (an even, deterministic subset).
MAX_POINTS = 2000
#: The most rows of one evaluation table sent to the page.
MAX_EVAL_ROWS = 500


class Analyses:
    """The analyses and evaluations stored beside one map dataset (``fs``/``root`` as MapIndex opened them)."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs, self.root, self.url = fs, root, url

    def _path(self, method: str, *parts: str) -> str:
        return "/".join([self.root, ANALYSIS_DIR, check_name("method", method), *parts])

    def _get(self, path: str) -> bytes | None:
        with storage_errors(self.url, "read", None):
            try:
                with self.fs.open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None

    def methods(self) -> dict[str, dict[str, Any]]:
        """Each analysed method's summary: ``by``, settings and every class's record (analysis.json)."""
        base = f"{self.root}/{ANALYSIS_DIR}"
        with storage_errors(self.url, "list", None):
            found = self.fs.ls(base, detail=False) if self.fs.isdir(base) else []
        out = {}
        for path in sorted(found):
            method = path.rstrip("/").rsplit("/", 1)[-1]
            data = self._get(f"{base}/{method}/analysis.json")
            if data is not None:
                summary = json.loads(data)
                out[method] = {"by": summary.get("by"), "absolute": summary.get("absolute"),
                               "classes": [{k: c.get(k) for k in ("class", "n", "k", "gap", "sizes")}
                                           for c in summary.get("classes", [])]}
        return out

    def _class_file(self, method: str, cls: int, folder: str, ext: str) -> bytes:
        data = self._get(self._path(method, folder, f"class-{cls:04d}.{ext}"))
        if data is None:
            if self._get(self._path(method, "analysis.json")) is None:
                raise ViewError(f"no analysis of method {method!r}: run python -m jobs.analyze {self.url} "
                                f"--method {method}")
            raise StorageNotFound(f"the analysis of {method!r} has no class {cls}")
        return data

    def cluster_filter(self, query: Mapping[str, str]) -> pa.Array | None:
        """The sample ids of the cluster a gallery query names (``cluster_class`` and ``cluster``, with
        ``method``), or None where it names none."""
        if query.get("cluster", "") == "" and query.get("cluster_class", "") == "":
            return None
        method = query.get("method") or ""
        if not method or method == "*":
            raise ViewError("a cluster filter needs method=: clusters are per method")
        cls, cluster = whole(query, "cluster_class"), whole(query, "cluster")
        table = pq.read_table(io.BytesIO(self._class_file(method, cls, "clusters", "parquet")),
                              columns=["sample_id", "cluster"], filters=[("cluster", "==", cluster)])
        return table.column("sample_id").combine_chunks()

    def class_detail(self, method: str, cls: int) -> dict[str, Any]:
        """One class of one method's analysis: its record, each cluster's mean map and size, and up
        to :data:`MAX_POINTS` points of its 2-D embedding."""
        from jobs.reporting.colors import is_signed

        record = json.loads(self._class_file(method, cls, "classes", "json"))
        means = np.load(io.BytesIO(self._class_file(method, cls, "means", "npy")), allow_pickle=False)
        table = pq.read_table(io.BytesIO(self._class_file(method, cls, "clusters", "parquet")),
                              columns=["sample_id", "cluster", "x", "y", "sampled"])
        if table.num_rows > MAX_POINTS:  # evenly spaced over the sample ids (the file's order): the same every time
            table = table.take(pa.array(np.linspace(0, table.num_rows - 1, MAX_POINTS).astype(np.int64)))
        return {"method": method, "class": cls, "record": record, "signed": bool(is_signed(means)),
                "means": [{"height": int(m.shape[0]), "width": int(m.shape[1]),
                           "values": [float(v) if np.isfinite(v) else None for v in m.astype(np.float64).ravel()]}
                          for m in means],
                "points": _records(table), "points_total": int(record.get("n", table.num_rows))}

    def sample_clusters(self, sample_id: str) -> list[dict[str, Any]]:
        """The sample's cluster in every analysed method (a scan of each method's cluster tables for one id)."""
        rows = []
        for method, summary in self.methods().items():
            files = _dataset(self.fs, self._path(method, "clusters"))
            if files is None:
                continue
            with storage_errors(self.url, "read", None):
                for batch in files.batches(["sample_id", "class", "cluster", "x", "y", "sampled"],
                                           pc.field("sample_id") == str(sample_id)):
                    rows += [{"method": method, "by": summary["by"], **r} for r in _records(pa.Table.from_batches([batch]))]
        return rows

    def evaluation(self, methods: list[str] | None = None) -> dict[str, Any]:
        """The evaluation tables under ``<output>/_eval/`` (aggregates per method: the jobs store no
        per-sample score), restricted to ``methods`` where a table has a method column."""
        import pandas as pd

        out: dict[str, Any] = {"per_sample": False, "jobs": {}}
        for job, name in EVAL_TABLES.items():
            data = self._get(f"{self.root}/_eval/{job}/{name}")
            if data is None:
                continue
            frame = pd.read_csv(io.BytesIO(data))
            if methods and "method" in frame.columns:
                frame = frame[frame["method"].astype(str).isin(methods)]
            entry: dict[str, Any] = {"file": f"_eval/{job}/{name}", "total": int(len(frame)),
                                     "rows": _records(pa.Table.from_pandas(frame.head(MAX_EVAL_ROWS),
                                                                           preserve_index=False))}
            notes = self._get(f"{self.root}/_eval/{job}/auc.json") if job == "perturbation" else None
            if notes is not None:
                entry["notes"] = json.loads(notes).get("notes", [])
            out["jobs"][job] = entry
        return out


def whole(query: Mapping[str, str], name: str) -> int:
    """A query parameter that must be a whole number, else one line naming it."""
    try:
        value = int(query.get(name, ""))
    except ValueError:
        raise ViewError(f"{name}={query.get(name)!r} is not a whole number") from None
    if value < 0:
        raise ViewError(f"{name}={value} is negative")
    return value
