"""Nothing a checkpoint names can run code unless the operator says so (issue #24, items 1, 2, 7, 8).

Each checkpoint here is written the way an attacker would, with ``torch.save`` of the checkpoint
format (``save_checkpoint`` itself refuses such specs), and loaded by the real ``jobs.attribute``
through its ``main()``. The refusals come before Ray starts, so the job runs in-process; a trusted
user model's whole job is tests/jobs/test_user_models.py's.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from jobs import attribute, convert
from models import fashion_mnist_spec

FORMAT = "pathway-attribution.checkpoint"
SPEC_ARGS = ["--num-classes", "10", "--in-channels", "1", "--input-size", "28", "--mean", "0.286", "--std", "0.353"]


def hostile_checkpoint(path: Path, arch: str, arch_kwargs: dict | None = None, **spec_changes) -> str:
    """A checkpoint file whose spec names ``arch`` (a resnet8's weights, which never get loaded)."""
    spec = {**fashion_mnist_spec().to_dict(), "arch": arch, "arch_kwargs": arch_kwargs or {}, **spec_changes}
    from models import build_model

    state = build_model(fashion_mnist_spec()).state_dict()
    torch.save({"format": FORMAT, "version": 1, "spec": spec, "state_dict": state, "metrics": {}}, path)
    return str(path)


def run_attribute(checkpoint: str, tmp_path: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """jobs.attribute on ``checkpoint``; (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = attribute.main(["--checkpoint", checkpoint, "--output", str(tmp_path / "maps"), "--limit", "8",
                           "--no-progress", *extra])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def assert_one_line(err: str, *words: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def capture_server() -> Iterator[tuple[str, list]]:
    """A loopback HTTP server that records every request it gets (an attacker's S3 endpoint)."""
    seen: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            seen.append((self.command, self.path))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    urllib.request.urlopen(f"{url}/alive", timeout=10).read()  # the server does record requests
    assert seen == [("GET", "/alive")]
    seen.clear()
    try:
        yield url, seen
    finally:
        server.shutdown()
        server.server_close()


def convert_argv(tmp_path: Path, output: str, *extra: str) -> list[str]:
    """What a hostile checkpoint passes jobs.convert:main: read a local weights file, write it elsewhere."""
    private = tmp_path / "private-weights.pt"
    if not private.exists():
        from models import build_model

        torch.save(build_model(fashion_mnist_spec()).state_dict(), private)
    return ["--state-dict", str(private), "--arch", "resnet8", *SPEC_ARGS, "--output", output, *extra]


def test_a_checkpoint_cannot_run_jobs_convert_to_copy_a_local_file(tmp_path, capsys) -> None:
    stolen = tmp_path / "stolen.pt"
    argv = convert_argv(tmp_path, str(stolen))
    assert convert.main(convert_argv(tmp_path, str(tmp_path / "control.pt"))) == 0  # the argv does copy the file
    assert (tmp_path / "control.pt").exists()
    checkpoint = hostile_checkpoint(tmp_path / "evil.pt", "jobs.convert:main", {"argv": argv})
    for trust in ([], ["--trust-code", "jobs.convert"], ["--trust-code", "jobs"]):
        code, out, err = run_attribute(checkpoint, tmp_path, capsys, *trust)
        assert code != 0
        assert_one_line(err, "'jobs.convert'", "--trust-code", "this project's own code")
        assert not stolen.exists() and "checkpoint:" not in out


def test_a_checkpoint_cannot_run_jobs_convert_to_upload_a_local_file(tmp_path, capsys, capture_server) -> None:
    url, seen = capture_server
    options = tmp_path / "attacker-options.json"
    options.write_text(json.dumps({"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": url}}))
    argv = convert_argv(tmp_path, "s3://loot/private.pt", "--storage-options", f"@{options}")
    checkpoint = hostile_checkpoint(tmp_path / "evil.pt", "jobs.convert:main", {"argv": argv})
    code, _out, err = run_attribute(checkpoint, tmp_path, capsys)
    assert code != 0
    assert_one_line(err, "'jobs.convert'", "--trust-code")
    assert seen == []


def test_a_checkpoint_cannot_run_jobs_report_to_write_files(tmp_path, capsys) -> None:
    target = tmp_path / "written-by-the-checkpoint"
    checkpoint = hostile_checkpoint(tmp_path / "evil.pt", "jobs.report:main",
                                    {"argv": ["--maps", str(tmp_path / "maps"), "--output", str(target)]})
    code, _out, err = run_attribute(checkpoint, tmp_path, capsys, "--trust-code", "jobs.report")
    assert code != 0
    assert_one_line(err, "'jobs.report'", "--trust-code")
    assert not target.exists()


@pytest.mark.parametrize("module", ["PIL.__main__", "torch.utils.model_dump.__main__"])
def test_naming_a_main_module_imports_nothing(tmp_path, capsys, module) -> None:
    assert module not in sys.modules
    checkpoint = hostile_checkpoint(tmp_path / "main.pt", f"{module}:main")
    for trust in ([], ["--trust-code", module], ["--trust-code", module.split(".")[0]]):
        code, out, err = run_attribute(checkpoint, tmp_path, capsys, *trust)
        assert code != 0 and out == ""
        assert_one_line(err, repr(module), "--trust-code")
        assert module not in sys.modules


def test_an_installed_module_class_needs_trust_and_parameters(tmp_path, capsys) -> None:
    linear = hostile_checkpoint(tmp_path / "linear.pt", "torch.nn:Linear", {"in_features": 28, "out_features": 10})
    code, _out, err = run_attribute(linear, tmp_path, capsys)
    assert code != 0
    assert_one_line(err, "would import and run module 'torch.nn', which is not trusted", "--trust-code torch.nn")
    empty = hostile_checkpoint(tmp_path / "identity.pt", "torch.nn:Identity")
    code, _out, err = run_attribute(empty, tmp_path, capsys, "--trust-code", "torch.nn")
    assert code != 0
    assert_one_line(err, "builds Identity, which has no parameters")
    hub = hostile_checkpoint(tmp_path / "hub.pt", "torch.hub:load", {"repo_or_dir": str(tmp_path), "model": "x"})
    code, _out, err = run_attribute(hub, tmp_path, capsys, "--trust-code", "torch")
    assert code != 0
    assert_one_line(err, "'torch.hub:load' must be an nn.Module class, or a function defined in 'torch.hub' itself")


@pytest.mark.parametrize(("arch", "kwargs", "words"), [
    ("resnet8", {"num_classes": 10}, ["'num_classes'", "remove it from arch_kwargs"]),
    ("resnet8", {"width": 16}, ["arch_kwargs ['width'] do not fit resnet8("]),
    ("resnet18", {"weights": "IMAGENET1K_V1"}, ["['weights'] would make the loader fetch weights"]),
    ("resnet18", {"pretrained": True}, ["['pretrained'] would make the loader fetch weights"]),
    ("resnet18", {"num_classes": 10}, ["'num_classes'", "remove it from arch_kwargs"]),
    ("resnet18", {"unknown_kw": 1}, ["torchvision cannot build it with arch_kwargs ['unknown_kw']"]),
    ("timm:resnet10t", {"checkpoint_path": "PRIVATE"}, ["['checkpoint_path'] would make the loader"]),
    ("timm:resnet10t", {"cache_dir": "PRIVATE"}, ["['cache_dir'] would make the loader"]),
    ("timm:resnet10t", {"pretrained_cfg_overlay": {"file": "PRIVATE"}}, ["['pretrained_cfg_overlay']"]),
    ("timm:resnet10t", {"drop_rate": "PRIVATE"}, ["looks like a path or URL"]),
    ("timm:local-dir:PRIVATE_DIR", {}, ["hub and folder prefixes"]),
    ("timm:hf-hub:timm/resnet18.a1_in1k", {}, ["hub and folder prefixes"]),
])
def test_a_builtin_archs_kwargs_cannot_open_files(tmp_path, capsys, arch, kwargs, words) -> None:
    """Item 7's tracebacks (clashing or unknown arch_kwargs, timm local-dir: without config.json) and
    item 8's timm paths: one line each, and the named file is never opened."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "weights.pth").write_bytes(b"not weights")
    text = json.dumps(kwargs).replace("PRIVATE", str(private / "weights.pth"))
    checkpoint = hostile_checkpoint(tmp_path / "builtin.pt", arch.replace("PRIVATE_DIR", str(private)),
                                    json.loads(text), input_size=[32, 32])
    code, _out, err = run_attribute(checkpoint, tmp_path, capsys)
    assert code != 0
    assert_one_line(err, *words)


def test_ray_tasks_and_workers_import_only_what_the_driver_trusts(tmp_path, monkeypatch) -> None:
    """The model payload of jobs.perturb / jobs.sanity carries the driver's --trust-code, and the check
    that Ray workers can import the arch's module refuses an untrusted one before asking them."""
    from jobs.runtime.cluster import check_workers_import
    from jobs.evaluation.payload import model_payload, rebuild_model
    from models import ModelError, ModelSpec

    (tmp_path / "payload_usernets.py").write_text(USERNETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import payload_usernets

    spec = ModelSpec("payload_usernets:SmallNet", 10, 1, (28, 28), (0.3,), (0.3,), arch_kwargs={"width": 4})
    model = payload_usernets.SmallNet(width=4)
    monkeypatch.delitem(sys.modules, "payload_usernets")
    with pytest.raises(ModelError, match="module 'payload_usernets', which is not trusted"):
        rebuild_model(model_payload(model, spec))
    assert "payload_usernets" not in sys.modules
    rebuilt = rebuild_model(model_payload(model, spec, ("payload_usernets",)))
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ModelError, match=r"own code \('jobs.convert'\).*even with --trust-code"):
        check_workers_import("jobs.convert:main", ("jobs",))
    with pytest.raises(ModelError, match="module 'payload_usernets', which is not trusted"):
        check_workers_import("payload_usernets:SmallNet", ())


USERNETS = '''
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
'''


def test_an_untrusted_user_model_is_refused_before_anything_imports_it(tmp_path, capsys) -> None:
    """Without the operator's --trust-code the job refuses the checkpoint's module in one line and
    imports nothing; with it, the driver and every Ray worker import it
    (tests/jobs/test_user_models.py::test_a_users_model_class_runs_in_the_job, which also checks that
    run.json records the trust)."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "trusted_usernets.py").write_text(USERNETS)
    sys.path.insert(0, str(tmp_path / "code"))
    try:
        import trusted_usernets

        torch.save(trusted_usernets.SmallNet(width=6).state_dict(), tmp_path / "weights.pt")
        checkpoint = str(tmp_path / "user.pt")
        assert convert.main(["--state-dict", str(tmp_path / "weights.pt"), "--arch", "trusted_usernets:SmallNet",
                             "--arch-kwargs", '{"width": 6}', *SPEC_ARGS, "--output", checkpoint]) == 0
    finally:
        sys.path.remove(str(tmp_path / "code"))
        sys.modules.pop("trusted_usernets", None)
    code, _out, err = run_attribute(checkpoint, tmp_path, capsys)  # untrusted: refused, nothing imported
    assert code != 0 and "trusted_usernets" not in sys.modules
    assert_one_line(err, "module 'trusted_usernets', which is not trusted", "--trust-code trusted_usernets")