"""A real job's output read back the ways it and docs/format.md say, with the store's options in
``$STORAGE_OPTIONS`` only (issue #26): the job's closing hint runs as printed in a fresh Python, and
format.md's reading snippets run in order on one options dict that no project call changes."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import uuid

import pytest

from tests.ray_cluster import ROOT, job_env

LIMIT = 24
HINT = "read them with: "


@pytest.fixture(scope="module")
def job(s3_server, ray_session, tmp_path_factory) -> dict:
    """The default job (shipped model, Fashion-MNIST) to s3://, options only in the environment, run in
    this process on the session's Ray; what it printed, and the environment its readers get."""
    from jobs import attribute

    url, options = s3_server.url(f"hint-{uuid.uuid4().hex[:10]}"), s3_server.storage_options
    env = job_env(str(tmp_path_factory.mktemp("ray")), STORAGE_OPTIONS=json.dumps(options))  # the readers' env
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("STORAGE_OPTIONS", env["STORAGE_OPTIONS"])
        code = attribute.main(["--output", url, "--limit", str(LIMIT), "--shard-size", "12", "--batch-size", "12",
                               "--in-process", "--no-progress"])
    assert code == 0, printed.getvalue()[-3000:]
    return {"url": url, "options": options, "env": env, "stdout": printed.getvalue(), "secret": s3_server.secret}


@pytest.mark.slow
def test_the_closing_hint_runs_as_printed(job, tmp_path) -> None:
    lines = [line for line in job["stdout"].splitlines() if line.startswith(HINT)]
    assert len(lines) == 1, job["stdout"]
    hint = lines[0][len(HINT):]
    assert job["url"] in hint and job["secret"] not in hint
    check = "\nassert len(df) == %d and set(df['method']) == {'pathway'}, df\nprint(df['map'][0].shape)" % LIMIT
    done = subprocess.run([sys.executable, "-c", hint + check], cwd=tmp_path, env=job["env"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(28, 28)"


#: format.md section 7's calls, in its order, on one options dict ``opts``; ``same(what)`` after each
#: checks that the dict is as it was. In a Python that has not started Ray, as format.md says HF
#: datasets' reads must run (Ray Data, the one reader that would start Ray here, is left out).
SNIPPETS = r"""
import copy, json, sys
import numpy as np, pandas as pd, pyarrow.parquet as pq, polars as pl, duckdb, datasets, xarray as xr
from storage import (join_with_source, maps_array, read_errors, read_maps, read_maps_table, read_run, read_sample,
                     read_shard, open_fs)
from storage.maps.reader import map_arrays

out, method, opts, cache = sys.argv[1], "pathway", json.loads(sys.argv[2]), sys.argv[3]
before = copy.deepcopy(opts)

def same(what):
    assert opts == before, f"{what} changed the caller's storage options: {sorted(opts)}"

df = read_maps(out, method, storage_options=opts); same("read_maps")
table = read_maps_table(out, method, opts); same("read_maps_table")
assert map_arrays(table.column("map")).shape == (len(df), 28, 28)
one = read_sample(out, df.sample_id[0], storage_options=opts); same("read_sample")
shard = read_shard(out, method, df.shard_id[0], opts); same("read_shard")
lazy = maps_array(out, method, opts); same("maps_array")
assert np.array_equal(lazy[:len(df)], np.stack(df["map"]), equal_nan=True)
errors = read_errors(out, storage_options=opts); same("read_errors")
run = read_run(out, opts); same("read_run")
shown = join_with_source(df.head(3), run["config"]["source"], run, storage_options=opts); same("join_with_source")

fs, root = open_fs(out, opts); same("open_fs")
assert pq.read_table(f"{root}/maps", filesystem=fs).num_rows == 2 * len(df)
assert len(pd.read_parquet(f"{out}/maps", storage_options=opts)) == 2 * len(df); same("pandas")
assert sum(len(pl.read_parquet(fs.open(p, "rb"))) for p in fs.glob(f"{root}/maps/*/*.parquet")) == 2 * len(df)
con = duckdb.connect(); con.register_filesystem(fs)
assert con.sql(f"select count(*) from read_parquet('{out}/maps/*/*.parquet')").fetchall()[0][0] == 2 * len(df)
ds = datasets.load_dataset("parquet", data_files=f"{out}/maps/*/*.parquet", split="train", cache_dir=cache,
                           storage_options=dict(opts)).with_format("numpy")   # datasets adds "hf" to the dict
same("datasets.load_dataset with dict(opts)")
assert ds.num_rows == 2 * len(df)
zarr = xr.open_zarr(f"{out}/zarr/{method}", storage_options=opts, consolidated=True); same("xarray")
assert zarr.sizes["sample"] == len(df)
again = join_with_source(read_maps(out, method, storage_options=opts).head(3), run["config"]["source"], run,
                         storage_options=opts); same("join_with_source after the others")
assert np.array_equal(np.stack(again["image"]), np.stack(shown["image"]))
print("ok", len(df), len(one), len(shard), len(errors))
"""


@pytest.mark.slow
def test_format_md_snippets_in_order_on_one_options_dict(job, tmp_path) -> None:
    env = {k: v for k, v in job["env"].items() if k != "STORAGE_OPTIONS"}  # the dict alone reaches the store
    done = subprocess.run([sys.executable, "-c", SNIPPETS, job["url"], json.dumps(job["options"]),
                           str(tmp_path / "hf-cache")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[:2] == ["ok", str(LIMIT)]

