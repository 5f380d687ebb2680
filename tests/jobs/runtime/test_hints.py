"""jobs.runtime.hints: the closing line of jobs.attribute names the options the job got from its command line,
never a credential (that it runs as printed is tests/jobs/test_attribute_reading.py's)."""

from __future__ import annotations

import json

from jobs.runtime.hints import read_hint


def test_the_hint_names_options_from_the_command_line_but_no_credential(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bare = read_hint("s3://b/maps", "pathway", None)
    assert bare == "import storage; df = storage.read_maps('s3://b/maps', 'pathway')"
    local = read_hint("out/maps", "gradient", None)
    assert local == f"import storage; df = storage.read_maps({str(tmp_path / 'out' / 'maps')!r}, 'gradient')"
    from_file = read_hint("s3://b/maps", "pathway", "@o.json")
    assert from_file.endswith(f"storage_options=storage.parse_storage_options({'@' + str(tmp_path / 'o.json')!r}))")
    endpoint = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "anon": False}
    inline = read_hint("s3://b/maps", "pathway", json.dumps(endpoint))
    assert inline.endswith(f"storage_options={endpoint!r})")
    secret = read_hint("s3://b/maps", "pathway", json.dumps({**endpoint, "secret": "s3cr3t-in-the-flag"}))
    assert "s3cr3t" not in secret and "127.0.0.1" not in secret and "$STORAGE_OPTIONS" in secret
    for hint in (inline, from_file):  # each is one line of Python
        compile(hint, "hint", "exec")
