"""Turn a plain PyTorch ``state_dict`` file into a checkpoint the jobs can run.

    python -m jobs.convert --state-dict mynet_weights.pt --arch mynets:SmallNet \\
        --arch-kwargs '{"num_classes": 10, "width": 16}' --num-classes 10 --in-channels 1 \\
        --input-size 28 --mean 0.286 --std 0.353 --class-names @classes.txt --output ckpt.pt
    PYTHONPATH=. python -m jobs.attribute --checkpoint ckpt.pt --trust-code mynets

A checkpoint is the weights plus what the jobs need to rebuild and feed the model: the arch (a
torchvision name, ``timm:<name>``, or your own ``package.module:ClassOrFactory``, called with
``--arch-kwargs``), the input size and channels, the normalization (per channel, for pixels in
[0, 1]) and the class names. The weights file is read with ``torch.load(weights_only=True)``;
it may be a bare state_dict, or a dict holding one under ``state_dict`` or ``model``;
DataParallel's ``module.`` prefixes are dropped. The arch must rebuild exactly the network the
weights came from (strict loading, and a structural fingerprint stored in the checkpoint).

Tested by tests/jobs/test_user_models.py and tests/security/test_code.py.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from typing import Any

from jobs.runtime.cli import (JobError, job_parser, json_object, positive_int, run_main, storage_flags, storage_options_from,
                      trust_flags, trust_of)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, one per channel, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W or one size, got {text!r}")
    return parts[0], parts[1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.convert", __doc__, [storage_flags(), trust_flags()])
    p.add_argument("--state-dict", required=True, help="the weights file (local path or URL)")
    p.add_argument("--arch", required=True, help="torchvision name, timm:<name>, or package.module:ClassOrFactory")
    p.add_argument("--arch-kwargs", type=json_object, default={}, metavar="JSON",
                   help="keyword arguments the arch is called with")
    p.add_argument("--num-classes", type=positive_int, required=True,
                   help="classes the model predicts (its logits' width); --class-names must name as many")
    p.add_argument("--in-channels", type=positive_int, default=3,
                   help="channels of the model's input: 1 for grayscale, 3 for RGB (images are converted to it)")
    p.add_argument("--input-size", type=_size, required=True, help="H,W (or one size) of the model's input")
    p.add_argument("--mean", type=_floats, required=True, help="per-channel mean of pixels in [0, 1]")
    p.add_argument("--std", type=_floats, required=True, help="per-channel std of pixels in [0, 1]")
    p.add_argument("--class-names", default=None, help="comma-separated names, or @file with one per line")
    p.add_argument("--output", required=True, help="checkpoint URL to write")
    return p.parse_args(argv)


def class_names(text: str | None) -> list[str]:
    if not text:
        return []
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                return [line.strip() for line in fh if line.strip()]
        except OSError as err:
            raise JobError(f"cannot read --class-names file {text[1:]!r}: {err.strerror}") from None
    return [name.strip() for name in text.split(",")]


def read_state_dict(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The weights at ``url`` as a plain state_dict (unwrapped, without DataParallel prefixes)."""
    import torch

    from storage.io.fs import StorageError, open_fs, storage_errors

    try:
        fs, path = open_fs(url, options)
        with storage_errors(url, "read", options):
            data = fs.cat_file(path)
    except StorageError as err:
        raise JobError(f"--state-dict: {err}") from None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise JobError(f"--state-dict {url}: not a weights file torch can load with weights_only=True "
                       f"({type(err).__name__}: {str(err)[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise JobError(f"--state-dict {url}: holds no state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def run(args: argparse.Namespace) -> int:
    from models.registry import ModelSpec, build_model
    from storage.checkpoints import save_checkpoint
    from storage.io.fs import redact_url

    options = storage_options_from(args.storage_options)
    spec = ModelSpec(arch=args.arch, num_classes=args.num_classes, in_channels=args.in_channels,
                     input_size=args.input_size, mean=args.mean, std=args.std,
                     class_names=class_names(args.class_names), arch_kwargs=args.arch_kwargs)
    state = read_state_dict(args.state_dict, options)
    trust = trust_of(args, args.arch)  # --arch is the operator's own: its module is trusted
    model = build_model(spec, trust_code=trust)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise JobError(f"the weights do not fit arch {spec.arch!r} with {spec.arch_kwargs}: "
                       f"{' '.join(str(err).split())[:400]}") from None
    save_checkpoint(args.output, model, spec, storage_options=options,
                    metrics={"converted_from": redact_url(args.state_dict)}, trust_code=trust)
    print(f"checkpoint: {redact_url(args.output)} (arch {spec.arch}, {spec.num_classes} classes, "
          f"{spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]} inputs)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.convert", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
