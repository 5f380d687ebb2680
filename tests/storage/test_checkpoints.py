"""Checkpoints: round trip on local disk and S3, weights-only loading, clear errors."""

from __future__ import annotations

import io
import os

import fsspec
import numpy as np
import pytest
import torch

from models import ModelSpec, build_model, fashion_mnist_spec
from storage.checkpoints import (
    CheckpointError,
    CheckpointNotFound,
    load_checkpoint,
    load_metrics,
    read_checkpoint,
    save_checkpoint,
)
from tests.nets import USER_NET_CLASS


def _trained_looking_model(spec: ModelSpec) -> torch.nn.Module:
    """A model whose every parameter and buffer differs from a fresh init (BN stats too)."""
    model = build_model(spec)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(torch.rand_like(t) * 0.1)
    model.train()
    model(torch.randn(8, spec.in_channels, *spec.input_size))  # moves running stats, num_batches_tracked
    return model


def test_round_trip_gives_identical_outputs(storage_root: tuple[str, dict]) -> None:
    root, options = storage_root
    spec = fashion_mnist_spec()
    model = _trained_looking_model(spec).eval()
    url = f"{root}/models/net.pt"
    save_checkpoint(url, model, spec, storage_options=options, metrics={"test_accuracy": np.float32(0.9), "epochs": 3})

    loaded, loaded_spec = load_checkpoint(url, storage_options=options)
    assert loaded_spec == spec
    assert not loaded.training
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    metrics = load_metrics(url, storage_options=options)
    assert metrics["epochs"] == 3 and metrics["test_accuracy"] == pytest.approx(0.9)


def test_overwrite_replaces_whole_file_and_leaves_no_temp(tmp_path) -> None:
    spec = fashion_mnist_spec()
    url = str(tmp_path / "deep" / "dir" / "net.pt")
    save_checkpoint(url, build_model(spec), spec)
    second = _trained_looking_model(spec)
    save_checkpoint(url, second, spec)
    assert sorted(os.listdir(tmp_path / "deep" / "dir")) == ["net.pt"]
    loaded, _ = load_checkpoint(url)
    assert torch.equal(loaded.conv1.weight, second.conv1.weight)


def test_checkpoint_holds_only_plain_types(tmp_path) -> None:
    spec = fashion_mnist_spec()
    url = str(tmp_path / "net.pt")
    save_checkpoint(url, build_model(spec), spec, metrics={"curve": [[1, np.float64(0.5)]]})
    with open(url, "rb") as fh:
        payload = torch.load(fh, weights_only=True)
    assert payload["spec"] == spec.to_dict()
    assert payload["metrics"] == {"curve": [[1, 0.5]]}
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


def test_missing_checkpoint_names_url(storage_root: tuple[str, dict]) -> None:
    root, options = storage_root
    with pytest.raises(CheckpointNotFound, match="checkpoint not found: .*nope.pt") as info:
        load_checkpoint(f"{root}/nope.pt", storage_options=options)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(CheckpointError, match="directory"):
        save_checkpoint(f"{root}/d/net.pt", build_model(fashion_mnist_spec()), fashion_mnist_spec(),
                        storage_options=options)
        load_checkpoint(f"{root}/d", storage_options=options)


def test_not_a_checkpoint(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a zip")
    with pytest.raises(CheckpointError, match=f"not a checkpoint: {junk}"):
        load_checkpoint(str(junk))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a checkpoint.*format"):
        load_checkpoint(str(other))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path) -> None:
    url = tmp_path / "evil.pt"
    torch.save({"format": "pathway-attribution.checkpoint", "version": 1, "evil": _Evil()}, url)
    with pytest.raises(CheckpointError, match="not a checkpoint.*posix.system.*refusing"):
        load_checkpoint(str(url))


def test_unknown_arch_is_named(tmp_path) -> None:
    spec = fashion_mnist_spec()
    url = str(tmp_path / "net.pt")
    save_checkpoint(url, build_model(spec), spec)
    payload = read_checkpoint(url)
    payload["spec"]["arch"] = "resnet9000"
    buf = io.BytesIO()
    torch.save(payload, buf)
    with open(url, "wb") as fh:
        fh.write(buf.getvalue())
    with pytest.raises(CheckpointError, match=f"{url}.*unknown arch 'resnet9000'"):
        load_checkpoint(url)


def test_weights_that_do_not_fit(tmp_path) -> None:
    spec = fashion_mnist_spec()
    url = str(tmp_path / "net.pt")
    other = build_model(spec.replace(num_classes=3, class_names=[]))
    with pytest.raises(CheckpointError, match="weights do not fit arch 'resnet8'"):
        save_checkpoint(url, other, spec)  # refused when saving
    payload = {"format": "pathway-attribution.checkpoint", "version": 1, "spec": spec.to_dict(),
               "state_dict": other.state_dict(), "metrics": {}}
    torch.save(payload, url)  # written by other code
    with pytest.raises(CheckpointError, match="weights do not fit arch 'resnet8'"):
        load_checkpoint(url)


def test_a_model_its_arch_does_not_build_is_refused_on_save(tmp_path) -> None:
    """A ResNet-18 trained without its max-pool loads into a stock ResNet-18 with strict=True: the
    structural fingerprint names the difference instead."""
    spec = ModelSpec("resnet18", 10, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    model = build_model(spec)
    model.maxpool = torch.nn.Identity()
    with pytest.raises(CheckpointError, match=r"not the network arch 'resnet18' builds.*maxpool is Identity in the "
                                              r"saved network, MaxPool2d in the built one"):
        save_checkpoint(str(tmp_path / "r18.pt"), model, spec)


USER_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.act = nn.{act}()
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).{pool}(dim=(2, 3)))
"""


@pytest.mark.parametrize(("name", "change", "match"), [
    ("usernet_act", {"act": "GELU"}, "its modules differ: act is ReLU in the saved network, GELU in the built one"),
    ("usernet_pool", {"pool": "sum"}, "forward pass changed"),
])
def test_a_checkpoint_whose_arch_changed_since_saving_is_refused_on_load(tmp_path, monkeypatch, name, change,
                                                                         match) -> None:
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the module is rewritten within the same second
    source = tmp_path / f"{name}.py"
    source.write_text(USER_NET.format(act="ReLU", pool="mean"))
    spec = ModelSpec(f"{name}:Net", 10, 1, (8, 8), (0.5,), (0.25,), arch_kwargs={"width": 4})
    url = str(tmp_path / "user.pt")
    save_checkpoint(url, importlib.import_module(name).Net(width=4), spec, trust_code=[name])
    assert type(load_checkpoint(url, trust_code=[name])[0]).__name__ == "Net"
    source.write_text(USER_NET.format(**{"act": "ReLU", "pool": "mean", **change}))  # the user edits the model
    monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    with pytest.raises(CheckpointError, match=f"no longer builds the saved network.*{match}"):
        load_checkpoint(url, trust_code=[name])


def test_errors_never_show_credentials(s3_server) -> None:
    options = {**s3_server.storage_options, "secret": "wrong-secret-xyz"}
    url = s3_server.url("creds", "net.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(url, storage_options=options)
    text = str(info.value)
    assert url in text
    assert "wrong-secret-xyz" not in text and s3_server.key not in text
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(url, build_model(fashion_mnist_spec()), fashion_mnist_spec(), storage_options=options)
    assert "wrong-secret-xyz" not in str(info.value)


def test_s3_object_is_written_in_one_put(s3_server) -> None:
    """No temp object is left beside the checkpoint on an object store."""
    spec = fashion_mnist_spec()
    prefix = s3_server.url("one-put")
    save_checkpoint(f"{prefix}/net.pt", build_model(spec), spec, storage_options=s3_server.storage_options)
    fs, path = fsspec.core.url_to_fs(prefix, **s3_server.storage_options)
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path)] == ["net.pt"]


TRUSTED_NET = """
from torch import nn

IMPORTED = True

""" + USER_NET_CLASS


def _user_checkpoint(tmp_path, monkeypatch, name: str) -> tuple[str, ModelSpec]:
    """A checkpoint of a user's model class, saved with its module trusted; the module then forgotten."""
    import importlib
    import sys

    (tmp_path / f"{name}.py").write_text(TRUSTED_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec(f"{name}:Net", 10, 1, (8, 8), (0.5,), (0.25,), arch_kwargs={"width": 4})
    url = str(tmp_path / "user.pt")
    with pytest.raises(CheckpointError, match=f"would import and run module '{name}'.*--trust-code {name}"):
        save_checkpoint(url, importlib.import_module(name).Net(width=4), spec)  # saving rebuilds it: trust too
    save_checkpoint(url, importlib.import_module(name).Net(width=4), spec, trust_code=name)
    monkeypatch.delitem(sys.modules, name)
    return url, spec


def test_a_checkpoints_import_path_is_not_imported_unless_trusted(tmp_path, monkeypatch) -> None:
    import sys

    url, spec = _user_checkpoint(tmp_path, monkeypatch, "usernet_untrusted")
    for trust in ((), ["other"], ["usernet"], "usernet_untrusted.sub"):
        with pytest.raises(CheckpointError, match=rf"{url}: arch 'usernet_untrusted:Net' would import and run module "
                                                  r"'usernet_untrusted', which is not trusted; pass --trust-code "
                                                  r"usernet_untrusted"):
            load_checkpoint(url, trust_code=trust)
        assert "usernet_untrusted" not in sys.modules
    model, loaded = load_checkpoint(url, trust_code=["usernet_untrusted"])
    assert type(model).__name__ == "Net" and loaded == spec and sys.modules["usernet_untrusted"].IMPORTED


def test_trusting_a_package_trusts_its_submodules(tmp_path, monkeypatch) -> None:
    import importlib

    (tmp_path / "userpkg_ck").mkdir()
    (tmp_path / "userpkg_ck" / "__init__.py").write_text("")
    (tmp_path / "userpkg_ck" / "nets.py").write_text(TRUSTED_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec("userpkg_ck.nets:Net", 10, 1, (8, 8), (0.5,), (0.25,))
    url = str(tmp_path / "pkg.pt")
    save_checkpoint(url, importlib.import_module("userpkg_ck.nets").Net(), spec, trust_code=["userpkg_ck"])
    assert type(load_checkpoint(url, trust_code="userpkg_ck")[0]).__name__ == "Net"
    assert type(load_checkpoint(url, trust_code="userpkg_ck.nets")[0]).__name__ == "Net"


@pytest.mark.parametrize(("change", "match"), [
    ({"arch_kwargs": {"width": 4, "depth": 2}}, r"arch_kwargs \['depth', 'width'\] do not fit Net\(width: int = 4\)"),
    ({"arch_kwargs": {"width": [4]}}, r"failed to build with arch_kwargs \['width'\]: TypeError"),
    ({"arch": "jobs.convert:main"}, r"this project's own code \('jobs.convert'\).*even with --trust-code"),
])
def test_a_trusted_checkpoints_arch_kwargs_are_checked_before_the_call(tmp_path, monkeypatch, change, match) -> None:
    url, spec = _user_checkpoint(tmp_path, monkeypatch, "usernet_kwargs")
    payload = read_checkpoint(url)
    payload["spec"].update(change)
    torch.save(payload, url)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(url, trust_code=["usernet_kwargs", "jobs"])


@pytest.mark.parametrize(("arch", "kwargs", "match"), [
    ("resnet8", {"num_classes": 10}, "arch_kwargs sets 'num_classes', which the spec's num_classes sets"),
    ("resnet18", {"weights": "IMAGENET1K_V1"}, r"arch_kwargs \['weights'\] would make the loader fetch weights"),
    ("resnet18", {"pretrained": True}, r"arch_kwargs \['pretrained'\] would make the loader fetch weights"),
    ("resnet18", {"no_such": 1}, r"torchvision cannot build it with arch_kwargs \['no_such'\]"),
    ("timm:resnet10t", {"checkpoint_path": "/etc/passwd"}, r"\['checkpoint_path'\] would make the loader"),
    ("timm:resnet10t", {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}, r"\['pretrained_cfg_overlay'\]"),
    ("timm:resnet10t", {"in_chans": 3}, "arch_kwargs sets 'in_chans', which the spec's in_channels sets"),
    ("timm:local-dir:/etc", {}, r"hub and folder prefixes \(hf-hub:, local-dir:\)"),
    ("timm:hf-hub:timm/resnet18.a1_in1k", {}, r"hub and folder prefixes"),
    ("timm:hf_hub:timm/resnet18", {}, r"hub and folder prefixes"),
])
def test_a_builtin_archs_kwargs_cannot_load_files(tmp_path, arch, kwargs, match) -> None:
    """A checkpoint written by other code, whose built-in arch asks its loader for files: one line."""
    spec = ModelSpec("resnet8", 10, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    url = str(tmp_path / "net.pt")
    save_checkpoint(url, build_model(spec), spec)
    payload = read_checkpoint(url)
    payload["spec"].update(arch=arch, arch_kwargs=kwargs)
    torch.save(payload, url)
    with pytest.raises(CheckpointError, match=f"checkpoint {url}: .*{match}") as info:
        load_checkpoint(url)
    assert "\n" not in str(info.value)
