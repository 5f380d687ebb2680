"""Row ranges of sources whose ids are data: CSV / JSONL indexes, WebDataset tars and Parquet files with a
``sample_id`` column, on local disk and on S3 (SeaweedFS). A plan of ranges gives the same shards, ids,
labels and images as a plan of samples; an index may grow without touching its planned rows, and an
edited one is noticed, never read as other samples."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from storage.io.fs import InvalidStorageInput, StorageError, join
from storage.io.location import Location
from storage.maps.plan import read_plan, shard_of, update_plan
from storage.maps.plan_changes import restamp, source_changes
from storage.sources import IDS_IN_ROWS, SampleRef, Source, open_source
from storage.sources.index import entries_of, index_samples, parse_index
from storage.sources.webdataset import _scan, _scan_plain, _scan_tarfile
from tests.helpers import png_bytes, put, tar_bytes, write_parquet

SHARD = 3


def index_text(fmt: str, rows: list[dict | str]) -> str:
    """An index file's text; a str row is written as it is (a blank or broken line)."""
    lines = [] if fmt == "jsonl" else ["path,label"]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
        else:
            lines.append(json.dumps(row) if fmt == "jsonl" else f"{row['path']},{row['label']}")
    return "\n".join(lines) + "\n"


def image_rows(url: str, options: dict, images: np.ndarray, labels: np.ndarray, first: int, count: int) -> list[dict]:
    for i in range(first, first + count):
        put(join(url, "img", f"{i:02d}.png"), options, png_bytes(images[i]))
    return [{"path": f"img/{i:02d}.png", "label": int(labels[i])} for i in range(first, first + count)]


def worker_of(source: Source) -> Source:
    """The source as a job's worker opens it: anew, with the driver's kind and classes (nothing listed)."""
    return open_source(source.url, storage_options=source.storage_options, kind=source.kind, classes=source.classes)


def planned_ids(where: Location, worker: Source) -> list[list[str]]:
    """Each stored shard's sample ids as a worker reads them from its ranges."""
    shards, _ = read_plan(where)
    return [[r.sample_id for r in s.sample_refs(worker)]
            for s in shards]


def same_as_samples_form(source: Source, url: str, options: dict) -> None:
    """Planned by ranges and by samples, the shards hold the same samples, and read the same."""
    by_ranges, by_samples = Location(join(url, "ranges"), options), Location(join(url, "samples"), options)
    files = source.row_files()
    assert files is not None and all(f.ids_in_rows for f in files)
    update_plan(by_ranges, files, SHARD)
    update_plan(by_samples, source.list(), SHARD)
    worker = worker_of(source)
    assert planned_ids(by_ranges, worker) == [[r.sample_id for r in s.refs] for s in read_plan(by_samples)[0]]
    refs = [r for s in read_plan(by_ranges)[0] for r in s.sample_refs(worker)]
    assert [(s.sample_id, s.label, s.image.tobytes()) for s in worker.read(refs)] == \
        [(s.sample_id, s.label, s.image.tobytes()) for s in worker_of(source).read(source.list())]
    # The plan does not hold the ids, but its id index finds each sample's shard (as read_sample does).
    assert {sid: shard_of(by_ranges, sid) for s in read_plan(by_samples)[0] for sid in s.sample_ids()} == \
        {sid: s.shard_id for s in read_plan(by_samples)[0] for sid in s.sample_ids()}
    assert shard_of(by_ranges, "not-a-sample") is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_index_is_planned_by_byte_spans_of_its_rows(storage_root, fmnist, fmt) -> None:
    """Rows without a path and repeated ids (and, in JSONL, broken lines) are skipped: ranges never span
    them, so a worker reads only whole, planned rows. Blank lines belong to the row after them."""
    url, options = storage_root
    images, labels = fmnist
    rows: list[dict | str] = image_rows(url, options, images, labels, 0, 8)
    rows[2:2] = [{"path": "", "label": 1}, ""]
    rows[6:6] = [{"path": "img/00.png", "label": 5}]  # repeats the first sample
    if fmt == "jsonl":
        rows.insert(8, "{not json")
    put(join(url, f"index.{fmt}"), options, index_text(fmt, rows).encode())
    source = open_source(join(url, f"index.{fmt}"), storage_options=options)
    assert len(source.list()) == 8 and len(source.skipped()) == (3 if fmt == "jsonl" else 2)
    same_as_samples_form(source, url, options)
    shards, _ = read_plan(Location(join(url, "ranges"), options))
    middle = [(3, 4), (4, 5), (5, 6)] if fmt == "jsonl" else [(3, 4), (4, 6)]  # the broken line splits too
    assert [[(r.start, r.stop) for r in s.ranges] for s in shards] == [[(0, 2), (2, 3)], middle, [(6, 8)]]
    assert all(r.stamp.startswith("crc32:") and r.span is not None for s in shards for r in s.ranges)


def test_rows_appended_to_an_index_are_new_shards_and_an_edited_row_is_noticed(storage_root, fmnist) -> None:
    url, options = storage_root
    images, labels = fmnist
    index, where = join(url, "val.csv"), Location(join(url, "out"), options)
    rows = image_rows(url, options, images, labels, 0, 10)
    put(index, options, index_text("csv", rows[:7]).encode())
    plan, _ = update_plan(where, open_source(index, storage_options=options).row_files(), SHARD)
    assert [s.size for s in plan.shards] == [3, 3, 1]

    put(index, options, index_text("csv", rows).encode())  # three rows more
    grown = open_source(index, storage_options=options)
    files = grown.row_files()
    plan, new = update_plan(where, files, SHARD)
    assert new == 1 and [s.size for s in plan.shards] == [3, 3, 1, 3] and not source_changes(plan, files)
    assert planned_ids(where, worker_of(grown)) == [[f"img/{i:02d}.png" for i in s] for s in
                                                    ([0, 1, 2], [3, 4, 5], [6], [7, 8, 9])]
    assert [shard_of(where, f"img/{i:02d}.png") for i in (6, 7, 9)] == ["000002", "000003", "000003"]

    edited = [dict(rows[0], label=(int(labels[0]) + 1) % 10), *rows[1:]]  # the same length: only the bytes tell
    put(index, options, index_text("csv", edited).encode())
    now = open_source(index, storage_options=options)
    changes = source_changes(plan, now.row_files())
    assert (changes.changed, changes.deleted, changes.shards) == (3, 0, (0,))
    assert changes.examples == ("val.csv rows 0:3",)
    with pytest.raises(StorageError, match=r"val.csv changed since it was planned: bytes \d+:\d+ .* rows 0:3"):
        plan.shards[0].sample_refs(worker_of(now))
    with pytest.raises(InvalidStorageInput, match="rows 0:3 changed since they were mapped.*new output"):
        restamp(where, plan, now.row_files())


def test_webdataset_tars_are_planned_by_byte_spans_of_their_samples(storage_root, fmnist) -> None:
    """A key without an image splits a range; a worker reads each range in one request and cuts its
    images from it."""
    url, options = storage_root
    images, labels = fmnist
    for t in range(2):
        members = []
        for i in range(t * 5, t * 5 + 5):
            members += [(f"k{i:02d}.png", png_bytes(images[i])), (f"k{i:02d}.cls", str(int(labels[i])).encode())]
            if i == 2:
                members.append(("orphan.json", b"{}"))
        put(join(url, "tars", f"part-{t}.tar"), options, tar_bytes(members))
    source = open_source(join(url, "tars"), storage_options=options)
    assert len(source.list()) == 10
    same_as_samples_form(source, url, options)
    shards, _ = read_plan(Location(join(url, "ranges"), options))
    assert [[(r.file, r.start, r.stop) for r in s.ranges] for s in shards] == [
        [("part-0.tar", 0, 3)], [("part-0.tar", 3, 5), ("part-1.tar", 0, 1)], [("part-1.tar", 1, 4)],
        [("part-1.tar", 4, 5)]]
    worker = worker_of(source)
    refs = shards[1].sample_refs(worker)
    assert [r.sample_id for r in refs] == ["part-0.tar#k03", "part-0.tar#k04", "part-1.tar#k05"]
    assert [s.label for s in worker.read(refs)] == labels[3:6].tolist()


def test_a_tar_that_interleaves_its_samples_is_planned_sample_by_sample(tmp_path, fmnist) -> None:
    images, labels = fmnist
    members = [("a.png", png_bytes(images[0])), ("b.png", png_bytes(images[1])), ("a.cls", b"1"), ("b.cls", b"2")]
    put(str(tmp_path / "mixed.tar"), {}, tar_bytes(members))
    source = open_source(str(tmp_path / "mixed.tar"))
    assert source.row_files() is None and [s.label for s in source.read(source.list())] == [1, 2]


def test_parquet_sample_ids_are_read_with_the_rows_and_must_be_unique(storage_root, fmnist) -> None:
    url, options = storage_root
    images, labels = fmnist
    write_parquet(join(url, "data", "a.parquet"), options, images[:5], labels[:5], sample_ids=True, row_group_size=2)
    source = open_source(join(url, "data"), storage_options=options)
    assert [f.id_format for f in source.row_files()] == [IDS_IN_ROWS]
    same_as_samples_form(source, url, options)
    refs = read_plan(Location(join(url, "ranges"), options))[0][1].sample_refs(worker_of(source))
    assert refs == [SampleRef("img-0003", "a.parquet#3"), SampleRef("img-0004", "a.parquet#4")]
    write_parquet(join(url, "data", "b.parquet"), options, images[:2], labels[:2], sample_ids=True)
    with pytest.raises(InvalidStorageInput, match=r"repeats ids \(e.g. \['img-0000', 'img-0001'\]\)"):
        open_source(join(url, "data"), storage_options=options).row_files()


@pytest.mark.parametrize("ending, bom, last_newline, name", [("\n", False, True, "i.csv"), ("\r\n", True, False, "i.csv"),
                                                              ("\n", False, False, "i.tsv")])
def test_an_index_parsed_in_cpp_gives_what_the_row_by_row_parser_gives(ending, bom, last_newline, name) -> None:
    """The C++ CSV path (lines that are rows) and the row-by-row parser agree on ids, paths, labels,
    byte spans and skipped lines, including blanks around values, empty paths, an id column with
    gaps and repeated ids; a quoted field or a blank line sends the index to the row-by-row parser."""
    sep = "\t" if name.endswith(".tsv") else ","
    lines = [sep.join(["path ", "label", "id"]), sep.join([" a.png", " 3", "x"]), sep.join(["b.png", "", ""]),
             sep.join(["", "1", "y"]), sep.join(["c.png", "Bag ", "x"]), sep.join(["b.png", "2", ""]),
             sep.join(["d.png", "4", " z "])]
    data = ("\ufeff" if bom else "").encode() + (ending.join(lines) + (ending if last_newline else "")).encode()
    fast = index_samples(data, f"s3://b/{name}")
    assert isinstance(fast.ids, pa.Array)  # parsed in C++
    entries, spans, skipped = entries_of(parse_index(data, name), f"s3://b/{name}")
    assert fast.entries() == entries == [("x", "a.png", "3"), ("b.png", "b.png", ""), ("z", "d.png", "4")]
    assert list(zip(fast.starts.tolist(), fast.ends.tolist())) == spans
    assert fast.skipped == skipped and [s.path for s in skipped] == [f"{name}:4", f"{name}:5", f"{name}:6"]
    assert [s.reason for s in skipped] == ["no 'path'", "repeats sample 'x' of line 2", "repeats sample 'b.png' of line 3"]
    for other in (data.replace(b"c.png", b'"c.png"'), data.replace(ending.encode(), ending.encode() * 2, 1)):
        slow = index_samples(other, f"s3://b/{name}")
        assert not isinstance(slow.ids, pa.Array) and slow.entries() == entries


def tar_of(members: list[tuple[str, bytes]], fmt: int, extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_tar_headers_are_read_as_tarfile_reads_them(fmt) -> None:
    """The header parser for plain tars gives what tarfile gives (members, label values, byte spans,
    hidden files), a ustar name split into prefix and name included, and leaves every other tar (long
    names in GNU or pax headers, links) to tarfile; a span of a tar reads the same way."""
    folder = tarfile.TarInfo("d" * 120 + "/sub")
    folder.type = tarfile.DIRTYPE
    members = [("a.png", b"x" * 700), ("a.cls", b"3"), ("._a.png", b"junk"), ("b.jpg", b"y" * 512),
               ("b.json", b'{"label": "Bag"}'), ("d" * 120 + "/sub/c.png", b"z" * 10), ("d" * 120 + "/sub/c.cls", b"1")]
    data = tar_of(members, fmt, [folder])
    plain, full = _scan_plain(io.BytesIO(data), "t.tar", 0), _scan_tarfile(io.BytesIO(data), "t.tar", 0)
    assert full.members["a"]["cls"] == "3" and full.members["a"]["png"][1] == 700
    if fmt == tarfile.USTAR_FORMAT:  # the long folder name fits ustar's prefix field
        assert plain == full and plain.members["d" * 120 + "/sub/c"] == full.members["d" * 120 + "/sub/c"]
        assert [p.path for p in plain.problems] == ["t.tar#._a.png"]
        first, end = plain.spans["b"]
        span = _scan(io.BytesIO(data[first:end]), "t.tar", first)
        assert span.members == {"b": full.members["b"]} and span.spans == {"b": [first, end]}
    else:  # a GNU long-name header, or a pax extended header
        assert plain is None and _scan(io.BytesIO(data), "t.tar") == full
    link = tarfile.TarInfo("l.png")
    link.type, link.linkname = tarfile.SYMTYPE, "a.png"
    linked = tar_of(members[:2], tarfile.USTAR_FORMAT, [link])
    assert _scan_plain(io.BytesIO(linked), "t.tar", 0) is None
    assert _scan(io.BytesIO(linked), "t.tar").members == _scan_tarfile(io.BytesIO(linked), "t.tar", 0).members
