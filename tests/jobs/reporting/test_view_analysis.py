"""jobs.reporting.view_analysis over a small synthetic output (tests/jobs/test_view.py's) with an analysis folder
and an evaluation table written in the formats jobs.analyze and jobs.perturb write (docs/analysis.md,
jobs/perturb.py): the cluster filter against pandas, the clusters page's data, a sample's clusters,
the evaluation panel's aggregates, and the HTTP API's answers and refusals. The real jobs.analyze
behind the page is tests/jobs/test_view_browser.py's."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.jobs.test_view import _bench


def _write_analysis(root: Path, maps: pd.DataFrame) -> pd.DataFrame:
    """``_analysis/pathway/`` as jobs.analyze lays it out (by label, k = 2 or 3 per class, seeded)."""
    rng = np.random.default_rng(1)
    base = root / "_analysis" / "pathway"
    for folder in ("clusters", "means", "classes"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rows, records = [], []
    for c, group in maps.groupby("label"):
        k = 2 + int(c) % 2
        ids = np.sort(group.sample_id.to_numpy())
        cluster = rng.integers(0, k, len(ids))
        xy = rng.normal(size=(len(ids), 2))
        table = pa.table({"sample_id": ids, "class": np.full(len(ids), c, np.int64), "cluster": cluster.astype(np.int64),
                          "x": xy[:, 0], "y": xy[:, 1], "sampled": rng.random(len(ids)) < 0.5})
        pq.write_table(table, base / "clusters" / f"class-{int(c):04d}.parquet")
        np.save(base / "means" / f"class-{int(c):04d}.npy", rng.random((k, 28, 28)).astype(np.float32))
        record = {"class": int(c), "n": len(ids), "sampled": len(ids) // 2, "k": k, "gap": 0.5,
                  "sizes": np.bincount(cluster, minlength=k).tolist(), "eigenvalues": [0.0, 0.1]}
        (base / "classes" / f"class-{int(c):04d}.json").write_text(json.dumps(record))
        records.append(record)
        rows.append(table.to_pandas())
    config = {"method": "pathway", "by": "label", "absolute": True}
    (base / "analysis.json").write_text(json.dumps({**config, "classes": records}))
    (base / "config.json").write_text(json.dumps(config))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("view-analysis") / "out"
    _bench().write_output(root, 1200, 256)
    maps = ds.dataset(root / "maps", format="parquet").to_table(
        columns=["sample_id", "method", "label", "predicted", "logit"]).to_pandas()
    clusters = _write_analysis(root, maps)
    perturbation = root / "_eval" / "perturbation"
    perturbation.mkdir(parents=True)
    pd.DataFrame({"method": ["pathway", "pathway", "random"], "fill": ["mean"] * 3, "rank": ["abs"] * 3,
                  "order": ["morf", "lerf", "morf"], "auc": [0.4, 0.1, 0.2], "accuracy_auc": [0.3, 0.6, 0.5],
                  "n_images": [64] * 3}).to_csv(perturbation / "auc.csv", index=False)
    (perturbation / "auc.json").write_text(json.dumps({"areas": [], "notes": ["a note the job wrote"]}))
    return root, maps, clusters


@pytest.fixture(scope="module")
def explorer(output):
    from jobs.view import Explorer

    return Explorer(str(output[0]), {})


@pytest.mark.parametrize("cls, cluster, sort", [(3, 1, None), (4, 0, "logit"), (5, 2, None)])
def test_cluster_filter_matches_the_join(explorer, output, cls, cluster, sort):
    _, maps, clusters = output
    query = {"method": "pathway", "cluster_class": str(cls), "cluster": str(cluster), "limit": "200"}
    if sort:
        query.update(sort=sort, order="desc")
    page = explorer.index.rows(query, explorer.analyses.cluster_filter(query))
    ids = set(clusters[(clusters["class"] == cls) & (clusters.cluster == cluster)].sample_id)
    want = maps[maps.sample_id.isin(ids)]
    if sort:
        want = want.sort_values([sort, "sample_id"], ascending=[False, True])
    assert len(ids) > 5 and page["total"] == len(ids)
    assert [r["sample_id"] for r in page["rows"]] == list(want.sample_id)
    assert {r["label"] for r in page["rows"]} == {cls}  # the analysis grouped by label


def test_clusters_page_data_and_a_samples_clusters(explorer, output):
    root, _, clusters = output
    info = explorer.info()
    assert info["analyses"]["pathway"]["by"] == "label"
    assert [c["class"] for c in info["analyses"]["pathway"]["classes"]] == list(range(10))
    detail = explorer.analyses.class_detail("pathway", 3)
    means = np.load(root / "_analysis/pathway/means/class-0003.npy")
    assert len(detail["means"]) == detail["record"]["k"] == 3 and not detail["signed"]
    assert np.allclose(np.array(detail["means"][1]["values"]).reshape(28, 28), means[1])
    mine = clusters[clusters["class"] == 3]
    assert len(detail["points"]) == len(mine) == detail["points_total"]
    assert sorted(p["sample_id"] for p in detail["points"]) == sorted(mine.sample_id)
    one = clusters.iloc[7]
    [row] = explorer.analyses.sample_clusters(one.sample_id)
    assert (row["method"], row["class"], row["cluster"], row["by"]) == ("pathway", one["class"], one.cluster, "label")


def test_evaluation_is_the_stored_aggregates(explorer, output):
    evaluation = explorer.analyses.evaluation(["pathway"])
    assert evaluation["per_sample"] is False and list(evaluation["jobs"]) == ["perturbation"]
    entry = evaluation["jobs"]["perturbation"]
    assert [r["order"] for r in entry["rows"]] == ["morf", "lerf"] and entry["notes"] == ["a note the job wrote"]
    assert explorer.analyses.evaluation(None)["jobs"]["perturbation"]["total"] == 3


def test_output_without_analysis_or_evaluation(tmp_path):
    from jobs.view import Explorer
    from jobs.reporting.view_query import ViewError

    _bench().write_output(tmp_path / "out", 300, 256)
    bare = Explorer(str(tmp_path / "out"), {})
    assert bare.info()["analyses"] == {} and bare.analyses.evaluation(None)["jobs"] == {}
    assert bare.analyses.sample_clusters("00000001") == []
    with pytest.raises(ViewError, match="no analysis of method 'pathway': run python -m jobs.analyze"):
        bare.analyses.cluster_filter({"method": "pathway", "cluster_class": "1", "cluster": "0"})


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_http_api(output):
    from jobs.view import make_server

    server = make_server(str(output[0]), {}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, body = _get(base + "/api/rows?method=pathway&cluster_class=2&cluster=1")
        clusters = output[2]
        assert status == 200 and json.loads(body)["total"] == int(((clusters["class"] == 2) & (clusters.cluster == 1)).sum())
        status, body = _get(base + "/api/clusters?method=pathway&class=2")
        assert status == 200 and json.loads(body)["record"]["class"] == 2
        status, body = _get(base + "/api/evaluation?methods=pathway")
        assert status == 200 and json.loads(body)["jobs"]["perturbation"]["total"] == 2
        status, body = _get(base + "/api/sample_clusters?sample_id=00000005")
        assert status == 200 and json.loads(body)["rows"][0]["method"] == "pathway"
        assert _get(base + "/clusters.html")[0] == 200
        for path, code, words in [("/api/rows?cluster_class=2&cluster=1", 400, "needs method="),
                                  ("/api/rows?method=pathway&cluster_class=2&cluster=x", 400, "not a whole number"),
                                  ("/api/rows?method=gradient&cluster_class=2&cluster=1", 400, "no analysis of method"),
                                  ("/api/clusters?method=pathway&class=42", 404, "has no class 42"),
                                  ("/api/clusters?method=pathway", 400, "missing query parameter class")]:
            status, body = _get(base + path)
            assert (status, words in json.loads(body)["error"]) == (code, True), (path, body)
    finally:
        server.shutdown()
        server.server_close()
