"""jobs.mapping.record: an output is bound to the configuration that made its maps, and its run record
is assembled as the run starts, ends or fails."""

from __future__ import annotations

import os
import re

import pytest

from attribution import MethodSpec
from jobs.mapping.record import carried_forward, check, failed, finished, fingerprint
from jobs.runtime.cli import JobError
from models import fashion_mnist_spec
from workers.tasks import JobConfig


def config(methods=(("pathway", {"percentile": 70.0}), ("gradient", {})), **changes) -> JobConfig:
    specs = tuple(MethodSpec(name, params) for name, params in methods)
    return JobConfig(**{"source": "fashion-mnist", "checkpoint": "a.pt", "output": "out", "methods": specs, **changes})


def print_of(cfg: JobConfig, sha: str = "abc", spec=None) -> dict:
    return fingerprint(cfg, spec or fashion_mnist_spec(), sha, {m.label: m.params for m in cfg.methods}, 2)


def test_the_first_run_binds_the_output() -> None:
    kept, added = check(None, print_of(config()), "out")
    assert added == ["pathway", "gradient"] and kept["checkpoint_sha256"] == "abc"


def test_the_same_configuration_again_adds_nothing() -> None:
    stored, _ = check(None, print_of(config()), "out")
    assert check(stored, print_of(config(checkpoint="moved/a.pt")), "out") == (stored, [])  # the URL is not the model


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": (("pathway", {"percentile": 50.0}), ("gradient", {}))}, "method 'pathway' was .*70.*is .*50"),
    ({"split": "train"}, "split was \"test\", is \"train\""),
    ({"reduction": "max_abs"}, "reduction was"),
    ({"sha": "def"}, "checkpoint_sha256 was \"abc\", is \"def\""),
    ({"spec": fashion_mnist_spec().replace(input_size=(32, 32))}, "model_input was"),
])
def test_a_changed_configuration_is_refused_with_what_changed_and_the_fix(change: dict, message: str) -> None:
    stored, _ = check(None, print_of(config()), "out")
    sha, spec = change.pop("sha", "abc"), change.pop("spec", None)
    with pytest.raises(JobError, match=f"out holds maps made with another configuration: {message}.*new --output"):
        check(stored, print_of(config(**change), sha, spec), "out")


def test_a_credential_in_the_source_url_is_neither_stored_nor_a_change() -> None:
    secret = "wJalrXUt/nFEMI+K7MDENG"
    first = print_of(config(source=f"s3://AKIAEXAMPLE:{secret}@bucket/images"))
    stored, _ = check(None, first, "out")
    assert secret not in str(stored) and stored["source"] == "s3://bucket/images"
    # the same data with the credential given another way (or rotated) is the same configuration
    assert check(stored, print_of(config(source="s3://bucket/images")), "out") == (stored, [])
    assert check(stored, print_of(config(source="s3://AKIAOTHER:rotated-secret@bucket/images")), "out")[1] == []
    # a fingerprint stored raw by an earlier release compares like with like
    assert check({**stored, "source": f"s3://AKIAEXAMPLE:{secret}@bucket/images"}, first, "out")[1] == []
    with pytest.raises(JobError, match="source was"):
        check(stored, print_of(config(source="s3://bucket/other")), "out")


def test_run_json_config_holds_no_credential() -> None:
    secret = "wJalrXUt/nFEMI+K7MDENG"
    public = config(source=f"s3://AKIA:{secret}@b/src", checkpoint=f"https://tok:{secret}@h/m.pt",
                    output=f"s3://AKIA:{secret}@b/out", allow_paths=(f"s3://AKIA:{secret}@b/shared",),
                    storage_options={"secret": secret}).public_dict()
    assert secret not in str(public) and "AKIA" not in str(public)
    assert (public["source"], public["checkpoint"], public["output"], public["allow_paths"]) == \
        ("s3://b/src", "https://h/m.pt", "s3://b/out", ["s3://b/shared"])


def test_a_new_method_label_is_added() -> None:
    stored, _ = check(None, print_of(config()), "out")
    base = config()
    more = JobConfig(source=base.source, checkpoint=base.checkpoint, output=base.output,
                     methods=(*base.methods, MethodSpec("pathway", {"percentile": 50.0}, "p50")))
    kept, added = check(stored, print_of(more), "out")
    assert added == ["p50"] and set(kept["methods"]) == {"pathway", "gradient", "p50"}


def test_a_run_that_ends_is_complete_or_incomplete_with_the_reason() -> None:
    record = carried_forward({"status": "complete", "started_at": "t0", "fingerprint": {"f": 1}, "warnings": ["old"]},
                             "t1")
    assert record["fingerprint"] == {"f": 1} and record["history"][0]["status"] == "complete"
    record["warnings"] = ["a"]
    quality = {"degenerate": {"pathway": {}}, "warnings": ["a", "b"]}
    finished(record, methods=["pathway"], missing={"pathway": []}, maps=8, errors=0, seconds=1.0, errors_by_kind={},
             examples=["x.png"], quality=quality)
    assert record["status"] == "complete" and record["examples_methods"] == ["pathway"] and "reason" not in record
    assert record["warnings"] == ["a", "b"] and record["degenerate_maps"] == {"pathway": {}}
    finished(record, methods=["pathway"], missing={"pathway": ["000001", "000002"]}, maps=4, errors=0, seconds=1.0,
             errors_by_kind={}, examples=[], quality={})
    assert record["status"] == "incomplete" and record["reason"].startswith("2 (method, shard) pairs not committed")
    assert record["examples_methods"] == []


def test_a_failed_run_records_the_reason_without_credentials_or_keeps_the_prior_record() -> None:
    import argparse

    from jobs.runtime.stopping import Interrupted

    args = argparse.Namespace(source="s3://AKIAKEY:topsecret@bucket/x")
    started = {"status": "running", "started_at": "t1", "attempt": "a1"}
    record = failed(dict(started), OSError("cannot read s3://AKIAKEY:topsecret@bucket/x/0.png"), None, args)
    assert record["status"] == "failed" and "topsecret" not in record["reason"] and "bucket/x/0.png" in record["reason"]
    assert failed(dict(started), Interrupted(detail="3 of 8 shards committed"), None)["reason"] == \
        "interrupted by SIGINT: 3 of 8 shards committed"
    prior = {"status": "complete", "started_at": "t0", "maps": 8}
    refused = failed(carried_forward(prior, "t1"), ValueError("bad flag"), prior)  # failed before it wrote its own
    assert {k: v for k, v in refused.items() if k != "history"} == prior
    assert refused["history"][-1] | {"failed_at": None} == {"started_at": "t1", "status": "failed",
                                                           "reason": "bad flag", "failed_at": None}


def test_the_history_keeps_the_order_runs_had_within_one_second() -> None:
    """Runs and refusals in the same second (a run without Ray takes less): each refused attempt says
    which run it found, and follows that run; a record whose refusals do not say so is ordered by time."""
    older = {"attempt": "a0", "started_at": "2026-12-07T10:00:00+00:00", "status": "complete"}
    prior = {"attempt": "a1", "started_at": "2026-12-07T10:00:01+00:00", "status": "complete", "history": [older]}
    for _ in range(2):
        prior = failed(carried_forward(prior, "2026-12-07T10:00:01+00:00"), ValueError("bad flag"), prior)
    assert [r.get("after") for r in prior["history"]] == [None, "a1", "a1"]
    history = carried_forward(prior, "2026-12-07T10:00:01+00:00")["history"]
    assert [(r.get("attempt"), r["status"]) for r in history] == [("a0", "complete"), ("a1", "complete"),
                                                                 (None, "failed"), (None, "failed")]
    written_before = {**prior, "history": [{k: v for k, v in r.items() if k != "after"} for r in prior["history"]]}
    written_before["history"][1]["started_at"] = "2026-12-07T10:00:02+00:00"
    history = carried_forward(written_before, "2026-12-07T10:00:03+00:00")["history"]
    assert [r["started_at"][-8:] for r in history] == ["00+00:00", "01+00:00", "01+00:00", "02+00:00"]


def test_a_job_is_bound_to_its_output(checkpoint, tmp_path, capfd) -> None:
    """On a real output: another configuration is refused in one line and leaves run.json as it was; a
    new method label joins the output; run.json keeps the history of the runs that wrote it."""
    from jobs import attribute
    from storage.maps.reader import read_maps, read_run

    out = str(tmp_path / "maps")
    base = ["--checkpoint", checkpoint, "--output", out, "--limit", "8", "--shard-size", "4", "--in-process",
            "--no-progress"]
    assert attribute.main([*base, "--methods", "pathway:percentile=70"]) == 0
    record = read_run(out)
    capfd.readouterr()
    for change, message in ((["--methods", "pathway:percentile=50"], r"method 'pathway' was .*70.*is .*50"),
                            (["--methods", "pathway:percentile=70", "--split", "train"], r'split was "test", is "train"'),
                            (["--methods", "pathway:percentile=70", "--reduction", "sum_abs"], "reduction was")):
        assert attribute.main([*base, *change]) == 2
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]) and "new --output" in lines[0], lines
        after = read_run(out)  # what the output is stays as it was; the refused attempt joins the history
        assert {k: v for k, v in after.items() if k != "history"} == {k: v for k, v in record.items() if k != "history"}
        assert after["history"][-1]["status"] == "failed" and re.search(message, after["history"][-1]["reason"])
    assert attribute.main([*base, "--methods", "p50=pathway:percentile=50"]) == 0
    assert "adding p50" in capfd.readouterr().out
    run = read_run(out)
    assert [m["label"] for m in run["config"]["methods"]] == ["p50", "pathway"]
    assert set(run["fingerprint"]["methods"]) == {"pathway", "p50"} and len(run["history"]) == 4
    assert [h["status"] for h in run["history"]] == ["complete"] + ["failed"] * 3  # in the order they ran
    assert run["history"][0]["methods"] == ["pathway"]
    maps = read_maps(out)
    assert sorted(set(maps.method)) == ["p50", "pathway"] and len(maps) == 16


def test_a_second_driver_is_refused_naming_the_holder(checkpoint, tmp_path, capfd) -> None:
    from jobs import attribute
    from storage.io.lease import Lease
    from storage.io.location import Location

    out = str(tmp_path / "maps")
    with Lease(Location(out), purpose="another driver"):
        assert attribute.main(["--checkpoint", checkpoint, "--output", out, "--limit", "8", "--no-progress"]) == 2
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert "jobs.attribute: error: " in line and "another driver" in line and str(os.getpid()) in line, line
    assert not os.path.exists(os.path.join(out, "_meta"))
