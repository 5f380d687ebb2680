"""Every option of every job explains itself, and shows its default once (jobs.runtime.cli.JobHelpFormatter)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from jobs.runtime.cli import JobArgumentParser, JobHelpFormatter, job_parser

JOBS = ("attribute", "perturb", "sanity", "roar", "report", "train", "convert", "make_dataset", "inspect", "export", "view",
        "analyze", "shortcut", "blur_sigma", "roar_stats")


class _Built(Exception):
    """Raised instead of parsing, carrying the parser a job's parse_args built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("built")
        self.parser = parser


def job_parser_of(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``jobs.<name>.parse_args`` builds (caught before it parses anything)."""

    def built(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Built(self)

    monkeypatch.setattr(JobArgumentParser, "parse_args", built)
    module = importlib.import_module(f"jobs.{name}")
    with pytest.raises(_Built) as caught:
        module.parse_args([])
    return caught.value.parser


def shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help of one option as ``--help`` prints it, on one line."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


@pytest.mark.parametrize("name", JOBS)
def test_every_option_has_help_and_shows_its_default_once(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = job_parser_of(name, monkeypatch)
    assert isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class, JobHelpFormatter)
    options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert options
    for action in options:
        flag = (action.option_strings or [action.dest])[0]
        assert (action.help or "").strip(), f"jobs.{name} {flag} has no help"
        text = shown_help(parser, action)
        assert text.lower().count("default") <= 1, f"jobs.{name} {flag} shows its default twice: {text}"
    assert parser.format_help()  # every help string formats (no stray % in it)


def test_formatter_appends_a_default_only_where_the_help_lacks_one() -> None:
    parser = job_parser("python -m jobs.example", "An example.", [])
    parser.add_argument("--size", type=int, default=64, help="samples per batch")
    parser.add_argument("--seed", type=int, default=0, help="the seed")
    parser.add_argument("--where", default=None, help="a URL (default: $WHERE, else here)")
    parser.add_argument("--limit", type=int, default=None, help="the first N")
    parser.add_argument("--quiet", action="store_true", help="print less")
    shown = {a.dest: shown_help(parser, a) for a in parser._actions}
    assert shown["size"].endswith("samples per batch (default: 64)")
    assert shown["seed"].endswith("the seed (default: 0)")  # 0 is a default worth showing, unlike False
    assert shown["where"].endswith("a URL (default: $WHERE, else here)")
    assert "default" not in shown["limit"] and "default" not in shown["quiet"]


def test_report_names_the_folder_jobs_roar_writes_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.maps.tables import EVAL_DIR

    parser = job_parser_of("report", monkeypatch)
    roar = next(a for a in parser._actions if a.dest == "roar")
    assert f"<maps>/{EVAL_DIR}/roar" in roar.help
    roar_job = job_parser_of("roar", monkeypatch)
    output = next(a for a in roar_job._actions if a.dest == "output")
    assert f"<test-maps>/{EVAL_DIR}/roar" in output.help


def test_every_job_is_a_console_script() -> None:
    """pyproject.toml's [project.scripts] names every job's main, and the installed command runs."""
    import os
    import subprocess
    import sys
    import tomllib

    from tests.ray_cluster import ROOT

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    targets = {target: name for name, target in scripts.items()}
    for job in JOBS:
        assert f"jobs.{job}:main" in targets, f"jobs.{job} has no console script"
        assert callable(importlib.import_module(f"jobs.{job}").main)
    command = os.path.join(os.path.dirname(sys.executable), targets["jobs.inspect:main"])
    if not os.path.exists(command):
        pytest.skip(f"{command} is not installed: pip install --no-deps -e . installs the console scripts")
    done = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--json" in done.stdout
