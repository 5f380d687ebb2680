"""fsspec helpers: error messages (URL and fix, never the secret) and atomic writes."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

from jobs.runtime.cli import JobError, storage_options_from
from storage import MapStore, StorageAccessDenied, StorageError, StorageNotFound, open_source, read_maps, read_run
from storage.io.fs import (STORAGE_OPTIONS_ENV, InvalidStorageInput, join, normalize_options, open_fs, redact_text,
                        redact_url, resolve_storage_options, same_url, scrub, secret_option_keys, translate,
                        url_secrets, write_bytes_atomic)
from storage.io.location import Location
from storage.maps.zarr_maps import zarr_store
from tests.helpers import map_records as records

WRONG_SECRET = "wr0ng-S3CRET-value-42"


@pytest.fixture
def bad_options(s3_server):
    return {**s3_server.storage_options, "secret": WRONG_SECRET}


def _no_secret(err: BaseException, caplog, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(err) and secret not in repr(err)
        assert secret not in caplog.text


@pytest.mark.parametrize("operation", ["source", "write", "read", "run"])
def test_wrong_credentials(s3_server, bad_options, caplog, operation):
    caplog.set_level(logging.DEBUG)
    url = s3_server.url("creds")
    with pytest.raises(StorageAccessDenied) as info:
        if operation == "source":
            open_source(url, storage_options=bad_options)
        elif operation == "write":
            MapStore(url, bad_options).write_shard("s0", None, "m", records(["s/0000", "s/0001"]))
        elif operation == "read":
            read_maps(url, storage_options=bad_options)
        else:
            read_run(url, bad_options)
    message = str(info.value)
    assert url in message and "check key/secret" in message
    assert isinstance(info.value, PermissionError) and isinstance(info.value, OSError)
    _no_secret(info.value, caplog, WRONG_SECRET, s3_server.secret)


def test_missing_bucket(s3_server, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageNotFound) as info:
        open_source("s3://no-such-bucket-xyz/data", storage_options=s3_server.storage_options)
    assert "s3://no-such-bucket-xyz/data" in str(info.value) and "bucket does not exist" in str(info.value)
    _no_secret(info.value, caplog, s3_server.secret)


def test_missing_object(storage_root, caplog):
    url, options = storage_root
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageNotFound) as info:
        open_source(join(url, "nothing-here"), storage_options=options)
    assert join(url, "nothing-here") in str(info.value) and "check the URL" in str(info.value)
    with pytest.raises(FileNotFoundError, match="run.json"):
        read_run(url, options)
    if options:
        _no_secret(info.value, caplog, options["secret"])


def test_unreachable_endpoint(caplog, monkeypatch):
    """A process that has not reached a store yet reports a refused endpoint at once. Once it has
    (an earlier test talked to the S3 server), a refusal is a blip retried for the budget: this test
    is about the first case, so it starts from it (it waited 120 s after the S3 tests before)."""
    from storage.io import retry

    monkeypatch.setattr(retry, "_REACHED", False)
    options = {"key": "k", "secret": WRONG_SECRET, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(StorageError, match="unreachable|endpoint") as info:
        open_source("s3://b/x", storage_options=options)
    _no_secret(info.value, caplog, WRONG_SECRET)


def test_scrub_and_redact():
    assert scrub("boom secret=abc123 xyz", {"client_kwargs": {"secret": "abc123"}}) == "boom secret=*** xyz"
    assert redact_url("s3://user:pass@bucket/x") == "s3://bucket/x"
    assert redact_url("/a/b") == "/a/b"
    with pytest.raises(StorageError, match="empty"):
        open_fs("")


@pytest.mark.parametrize("url, shown", [
    ("s3://AKIAEXAMPLE:wJal/rXUt+nFEMI@bucket/maps", "s3://bucket/maps"),  # a secret holding / and +
    ("https://tok3n@host.example/x.pt", "https://host.example/x.pt"),       # a token as the user name
    ("s3://bucket/data/a@b.png", "s3://bucket/data/a@b.png"),               # an @ in a key is no credential
    ("http://host:8080/a@b", "http://host:8080/a@b"),                       # nor after a host:port
    ("http://u:1234@host/x", "http://host/x"),
    ("https://h/x.pt?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc&v=2", "https://h/x.pt?X-Amz-Credential=***&"
                                                                       "X-Amz-Signature=***&v=2"),
    ("https://acct.blob.core.windows.net/c/x?sv=1&sig=s3cr3t", "https://acct.blob.core.windows.net/c/x?sv=1&sig=***"),
    ("/local/p:q@r", "/local/p:q@r"),                                       # no scheme: a path, kept as it is
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # redacted URLs compare like with like


def test_redact_text_and_url_secrets():
    text = "cannot read 's3://AKIAEXAMPLE:wJal/rXUt@bucket/x' (see https://tok3n@h/y)"
    assert redact_text(text) == "cannot read 's3://bucket/x' (see https://h/y)"
    assert url_secrets("s3://AKIAEXAMPLE:wJal/rXUt@bucket/x") == ["AKIAEXAMPLE:wJal/rXUt", "AKIAEXAMPLE", "wJal/rXUt",
                                                                   "AKIAEXAMPLE:wJal", "rXUt", "wJal"]
    assert url_secrets("s3://bucket/x") == []
    # s3fs takes KEY:SECRET@bucket for a bucket name and botocore quotes it without the scheme
    # (and splits it at the secret's slash: bucket "AKIAEXAMPLE:wJal", key "rXUt@bucket/x")
    for bare in ('Invalid bucket name "AKIAEXAMPLE:wJal/rXUt@bucket"', 'Invalid bucket name "AKIAEXAMPLE:wJal"',
                 "no such key rXUt@bucket/x"):
        shown = scrub(bare, None, url_secrets("s3://AKIAEXAMPLE:wJal/rXUt@bucket/x"))
        assert "wJal" not in shown and "rXUt" not in shown and "AKIAEXAMPLE" not in shown, shown


def test_same_url_compares_like_with_like():
    assert same_url("s3://bucket/x", "s3://AKIAEXAMPLE:wJal/rXUt@bucket/x")
    assert same_url("s3://AKIAEXAMPLE:old@bucket/x", "s3://AKIAEXAMPLE:rotated@bucket/x")
    assert not same_url("s3://bucket/x", "s3://bucket/y") and not same_url(None, "s3://bucket/x")


def test_secret_option_keys_names_keys_never_values():
    options = {"key": "AKIA", "anon": False, "client_kwargs": {"endpoint_url": "http://h", "aws_session_token": "t"},
               "config_kwargs": {"signature_version": "s3v4"}, "password": "p", "credentials": {"x": 1}}
    assert secret_option_keys(options) == ["key", "client_kwargs.aws_session_token",
                                           "config_kwargs.signature_version", "password"]
    assert secret_option_keys({"anon": True, "client_kwargs": {"endpoint_url": "http://h"}}) == []


def test_translate_never_quotes_a_url_credential(tmp_path):
    url = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x"
    err = translate(ValueError(f"Invalid bucket name \"AKIAEXAMPLE:wJalrXUtnFEMI@bucket\" at {url}"), url, "read")
    assert "wJalrXUtnFEMI" not in str(err) and "s3://bucket/x" in str(err)


def test_atomic_write_local_never_half_visible(tmp_path):
    fs, path = open_fs(str(tmp_path / "sub" / "f.bin"))
    write_bytes_atomic(fs, path, b"old" * 1000)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            with open(path, "rb") as fh:
                seen.add(len(fh.read()))

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(200):
        write_bytes_atomic(fs, path, b"new" * 2000)
        write_bytes_atomic(fs, path, b"old" * 1000)
    stop.set()
    thread.join()
    assert seen <= {3000, 6000}
    assert os.listdir(tmp_path / "sub") == ["f.bin"]  # no temporary files left behind


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    fs, path = open_fs(str(tmp_path / "f.bin"))
    write_bytes_atomic(fs, path, b"old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(fs, path, b"new")
    assert (tmp_path / "f.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_s3(s3_server):
    fs, path = open_fs(s3_server.url("atomic", "x.json"), s3_server.storage_options)
    write_bytes_atomic(fs, path, b"{}")
    assert fs.cat_file(path) == b"{}"
    assert fs.ls(s3_server.bucket + "/atomic", detail=False) == [s3_server.bucket + "/atomic/x.json"]


# --------------------------------------------------------------------------- one way to reach storage

SECRET_OPTIONS = {"key": "AKIAEXAMPLE", "secret": "s3cr3t-Opt10ns/val",
                  "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "config_kwargs": {"retries": {"max_attempts": 1}}, "list": [{"a": 1}]}


def test_none_means_storage_options_env_and_its_file_form(monkeypatch, tmp_path):
    monkeypatch.delenv(STORAGE_OPTIONS_ENV, raising=False)
    assert resolve_storage_options(None) == {}
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, "")
    assert resolve_storage_options(None) == {}
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(SECRET_OPTIONS))
    assert resolve_storage_options(None) == SECRET_OPTIONS
    (tmp_path / "o.json").write_text(json.dumps({"anon": True}))
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, f"@{tmp_path}/o.json")
    assert resolve_storage_options(None) == {"anon": True}
    # a given mapping, even an empty one, is used as given: as --storage-options replaces the variable
    assert resolve_storage_options({}) == {} and resolve_storage_options({"x": 1}) == {"x": 1}


def test_the_jobs_read_the_variable_through_the_same_function(monkeypatch, tmp_path):
    (tmp_path / "o.json").write_text(json.dumps(SECRET_OPTIONS))
    for text in (json.dumps(SECRET_OPTIONS), f"@{tmp_path}/o.json"):
        monkeypatch.setenv(STORAGE_OPTIONS_ENV, text)
        assert storage_options_from(None) == resolve_storage_options(None) == SECRET_OPTIONS
    assert storage_options_from("{}") == {}  # the flag, even empty, replaces the variable


@pytest.mark.parametrize("text, message", [
    ('{"secret": "s3cr3t-Opt10ns/val"', r"^\$STORAGE_OPTIONS is not valid JSON \("),
    ('["s3cr3t-Opt10ns/val"]', r"^\$STORAGE_OPTIONS must be a JSON object, got list$"),
    ("@/nonexistent/o.json", r"^cannot read \$STORAGE_OPTIONS file '/nonexistent/o.json': "),
])
def test_a_bad_variable_is_one_line_that_never_echoes_it(monkeypatch, text, message):
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, text)
    for call in (lambda: resolve_storage_options(None), lambda: read_run("s3://bucket/maps"),
                 lambda: open_fs("s3://bucket/maps")):
        with pytest.raises(InvalidStorageInput, match=message) as err:
            call()
        assert "s3cr3t" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(JobError, match=message):  # the jobs' own error type, same words
        storage_options_from(None)


def test_options_are_copied_all_the_way_down(monkeypatch, tmp_path):
    given = json.loads(json.dumps({**SECRET_OPTIONS, "endpoint_url": "http://127.0.0.1:9"}))
    before = json.loads(json.dumps(given))
    resolved = resolve_storage_options(given)
    resolved["client_kwargs"]["endpoint_url"] = "changed"
    resolved["config_kwargs"]["retries"]["max_attempts"] = 9
    resolved["list"][0]["a"] = 2
    resolved["hf"] = {}
    normalize_options("s3://bucket/x", given)  # moves endpoint_url into client_kwargs: of its copy
    fs, _ = open_fs("s3://bucket/x", given)
    Location("s3://bucket/x", given)
    zarr_store("s3://bucket/x/zarr/m", given)
    assert given == before
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:9"


def test_readers_follow_the_variable_where_given_none(monkeypatch, tmp_path):
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(SECRET_OPTIONS))
    fs, _ = open_fs("s3://bucket/x")
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:9" and fs.key == "AKIAEXAMPLE"
    assert Location("s3://bucket/x").storage_options == SECRET_OPTIONS
    assert MapStore("s3://bucket/x").storage_options == SECRET_OPTIONS
    assert Location("s3://bucket/x", {}).storage_options == {}  # explicit: none
    # messages scrub the variable's credentials as they do the given options'
    assert scrub("denied for s3cr3t-Opt10ns/val") == "denied for ***"
