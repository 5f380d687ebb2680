"""Model checkpoints on any fsspec URL (a local path, ``s3://...``, ...).

A checkpoint is one ``torch.save`` file holding only plain types and tensors::

    {"format": "pathway-attribution.checkpoint", "version": 1,
     "spec": ModelSpec.to_dict(), "state_dict": {name: tensor},
     "fingerprint": {"modules": [...], "probe": [...]},   # models.fingerprint
     "metrics": {...JSON types...}, "torch_version": "...", "created": "ISO-8601 UTC"}

Format 1 grew without a new version number; a checkpoint written before an addition loads without it:
``fingerprint`` (f21e580) is then not checked, and the spec's ``arch_kwargs`` (f21e580), ``resize``,
``resize_size`` and ``background`` (dda3aa8) take their defaults (models.registry.ModelSpec).

It is read with ``torch.load(..., weights_only=True)`` only, so the file itself cannot run code.
Its ``spec.arch`` names code, so it is untrusted: an import path of the user's model code is
imported only when the caller trusts its module (``trust_code``, the jobs' ``--trust-code``), and
built-in archs' ``arch_kwargs`` cannot make their loader read files (models.trust). The fingerprint
is checked on save (the arch must rebuild the model being saved) and on load (it must still build
it). Writes are atomic: a local file is written under a temporary name in the same directory and
renamed; an object store gets the whole object in one PUT (objects appear whole or not at all).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from models.fingerprint import differences, fingerprint
from models.registry import ModelError, ModelSpec, build_model
from storage.io.fs import StorageError, StorageNotFound, open_fs, redact_url, storage_errors
from storage.io.location import put_url
from storage.io.retry import retrying

__all__ = ["CheckpointError", "CheckpointNotFound", "load_checkpoint", "load_metrics", "read_checkpoint",
           "save_checkpoint"]

FORMAT = "pathway-attribution.checkpoint"
VERSION = 1


class CheckpointError(StorageError):
    """A checkpoint that cannot be written or read; the message names the (redacted) URL."""


class CheckpointNotFound(CheckpointError, StorageNotFound):
    """No checkpoint at the URL."""


def _plain(value: Any, where: str = "metrics") -> Any:
    """JSON-able plain types (numpy / torch scalars converted), so weights_only can load them."""
    try:
        text = json.dumps(value, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where} must be JSON-serializable: {err}") from None
    return json.loads(text)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays, small tensors
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _safe(err: BaseException) -> str:
    """An error's message cut short (torch's unpickling errors run to many lines)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."


def _open_fs(url: str, storage_options: Mapping[str, Any] | None):
    try:
        return open_fs(url, storage_options)
    except CheckpointError:
        raise
    except StorageError as err:
        raise CheckpointError(str(err)) from None


def save_checkpoint(url: str, model: nn.Module, spec: ModelSpec, storage_options: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, Any] | None = None, *,
                    trust_code: str | Iterable[str] | None = ()) -> None:
    """Save ``model``'s weights with its ``spec`` (and optional JSON-able ``metrics``) to ``url``; the spec must
    rebuild the model, so an import-path arch's module must be in ``trust_code``."""
    if not isinstance(spec, ModelSpec):
        raise CheckpointError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    saved = fingerprint(model, spec.in_channels, spec.input_size)
    _check_rebuilds(spec, state, saved, f"the model to save as {redact_url(url)}", trust_code)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "state_dict": state,
        "fingerprint": saved,
        "metrics": _plain(dict(metrics or {})),
        "torch_version": str(torch.__version__),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    try:
        put_url(url, buf.getvalue(), storage_options)
    except StorageError as err:
        raise CheckpointError(f"cannot save checkpoint: {err}") from None


def _check_rebuilds(spec: ModelSpec, state: dict[str, torch.Tensor], saved: dict[str, Any], what: str,
                    trust_code: str | Iterable[str] | None) -> None:
    """Refuse a checkpoint whose spec would load the weights into another network."""
    try:
        rebuilt = build_model(spec, trust_code=trust_code)
        rebuilt.load_state_dict(state, strict=True)
    except ModelError as err:
        raise CheckpointError(f"{what}: {err}") from None
    except RuntimeError as err:
        raise CheckpointError(f"{what}: its weights do not fit arch {spec.arch!r}: {_safe(err)}") from None
    problem = differences(saved, rebuilt, spec.in_channels, spec.input_size)
    if problem:
        raise CheckpointError(f"{what} is not the network arch {spec.arch!r} builds ({problem}); name the arch that "
                              "builds it, e.g. an import path package.module:ClassOrFactory with arch_kwargs")


def read_checkpoint(url: str, storage_options: Mapping[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's raw dict (spec as a dict, state_dict, metrics), checked for format, plus the
    ``sha256`` of the file's bytes."""
    shown = redact_url(url)
    fs, path = _open_fs(url, storage_options)
    try:
        with storage_errors(url, "read checkpoint", storage_options):
            if retrying(lambda: fs.isdir(path), f"checking {shown}"):
                raise CheckpointError(f"checkpoint URL is a directory, not a file: {shown}")
            data = retrying(lambda: fs.cat_file(path), f"reading {shown}")
    except StorageNotFound as err:
        raise CheckpointNotFound(f"checkpoint not found: {shown} ({err})") from None
    except CheckpointError:
        raise
    except StorageError as err:
        raise CheckpointError(str(err)) from None
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
            AttributeError, KeyError, UnicodeDecodeError) as err:
        if isinstance(err, pickle.UnpicklingError):
            found = re.search(r"GLOBAL (\S+)", str(err))
            detail = f"it holds {found.group(1) if found else 'objects'}, not only plain types and tensors; " \
                     "refusing to unpickle it"
        else:
            detail = f"the file is not a torch checkpoint: {type(err).__name__}: {_safe(err)}"
        raise CheckpointError(f"not a checkpoint: {shown} ({detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"not a checkpoint: {shown} (a torch file, but not in format {FORMAT!r}; "
                              "was it written by storage.checkpoints.save_checkpoint?)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"checkpoint {shown} has format version {version!r}; this code reads up to {VERSION}")
    for key in ("spec", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {shown} is damaged: {key!r} is missing or not a dict")
    payload["sha256"] = hashlib.sha256(data).hexdigest()  # what the file holds, whatever its URL
    return payload


def load_checkpoint(url: str, storage_options: Mapping[str, Any] | None = None,
                    map_location: str | torch.device = "cpu",
                    trust_code: str | Iterable[str] | None = ()) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model saved at ``url``; returns ``(model in eval mode, spec)``.

    The checkpoint is untrusted: when its arch is an import path ``package.module:Name``, the module is
    imported only if ``trust_code`` names it (or a package above it); otherwise a :class:`CheckpointError`
    names the module, before anything is imported."""
    model, spec, _ = load_checkpoint_with_digest(url, storage_options, map_location, trust_code)
    return model, spec


def load_checkpoint_with_digest(url: str, storage_options: Mapping[str, Any] | None = None,
                                map_location: str | torch.device = "cpu",
                                trust_code: str | Iterable[str] | None = ()) -> tuple[nn.Module, ModelSpec, str]:
    """:func:`load_checkpoint`, plus the SHA-256 of the file (what binds an output to its model)."""
    shown = redact_url(url)
    payload = read_checkpoint(url, storage_options, map_location)
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        model = build_model(spec, trust_code=trust_code)
    except ModelError as err:
        raise CheckpointError(f"checkpoint {shown}: {err}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {shown}: weights do not fit arch {spec.arch!r}: {_safe(err)}") from None
    if payload.get("fingerprint"):  # checkpoint format 1 as written before fingerprints (f21e580) has none
        problem = differences(payload["fingerprint"], model, spec.in_channels, spec.input_size)
        if problem:
            raise CheckpointError(f"checkpoint {shown}: arch {spec.arch!r} no longer builds the saved network "
                                  f"({problem}); load it with the model code that saved it")
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model = model.to(map_location)
    return model.eval(), spec, payload["sha256"]


def load_metrics(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metrics stored inside a checkpoint (a dict; anything else is a damaged checkpoint)."""
    metrics = read_checkpoint(url, storage_options).get("metrics") or {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"checkpoint {redact_url(url)} is damaged: 'metrics' is not a dict")
    return dict(metrics)
