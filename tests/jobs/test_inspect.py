"""``python -m jobs.inspect`` on real map datasets written by ``jobs.attribute`` (local, and the module's
reference run to SeaweedFS S3), and ``jobs.attribute --dry-run`` (jobs.mapping.preview), which writes nothing."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from jobs import attribute, inspect
from storage.maps.reader import read_errors, read_run
from storage.sources import FASHION_MNIST_CLASSES
from tests.helpers import every_file, fashion_mnist, write_folder

#: The local dataset: 24 images and one file that does not decode, mapped 20 at a time in shards of 10.
SHAPE = ["--shard-size", "10", "--batch-size", "10", "--in-process", "--no-progress"]


@pytest.fixture(scope="module")
def local_output(tmp_path_factory, checkpoint) -> dict:
    """A real local map dataset of the first 20 of 25 files of a folder (so a rerun has a new shard):
    2 methods, 2 shards, and one error row (a .png that is not an image, listed first)."""
    src, out = tmp_path_factory.mktemp("src"), str(tmp_path_factory.mktemp("maps") / "out")
    images, labels = fashion_mnist("test", 24)
    first_class = FASHION_MNIST_CLASSES[9].replace("/", "-")
    write_folder(str(src), None, images, labels, extra={f"{first_class}/0-broken.png": b"not an image"})
    args = ["--source", str(src), "--checkpoint", checkpoint, "--output", out, *SHAPE]
    assert attribute.main([*args, "--limit", "20"]) == 0
    return {"output": out, "args": args}


@pytest.mark.slow
def test_inspect_a_local_output(local_output, capsys) -> None:
    out = local_output["output"]
    summary = inspect.inspect_output(out)
    assert summary["status"] == "complete" and len(summary["history"]) == 1
    assert summary["format"] == {"name": "pathway-attribution.maps", "version": 2}
    assert summary["plan"] == {"shards": 2, "samples": 20, "shard_size": 10, "form": "samples"}
    assert list(summary["methods"]) == ["pathway", "gradient"]
    for label, method in summary["methods"].items():
        kinds = read_errors(out, label).kind.fillna("unknown").value_counts().to_dict()
        assert method["shards_committed"] == 2 and method["shards_pending"] == 0
        assert method["maps"] + method["error_rows"] == 20 and method["error_rows"] == 1
        assert method["errors_by_kind"] == kinds
    assert summary["config"] == {k: v for k, v in read_run(out)["config"].items()}
    assert "storage_options" not in json.dumps(summary)

    assert inspect.main([out]) == 0
    text = capsys.readouterr().out
    assert f"map dataset {out} (format pathway-attribution.maps version 2)" in text
    assert "pathway (pathway): 2 shards committed, 0 pending; 19 maps, 1 error rows" in text
    assert inspect.main([out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary))


@pytest.mark.slow
def test_half_done_output_inspect_and_dry_run_write_nothing(local_output, tmp_path, capsys) -> None:
    """A shard taken out of the committed set (its record deleted, as docs/format.md says to recompute
    it) is pending; a dry run counts it and the source's new files, and changes no byte."""
    out = str(tmp_path / "half")
    shutil.copytree(local_output["output"], out)
    os.remove(os.path.join(out, "_manifest", "gradient", "000001.json"))
    summary = inspect.inspect_output(out)
    assert summary["methods"]["gradient"]["shards_pending"] == 1
    assert summary["methods"]["gradient"]["pending_shards"] == ["000001"]
    assert summary["methods"]["pathway"]["shards_pending"] == 0

    before = every_file(out)
    args = [*local_output["args"][:-len(SHAPE) - 2], "--output", out, *SHAPE, "--dry-run"]
    assert attribute.main(args) == 0
    printed = capsys.readouterr().out
    assert every_file(out) == before  # byte for byte, and no file added
    assert "plan: 25 samples in 3 shards of 10 (2 planned already, 1 new); 1 committed for every method" in printed
    assert "pathway (in the output): 2 shards committed, 1 to do (5 samples)" in printed
    assert "gradient (in the output): 1 shards committed, 2 to do (15 samples)" in printed
    assert "would run: 2 shards (15 samples" in printed


@pytest.mark.slow
def test_dry_run_of_a_fresh_output_creates_nothing(checkpoint, s3_server, tmp_path, capsys) -> None:
    local = str(tmp_path / "fresh")
    remote, options = s3_server.url("dry-run-fresh"), s3_server.storage_options
    for out, extra in ((local, []), (remote, ["--storage-options", json.dumps(options)])):
        code = attribute.main(["--checkpoint", checkpoint, "--output", out, "--limit", "30", *SHAPE, "--dry-run",
                               *extra])
        assert code == 0
        printed = capsys.readouterr().out
        assert "plan: 30 samples in 3 shards of 10 (0 planned already, 3 new)" in printed
        assert "pathway (new in this output): 0 shards committed, 3 to do (30 samples)" in printed
    assert not os.path.exists(local)
    assert every_file(remote, options) == {}


@pytest.mark.slow
def test_inspect_the_s3_reference(reference, tmp_path, monkeypatch, capsys) -> None:
    url, options = reference["url"], reference["options"]
    assert reference["code"] == 0
    secrets = tmp_path / "options.json"
    secrets.write_text(json.dumps(options))
    assert inspect.main([url, "--json", "--storage-options", f"@{secrets}"]) == 0
    by_file = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("STORAGE_OPTIONS", json.dumps(options))
    assert inspect.main([url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == by_file
    assert summary["status"] == "complete" and summary["plan"]["shards"] == 8
    for method in summary["methods"].values():
        assert (method["shards_committed"], method["shards_pending"], method["maps"], method["error_rows"]) == \
            (8, 0, 400, 0)
    assert options["secret"] not in json.dumps(summary)
    assert inspect.main([url]) == 0
    assert options["secret"] not in capsys.readouterr().out


def test_not_a_map_dataset_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    for path in (tmp_path / "photos", tmp_path / "missing", tmp_path / "photos" / "cat.jpg"):
        assert inspect.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"jobs.inspect: error: {path} is not a map dataset" in err
