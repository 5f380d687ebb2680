"""Sources stay inside their data (storage.sources.inside): index, labels and Parquet path rows, and
symbolic links in folders, that lead outside the source are error rows of kind outside-source and are
not read, unless they lie under an operator's --allow-paths prefix; ``_`` and dot folders are not read."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.io.fs import StorageError, join
from storage.sources import Sample, SampleError, SourcePolicy, open_source
from storage.sources.detect import detect
from storage.sources.files import SKIPPED_FOLDER
from storage.sources.inside import OUTSIDE_SOURCE, Reach
from tests.helpers import png_bytes, put, tar_bytes, write_index
from tests.servers import capture_server


def read_by_id(source) -> dict[str, Sample | SampleError]:
    return {item.sample_id: item for item in source.read(source.list())}


def assert_refused(item: Sample | SampleError, written: str) -> None:
    """An outside-source error row naming the path as written and the flag, with no file bytes."""
    assert isinstance(item, SampleError) and item.kind == OUTSIDE_SOURCE, item
    assert written in item.reason and "--allow-paths" in item.reason and "root:x" not in item.reason


def test_reach_compares_normalized_whole_components(tmp_path) -> None:
    """Inside the root or under an allowed prefix, compared after ``..`` is collapsed, links resolved
    and URLs decoded, on whole components; other schemes, hosts, ports, buckets and fsspec chains are out."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    os.symlink("/etc", root / "img" / "etc")
    shared = tmp_path / "shared" / "x"
    reach = Reach(str(root), SourcePolicy(allow_paths=[str(shared), "http://127.0.0.1:8080/imgs",
                                                       "s3://bucket/imgs"]))
    inside = [f"{root}/img/a.png", f"{root}/../data/img/a.png", f"file://{root}/a.png", f"{shared}/a.png",
              f"{shared}", "http://127.0.0.1:8080/imgs/a.png", "http://127.0.0.1:8080/imgs/b/../a.png?x=1",
              "s3://bucket/imgs/a.png", "s3://bucket/imgs/sub/../a.png"]
    outside = [f"{root}/../etc", "/etc/passwd", "file:///etc/passwd", f"{root}/img/etc/passwd",
               f"{shared}/../../../etc/passwd", f"{shared}y/a.png", "http://127.0.0.1:8080/imgsx/a.png",
               "http://127.0.0.1:8080/imgs/%2e%2e/admin", "http://127.0.0.1:8080/imgs/..%2fadmin",
               "http://127.0.0.1:8080@10.0.0.1/imgs/a.png", "http://127.0.0.1:80/imgs/a.png",
               "https://127.0.0.1:8080/imgs/a.png", "http://169.254.169.254/latest/meta-data",
               "s3://bucket/imgs/../secret/a.png", "s3://bucket-other/imgs/a.png", "s3://bucket/imgsx/a.png",
               f"{root}/a.png::http://127.0.0.1:8080/imgs/a.png", "memory://imgs/a.png", "nosuchscheme://x/a.png"]
    assert [u for u in inside if not reach.allows(u)] == []
    assert [u for u in outside if reach.allows(u)] == []
    assert Reach(str(root), SourcePolicy(allow_paths=["/"])).allows("/etc/passwd")


@pytest.fixture
def index_rows(storage_root, fmnist):
    """``data/index.csv`` under the root: rows inside it, and every way a row can lead outside it."""
    url, options = storage_root
    images, _ = fmnist
    put(join(url, "data", "img", "a.png"), options, png_bytes(images[0]))
    put(join(url, "outside", "b.png"), options, png_bytes(images[1]))
    with capture_server() as http:
        rows = ["img/a.png", join(url, "data", "img", "a.png"), "/etc/passwd", "../outside/b.png",
                "../outside/missing.png", "../../x.png", "file:///etc/passwd", f"{http.url}/x.png",
                "s3://other-bucket/x.png", join(url, "outside", "b.png")]
        write_index(join(url, "data", "index.csv"), options, [{"path": r, "label": 1} for r in rows])
        yield join(url, "data", "index.csv"), options, rows, join(url, "outside"), http


def test_index_rows_leading_outside_are_not_read(index_rows) -> None:
    """Absolute paths, ``..``, file://, http(s) and other buckets are refused without a request or a
    stat: a missing target gets the very message an existing one does; --allow-paths admits exactly
    the rows under its prefix."""
    index, options, rows, allowed, http = index_rows
    out = read_by_id(open_source(index, storage_options=options))
    assert isinstance(out["img/a.png"], Sample) and isinstance(out[rows[1]], Sample)
    for row in rows[2:]:
        assert_refused(out[row], row)
    assert out["../outside/b.png"].reason.replace("b.png", "?") == out["../outside/missing.png"].reason.replace(
        "missing.png", "?")  # whether the file exists is not told
    assert http.connections == []

    opened = open_source(index, storage_options=options, policy=SourcePolicy(allow_paths=[allowed]))
    widened = read_by_id(opened)
    assert [r for r in rows if isinstance(widened[r], Sample)] == ["img/a.png", rows[1], "../outside/b.png", rows[-1]]
    assert widened["../outside/missing.png"].kind == "read"  # under the prefix: read, and it is missing
    for row in ("/etc/passwd", "../../x.png", "file:///etc/passwd", f"{http.url}/x.png", "s3://other-bucket/x.png"):
        assert_refused(widened[row], row)
    assert http.connections == []


def test_parquet_path_column_leading_outside(storage_root, fmnist) -> None:
    """A Parquet folder's path rows resolve against the Parquet file's folder and may go up to the
    source's own folder, no further."""
    url, options = storage_root
    images, _ = fmnist
    put(join(url, "pq", "pics", "0.png"), options, png_bytes(images[0]))
    put(join(url, "outside", "1.png"), options, png_bytes(images[1]))
    with capture_server() as http:
        paths = ["../pics/0.png", "../../outside/1.png", "/etc/passwd", f"{http.url}/x.png"]
        struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"image": pa.array([{"bytes": None, "path": p} for p in paths], struct),
                          "sample_id": [f"s{i}" for i in range(len(paths))]})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        put(join(url, "pq", "data", "test-0.parquet"), options, buf.getvalue())
        out = read_by_id(open_source(join(url, "pq"), storage_options=options))
        assert isinstance(out["s0"], Sample)
        for sid, path in zip(("s1", "s2", "s3"), paths[1:]):
            assert_refused(out[sid], path)
        allowed = open_source(join(url, "pq"), storage_options=options,
                              policy=SourcePolicy(allow_paths=[join(url, "outside")]))
        assert [type(s).__name__ for s in read_by_id(allowed).values()] == ["Sample", "Sample", "SampleError",
                                                                             "SampleError"]
        assert http.connections == []


def test_symbolic_links_leaving_a_folder_are_not_followed(tmp_path, fmnist) -> None:
    """Folder and labeled-folder samples that are links out of the folder are outside-source error
    rows (links inside it still work, and --allow-paths admits a target under its prefix); Parquet
    files and tars that are such links are skipped, a labels file that is one is an error."""
    images, labels = fmnist
    outside = tmp_path / "outside"
    put(str(outside / "1.png"), {}, png_bytes(images[1]))
    folder = tmp_path / "folder"
    put(str(folder / "Coat" / "0.png"), {}, png_bytes(images[0]))
    (folder / "Bag").mkdir()
    os.symlink("/etc/passwd", folder / "Bag" / "passwd.png")
    os.symlink(outside / "1.png", folder / "Bag" / "out.png")
    os.symlink("../Coat/0.png", folder / "Bag" / "in.png")
    out = read_by_id(open_source(str(folder)))
    assert isinstance(out["Bag/in.png"], Sample) and isinstance(out["Coat/0.png"], Sample)
    assert_refused(out["Bag/passwd.png"], str(folder / "Bag" / "passwd.png"))
    assert_refused(out["Bag/out.png"], str(folder / "Bag" / "out.png"))
    widened = read_by_id(open_source(str(folder), policy=SourcePolicy(allow_paths=[str(outside)])))
    assert isinstance(widened["Bag/out.png"], Sample) and widened["Bag/passwd.png"].kind == OUTSIDE_SOURCE

    flat = tmp_path / "flat"
    put(str(flat / "0.png"), {}, png_bytes(images[0]))
    os.symlink("/etc/passwd", flat / "1.png")
    write_index(str(flat / "labels.csv"), {}, [{"file_name": "0.png", "label": 1}, {"file_name": "1.png", "label": 2}])
    out = read_by_id(open_source(str(flat)))
    assert isinstance(out["0.png"], Sample) and out["1.png"].kind == OUTSIDE_SOURCE
    os.remove(flat / "labels.csv")
    os.symlink("/etc/passwd", flat / "labels.csv")
    with pytest.raises(StorageError, match="labels.csv is a symbolic link that leads outside"):
        open_source(str(flat), kind="labeled-folder").list()

    from tests.helpers import write_parquet

    write_parquet(str(outside / "test-1.parquet"), {}, images[2:3], labels[2:3])
    write_parquet(str(tmp_path / "pq" / "test-0.parquet"), {}, images[:2], labels[:2])
    os.symlink(outside / "test-1.parquet", tmp_path / "pq" / "test-1.parquet")
    parquet = open_source(str(tmp_path / "pq"))
    assert parquet.files == ["test-0.parquet"] and len(parquet.list()) == 2
    assert [(f.path, f.reason.split(":")[0]) for f in parquet.skipped()] == [("test-1.parquet", OUTSIDE_SOURCE)]

    put(str(outside / "b.tar"), {}, tar_bytes([("k.png", png_bytes(images[0])), ("k.cls", b"1")]))
    put(str(tmp_path / "wds" / "a.tar"), {}, tar_bytes([("k.png", png_bytes(images[0])), ("k.cls", b"1")]))
    os.symlink(outside / "b.tar", tmp_path / "wds" / "b.tar")
    tars = open_source(str(tmp_path / "wds"))
    assert [r.sample_id for r in tars.list()] == ["a.tar#k"]
    assert [(f.path, f.reason.split(":")[0]) for f in tars.skipped()] == [("b.tar", OUTSIDE_SOURCE)]


def test_underscore_and_dot_folders_are_not_read(storage_root, fmnist) -> None:
    """A job's ``_meta/examples.png`` written inside a folder source, ``.hidden/`` and ``_x/`` at any
    depth are neither classes nor samples; each is listed once as skipped; detection ignores them."""
    url, options = storage_root
    images, labels = fmnist
    for rel in ("Bag/0.png", "_meta/examples.png", ".hidden/x.png", "Bag/_x/y.png", "Bag/.cache/z.png"):
        put(join(url, "folder", rel), options, png_bytes(images[0]))
    source = open_source(join(url, "folder"), storage_options=options)
    assert source.classes == ["Bag"] and [r.sample_id for r in source.list()] == ["Bag/0.png"]
    assert sorted(f.path for f in source.skipped() if f.reason == SKIPPED_FOLDER) == [
        ".hidden/", "Bag/.cache/", "Bag/_x/", "_meta/"]

    put(join(url, "meta-only", "_meta", "examples.png"), options, png_bytes(images[0]))
    put(join(url, "meta-only", "x.parquet.txt"), options, b"not data")
    with pytest.raises(StorageError, match="cannot tell what kind of dataset"):
        detect(join(url, "meta-only"), options)

    from tests.helpers import write_parquet

    write_parquet(join(url, "pq", "test-0.parquet"), options, images[:2], labels[:2])
    write_parquet(join(url, "pq", "_pending", "test-1.parquet"), options, images[:1], labels[:1])
    assert open_source(join(url, "pq"), storage_options=options).files == ["test-0.parquet"]


def test_idx_files_leading_outside_or_not_idx(tmp_path) -> None:
    """An IDX file that is a link out of its folder is not read; one that is not IDX is an error that
    quotes none of its bytes."""
    from storage.sources import FASHION_MNIST_DIR

    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        os.symlink(os.path.join(FASHION_MNIST_DIR, name), linked / name)
    with pytest.raises(StorageError, match="t10k-.*-ubyte.gz is a symbolic link that leads outside"):
        open_source(str(linked))

    fake = tmp_path / "fake"
    put(str(fake / "t10k-images-idx3-ubyte"), {}, b"root:x:0:0:root:/root:/bin/bash\n")
    put(str(fake / "t10k-labels-idx1-ubyte"), {}, b"root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(StorageError) as raised:
        open_source(str(fake))
    assert "not an IDX3 uint8 file" in str(raised.value)
    assert "root" not in str(raised.value).replace(str(fake), "") and "0x726f" not in str(raised.value)
