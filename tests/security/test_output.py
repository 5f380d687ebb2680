"""Issue #24, OUTPUT: ``--output`` is the job's own, apart from its source, and no credential shows.

Every test runs a real job's ``main()``. Refusals come before Ray starts, so those run in-process;
the S3 cases use the real SeaweedFS server (``s3_server``), and one full run uses a real local Ray.
Each refused case lists the folder (or bucket) before and after: nothing may be written.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import every_file, fashion_mnist, put, tiny_checkpoint, write_folder

SECRET = "wJalrXUt/nFEMI+K7MDENGbPxRfiCY"  # shaped like an AWS secret: it holds / and +
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime ({} when it does not exist)."""
    if not root.exists():
        return {}
    found = {".": (0, root.stat().st_mtime_ns)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = (path.stat().st_size if path.is_file() else 0, path.stat().st_mtime_ns)
    return found


def run_job(module: str, argv: list[str], capfd) -> tuple[int, str, str]:
    """``python -m jobs.<module> argv`` in-process: (exit status, stdout, stderr)."""
    import importlib

    capfd.readouterr()
    try:
        code = importlib.import_module(f"jobs.{module}").main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    out, err = capfd.readouterr()
    return code, out, err


def refusal(err: str) -> str:
    """The job's one error line (and that there is exactly one). Exit statuses themselves are
    tests/security/test_errors.py's: a refusal here is any non-zero status with that line."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture
def stranger(tmp_path) -> Path:
    """A folder that holds someone else's files, as a home folder does."""
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.png").write_bytes(b"\x89PNG not really")
    (home / "notes.txt").write_text("mine")
    (home / ".bashrc").write_text("export X=1")
    return home


@pytest.fixture
def image_folder(tmp_path) -> Path:
    images, labels = fashion_mnist("test", 6)
    src = tmp_path / "images"
    write_folder(str(src), None, images, labels)
    return src


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


# --------------------------------------------------------------------------- no credential shows


def _never_shows(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and SECRET.split("/")[0] not in text and KEY_ID not in text, text


def _every_byte_under(root: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_credential_in_the_output_url_shows_nowhere(s3_server, tmp_path, capfd):
    options = s3_server.storage_options
    (tmp_path / "s3.json").write_text(json.dumps(options))
    url = f"s3://{KEY_ID}:{SECRET}@{s3_server.bucket}/maps"  # s3fs takes KEY:SECRET@bucket for a bucket name
    before = every_file(s3_server.url(), options)
    code, out, err = run_job("attribute", ["--output", url, "--storage-options", f"@{tmp_path}/s3.json",
                                           "--checkpoint", "/nonexistent.pt"], capfd)
    assert code != 0 and refusal(err)
    _never_shows(out, err)
    assert every_file(s3_server.url(), options) == before


@pytest.mark.slow
def test_a_credential_in_the_checkpoint_or_source_url_shows_nowhere(s3_server, tmp_path, checkpoint, capfd):
    (tmp_path / "s3.json").write_text(json.dumps(s3_server.storage_options))
    secret_url = f"s3://{KEY_ID}:{SECRET}@{s3_server.bucket}"
    cases = {"checkpoint": ["--checkpoint", f"{secret_url}/model.pt"],
             "source": ["--checkpoint", checkpoint, "--source", f"{secret_url}/images"]}
    for name, argv in cases.items():
        out_dir = tmp_path / f"maps-{name}"
        code, out, err = run_job("attribute", ["--output", str(out_dir), "--storage-options", f"@{tmp_path}/s3.json",
                                               *argv], capfd)
        assert code != 0 and refusal(err)
        record = (out_dir / "_meta" / "run.json").read_text()  # the failure is recorded, redacted
        assert json.loads(record)["status"] == "failed"
        _never_shows(out, err, record, _every_byte_under(out_dir))


class _BasicAuthFiles(BaseHTTPRequestHandler):
    """Serves one folder to a client holding the right Basic credentials (as a private model store would)."""

    root: Path
    token: str

    def _file(self) -> bytes | None:
        if self.headers.get("Authorization") != f"Basic {self.token}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        path = self.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        data = path.read_bytes()
        start, end = 0, len(data)
        ranged = self.headers.get("Range", "").removeprefix("bytes=")
        if ranged:
            lo, _, hi = ranged.partition("-")
            start, end = int(lo or 0), min(len(data), int(hi) + 1 if hi else len(data))
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return data[start:end]

    def do_HEAD(self) -> None:  # noqa: N802 - the http.server interface
        self._file()

    def do_GET(self) -> None:  # noqa: N802
        data = self._file()
        if data is not None:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def private_model_store(checkpoint) -> Iterator[str]:
    """The checkpoint behind HTTP Basic auth on loopback; yields its URL with the credentials in it."""
    handler = type("Handler", (_BasicAuthFiles,), {"root": Path(checkpoint).parent,
                                                   "token": base64.b64encode(f"{KEY_ID}:{SECRET}".encode()).decode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # HTTP URLs percent-encode the secret's / and + (aiohttp decodes them for the Authorization header)
        yield f"http://{KEY_ID}:{quote(SECRET, safe='')}@127.0.0.1:{server.server_port}/{Path(checkpoint).name}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_complete_run_with_a_credential_bearing_url_shows_it_nowhere(private_model_store, tmp_path, capfd):
    """A real run (local Ray) whose checkpoint URL carries its credentials: the summary, the closing hint,
    run.json (config, fingerprint, examples) and every file of the output are free of them; a rerun with
    the same URL is the same configuration."""
    import ray

    from tests.ray_cluster import short_tmp

    out = tmp_path / "maps"
    argv = ["--checkpoint", private_model_store, "--output", str(out), "--limit", "8", "--shard-size", "8",
            "--batch-size", "8", "--workers", "1", "--no-progress", "--methods", "gradient"]
    temp = short_tmp("so")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        code, out_text, err = run_job("attribute", argv, capfd)
        assert code == 0, err
        again, out_again, err_again = run_job("attribute", argv, capfd)  # a no-op rerun, same fingerprint
        assert again == 0, err_again
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    record = json.loads((out / "_meta" / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["checkpoint"].startswith("http://127.0.0.1:")
    assert f"storage.read_maps({str(out)!r}" in out_text  # the closing hint names the output
    _never_shows(out_text, err, out_again, err_again, _every_byte_under(out))


@pytest.mark.slow
def test_sanity_stores_and_prints_no_credential(private_model_store, tmp_path, capfd):
    """jobs.sanity on a real local Ray with the credential-bearing checkpoint URL: sanity.json keeps
    the URL without them, and nothing it prints holds them."""
    import ray

    from tests.ray_cluster import short_tmp

    out = tmp_path / "sanity"
    temp = short_tmp("ss")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        code, out_text, err = run_job("sanity", ["--checkpoint", private_model_store, "--output", str(out), "--limit",
                                                 "2", "--draws", "1", "--methods", "gradient", "--no-progress"], capfd)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert code == 0, err
    assert json.loads((out / "sanity.json").read_text())["checkpoint"].startswith("http://127.0.0.1:")
    _never_shows(out_text, err, _every_byte_under(out))


# --------------------------------------------------------------------------- flags


def test_inline_secret_storage_options_warn_without_echoing(stranger, tmp_path, capfd):
    inline = json.dumps({"key": KEY_ID, "client_kwargs": {"aws_session_token": SECRET, "endpoint_url": "http://h"}})
    code, out, err = run_job("attribute", ["--storage-options", inline, "--output", str(stranger)], capfd)
    warnings = [line for line in err.splitlines() if line.startswith("warning: --storage-options")]
    assert len(warnings) == 1, err
    assert "key, client_kwargs.aws_session_token" in warnings[0] and "ps" in warnings[0]
    assert "@file.json" in warnings[0] and "$STORAGE_OPTIONS" in warnings[0]
    assert code != 0  # the output is still refused
    _never_shows(out, err)

    (tmp_path / "s3.json").write_text(inline)  # the same options from a file: nothing to warn about
    code, _, err = run_job("attribute", ["--storage-options", f"@{tmp_path}/s3.json", "--output", str(stranger)],
                           capfd)
    assert code != 0 and "warning: --storage-options" not in err


def test_help_points_to_the_file_form(capfd):
    code, out, _ = run_job("attribute", ["--help"], capfd)
    help_text = " ".join(out.split())
    assert code == 0 and "@file.json or $STORAGE_OPTIONS, not inline" in help_text
    assert "visible in ps and shell history" in help_text


@pytest.mark.parametrize("job", ["attribute", "sanity", "perturb"])
def test_a_method_label_that_is_not_one_path_component_is_refused_before_anything_is_written(job, tmp_path, capfd):
    out = tmp_path / "a" / "b" / "out"
    code, _, err = run_job(job, ["--output", str(out), "--methods", "../../x=gradient"], capfd)
    line = refusal(err)
    assert code != 0 and "'../../x'" in line and "letters, digits or ._=-" in line, line
    assert not (tmp_path / "a").exists() and not (tmp_path / "x").exists()
