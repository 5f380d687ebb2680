"""Issue #24, OUTPUT: ``--output`` is the job's own and apart from its source (no credential shows:
tests/security/test_credentials.py).

Every test runs a real job's ``main()``. Refusals come before Ray starts, so those run in-process;
the S3 cases use the real SeaweedFS server (``s3_server``), and one full run uses a real local Ray.
Each refused case lists the folder (or bucket) before and after: nothing may be written.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import every_file, fashion_mnist, put, write_folder
from tests.security.support import refusal, run_job, snapshot


# --------------------------------------------------------------------------- the output is the job's own


def test_an_output_holding_other_files_is_refused_before_anything_is_written(stranger, capfd):
    before = snapshot(stranger)
    code, out, err = run_job("attribute", ["--output", str(stranger), "--checkpoint", "/nonexistent.pt"], capfd)
    line = refusal(err)
    assert code != 0 and f"--output {stranger} holds what jobs.attribute does not write" in line
    assert "notes.txt" in line and "photos" in line and ".bashrc" in line, line
    assert snapshot(stranger) == before  # no lease, no _meta/run.json


def test_root_is_refused_by_the_listing_not_by_a_permission_error(capfd):
    before = sorted(os.listdir("/"))
    code, out, err = run_job("attribute", ["--output", "/", "--checkpoint", "/nonexistent.pt"], capfd)
    line = refusal(err)
    assert code != 0 and "--output / holds what jobs.attribute does not write (" in line, line
    assert "ermission" not in line and "denied" not in line
    assert sorted(os.listdir("/")) == before and not os.path.exists("/_lease.json") and not os.path.exists("/_meta")


def test_a_file_as_output_is_refused(tmp_path, capfd):
    target = tmp_path / "report.pdf"
    target.write_bytes(b"%PDF")
    code, _, err = run_job("attribute", ["--output", str(target), "--checkpoint", "/nonexistent.pt"], capfd)
    assert code != 0 and "is a file, not a folder" in refusal(err)
    assert target.read_bytes() == b"%PDF" and sorted(os.listdir(tmp_path)) == ["report.pdf"]


def test_what_an_earlier_failed_run_left_is_the_jobs_own(tmp_path, capfd):
    out = tmp_path / "maps"
    argv = ["--output", str(out), "--checkpoint", str(tmp_path / "missing.pt")]
    code, _, err = run_job("attribute", argv, capfd)
    assert code != 0 and "missing.pt" in refusal(err)
    assert json.loads((out / "_meta" / "run.json").read_text())["status"] == "failed"  # it got past the listing
    code, _, err = run_job("attribute", argv, capfd)  # the rerun fails on the checkpoint again, not on the output
    line = refusal(err)
    assert code != 0 and "missing.pt" in line and "does not write" not in line, line


@pytest.mark.parametrize("job", ["sanity", "perturb", "make_dataset"])
def test_every_job_that_writes_a_folder_refuses_one_holding_other_files(job, stranger, capfd):
    before = snapshot(stranger)
    code, _, err = run_job(job, ["--output", str(stranger), "--source", "fashion-mnist"], capfd)
    line = refusal(err)
    assert code != 0 and f"--output {stranger} holds what jobs.{job} does not write" in line, line
    assert snapshot(stranger) == before


def test_report_refuses_an_output_holding_other_files(tmp_path, stranger, capfd):
    maps = tmp_path / "maps"
    (maps / "_meta").mkdir(parents=True)
    (maps / "_meta" / "run.json").write_text(json.dumps({"config": {}, "status": "complete"}))
    before = snapshot(stranger)
    code, _, err = run_job("report", ["--maps", str(maps), "--output", str(stranger)], capfd)
    assert code != 0 and "holds what jobs.report does not write" in refusal(err)
    assert snapshot(stranger) == before


def test_roar_refuses_an_output_holding_other_files(tmp_path, stranger, checkpoint, capfd):
    for split in ("train", "test"):
        (tmp_path / split / "_meta").mkdir(parents=True)
        config = {"split": split, "source": "fashion-mnist", "checkpoint": checkpoint,
                  "methods": [{"label": "gradient", "name": "gradient", "params": {}}]}
        (tmp_path / split / "_meta" / "run.json").write_text(json.dumps({"config": config}))
    before = snapshot(stranger)
    code, _, err = run_job("roar", ["--train-maps", str(tmp_path / "train"), "--test-maps", str(tmp_path / "test"),
                                    "--output", str(stranger)], capfd)
    assert code != 0 and "holds what jobs.roar does not write" in refusal(err)
    assert snapshot(stranger) == before


@pytest.mark.slow
def test_an_s3_prefix_holding_other_objects_is_refused(s3_server, tmp_path, capfd):
    options = s3_server.storage_options
    (tmp_path / "s3.json").write_text(json.dumps(options))
    put(s3_server.url("team", "budget.xlsx"), options, b"not ours")
    put(s3_server.url("team", "photos", "cat.png"), options, b"not ours either")
    before = every_file(s3_server.url(), options)
    code, _, err = run_job("attribute", ["--output", s3_server.url("team"), "--storage-options", f"@{tmp_path}/s3.json",
                                         "--checkpoint", "/nonexistent.pt"], capfd)
    line = refusal(err)
    assert code != 0 and f"--output {s3_server.url('team')} holds what jobs.attribute does not write" in line
    assert "budget.xlsx" in line and "photos" in line
    assert every_file(s3_server.url(), options) == before


# --------------------------------------------------------------------------- apart from the source


def test_an_output_inside_a_folder_source_is_refused(image_folder, capfd):
    before = snapshot(image_folder)
    output = image_folder / "maps"
    code, _, err = run_job("attribute", ["--source", str(image_folder), "--output", f"file://{output}",
                                         "--checkpoint", "/nonexistent.pt"], capfd)
    line = refusal(err)
    assert code != 0 and f"--output file://{output} is inside --source {image_folder}" in line, line
    assert snapshot(image_folder) == before  # no _meta/examples.png to become a sample next time


def test_an_output_equal_to_its_source_is_refused(image_folder, capfd):
    before = snapshot(image_folder)
    code, _, err = run_job("attribute", ["--source", str(image_folder), "--output", str(image_folder),
                                         "--checkpoint", "/nonexistent.pt"], capfd)
    line = refusal(err)
    assert code != 0 and f"--output {image_folder} holds what jobs.attribute does not write (Ankle boot" in line
    assert snapshot(image_folder) == before


def test_a_source_inside_the_output_is_refused(tmp_path, capfd):
    images, labels = fashion_mnist("test", 4)
    out = tmp_path / "out"
    write_folder(str(out / "maps" / "shoes"), None, images, labels)  # only names a map dataset has at the top
    before = snapshot(out)
    code, _, err = run_job("attribute", ["--source", str(out / "maps" / "shoes"), "--output", str(out),
                                         "--checkpoint", "/nonexistent.pt"], capfd)
    line = refusal(err)
    assert code != 0 and f"--output {out} holds --source {out}/maps/shoes" in line, line
    assert snapshot(out) == before


def test_a_symlink_into_the_source_is_seen_through(image_folder, tmp_path, capfd):
    (tmp_path / "alias").symlink_to(image_folder)
    code, _, err = run_job("attribute", ["--source", str(image_folder), "--output", str(tmp_path / "alias" / "maps"),
                                         "--checkpoint", "/nonexistent.pt"], capfd)
    assert code != 0 and "is inside --source" in refusal(err)
    assert not (image_folder / "maps").exists()


@pytest.mark.parametrize("job", ["sanity", "make_dataset", "train"])
def test_other_jobs_refuse_an_output_inside_their_source(job, image_folder, capfd):
    before = snapshot(image_folder)
    output = image_folder / ("model.pt" if job == "train" else "out")
    code, _, err = run_job(job, ["--source", str(image_folder), "--output", str(output)], capfd)
    assert code != 0 and "is inside --source" in refusal(err)
    assert snapshot(image_folder) == before


# --------------------------------------------------------------------------- flags

@pytest.mark.parametrize("job", ["attribute", "sanity", "perturb"])
def test_a_method_label_that_is_not_one_path_component_is_refused_before_anything_is_written(job, tmp_path, capfd):
    out = tmp_path / "a" / "b" / "out"
    code, _, err = run_job(job, ["--output", str(out), "--methods", "../../x=gradient"], capfd)
    line = refusal(err)
    assert code != 0 and "'../../x'" in line and "letters, digits or ._=-" in line, line
    assert not (tmp_path / "a").exists() and not (tmp_path / "x").exists()
