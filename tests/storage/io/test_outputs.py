"""storage.io.outputs: an output folder is the job's own (missing, empty, or what that job writes), and
apart from its source; local folders and a real S3 server."""

from __future__ import annotations

import os

import pytest

from storage import MapStore
from storage.io.outputs import OutputKind, OutputNotOwn, check_apart, check_output, location_key, top_entries
from storage.maps.versions import MAP_DATASET
from storage.maps.versions import FormatMismatch, check_format
from tests.helpers import every_file, map_records, put

SANITY = OutputKind("jobs.sanity", ("sanity.*", "sanity_draws.*"))


def test_missing_and_empty_outputs_are_fine(tmp_path):
    check_output(str(tmp_path / "new" / "deeper"), MAP_DATASET)
    (tmp_path / "empty").mkdir()
    check_output(str(tmp_path / "empty"), MAP_DATASET)
    assert top_entries(str(tmp_path / "new")) is None and top_entries(str(tmp_path / "empty")) == []
    assert not (tmp_path / "new").exists()  # listing creates nothing


def test_a_map_dataset_and_what_a_failed_run_left_are_the_jobs_own(tmp_path):
    failed = tmp_path / "failed"
    (failed / "_meta").mkdir(parents=True)
    (failed / "_meta" / "run.json").write_text('{"status": "failed"}')
    (failed / "_lease.json").write_text("{}")
    (failed / "._lease.json.x1y2.tmp").write_text("")  # an atomic write a killed driver left
    check_output(str(failed), MAP_DATASET)

    store = MapStore(str(tmp_path / "maps"))
    store.write_shard("000000", None, "pathway", map_records(["a", "b"]))  # Parquet only
    store.write_run({"status": "complete"})
    check_output(store.url, MAP_DATASET)


@pytest.mark.parametrize("names", [["notes.txt"], [".bashrc", "Documents"], ["cat.png", "dog.png", "maps"]])
def test_anything_else_is_refused_naming_it(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputNotOwn) as info:
        check_output(str(tmp_path), MAP_DATASET)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "jobs.attribute" in message
    assert all(name in message for name in names if name != "maps")
    assert "maps," not in message and "(maps" not in message  # its own names are not listed as foreign
    assert sorted(os.listdir(tmp_path)) == before


def test_root_is_refused_by_its_listing():
    with pytest.raises(OutputNotOwn, match=r"--output / holds what jobs.attribute does not write \(.*(bin|etc|usr)"):
        check_output("/", MAP_DATASET)
    with pytest.raises(OutputNotOwn, match="file:///"):
        check_output("file:///", MAP_DATASET)


def test_many_foreign_entries_are_counted_not_listed(tmp_path):
    for i in range(12):
        (tmp_path / f"f{i:02d}.jpg").write_bytes(b"")
    with pytest.raises(OutputNotOwn, match=r"\(f00.jpg, f01.jpg, f02.jpg, f03.jpg, f04.jpg and 7 more\)"):
        check_output(str(tmp_path), MAP_DATASET)


def test_a_file_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(OutputNotOwn, match="--maps-out .*model.pt is a file, not a folder"):
        check_output(str(tmp_path / "model.pt"), MAP_DATASET, flag="--maps-out")


def test_each_job_owns_its_own_names(tmp_path):
    for name in ("sanity.csv", "sanity.png", "sanity_draws.parquet", ".sanity.json.ab12.tmp"):
        (tmp_path / name).write_bytes(b"")
    check_output(str(tmp_path), SANITY)
    with pytest.raises(OutputNotOwn, match=r"jobs.attribute does not write \(sanity.csv"):
        check_output(str(tmp_path), MAP_DATASET)
    (tmp_path / ".profile.tmp").write_bytes(b"")  # a dot .tmp file that is none of its writes
    with pytest.raises(OutputNotOwn, match=r"\(.profile.tmp\)"):
        check_output(str(tmp_path), SANITY)


def test_a_format_1_dataset_passes_the_listing_so_check_format_names_its_format(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "manifest").mkdir()
    check_output(str(tmp_path), MAP_DATASET)
    with pytest.raises(FormatMismatch, match="format version 1"):
        check_format(MapStore(str(tmp_path)).where)


def test_location_key_normalizes():
    assert location_key("s3://KEY:SE/CRET@bucket/a//b/?x=1") == ("s3", "bucket", "a", "b")
    assert location_key("s3a://bucket/a") == location_key("s3://bucket/a/")
    assert location_key("file:///tmp/x/") == location_key("/tmp/x") == location_key("/tmp/./y/../x")
    assert location_key("rel/dir") == ("file", *os.path.realpath("rel/dir").strip("/").split("/"))


def test_location_key_follows_symlinks(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert location_key(str(tmp_path / "link" / "out")) == location_key(str(tmp_path / "data" / "out"))


@pytest.mark.parametrize("output, source, verb", [
    ("/d/src/maps", "/d/src", "is inside"),
    ("/d/src", "/d/src/", "is"),
    ("file:///d", "/d/src", "holds"),
    ("s3://b/data/maps", "s3://K:S@b/data", "is inside"),
    ("s3://b/data", "s3a://b/data/train", "holds"),
])
def test_overlapping_output_and_source_are_refused(output, source, verb):
    with pytest.raises(OutputNotOwn, match=f"--output .* {verb} --source ") as info:
        check_apart(output, {"--source": source})
    assert ":S@" not in str(info.value) and "K:S" not in str(info.value)


@pytest.mark.parametrize("output, source", [
    ("/d/src2", "/d/src"),                 # whole components: src2 is not inside src
    ("s3://b/data-maps", "s3://b/data"),
    ("s3://other/data/maps", "s3://b/data"),
    ("/d/src/maps", None),
    ("gs://b/data/maps", "s3://b/data"),
])
def test_apart_outputs_pass(output, source):
    check_apart(output, {"--source": source})


@pytest.mark.slow
def test_s3_prefix_holding_other_objects_is_refused(s3_server):
    options = s3_server.storage_options
    put(s3_server.url("shared", "report.csv"), options, b"a,b\n")
    put(s3_server.url("shared2", "_meta", "run.json"), options, b"{}")  # a sibling prefix, not inside
    before = every_file(s3_server.url(), options)
    with pytest.raises(OutputNotOwn, match=r"--output s3://[^ ]+/shared holds what jobs.attribute does not write "
                                           r"\(report.csv\)"):
        check_output(s3_server.url("shared"), MAP_DATASET, options)
    check_output(s3_server.url("shared2"), MAP_DATASET, options)  # holds only a map dataset's entries
    check_output(s3_server.url("nothing-here"), MAP_DATASET, options)
    with pytest.raises(OutputNotOwn, match="is a file"):
        check_output(s3_server.url("shared", "report.csv"), MAP_DATASET, options)
    assert every_file(s3_server.url(), options) == before
