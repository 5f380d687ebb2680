"""jobs.analyze on a real map dataset (written by storage.maps.writer.MapStore) and a real local Ray: a planted
corner pattern in one class is one cluster, outputs and the record are written, reruns resume, and
other settings are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from jobs import analyze
from jobs.runtime.tasks import HereTasks, RayTasks
from storage.maps.writer import MapRecords, MapStore


def planted_output(url: str, shards: int = 3, per_shard: int = 40, options: dict | None = None) -> set[str]:
    """A map dataset of method 'pathway': class 0 maps are a centre blob, except every 4th a corner
    mark (the ids returned); class 1 maps are a horizontal bar."""
    rng = np.random.default_rng(0)
    store, stamped = MapStore(url, options), set()
    for s in range(shards):
        ids = [f"s/{s * per_shard + i:04d}" for i in range(per_shard)]
        labels = np.arange(per_shard) % 2
        maps = rng.normal(0, 0.05, (per_shard, 32, 32)).astype(np.float32)
        for i in range(per_shard):
            if labels[i] == 1:
                maps[i, 14:18, 4:28] += 1.0
            elif (s * per_shard + i) % 8 == 0:
                maps[i, 0:4, 28:32] += 3.0
                stamped.add(ids[i])
            else:
                maps[i, 10:22, 10:22] += 1.0
        store.write_shard(f"{s:06d}", None, "pathway", MapRecords(ids, labels, maps, details={"target": labels},
                                                                   detail_types={"target": "int64"}))
    return stamped


def test_bind_refuses_other_settings(tmp_path) -> None:
    from storage.io.location import Location

    where = Location(str(tmp_path))
    config = analyze.settings(analyze.parse_args(["x"]), "pathway")
    analyze.bind(where, config)
    analyze.bind(where, config)  # the same settings resume
    with pytest.raises(analyze.JobError, match="size was 16, is 8"):
        analyze.bind(where, {**config, "size": 8})


def test_bad_input_is_one_line_before_any_ray(tmp_path, capsys) -> None:
    url = str(tmp_path / "maps")
    MapStore(url).write_shard("000000", None, "pathway", MapRecords(["a", "b", "c"], [0, 1, 0], np.zeros((3, 8, 8))))
    for argv, says in (([url, "--by", "target"], "no 'target' column; try --by label"),
                       ([url, "--method", "nope"], "no committed maps of it; it has pathway"),
                       ([str(tmp_path / "nothing")], "has no committed maps; run jobs.attribute")):
        assert analyze.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err


def test_class_samples_are_seeded_and_bounded() -> None:
    meta = pd.DataFrame({"sample_id": [f"{i:03d}" for i in range(100)], "label": np.arange(100) % 2})
    a = analyze.class_samples(meta, "label", [0, 1], 20, seed=3)
    b = analyze.class_samples(meta.iloc[::-1], "label", [0, 1], 20, seed=3)
    assert all(len(a[c]) == 20 and list(a[c]) == list(b[c]) for c in (0, 1))
    assert set(a[0]) <= set(meta.sample_id[meta.label == 0])


@pytest.mark.slow
def test_analyze_isolates_the_planted_pattern_and_resumes(tmp_path, ray_session, capsys) -> None:
    out = str(tmp_path / "maps")
    stamped = planted_output(out)
    argv = [out, "--layout", "spectral", "--max-per-class", "40", "--size", "8"]
    assert analyze.main(argv) == 0
    base = tmp_path / "maps" / "_analysis" / "pathway"
    table = pd.read_parquet(base / "clusters" / "class-0000.parquet")
    assert len(table) == 60 and table.sampled.sum() == 40  # 20 maps assigned out of sample
    found = table.groupby("cluster").sample_id.apply(set)
    best = max(found, key=lambda ids: len(ids & stamped))
    assert best == stamped  # precision and recall 1 on the planted corner
    record = json.loads((base / "classes" / "class-0000.json").read_text())
    assert record["k"] == 2 and sorted(record["sizes"]) == [15, 45]
    means = np.load(base / "means" / "class-0000.npy")
    assert means.shape == (2, 32, 32)
    corner = int(table[table.sample_id.isin(stamped)].cluster.iloc[0])
    assert means[corner, 0:4, 28:32].mean() > 10 * means[corner, 10:22, 10:22].mean()
    assert (base / "means" / "class-0001.png").read_bytes()[:4] == b"\x89PNG"
    from storage.io.outputs import check_output
    from storage.maps.versions import MAP_DATASET

    check_output(out, MAP_DATASET)  # the analysis keeps the output jobs.attribute's own: its reruns resume
    summary = json.loads((base / "analysis.json").read_text())
    assert [c["class"] for c in summary["classes"]] == [0, 1]
    capsys.readouterr()

    assert analyze.main(argv) == 0  # a rerun skips both classes
    assert "2 classes already done, 0 to do" in capsys.readouterr().out
    here = tmp_path / "here"  # the same analysis without Ray: the same clusters, positions and mean maps
    shutil.copytree(out, here, ignore=shutil.ignore_patterns("_analysis"))
    assert analyze.main([str(here), *argv[1:], "--in-process"]) == 0
    for name in ("clusters/class-0000.parquet", "clusters/class-0001.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(here / "_analysis" / "pathway" / name),
                                      pd.read_parquet(base / name), check_exact=True)
    for name in ("means/class-0000.npy", "means/class-0001.npy"):
        assert np.array_equal(np.load(here / "_analysis" / "pathway" / name), np.load(base / name))
    capsys.readouterr()
    assert analyze.main([out, "--layout", "spectral", "--size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "size was 8, is 16" in err

    # Every committed file damaged: one line naming one, exit 2, no traceback.
    for damaged in (tmp_path / "maps" / "maps" / "pathway").glob("*.parquet"):
        damaged.write_bytes(b"not parquet")
    assert analyze.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not readable Parquet" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_task_storage_error_is_raised_as_itself(ray_session) -> None:
    from storage.io.fs import StorageError

    def fails() -> None:
        raise StorageError("s3://b/x is gone")

    tasks = RayTasks()
    with pytest.raises(StorageError, match="is gone"):
        analyze.gather(tasks, tasks.remote(fails).remote())
    tasks = HereTasks()
    with pytest.raises(StorageError, match="is gone"):
        analyze.gather(tasks, tasks.remote(fails).remote())


@pytest.mark.slow
def test_analyze_on_s3(s3_server, ray_session, monkeypatch, capsys) -> None:
    import io
    import uuid

    from storage.io.location import Location

    url, options = s3_server.url(f"an-{uuid.uuid4().hex[:8]}"), s3_server.storage_options
    stamped = planted_output(url, options=options)
    monkeypatch.setenv("STORAGE_OPTIONS", json.dumps(options))
    assert analyze.main([url, "--layout", "spectral", "--size", "8"]) == 0
    printed = capsys.readouterr()
    assert s3_server.secret not in printed.out + printed.err
    where = Location(f"{url}/_analysis/pathway", options)
    table = pd.read_parquet(io.BytesIO(where.get("clusters/class-0000.parquet")))
    assert max(table.groupby("cluster").sample_id.apply(set), key=lambda ids: len(ids & stamped)) == stamped
    assert json.loads(where.get("classes/class-0001.json"))["n"] == 60
