"""What the tests of ``jobs.attribute`` share: the Fashion-MNIST job they run, and the checks that
every sample is there exactly once."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np

from storage.io.fs import join, open_fs
from storage.maps.writer import MapStore
from storage.maps.reader import maps_array, read_errors, read_maps
from storage.sources import open_source

METHODS = ("pathway", "gradient")
# The plan every Fashion-MNIST run here uses: 8 shards of 50 samples, so a fault lands mid-job.
FM = ["--limit", "400", "--shard-size", "50", "--batch-size", "25", "--workers", "1", "--no-progress"]


def source_ids(url: str = "fashion-mnist", options: dict | None = None, limit: int | None = None) -> list[str]:
    ids = [r.sample_id for r in open_source(url, storage_options=options).list()]
    return ids[:limit] if limit else ids


def check_exactly_once(url: str, options: dict | None, expected: list[str]) -> dict[str, object]:
    """Every expected sample appears once per method, in maps or in errors; zarr rows equal the Parquet maps."""
    frames = {}
    for method in METHODS:
        maps, errors = read_maps(url, method, options), read_errors(url, method, options)
        seen = list(maps.sample_id) + list(errors.sample_id)
        assert len(seen) == len(set(seen)), f"{method}: a sample appears twice"
        assert sorted(seen) == sorted(expected), f"{method}: samples missing or extra"
        zarr_maps = maps_array(url, method, options)
        row = {sid: i for i, sid in enumerate(expected)}  # plans here follow source order
        stored = zarr_maps[: len(expected)]
        for sid, m in zip(maps["sample_id"], maps["map"]):
            np.testing.assert_array_equal(stored[row[sid]], m)
        for sid in errors.sample_id:
            assert np.isnan(stored[row[sid]]).all()
        frames[method] = maps
    return frames


def parquet_bytes(url: str, options: dict | None) -> dict[str, bytes]:
    fs, root = open_fs(url, options)
    return {f"{m}/{shard}": fs.cat_file(join(root, "maps", m, f"{shard}.parquet"))
            for m in METHODS for shard in MapStore(url, options).committed(m)}


def commit_times(url: str) -> dict[str, int]:
    """When each (method, shard) of a local output was committed: its record's mtime in ns.
    (Records hold no time themselves, so that a retry rewrites them byte for byte.)"""
    return {key: os.stat(os.path.join(url, "_manifest", f"{key}.json")).st_mtime_ns
            for key in MapStore(url).committed()}



def commits(url: str) -> int:
    """Commit records written so far for pathway (one per shard)."""
    directory = os.path.join(url, "_manifest", "pathway")
    return sum(name.endswith(".json") for name in os.listdir(directory)) if os.path.isdir(directory) else 0



def run_fm_job(checkpoint: str, output: str, capfd, monkeypatch, options: dict | None = None,
               extra: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """The FM job to ``output`` in this process, on the session's Ray (``ray_session``; without Ray if
    ``extra`` says ``--in-process``), with storage options in $STORAGE_OPTIONS (the command line stays
    the same when the store's endpoint changes) and ``env`` set for the run only: the driver's worker
    settings reach its workers (jobs.runtime.cluster.worker_options). Returns the exit status and what
    it printed, as a subprocess."""
    from jobs import attribute

    argv = ["--checkpoint", checkpoint, "--output", output, *FM, *extra]
    with monkeypatch.context() as patch:
        for name, value in {**env, **({"STORAGE_OPTIONS": json.dumps(options)} if options else {})}.items():
            patch.setenv(name, value)
        capfd.readouterr()
        code = attribute.main(argv)
        out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "jobs.attribute", *argv], code, out, err)


def both_committed(url: str, options: dict | None) -> set[str]:
    """The shards committed for every method."""
    store = MapStore(url, options)
    return set.intersection(*(set(store.committed(m)) for m in METHODS))


#: A small budget for the store-full tests: 2 s of retries per request, one retry of a shard.
SMALL_BUDGET = {"PATHWAY_STORAGE_RETRY_SECONDS": "2", "PATHWAY_SHARD_RETRIES": "1"}
