"""jobs.runtime.cli's part in keeping outputs the job's own and credentials out of sight: method labels are
one safe path component when --methods is parsed, inline secret --storage-options warn, and error
lines are redacted (the jobs' own behaviour is tests/security/test_output.py's)."""

from __future__ import annotations

import argparse
import json

import pytest

from jobs.runtime.cli import JobError, redacted, storage_options_from
from jobs.mapping.methods import check_label, parse_method_specs


@pytest.mark.parametrize("label", ["../../x", "..", ".", "a/b", ".hidden", "_meta", "x" * 129, "a*b", "-x", "caf\u00e9"])
def test_a_label_that_is_not_one_safe_path_component_is_refused_when_parsed(label):
    with pytest.raises(JobError, match=r"--methods: method label .* must be 1-128 letters, digits or \._=-"):
        parse_method_specs(f"{label}=gradient")


@pytest.mark.parametrize("label", ["gradient", "p70", "pathway_integrated", "a.b-c", "X" * 128])
def test_safe_labels_pass(label):
    assert check_label(label) == label
    assert parse_method_specs(f"{label}=gradient")[0].label == label


def test_inline_secret_options_warn_naming_keys_only(capsys, tmp_path, monkeypatch):
    secret = "wJalrXUt/nFEMI+K7MDENG"
    text = json.dumps({"key": "AKIAEXAMPLE", "client_kwargs": {"aws_secret_access_key": secret,
                                                               "endpoint_url": "http://127.0.0.1:9"}})
    assert storage_options_from(text)["client_kwargs"]["aws_secret_access_key"] == secret
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: --storage-options holds key, "
                                                   "client_kwargs.aws_secret_access_key inline")
    assert secret not in err and "AKIAEXAMPLE" not in err and "@file.json" in err and "$STORAGE_OPTIONS" in err

    (tmp_path / "o.json").write_text(text)
    monkeypatch.setenv("STORAGE_OPTIONS", text)
    for given in (f"@{tmp_path}/o.json", None, json.dumps({"anon": True, "client_kwargs": {"endpoint_url": "x"}})):
        storage_options_from(given)
        assert capsys.readouterr().err == ""  # a file, the environment, or no secret: nothing to warn about


def test_redacted_scrubs_urls_and_what_args_carry():
    args = argparse.Namespace(output="s3://AKIAEXAMPLE:wJal/rXUt@bucket/maps", allow_paths=["https://tok3n@h/x"],
                              limit=3)
    text = 'cannot list s3://AKIAEXAMPLE:wJal/rXUt@bucket/maps: Invalid bucket name "AKIAEXAMPLE:wJal" (tok3n)'
    shown = redacted(text, args)
    assert shown.startswith("cannot list s3://bucket/maps: Invalid bucket name")
    assert "wJal" not in shown and "rXUt" not in shown and "AKIAEXAMPLE" not in shown and "tok3n" not in shown
    assert redacted("no URL here", None) == "no URL here"
