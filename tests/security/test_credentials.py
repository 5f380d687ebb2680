"""Issue #24, OUTPUT: no credential shows. A credential written into a URL (output, checkpoint,
source) appears in no printed line, stored file or error text, through real jobs' ``main()`` on the
real SeaweedFS server and a real local Ray; inline secret --storage-options warn without echoing.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import every_file, put
from tests.security.support import KEY_ID, SECRET, refusal, run_job

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
    put(s3_server.url("elsewhere", "kept.txt"), options, b"kept")  # the listing below needs a bucket that holds something
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
def test_a_complete_run_with_a_credential_bearing_url_shows_it_nowhere(private_model_store, ray_session, tmp_path,
                                                                        capfd):
    """A real run (local Ray) whose checkpoint URL carries its credentials: the summary, the closing hint,
    run.json (config, fingerprint, examples) and every file of the output are free of them; a rerun with
    the same URL is the same configuration."""
    out = tmp_path / "maps"
    argv = ["--checkpoint", private_model_store, "--output", str(out), "--limit", "8", "--shard-size", "8",
            "--batch-size", "8", "--workers", "1", "--no-progress", "--methods", "gradient"]
    code, out_text, err = run_job("attribute", argv, capfd)
    assert code == 0, err
    again, out_again, err_again = run_job("attribute", argv, capfd)  # a no-op rerun, same fingerprint
    assert again == 0, err_again
    record = json.loads((out / "_meta" / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["checkpoint"].startswith("http://127.0.0.1:")
    assert f"storage.read_maps({str(out)!r}" in out_text  # the closing hint names the output
    _never_shows(out_text, err, out_again, err_again, _every_byte_under(out))


@pytest.mark.slow
def test_sanity_stores_and_prints_no_credential(private_model_store, ray_session, tmp_path, capfd):
    """jobs.sanity on a real local Ray with the credential-bearing checkpoint URL: sanity.json keeps
    the URL without them, and nothing it prints holds them."""
    out = tmp_path / "sanity"
    code, out_text, err = run_job("sanity", ["--checkpoint", private_model_store, "--output", str(out), "--limit",
                                             "2", "--draws", "1", "--methods", "gradient", "--no-progress"], capfd)
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
