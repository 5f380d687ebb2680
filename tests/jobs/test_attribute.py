"""``python -m jobs.attribute`` on a real local Ray cluster with real SeaweedFS S3: the whole job,
incremental runs, bad samples, labeled methods and setup failures.

One Ray session (tests/jobs/conftest.py, on loopback, in a fresh temp dir) serves every run made in
this process; runs in a subprocess start their own Ray. Bad samples and labeled methods, the replica's
own business, run without Ray (``--in-process``). The same job under real faults: test_attribute_faults.py;
under ``ray job submit --working-dir .`` on a real head with two workers: tests/deploy/test_crontab.py.
"""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest

from jobs import attribute
from storage.io.fs import join, open_fs
from storage.maps.reader import read_errors, read_maps, read_run
from storage.sources import open_source
from tests.helpers import fashion_mnist, png_bytes, write_folder
from tests.jobs.attribute_support import FM, METHODS, check_exactly_once, commit_times, source_ids

pytestmark = pytest.mark.slow  # starts Ray or trains a model


def test_end_to_end_to_s3(reference, checkpoint) -> None:
    url, options = reference["url"], reference["options"]
    assert reference["code"] == 0
    expected = source_ids(limit=400)
    frames = check_exactly_once(url, options, expected)
    assert list(frames["pathway"].sample_id) == expected  # shard order is source order
    # every method's table has the same columns: a detail a method does not report is null
    assert frames["pathway"].kept_fraction.between(0, 1).all() and frames["gradient"].kept_fraction.isna().all()
    for frame in frames.values():  # every method reports the model's own view of each sample
        assert (frame.target == frame.predicted).all() and frame.logit.notna().all()
    run = read_run(url, options)
    assert run["status"] == "complete" and run["maps"] == 2 * 400 and run["errors"] == 0
    assert run["config"]["checkpoint"] == checkpoint and "storage_options" not in run["config"]
    assert options["secret"] not in json.dumps(run)
    fs, root = open_fs(url, options)
    assert fs.cat_file(join(root, "_meta/examples.png"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_new_source_files_are_processed_incrementally(checkpoint, ray_session, s3_server, tmp_path, capsys
                                                      ) -> None:
    """An image folder on S3 grows: the rerun maps only the new files, in new shards. Two workers share
    each run's shards (the suite's one pool of more than one actor), every sample exactly once."""
    src, options = s3_server.url("folder-incremental"), s3_server.storage_options
    out = str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 42)
    write_folder(src, options, images[:30], labels[:30])
    args = ["--source", src, "--checkpoint", checkpoint, "--output", out, "--shard-size", "10", "--batch-size",
            "10", "--workers", "2", "--no-progress", "--storage-options", json.dumps(options)]
    assert attribute.main(args) == 0
    assert "30 samples in 3 shards (3 new); 0 already committed, 3 to do" in capsys.readouterr().out
    before = commit_times(out)

    write_folder(src, options, images[30:], labels[30:], first=30)
    assert attribute.main(args) == 0
    printed = capsys.readouterr().out
    assert "42 samples in 5 shards (2 new); 3 already committed, 2 to do" in printed
    assert "this run: 12 samples" in printed
    after = commit_times(out)
    assert {k: after[k] for k in before} == before and len(after) == 2 * 5
    # The planned order of a grown folder is old files first, then new ones: check against the plan.
    from storage.io.location import Location
    from storage.maps.plan import read_plan

    planned = [r.sample_id for shard in read_plan(Location(out))[0] for r in shard.refs]
    assert sorted(planned) == sorted(source_ids(src, options))
    check_exactly_once(out, None, planned)

    # A rerun with nothing new keeps the example PNG the last run drew; without it, draws it again.
    png = os.path.join(out, "_meta", "examples.png")
    drawn = os.stat(png).st_mtime_ns
    assert attribute.main(args) == 0
    assert "0 to do" in capsys.readouterr().out
    assert os.stat(png).st_mtime_ns == drawn and read_run(out)["examples"] == [png]
    os.remove(png)
    assert attribute.main(args) == 0
    assert f"example maps: {png}" in capsys.readouterr().out and read_run(out)["examples"] == [png]
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_corrupt_images_become_error_rows(checkpoint, tmp_path, capsys) -> None:
    """A bad sample is an error row, not a lost shard (in the job's process: the rows are the replica's own)."""
    src, out = str(tmp_path / "folder"), str(tmp_path / "maps")
    images, labels = fashion_mnist("test", 20)
    good = png_bytes(images[0])
    files = write_folder(src, {}, images, labels, extra={
        "Bag/truncated.png": good[: len(good) // 2],
        "Coat/random.png": np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes(),
    })
    code = attribute.main(["--source", src, "--checkpoint", checkpoint, "--output", out, "--shard-size", "8",
                           "--in-process", "--no-progress"])
    assert code == 0
    assert "40 maps and 4 error rows committed" in capsys.readouterr().out
    planned = [r.sample_id for r in open_source(src).list()]
    assert sorted(planned) == sorted(files)
    check_exactly_once(out, None, planned)
    for method in METHODS:
        errors = read_errors(out, method)
        assert sorted(errors.sample_id) == ["Bag/truncated.png", "Coat/random.png"]
        assert errors.reason.str.startswith("cannot decode image").all()
        assert len(read_maps(out, method, columns=["sample_id"])) == 20


def test_labeled_methods_store_one_method_twice(checkpoint, tmp_path, capsys) -> None:
    """``label=name:params`` stores a second pathway variant under its own label, computed with its params
    (in the job's process: the variants are the replica's business)."""
    import attribution
    from models.preprocess import preprocess
    from storage.checkpoints import load_checkpoint

    out = str(tmp_path / "maps")
    code = attribute.main(["--checkpoint", checkpoint, "--output", out, "--limit", "40", "--shard-size", "20",
                           "--methods", "pathway p30=pathway:percentile=30", "--in-process", "--no-progress"])
    assert code == 0
    run = read_run(out)
    assert [m["label"] for m in run["config"]["methods"]] == ["pathway", "p30"]
    assert {m["name"] for m in run["config"]["methods"]} == {"pathway"}
    assert run["method_params"]["p30"]["percentile"] == 30 and run["method_params"]["pathway"]["percentile"] == 70
    p70, p30 = read_maps(out, "pathway"), read_maps(out, "p30")
    assert list(p30.sample_id) == source_ids(limit=40)
    # zero scores (inactive neurons) tie at the threshold and are pruned, so kept <= 1 - p/100
    assert (p30.kept_fraction <= 0.701).all() and (p70.kept_fraction <= 0.301).all()
    assert (p30.kept_fraction > p70.kept_fraction + 0.1).all()
    model, spec = load_checkpoint(checkpoint)
    images, _ = fashion_mnist("test", 4)
    expected = attribution.reduce_map(attribution.get("pathway", model, percentile=30).attribute(
        preprocess(spec, images)), "signed_max_abs")
    stored = np.stack(p30["map"][:4]).astype(np.float32)
    scale = float(np.abs(expected.numpy()).max())
    np.testing.assert_allclose(stored, expected.numpy(), rtol=1e-2, atol=1e-3 * scale)  # stored as float16
    assert np.abs(stored - np.stack(p70["map"][:4])).max() > 0.05 * scale
    assert attribute.main(["--methods", "p30=nosuch", "--checkpoint", checkpoint, "--output", out]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["checkpoint missing", "wrong S3 credentials", "output not writable",
                                  "output of format 1"])
def test_failures_not_caused_by_data_exit_2_fast(case, checkpoint, s3_server, tmp_path, capfd, monkeypatch
                                                  ) -> None:
    """Errors of setup, not of samples: one clear line on stderr, exit 2, before any Ray work."""
    args = ["--checkpoint", checkpoint, "--output", str(tmp_path / "maps"), *FM]
    secret = "wrong-secret-Zq81x"
    if case == "checkpoint missing":
        args[1] = str(tmp_path / "absent.pt")
        expected = r"absent\.pt"
    elif case == "wrong S3 credentials":
        args[3] = s3_server.url("maps-denied")
        monkeypatch.setenv("STORAGE_OPTIONS", json.dumps({**s3_server.storage_options, "secret": secret}))
        expected = r"s3://.*maps-denied.*credentials"
    elif case == "output not writable":
        (tmp_path / "file").write_text("a file, not a directory")
        args[3] = str(tmp_path / "file" / "maps")
        expected = r"file/maps"
    else:
        (tmp_path / "maps").mkdir()
        (tmp_path / "maps" / "run.json").write_text("{}")  # format 1 kept it at the root
        expected = r"format version 1;.*another output URL"
    start = time.perf_counter()
    assert attribute.main(args) == 2
    seconds = time.perf_counter() - start
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jobs.attribute: error: "), captured.err
    assert re.search(expected, lines[0]), lines[0]
    assert secret not in captured.err + captured.out and s3_server.secret not in captured.err + captured.out
    assert seconds < 30, f"{case}: took {seconds:.1f} s to fail"
    assert "Started a local Ray" not in captured.err + captured.out
    if case == "output of format 1":
        assert sorted(os.listdir(tmp_path / "maps")) == ["run.json"]  # nothing written into it


def test_credentials_only_in_the_drivers_environment_stop_the_job_in_one_line(checkpoint, ray_session, s3_server,
                                                                              tmp_path, capfd, monkeypatch) -> None:
    """The driver finds AWS credentials in its environment, the workers (started before) do not: the
    job says so before any shard, instead of failing every shard on the workers."""
    options = s3_server.storage_options
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    endpoint_only = {"client_kwargs": options["client_kwargs"]}
    args = ["--checkpoint", checkpoint, "--output", s3_server.url("maps-env-credentials"), "--limit", "8",
            "--methods", "gradient", "--workers", "1", "--no-progress", "--storage-options", json.dumps(endpoint_only)]
    assert attribute.main(args) == 2
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("jobs.attribute: error: a Ray worker cannot use the job's storage") and "--storage-options" in line
    assert "maps-env-credentials" in line and "NoCredentialsError" in line
    assert options["secret"] not in line
