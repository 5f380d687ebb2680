"""Transient store failures are retried, permanent ones are not: a real SeaweedFS behind a fault proxy."""

from __future__ import annotations

import errno
import re
import time
import uuid

import pytest

from storage.io.fs import StorageError, StorageFull, StorageNotFound, translate
from storage.io.location import Location
from storage.io.retry import is_out_of_space, is_transient, retrying
from tests.faultproxy import Rule, fault_proxy
from tests.helpers import botocore_attempts


@pytest.fixture
def proxied(s3_server):
    """(a fresh prefix through the proxy, the proxy, the same prefix direct)."""
    with fault_proxy(s3_server.endpoint_url, seed=1) as proxy:
        url = s3_server.url(f"retry-{uuid.uuid4().hex[:8]}")
        yield Location(url, botocore_attempts(proxy.storage_options(s3_server.storage_options), 1)), proxy, \
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
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "1")
    proxy.rules = [Rule("503")]
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"kept failing for \d+ s \(\d+ attempts?; .*rerun the same command") as info:
        where.get("x.json")
    assert info.value.transient and 1 <= time.monotonic() - start < 15
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
    # A store that says it is full is not waited for: space is not freed by retrying.
    for full in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                 OSError(errno.EIO, "XMinioStorageFull: Storage backend has reached its minimum free drive threshold"),
                 OSError(errno.EIO, "InsufficientStorage: 507")):
        assert is_out_of_space(full) and not is_transient(full), full
        assert isinstance(translate(full, "s3://b/x", "write"), StorageFull)
        assert "out of space" in str(translate(full, "s3://b/x", "write"))
    assert not is_out_of_space(OSError(errno.EREMOTEIO, "We encountered an internal error, please try again."))
    busy = translate(OSError(errno.EREMOTEIO, "We encountered an internal error"), "s3://b/x", "write")
    assert busy.transient and "out of space" in str(busy)  # a full SeaweedFS answers just that
    assert "out of space" not in str(translate(OSError(errno.EREMOTEIO, "internal error"), "s3://b/x", "read"))


def test_retrying_gives_up_at_once_on_permanent_errors() -> None:
    calls = []

    def fails() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        retrying(fails, "test", seconds=10)
    assert len(calls) == 1


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
        options = botocore_attempts(proxy.storage_options(s3_server.storage_options), 1)
        source = open_source(url, storage_options=options)
        refs = source.list()
        proxy.rules = [Rule(fault, method="GET", path=r"\.png", rate=0.4)]
        read = list(source.read(refs))
    assert not [r for r in read if isinstance(r, SampleError)], [r.reason for r in read if isinstance(r, SampleError)]
    assert sorted(r.sample_id.split("/")[-1] for r in read) == sorted(names)
    assert proxy.injected, "the proxy injected no fault: the test proved nothing"


def test_a_source_the_store_keeps_refusing_fails_the_read_not_the_sample(s3_server, fmnist, monkeypatch) -> None:
    """Past the retry budget the read raises a transient StorageError (the shard is retried or left for a
    rerun) instead of committing an error row; a missing file stays the sample's own error."""
    from storage.sources import SampleError, open_source

    url = _folder_on_s3(s3_server, fmnist, ["00.png", "01.png"])
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "1")
    with fault_proxy(s3_server.endpoint_url) as proxy:
        options = botocore_attempts(proxy.storage_options(s3_server.storage_options), 1)
        source = open_source(url, storage_options=options)
        refs = source.list()
        proxy.rules = [Rule("500", method="GET", path=r"01\.png")]
        with pytest.raises(StorageError, match=r"01\.png.*kept failing") as info:
            list(source.read(refs))
        assert info.value.transient
        proxy.rules = []
        Location(url, s3_server.storage_options).remove("Bag/01.png")
        read = list(source.read(refs))
    assert isinstance(read[1], SampleError) and "no such file" in read[1].reason and read[1].kind == "read"


def _source_on_s3(kind: str, s3_server, fmnist) -> str:
    """A source of ``kind`` holding the fixture's images, written straight to the server; returns its URL."""
    import json

    from storage.io.fs import join
    from tests.helpers import png_bytes, put, tar_bytes, write_idx, write_index

    images, labels = fmnist
    url = s3_server.url(f"{kind}-{uuid.uuid4().hex[:8]}")
    options = s3_server.storage_options
    if kind in ("idx", "idx-gz"):
        write_idx(url, options, images[..., 0], labels, gz=kind == "idx-gz")
    elif kind == "webdataset":  # two tars, labels as .cls and as .json
        for shard, part in enumerate((range(15), range(15, len(images)))):
            members = []
            for i in part:
                members.append((f"fm_{i:04d}.png", png_bytes(images[i])))
                members.append((f"fm_{i:04d}.cls", str(int(labels[i])).encode()) if shard == 0 else
                               (f"fm_{i:04d}.json", json.dumps({"label": int(labels[i])}).encode()))
            put(join(url, f"shard-{shard:03d}.tar"), options, tar_bytes(members))
    else:  # a CSV index naming images beside it
        for i in range(len(images)):
            put(join(url, f"img/{i:03d}.png"), options, png_bytes(images[i]))
        write_index(join(url, "index.csv"), options, [{"path": f"img/{i:03d}.png", "label": int(labels[i])}
                                                      for i in range(len(images))])
        url = join(url, "index.csv")
    return url


def _read_everything(url: str, options: dict, between=None) -> dict:
    """What a job sees of a source: its kind, refs, every sample (read in shards of 7) and skipped files;
    ``between()`` runs after the listing, before the reads."""
    from storage.sources import Sample, open_source

    source = open_source(url, storage_options=options)  # detection, headers and listing included
    refs = source.list()
    if between is not None:
        between()
    read = [item for start in range(0, len(refs), 7) for item in source.read(refs[start:start + 7])]
    return {"kind": source.kind, "refs": [(r.sample_id, r.locator) for r in refs],
            "samples": [(s.sample_id, s.label, s.image.shape, s.image.tobytes()) if isinstance(s, Sample)
                        else (s.sample_id, s.reason) for s in read],
            "skipped": [(f.path, f.reason) for f in source.skipped()]}


#: The files of each kind of source whose reads the test fails.
SOURCE_FILES = {"idx": [r"idx3-ubyte", r"idx1-ubyte"], "idx-gz": [r"idx3-ubyte\.gz", r"idx1-ubyte\.gz"],
                "webdataset": [r"shard-000\.tar", r"shard-001\.tar"], "index": [r"index\.csv", r"/img/\d+\.png"]}


@pytest.mark.parametrize("kind", ["idx", "idx-gz", "webdataset", "index"])
def test_idx_webdataset_and_index_sources_ride_out_transient_faults(s3_server, fmnist, kind) -> None:
    """IDX headers, labels and image ranges (plain and gzip), WebDataset tar listings, member headers and
    ranged member reads, and CSV index files, behind a proxy that fails the first request for each of
    the source's files, while listing and again while reading (503, 500 or a dropped connection), a
    fifth of the later ones and a tenth of all others: what the source lists and reads equals the
    fault-free read."""
    url = _source_on_s3(kind, s3_server, fmnist)
    calm = _read_everything(url, s3_server.storage_options)
    assert calm["kind"] == kind.split("-")[0] and len(calm["samples"]) == len(fmnist[0])
    assert all(len(s) == 4 for s in calm["samples"]), "the fault-free read has error rows"
    files = SOURCE_FILES[kind]

    def faults() -> list[Rule]:
        return [*(Rule(fault, path=f, limit=1) for f, fault in zip(files, ("503", "drop"))),
                *(Rule("500", path=f, rate=0.2) for f in files), Rule("503", rate=0.1)]

    with fault_proxy(s3_server.endpoint_url, seed=4) as proxy:
        proxy.rules = faults()
        listed = []
        options = botocore_attempts(proxy.storage_options(s3_server.storage_options), 1)
        faulty = _read_everything(url, options, between=lambda: (listed.append(len(proxy.injected)),
                                                                 setattr(proxy, "rules", faults())))
    assert faulty == calm
    for f in files:
        assert any(re.search(f, path) for _, _, path in proxy.injected), f"no fault on {f}: {proxy.injected}"
    assert len(proxy.injected) > listed[0], "no fault while reading the samples"
    print(f"{kind}: {len(proxy.injected)} faults injected in {len(proxy.injected) + proxy.forwarded} requests "
          f"({listed[0]} while listing); {len(calm['samples'])} samples read, 0 lost, 0 error rows")


def test_a_tar_the_store_keeps_refusing_fails_the_read_not_the_samples(s3_server, fmnist, monkeypatch) -> None:
    """Past the retry budget a WebDataset member read raises a transient StorageError (the shard is
    retried or left for a rerun) instead of turning every sample of the tar into an error row."""
    from storage.sources import open_source

    url = _source_on_s3("webdataset", s3_server, fmnist)
    monkeypatch.setenv("PATHWAY_STORAGE_RETRY_SECONDS", "1")
    with fault_proxy(s3_server.endpoint_url) as proxy:
        options = botocore_attempts(proxy.storage_options(s3_server.storage_options), 1)
        source = open_source(url, storage_options=options)
        refs = source.list()
        proxy.rules = [Rule("500", method="GET", path=r"shard-001\.tar")]
        start = time.monotonic()
        with pytest.raises(StorageError, match=r"shard-001\.tar.*kept failing for \d+ s") as info:
            list(source.read(refs))
        assert info.value.transient and 1 <= time.monotonic() - start < 20
