"""jobs.runtime.cli's error contract: a refusal is one line and exit status 2, a job that ran and stopped
exits 1, anything else is a bug that keeps its traceback; argparse's errors are one line too."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from jobs.runtime.cli import JobError, JobStopped, job_parser, positive_int, run_main, source_format
from jobs.mapping.methods import build_methods, parse_method_specs


def raising(err: BaseException):
    def run(_args: argparse.Namespace) -> int:
        raise err

    return run


@pytest.mark.parametrize("err, code", [
    (JobError("--limit: too large"), 2),
    (JobStopped("the job stopped with 3 of 8 shards committed"), 1),
])
def test_refusals_exit_2_and_a_stopped_run_exits_1(err, code, capsys) -> None:
    assert run_main("jobs.x", raising(err), argparse.Namespace()) == code
    assert capsys.readouterr().err == f"jobs.x: error: {err}\n"


def test_every_error_type_of_the_project_is_one_line(capsys) -> None:
    from attribution import AttributionError
    from attribution.evaluation import EvaluationError
    from models.registry import ModelError
    from storage.io.fs import StorageError
    from storage.io.lease import LeaseLost

    for err in (AttributionError("a"), EvaluationError("b"), ModelError("c"), StorageError("d")):
        assert run_main("jobs.x", raising(err), argparse.Namespace()) == 2
    assert run_main("jobs.x", raising(LeaseLost("taken over")), argparse.Namespace()) == 1
    assert capsys.readouterr().err.splitlines() == [f"jobs.x: error: {m}" for m in "abcd"] + \
        ["jobs.x: error: taken over"]


def test_a_message_with_line_breaks_is_printed_on_one_line(capsys) -> None:
    assert run_main("jobs.x", raising(JobError("first\nsecond\r\n  third")), argparse.Namespace()) == 2
    assert capsys.readouterr().err == "jobs.x: error: first second third\n"


def test_anything_else_is_a_bug_and_raises() -> None:
    with pytest.raises(KeyError):
        run_main("jobs.x", raising(KeyError("bug")), argparse.Namespace())


def test_argparse_errors_are_one_line_with_exit_status_2(capsys) -> None:
    p = job_parser("python -m jobs.x", "Doc.", [])
    p.add_argument("--limit", type=positive_int)
    p.add_argument("--mode", choices=("a", "b"))
    for argv, says in ((["--limit", "0"], "argument --limit: expected a positive integer, got '0'"),
                       (["--mode", "c"], "argument --mode: invalid choice: 'c'"),
                       (["--nope"], "unrecognized arguments: --nope")):
        with pytest.raises(SystemExit) as exit_:
            p.parse_args(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jobs.x: error: {says}") and err.endswith(" (see --help)\n") and err.count("\n") == 1


def test_method_specs_are_checked_when_parsed() -> None:
    with pytest.raises(JobError, match=r"^--methods pathway:percentile=abc: method 'pathway': parameter 'percentile' "
                                       r"takes a number, got 'abc'$"):
        parse_method_specs("gradient pathway:percentile=abc")
    with pytest.raises(JobError, match=r"^--methods g=gradient:foo=1: method 'gradient' has no parameter 'foo'"):
        parse_method_specs("g=gradient:foo=1")
    specs = parse_method_specs("p=pathway:percentile=50,activations=[\"relu\"] gradient")
    assert [(s.label, s.name, s.params) for s in specs] == [
        ("p", "pathway", {"percentile": 50, "activations": ["relu"]}), ("gradient", "gradient", {})]


def test_building_names_the_spec_whose_value_is_out_of_range() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 1, 5, 5))
    with pytest.raises(JobError, match=r"^--methods p=pathway:percentile=100: percentile must be in \[0, 100\)"):
        build_methods(net, parse_method_specs("p=pathway:percentile=100"))


def test_source_format_is_checked_when_parsed() -> None:
    assert source_format("parquet") == "parquet" and source_format("wds") == "webdataset"
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown source format 'zip'; known formats: idx"):
        source_format("zip")


def test_numbers_and_devices_are_checked_when_parsed() -> None:
    from jobs.runtime.cli import device_name, non_negative_float, non_negative_int

    assert non_negative_float("0") == 0.0 and non_negative_float("0.01") == 0.01 and non_negative_int("0") == 0
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"expected a number >= 0, got '{bad}'"):
            non_negative_float(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected an integer >= 0, got '-1'"):
        non_negative_int("-1")
    assert [device_name(d) for d in ("auto", "cpu", "cuda", "cuda:1", "mps")] == ["auto", "cpu", "cuda", "cuda:1", "mps"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        device_name("gpu")
