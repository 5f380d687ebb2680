"""Transient store failures are retried, permanent ones are not: a real SeaweedFS behind a fault proxy."""

from __future__ import annotations

import errno
import time
import uuid

import pytest

from storage.fs import StorageError, StorageNotFound
from storage.location import Location
from storage.retry import is_transient, retrying
from tests.faultproxy import Rule, fault_proxy


@pytest.fixture
def proxied(s3_server):
    """(a fresh prefix through the proxy, the proxy, the same prefix direct)."""
    with fault_proxy(s3_server.endpoint_url, seed=1) as proxy:
        url = s3_server.url(f"retry-{uuid.uuid4().hex[:8]}")
        yield Location(url, proxy.storage_options(s3_server.storage_options)), proxy, \
            Location(url, s3_server.storage_options)


@pytest.mark.parametrize("fault", ["503", "500", "drop"])
def test_reads_writes_and_listings_ride_out_transient_faults(proxied, fault) -> None:
    where, proxy, direct = proxied
    proxy.rules = [Rule(fault, rate=0.5, limit=6)]
    for i in range(4):
        where.put(f"manifest/m/{i:03d}.json", b"{}")
    assert where.find("manifest/m", ".json") == [f"manifest/m/{i:03d}.json" for i in range(4)]
    assert where.get_many(where.find("manifest", ".json")) == {f"manifest/m/{i:03d}.json": b"{}" for i in range(4)}
    assert direct.get("manifest/m/000.json") == b"{}"
    assert proxy.injected, "the proxy injected no fault: the test proved nothing"


def test_a_slow_store_is_waited_for(proxied) -> None:
    where, proxy, _ = proxied
    proxy.rules = [Rule("delay", method="PUT", delay=1.5, limit=1)]
    start = time.monotonic()
    where.put("slow.bin", b"x")
    assert time.monotonic() - start >= 1.5 and where.get("slow.bin") == b"x"


def test_a_store_that_keeps_failing_is_a_transient_error_after_the_budget(proxied, monkeypatch) -> None:
    where, proxy, _ = proxied
    where.put("x.json", b"{}")
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "2")
    proxy.rules = [Rule("503")]
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"kept failing for \d+ s \(\d+ attempts; .*rerun the same command") as info:
        where.get("x.json")
    assert info.value.transient and 2 <= time.monotonic() - start < 15
    assert len(proxy.injected) >= 2


def test_permanent_failures_are_not_retried(proxied) -> None:
    where, proxy, _ = proxied
    start = time.monotonic()
    with pytest.raises(StorageNotFound):
        where.get("missing.json")
    assert time.monotonic() - start < 5 and not proxy.injected


def test_classification() -> None:
    assert is_transient(OSError(errno.EBUSY, "Service Unavailable"))  # s3fs's 503
    assert is_transient(OSError(errno.EIO, "SlowDown: Please reduce your request rate."))
    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
    assert not is_transient(FileNotFoundError("no such key")) and not is_transient(PermissionError("denied"))
    assert not is_transient(OSError(errno.EINVAL, "InvalidArgument"))
    assert not is_transient(ValueError("corrupt"))


def test_retrying_gives_up_at_once_on_permanent_errors() -> None:
    calls = []

    def fails() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        retrying(fails, "test", seconds=10)
    assert len(calls) == 1


def one_attempt(options: dict) -> dict:
    """botocore's own retries off (s3fs still makes a few quick attempts), so that the retries this
    test sees are ours; with botocore's defaults a refused GET alone takes ~45 s before we see it."""
    return options | {"config_kwargs": {"retries": {"max_attempts": 1}}}


def _folder_on_s3(s3_server, fmnist, names):
    from tests.helpers import png_bytes, put

    images, _ = fmnist
    url = s3_server.url(f"src-{uuid.uuid4().hex[:8]}")
    for i, name in enumerate(names):
        put(f"{url}/Bag/{name}", s3_server.storage_options, png_bytes(images[i]))
    return url


@pytest.mark.parametrize("fault", ["503", "500", "drop"])
def test_source_reads_ride_out_transient_faults_and_names_are_not_patterns(s3_server, fmnist, fault) -> None:
    """Throttled or dropped image GETs are retried, never recorded as bad samples; a file named with
    glob characters is read as named."""
    from storage.sources import SampleError, open_source

    names = ["shot [1].png", "a*b?.png", "{x}.png", *[f"{i:02d}.png" for i in range(9)]]
    url = _folder_on_s3(s3_server, fmnist, names)
    with fault_proxy(s3_server.endpoint_url, seed=2) as proxy:
        source = open_source(url, storage_options=one_attempt(proxy.storage_options(s3_server.storage_options)))
        refs = source.list()
        proxy.rules = [Rule(fault, method="GET", path=r"\.png", rate=0.6)]
        read = list(source.read(refs))
    assert not [r for r in read if isinstance(r, SampleError)], [r.reason for r in read if isinstance(r, SampleError)]
    assert sorted(r.sample_id.split("/")[-1] for r in read) == sorted(names)
    assert proxy.injected, "the proxy injected no fault: the test proved nothing"


def test_a_source_the_store_keeps_refusing_fails_the_read_not_the_sample(s3_server, fmnist, monkeypatch) -> None:
    """Past the retry budget the read raises a transient StorageError (the shard is retried or left for a
    rerun) instead of committing an error row; a missing file stays the sample's own error."""
    from storage.sources import SampleError, open_source

    url = _folder_on_s3(s3_server, fmnist, ["00.png", "01.png"])
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "2")
    with fault_proxy(s3_server.endpoint_url) as proxy:
        source = open_source(url, storage_options=one_attempt(proxy.storage_options(s3_server.storage_options)))
        refs = source.list()
        proxy.rules = [Rule("503", method="GET", path=r"01\.png")]
        with pytest.raises(StorageError, match=r"01\.png.*kept failing") as info:
            list(source.read(refs))
        assert info.value.transient
        proxy.rules = []
        Location(url, s3_server.storage_options).remove("Bag/01.png")
        read = list(source.read(refs))
    assert isinstance(read[1], SampleError) and "no such file" in read[1].reason and read[1].kind == "read"
