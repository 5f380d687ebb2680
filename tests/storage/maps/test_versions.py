"""An output of another format version is refused by name, never read as empty or extended."""

from __future__ import annotations

import json

import pytest

from storage import MapStore, read_maps, read_run
from storage.io.location import Location
from storage.maps.versions import FormatMismatch, check_format
from tests.helpers import map_records


def format_1_output(url, options) -> None:
    """What format 1 left at the root of an output: run.json, manifest/ and plan/."""
    where = Location(url, options)
    where.put_json("run.json", {"status": "complete", "config": {}})
    where.put_json("manifest/pathway/s00000.json", {"method": "pathway", "shard_id": "s00000", "files": []})
    where.put("plan/shards.parquet", b"PAR1")


def test_a_format_1_output_is_refused_by_every_reader(storage_root):
    url, options = storage_root
    format_1_output(url, options)
    for read in (read_maps, read_run):
        with pytest.raises(FormatMismatch, match="format version 1.*another output URL"):
            read(url, storage_options=options)
    with pytest.raises(FormatMismatch):
        check_format(Location(url, options))


def test_another_version_in_run_json_is_refused(tmp_path):
    url = str(tmp_path / "out")
    MapStore(url).write_run({"format": {"name": "pathway-attribution.maps", "version": 3}})
    with pytest.raises(FormatMismatch, match="format version 3"):
        read_run(url)


def test_a_maps_file_of_another_version_is_refused(tmp_path):
    import pyarrow.parquet as pq

    from storage.maps.tables import METADATA_KEY

    url = str(tmp_path / "out")
    MapStore(url).write_shard("s0", None, "m", map_records(["a", "b"]))
    path = tmp_path / "out" / "maps" / "m" / "s0.parquet"
    table = pq.read_table(path)
    about = json.loads(table.schema.metadata[METADATA_KEY]) | {"version": 3}
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(about).encode()}), path)
    with pytest.raises(FormatMismatch, match="format version 3"):
        read_maps(url)
    pq.write_table(table.replace_schema_metadata({}), path)  # as format 1 wrote them
    with pytest.raises(FormatMismatch, match="format version 1"):
        read_maps(url)


def test_this_format_and_an_empty_output_read(tmp_path):
    url = str(tmp_path / "out")
    assert read_maps(url).empty and check_format(Location(url)) is None
    store = MapStore(url)
    store.write_shard("s0", None, "m", map_records(["a", "b"]))
    run = store.write_run({"status": "complete"})
    assert check_format(Location(url)) == json.loads(json.dumps(run)) and len(read_maps(url)) == 2


@pytest.mark.parametrize("text, says", [
    ("[1, 2]", "not a JSON object"),
    ("{not json", "is not JSON"),
    ('{"format": 3}', "field(s) format of the wrong type"),
    ('{"fingerprint": 5, "history": {}}', "field(s) fingerprint, history of the wrong type"),
])
def test_a_damaged_run_record_is_one_line_naming_it(text: str, says: str) -> None:
    from storage.io.fs import InvalidStorageInput
    from storage.maps.versions import parse_run

    with pytest.raises(InvalidStorageInput) as caught:
        parse_run(text, "/data/out")
    message = str(caught.value)
    assert "/data/out/_meta/run.json" in message and says in message and "\n" not in message


def test_a_format_2_output_holds_what_came_before_its_layout(tmp_path):
    """storage.maps.versions: what format 2 gained before its layout (the errors' kind, the run record's
    format) is in every output it writes, and the writers that lacked it left the format-1 layout,
    which is refused; so no reader needs a branch for their absence."""
    import pyarrow.parquet as pq

    from storage import read_errors
    from storage.maps.tables import ERRORS_SCHEMA
    from storage.sources import SampleError

    url = str(tmp_path / "out")
    store = MapStore(url)
    store.write_shard("s0", None, "m", map_records(["a", "c"]), [SampleError("b", "unreadable", "decode")])
    store.write_run({"status": "complete"})
    assert pq.read_schema(tmp_path / "out" / "errors" / "m" / "s0.parquet").names == ERRORS_SCHEMA.names
    assert read_errors(url).kind.tolist() == ["decode"] and read_run(url)["format"]["version"] == 2
    old = str(tmp_path / "old")
    Location(old).put_json("run.json", {"config": {"methods": {"m": {}}}, "format": {"version": 2}})
    with pytest.raises(FormatMismatch, match="format version 1"):
        read_run(old)
