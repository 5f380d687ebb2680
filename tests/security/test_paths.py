"""Issue #24, paths: nothing an index or a folder names makes a job read outside its data or contact an
address the operator did not choose.

Real ``jobs.attribute`` runs (their shards in the test's process: ``--in-process``, the worker code of an
actor) over a local index whose
rows name ``/etc/passwd``, ``/proc/self/environ``, ``../../x.png``, ``file:///etc/passwd``, a loopback
HTTP server that must receive no request, an object in another bucket of a real S3 server (SeaweedFS),
a symbolic link out of the folder and a file outside it; and over an image folder holding such a link,
a job's ``_meta/`` and a ``.hidden/`` folder. Every such row is an error row of kind outside-source
whose reason holds no byte of any file; the good rows are mapped; ``--allow-paths`` admits exactly the
rows under its prefixes.
"""

from __future__ import annotations

import json
import os

import pytest

from jobs import attribute
from storage.io.fs import open_fs
from storage.maps.reader import read_errors, read_maps, read_run
from storage.sources.files import SKIPPED_FOLDER
from tests.helpers import fashion_mnist, png_bytes, put, write_index
from tests.servers import capture_server

pytestmark = pytest.mark.slow  # trains a tiny model, starts SeaweedFS

QUIET = ["--in-process", "--no-progress", "--methods", "gradient", "--shard-size", "4"]
#: Bytes of the files the rows point at, none of which may appear in an error row, run.json or output.
SECRETS = ("root:x", "PATHS_CANARY_7f3a")
OTHER_BUCKET = "other-bucket"


@pytest.fixture
def canary(monkeypatch):
    """A value in this process's environment (the job's, its shards running here): /proc/self/environ holds it."""
    monkeypatch.setenv("PATHS_CANARY", SECRETS[1])


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked: ...{text[max(0, text.find(secret) - 200):][:400]}"


def run_job(source: str, out: str, checkpoint: str, options: dict, capfd, *extra: str) -> tuple[dict, dict, object]:
    """``jobs.attribute`` on ``source``; (maps by id, errors by id, run.json) after checking that no
    file's bytes reached the error rows, run.json or the job's output."""
    code = attribute.main(["--source", source, "--checkpoint", checkpoint, "--output", out,
                           "--storage-options", json.dumps(options), *QUIET, *extra])
    printed = capfd.readouterr()
    assert code == 0, printed.err[-3000:]
    maps, errors, run = read_maps(out, "gradient"), read_errors(out, "gradient"), read_run(out)
    assert_no_secret(printed.out, printed.err, json.dumps(run), *errors.reason)
    return (dict(zip(maps.sample_id, maps.label)), {e["sample_id"]: e for e in errors.to_dict("records")}, run)


@pytest.fixture
def index_source(tmp_path, s3_server, canary):
    """A local index whose rows lead everywhere; yields (index, options, rows, outside folder, capture)."""
    images, _ = fashion_mnist("test", 6)
    data, outside = tmp_path / "data", tmp_path / "outside"
    for i in range(4):
        put(str(data / "img" / f"good{i}.png"), {}, png_bytes(images[i]))
    put(str(outside / "b.png"), {}, png_bytes(images[4]))
    put(str(data / "notes" / "secret.png"), {}, b"root:x:0:0:root:/root:/bin/bash\n" * 4)  # inside, not an image
    os.symlink(data / "img" / "good0.png", data / "img" / "inner.png")
    os.symlink("/etc/passwd", data / "img" / "passwd.png")
    options = s3_server.storage_options
    fs, _ = open_fs(f"s3://{OTHER_BUCKET}", options)
    if not fs.exists(OTHER_BUCKET):
        fs.mkdir(OTHER_BUCKET)
    fs.pipe(f"{OTHER_BUCKET}/x.png", png_bytes(images[5]))
    with capture_server() as http:
        rows = {"good": [f"img/good{i}.png" for i in range(4)] + ["img/inner.png"],
                "allowed": ["../outside/b.png", f"s3://{OTHER_BUCKET}/x.png"],
                "refused": ["img/passwd.png", "/etc/passwd", "/proc/self/environ", "../../x.png", "file:///etc/passwd",
                            f"{http.url}/x.png"]}
        every = rows["good"] + rows["allowed"] + rows["refused"] + ["notes/secret.png"]
        write_index(str(data / "index.csv"), {}, [{"path": r, "label": "Bag"} for r in every])
        yield str(data / "index.csv"), options, rows, str(outside), http


def test_index_rows_outside_the_source(index_source, checkpoint, tmp_path, capfd):
    """Without --allow-paths every row that leaves the index's folder is an outside-source error row
    naming its path and the flag, and is not read (the HTTP server sees no connection); with it,
    exactly the rows under the prefixes are mapped."""
    index, options, rows, outside, http = index_source
    maps, errors, run = run_job(index, str(tmp_path / "confined"), checkpoint, options, capfd)
    assert sorted(maps) == sorted(rows["good"])
    assert errors["notes/secret.png"]["kind"] == "decode"  # inside the source: read, and not an image
    for row in rows["allowed"] + rows["refused"]:
        assert errors[row]["kind"] == "outside-source", errors[row]
        assert row in errors[row]["reason"] and "--allow-paths" in errors[row]["reason"]
    assert set(errors) == set(rows["allowed"] + rows["refused"] + ["notes/secret.png"])
    assert run["errors_by_kind"] == {"outside-source": 8, "decode": 1}
    assert http.connections == []

    maps, errors, run = run_job(index, str(tmp_path / "widened"), checkpoint, options, capfd,
                                "--allow-paths", outside, f"s3://{OTHER_BUCKET}")
    assert sorted(maps) == sorted(rows["good"] + rows["allowed"])
    assert {row for row, e in errors.items() if e["kind"] == "outside-source"} == set(rows["refused"])
    assert run["config"]["allow_paths"] == [outside, f"s3://{OTHER_BUCKET}"]
    assert http.connections == []


def test_folder_source_links_and_skipped_folders(checkpoint, s3_server, tmp_path, capfd, canary):
    """An image folder: a link out of it is an outside-source error row, a link inside it is mapped, and
    a job's ``_meta/`` and a ``.hidden/`` folder are neither classes nor samples but listed as skipped."""
    images, _ = fashion_mnist("test", 4)
    folder = tmp_path / "folder"
    for i, rel in enumerate(["Bag/0.png", "Bag/1.png", "Coat/2.png", "_meta/examples.png", ".hidden/3.png"]):
        put(str(folder / rel), {}, png_bytes(images[i % 4]))
    os.symlink("/etc/passwd", folder / "Bag" / "passwd.png")
    os.symlink("../Coat/2.png", folder / "Bag" / "in.png")
    maps, errors, run = run_job(str(folder), str(tmp_path / "maps"), checkpoint, s3_server.storage_options, capfd)
    assert sorted(maps) == ["Bag/0.png", "Bag/1.png", "Bag/in.png", "Coat/2.png"]
    assert list(errors) == ["Bag/passwd.png"] and errors["Bag/passwd.png"]["kind"] == "outside-source"
    skipped = {f["path"]: f["reason"] for f in run["skipped_files"]["files"]}
    assert skipped == {".hidden/": SKIPPED_FOLDER, "_meta/": SKIPPED_FOLDER}
