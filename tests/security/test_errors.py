"""Issue #24, item 6: every bad flag, method spec, checkpoint field or map-dataset field is refused
in ONE line on stderr that names it (and its fix), with exit status 2 and no traceback, by every job,
before Ray starts.

A table of bad inputs walks through each job's real ``main()`` in-process (argparse's errors
included, which leave ``main()`` as SystemExit(2), as ``python -m`` would exit); the checkpoints
are real files, written with ``torch.save`` around a real untrained model's weights; the map
datasets are real folders holding a ``_meta/run.json``. ``python -m jobs.<name>`` itself is run
once per job, to check the exit status the shell sees.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ray_cluster import ROOT

JOBS = ("attribute", "perturb", "sanity", "roar", "report", "train", "convert", "make_dataset", "inspect", "export",
        "view", "analyze", "shortcut", "blur_sigma", "roar_stats")
#: Modules with a __main__ block that are not jobs: the FiftyOne loader jobs.export copies beside an
#: export runs in a Python that has fiftyone and not this project.
NOT_JOBS = ("fiftyone_loader",)

#: Checkpoint files the fixture writes: name -> what changes in a good checkpoint's dict.
BAD_CHECKPOINTS = {
    "arch-unknown": {"spec": {"arch": "nosuch_net"}},
    "arch-kwargs-num-classes": {"spec": {"arch_kwargs": {"num_classes": 3}}},
    "arch-kwargs-weights": {"spec": {"arch_kwargs": {"weights": "x"}}},
    "arch-kwargs-unknown": {"spec": {"arch_kwargs": {"bogus": 1}}},
    "arch-kwargs-not-json": {"spec": {"arch_kwargs": {"x": float("nan")}}},
    "arch-kwargs-not-object": {"spec": {"arch_kwargs": "width=16"}},
    "arch-import-untrusted": {"spec": {"arch": "usernets:SmallNet"}},
    "arch-project-code": {"spec": {"arch": "jobs.convert:main"}},
    "arch-timm-folder": {"spec": {"arch": "timm:local-dir:/etc"}},
    "mean-text": {"spec": {"mean": ["abc"]}},
    "std-none": {"spec": {"std": None}},
    "class-names-number": {"spec": {"class_names": 5}},
    "input-size-text": {"spec": {"input_size": "ab"}},
    "num-classes-zero": {"spec": {"num_classes": 0}},
    "spec-unknown-field": {"spec": {"color": "red"}},
    "spec-not-object": {"spec": [1, 2]},
    "state-dict-not-tensors": {"state_dict": "all of them"},
    "fingerprint-damaged": {"fingerprint": {"modules": 5, "probe": "x"}},
    "version-future": {"version": 99},
    "format-other": {"format": "someone-else"},
}

#: Map datasets the fixture writes: name -> its _meta/run.json text.
BAD_MAPS = {
    "maps-not-object": "[1, 2]",
    "maps-not-json": "{not json",
    "maps-config-not-object": json.dumps({"config": 5}),
    "maps-source-number": json.dumps({"config": {"source": 5, "methods": []}}),
    "maps-methods-damaged": json.dumps({"config": {"source": "fashion-mnist", "methods": [5]}}),
    "maps-no-methods": json.dumps({"config": {"source": "fashion-mnist"}}),
    "maps-format-number": json.dumps({"format": 3}),
    "maps-fingerprint-number": json.dumps({"fingerprint": 5}),
}

C = ["--checkpoint", "{checkpoint}", "--output", "{out}", "--no-progress"]  # attribute, sanity, perturb
CONVERT = ["--state-dict", "{checkpoint}", "--arch", "resnet8", "--num-classes", "10", "--in-channels", "1",
           "--input-size", "28", "--mean", "0.286", "--std", "0.353", "--output", "{out}/c.pt"]


def checkpoint_rows(job: str, extra: list[str]) -> list[tuple[str, list[str], str]]:
    """One row per bad checkpoint, with the field each refusal must name."""
    names = {
        "arch-unknown": r"unknown arch 'nosuch_net'", "arch-kwargs-num-classes": r"arch_kwargs .*'num_classes'",
        "arch-kwargs-weights": r"arch_kwargs .*'weights'", "arch-kwargs-unknown": r"arch_kwargs .*'bogus'",
        "arch-kwargs-not-json": r"arch_kwargs must be plain JSON", "arch-kwargs-not-object": r"arch_kwargs must be",
        "arch-import-untrusted": r"'usernets'.*--trust-code usernets", "arch-project-code": r"'jobs\.convert'",
        "arch-timm-folder": r"timm:local-dir:/etc", "mean-text": r"mean and std", "std-none": r"mean and std",
        "class-names-number": r"class_names", "input-size-text": r"input_size", "num-classes-zero": r"num_classes",
        "spec-unknown-field": r"unknown field.*'color'", "spec-not-object": r"'spec'",
        "state-dict-not-tensors": r"'state_dict'", "fingerprint-damaged": r"fingerprint is damaged",
        "version-future": r"format version 99", "format-other": r"not in format",
    }
    rows = []
    for name, says in names.items():
        args = [a.replace("{checkpoint}", "{" + name + "}") for a in extra]
        rows.append((job, args, rf"{name}\.pt.*{says}|{says}.*{name}\.pt"))
    return rows


ROWS: list[tuple[str, list[str], str]] = [
    # ------------------------------------------------------------------ jobs.attribute
    ("attribute", [*C, "--limit", "0"], r"argument --limit: expected a positive integer, got '0'"),
    ("attribute", [*C, "--batch-size", "many"], r"argument --batch-size: expected a positive integer, got 'many'"),
    ("attribute", [*C, "--workers", "-2"], r"argument --workers"),
    ("attribute", [*C, "--device", "gpu0"], r"argument --device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu0'"),
    ("attribute", [*C, "--target", "best"], r"argument --target: invalid choice: 'best'"),
    ("attribute", [*C, "--reduction", "mean"], r"argument --reduction: choose one of .*got 'mean'"),
    ("attribute", [*C, "--source-format", "zip"], r"argument --source-format: unknown source format 'zip'"),
    ("attribute", [*C, "--max-image-pixels", "0"], r"argument --max-image-pixels"),
    ("attribute", [*C, "--trust-code", "not a module"], r"argument --trust-code: 'not a module'"),
    ("attribute", [*C, "--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
    # an --output whose run record is damaged (its own _meta/run.json, untrusted like any file)
    ("attribute", [*C, "--output", "{maps-not-object}"], r"maps-not-object/_meta/run\.json is not a run record"),
    ("attribute", [*C, "--output", "{maps-not-json}"], r"maps-not-json/_meta/run\.json is not JSON"),
    ("attribute", [*C, "--output", "{maps-format-number}"], r"run\.json is not a run record \(field\(s\) format"),
    ("attribute", [*C, "--output", "{maps-fingerprint-number}"], r"run\.json is not a run record \(field\(s\) fingerprint"),
    ("attribute", [*C, "--storage-options", '{"key": "k", "secret": "s3cr3t-Zq"'],
     r"--storage-options is not valid JSON"),
    ("attribute", [*C, "--storage-options", "[1]"], r"--storage-options must be a JSON object"),
    ("attribute", [*C, "--storage-options", "@{missing}/options.json"], r"--storage-options file .*options\.json"),
    ("attribute", [*C, "--methods", "pathway:percentile=abc"],
     r"--methods pathway:percentile=abc: .*parameter 'percentile' takes a number, got 'abc'"),
    ("attribute", [*C, "--methods", "gradient:foo=1"], r"--methods gradient:foo=1: .*no parameter 'foo'"),
    ("attribute", [*C, "--methods", "pathway:per_layer=maybe"], r"--methods .*'per_layer' takes true or false"),
    ("attribute", [*C, "--methods", "integrated_gradients:n_steps=2.5"], r"--methods .*'n_steps' takes an integer"),
    ("attribute", [*C, "--methods", "grad_cam:layer=3"], r"--methods grad_cam:layer=3: .*'layer' takes a string"),
    ("attribute", [*C, "--methods", "pathway:percentile=150"], r"--methods pathway:percentile=150: .*percentile"),
    ("attribute", [*C, "--methods", "pathway:scores=bogus"], r"--methods pathway:scores=.*unknown scores 'bogus'"),
    ("attribute", [*C, "--methods", "nosuch"], r"--methods: unknown method 'nosuch'"),
    ("attribute", [*C, "--methods", "pathway:percentile"], r"--methods: expected key=value in 'pathway:percentile'"),
    ("attribute", [*C, "--methods", "p=pathway p=gradient"], r"--methods: label 'p' appears twice"),
    ("attribute", [*C, "--source", "{missing}/images"], r"{missing}/images"),
    ("attribute", ["--checkpoint", "{missing}/model.pt", "--output", "{out}"], r"checkpoint not found: .*model\.pt"),
    ("attribute", ["--checkpoint", "{not_torch}", "--output", "{out}"], r"not a checkpoint: .*not-torch\.pt"),
    ("attribute", ["--checkpoint", "{maps-not-object}", "--output", "{out}"], r"checkpoint URL is a directory"),
    *checkpoint_rows("attribute", ["--checkpoint", "{checkpoint}", "--output", "{out}", "--no-progress"]),
    # ------------------------------------------------------------------ jobs.sanity
    ("sanity", [*C, "--std", "-1"], r"argument --std: expected a number >= 0, got '-1'"),
    ("sanity", [*C, "--std", "nan"], r"argument --std: expected a number >= 0, got 'nan'"),
    ("sanity", [*C, "--draws", "0"], r"argument --draws: expected a positive integer"),
    ("sanity", [*C, "--group", "layer"], r"argument --group: invalid choice: 'layer'"),
    ("sanity", [*C, "--seed", "x"], r"argument --seed: invalid int value: 'x'"),
    ("sanity", [*C, "--methods", "smoothgrad:n_samples=1.5"], r"--methods smoothgrad:n_samples=1\.5: .*'n_samples'"),
    ("sanity", [*C, "--methods", "gradient nosuch"], r"--methods: unknown method 'nosuch'"),
    ("sanity", [*C, "--source", "{missing}/images", "--methods", "gradient"], r"{missing}/images"),
    ("sanity", ["--checkpoint", "{arch-kwargs-weights}", "--output", "{out}"], r"arch_kwargs .*'weights'"),
    ("sanity", ["--checkpoint", "{arch-import-untrusted}", "--output", "{out}"], r"--trust-code usernets"),
    # ------------------------------------------------------------------ jobs.perturb
    ("perturb", [*C, "--noise", "-1"], r"argument --noise: expected a number >= 0, got '-1'"),
    ("perturb", [*C, "--fractions", "half"], r"argument --fractions: .*got 'half'"),
    ("perturb", [*C, "--fill", "zero"], r"argument --fill: choose one or more of .*got 'zero'"),
    ("perturb", [*C, "--rank", "up"], r"argument --rank"),
    ("perturb", [*C, "--methods", "pathway:scores=3"], r"--methods pathway:scores=3: .*'scores' takes a string"),
    ("perturb", [*C, "--source", "{missing}/images"], r"{missing}/images"),
    ("perturb", ["--checkpoint", "{mean-text}", "--output", "{out}"], r"mean-text\.pt.*mean and std"),
    ("perturb", ["--maps", "{missing}/maps", "--no-progress"], r"--maps .*/maps: no map dataset there"),
    *[("perturb", ["--maps", "{" + name + "}", "--output", "{out}", "--no-progress"], says)
      for name, says in (("maps-not-object", r"maps-not-object/_meta/run\.json is not a run record"),
                         ("maps-not-json", r"maps-not-json/_meta/run\.json is not JSON"),
                         ("maps-config-not-object", r"maps-config-not-object/_meta/run\.json is not a run record"),
                         ("maps-source-number", r"maps-source-number: its run\.json field config\.source is 5"),
                         ("maps-methods-damaged", r"maps-methods-damaged: its run\.json field config\.methods"),
                         ("maps-no-methods", r"--maps .*maps-no-methods: the map dataset holds no methods"))],
    # ------------------------------------------------------------------ jobs.roar
    ("roar", [], r"the following arguments are required: --train-maps, --test-maps"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--thresholds", "0,50"], r"--thresholds must lie"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--seeds", "three"],
     r"argument --seeds: expected comma-separated integers, got 'three'"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--lr", "0"], r"argument --lr"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--noise", "inf"], r"argument --noise"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--retries", "-1"], r"argument --retries"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--device", "tpu:x"], r"argument --device"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/b", "--augment", "yes"], r"argument --augment"),
    ("roar", ["--train-maps", "{out}/a", "--test-maps", "{out}/a"], r"--train-maps and --test-maps are the same"),
    ("roar", ["--train-maps", "{missing}/a", "--test-maps", "{missing}/b"], r"{missing}/a"),
    ("roar", ["--train-maps", "{maps-not-object}", "--test-maps", "{missing}/b"], r"is not a run record"),
    ("roar", ["--train-maps", "{maps-source-number}", "--test-maps", "{maps-no-methods}"],
     r"maps-source-number: its run\.json field config\.source is 5"),
    # ------------------------------------------------------------------ jobs.report
    ("report", ["--maps", "{missing}/maps", "--output", "{out}"], r"--maps: cannot read .*{missing}/maps"),
    ("report", ["--maps", "{maps-not-object}", "--output", "{out}"], r"--maps: .*is not a run record"),
    ("report", ["--storage-options", "{", "--output", "{out}"], r"--storage-options is not valid JSON"),
    ("report", ["--bogus"], r"unrecognized arguments: --bogus"),
    # ------------------------------------------------------------------ jobs.inspect
    ("inspect", ["{missing}/maps"], r"{missing}/maps is not a map dataset .*give the --output of jobs\.attribute"),
    ("inspect", ["{maps-not-object}"], r"maps-not-object/_meta/run\.json is not a run record"),
    ("inspect", ["{maps-not-json}"], r"maps-not-json/_meta/run\.json is not JSON"),
    ("inspect", ["{out}", "--storage-options", "{"], r"--storage-options is not valid JSON"),
    ("inspect", ["{out}", "--bogus"], r"unrecognized arguments: --bogus"),
    # ------------------------------------------------------------------ jobs.export, view, analyze, shortcut
    ("export", ["{missing}/maps", "--to", "fiftyone", "{out}"], r"cannot read {missing}/maps/_meta/run\.json"),
    ("export", ["{maps-not-object}", "--to", "fiftyone", "{out}"], r"maps-not-object/_meta/run\.json is not a run record"),
    ("export", ["{missing}/maps", "--to", "csv", "{out}"], r"--to csv: unknown format"),
    ("export", ["{missing}/maps", "--to", "fiftyone", "{out}", "--limit", "0"], r"argument --limit"),
    ("export", ["{missing}/maps"], r"arguments are required: --to"),
    ("view", ["{missing}/maps", "--port", "0"], r"{missing}/maps is not a map dataset"),
    ("view", ["{maps-not-json}", "--port", "0"], r"maps-not-json/_meta/run\.json is not JSON"),
    ("view", ["{missing}/maps", "--port", "-1"], r"argument --port"),
    ("analyze", ["{missing}/maps"], r"{missing}/maps has no committed maps"),
    ("analyze", ["{missing}/maps", "--size", "0"], r"argument --size: expected a positive integer"),
    ("analyze", ["{missing}/maps", "--layout", "pca3d"], r"argument --layout: invalid choice"),
    ("shortcut", ["--stamp", "x"], r"argument --stamp: expected CLASS:FRACTION"),
    ("shortcut", ["--epochs", "0"], r"argument --epochs: expected a positive integer"),
    # ------------------------------------------------------------------ jobs.blur_sigma, roar_stats
    ("blur_sigma", ["--maps", "{missing}/maps"], r"{missing}/maps holds no committed maps of method 'pathway'"),
    ("blur_sigma", ["--maps", "{missing}/maps", "--max-sigma", "-1"], r"argument --max-sigma: expected a positive"),
    ("blur_sigma", ["--maps", "{missing}/maps", "--limit", "0"], r"argument --limit: expected a positive integer"),
    ("blur_sigma", [], r"arguments are required: --maps"),
    ("roar_stats", ["--roar", "{missing}/roar"], r"{missing}/roar is not a finished jobs\.roar output"),
    ("roar_stats", [], r"arguments are required: --roar"),
    # ------------------------------------------------------------------ jobs.train
    ("train", ["--epochs", "0", "--output", "{out}/m.pt"], r"argument --epochs: expected a positive integer"),
    ("train", ["--lr", "-1", "--output", "{out}/m.pt"], r"argument --lr: expected a positive number"),
    ("train", ["--optimizer", "lbfgs", "--output", "{out}/m.pt"], r"argument --optimizer: invalid choice"),
    ("train", ["--weight-decay", "-1", "--output", "{out}/m.pt"], r"argument --weight-decay: expected a number >= 0"),
    ("train", ["--device", "bogus", "--output", "{out}/m.pt"], r"argument --device: expected auto, cpu"),
    ("train", ["--input-size", "big", "--output", "{out}/m.pt"], r"argument --input-size"),
    ("train", ["--arch", "nosuch_net", "--output", "{out}/m.pt"], r"argument --arch: unknown arch 'nosuch_net'"),
    ("train", ["--arch-kwargs", "{width", "--output", "{out}/m.pt"], r"argument --arch-kwargs: expected a JSON"),
    ("train", ["--arch-kwargs", '{"num_classes": 3}', "--limit", "16", "--output", "{out}/m.pt"],
     r"arch_kwargs sets 'num_classes'"),
    ("train", ["--arch-kwargs", '{"weights": "x"}', "--limit", "16", "--output", "{out}/m.pt"],
     r"arch_kwargs \['weights'\]"),
    ("train", ["--source", "{missing}/images", "--output", "{out}/m.pt"], r"{missing}/images"),
    ("train", ["--storage-options", "[]", "--output", "{out}/m.pt"], r"--storage-options must be a JSON object"),
    # ------------------------------------------------------------------ jobs.convert
    ("convert", [], r"the following arguments are required: --state-dict"),
    ("convert", [*CONVERT, "--input-size", "x"], r"argument --input-size: expected H,W"),
    ("convert", [*CONVERT, "--mean", "grey"], r"argument --mean: expected numbers"),
    ("convert", [*CONVERT, "--std", "0"], r"std finite and > 0"),
    ("convert", [*CONVERT, "--num-classes", "0"], r"argument --num-classes"),
    ("convert", [*CONVERT, "--arch-kwargs", '{"pretrained": true}'], r"arch_kwargs \['pretrained'\]"),
    ("convert", [*CONVERT, "--arch-kwargs", '{"num_classes": 3}'], r"arch_kwargs sets 'num_classes'"),
    ("convert", [*CONVERT, "--class-names", "@{missing}/classes.txt"], r"--class-names file .*classes\.txt"),
    ("convert", [*CONVERT, "--state-dict", "{missing}/w.pt"], r"--state-dict: .*w\.pt"),
    ("convert", [*CONVERT, "--state-dict", "{not_torch}"], r"--state-dict .*not-torch\.pt"),
    ("convert", [*CONVERT, "--arch", "jobs.convert:main"], r"'jobs\.convert'"),
    # ------------------------------------------------------------------ jobs.make_dataset
    ("make_dataset", ["--train-limit", "-1", "--output", "{out}"], r"argument --train-limit"),
    ("make_dataset", ["--seed", "x", "--output", "{out}"], r"argument --seed: invalid int value"),
    ("make_dataset", ["--source", "{missing}/garments", "--output", "{out}"], r"{missing}/garments"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Paths the table's ``{name}`` placeholders stand for: a good checkpoint (an untrained ResNet-8:
    no training needed to be refused), the bad checkpoints, the bad map datasets, a file that is not
    a torch file, and a folder that does not exist."""
    from models.registry import build_model, fashion_mnist_spec
    from storage.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("errors")
    torch.manual_seed(0)
    good = root / "good.pt"
    save_checkpoint(str(good), build_model(fashion_mnist_spec()), fashion_mnist_spec())
    payload = torch.load(good, weights_only=True)
    paths = {"checkpoint": str(good), "missing": str(root / "missing"), "not_torch": str(root / "not-torch.pt")}
    Path(paths["not_torch"]).write_bytes(b"#!/bin/sh\necho these bytes are not a checkpoint\n")
    for name, change in BAD_CHECKPOINTS.items():
        bad = dict(payload)
        for key, value in change.items():
            bad[key] = {**payload[key], **value} if key == "spec" and isinstance(value, dict) else value
        torch.save(bad, root / f"{name}.pt")
        paths[name] = str(root / f"{name}.pt")
    for name, text in BAD_MAPS.items():
        (root / name / "_meta").mkdir(parents=True)
        (root / name / "_meta" / "run.json").write_text(text)
        paths[name] = str(root / name)
    return paths


def fill(text: str, values: dict[str, str], escape: bool = False) -> str:
    """``text`` with each ``{name}`` of ``values`` replaced (JSON's own braces are left alone)."""
    return re.sub(r"\{([A-Za-z_][\w-]*)\}", lambda m: (re.escape if escape else str)(values[m.group(1)])
                  if m.group(1) in values else m.group(0), text)


def ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def row_id(row: tuple[str, list[str], str]) -> str:
    job, argv, _ = row
    shown = [a for a in argv if a not in C and a not in CONVERT] or argv[-2:] or ["(none)"]
    return f"{job}:{' '.join(shown)}"[:80]


@pytest.mark.parametrize("job, argv, names", ROWS, ids=[row_id(r) for r in ROWS])
def test_a_bad_input_is_one_line_naming_it_with_exit_status_2(job, argv, names, inputs, no_ray, tmp_path,
                                                              capfd) -> None:
    module = importlib.import_module(f"jobs.{job}")
    out = tmp_path / "out"
    values = {**inputs, "out": str(out)}
    args = [fill(a, values) for a in argv]
    capfd.readouterr()
    try:
        code = module.main(args)
    except SystemExit as exit_:  # argparse's refusals, as `python -m` exits with them
        code = exit_.code
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    assert code == 2, captured.err[-3000:]
    assert len(lines) == 1, captured.err[-3000:]
    assert lines[0].startswith(f"jobs.{job}: error: "), lines[0]
    assert re.search(fill(names, values, escape=True), lines[0]), lines[0]
    assert "s3cr3t-Zq" not in captured.err + captured.out
    assert not ray_started(), "the refusal came after Ray started"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    if written:  # jobs.attribute records a refused run in its output's run.json, with the same line
        assert written == ["_meta/run.json"], written
        record = json.loads((out / "_meta" / "run.json").read_text())
        assert record["status"] == "failed" and lines[0].endswith(record["reason"]), record


def test_the_table_covers_every_job() -> None:
    entry_points = sorted(p.stem for p in (ROOT / "jobs").glob("*.py")
                          if 'if __name__ == "__main__":' in p.read_text() and p.stem not in NOT_JOBS)
    assert entry_points == sorted(JOBS)
    assert {job for job, _, _ in ROWS} == set(JOBS)


@pytest.mark.parametrize("job", JOBS)
def test_the_shell_sees_exit_status_2_and_one_line(job, tmp_path) -> None:
    """``python -m jobs.<name>`` with a flag of the wrong type: what a shell or a scheduler sees."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--storage-options", "{", "--definitely-not-a-flag"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"jobs.{job}: error: ") and lines[0].endswith("(see --help)"), lines
    assert "--definitely-not-a-flag" in lines[0] or "required" in lines[0], lines
