"""Train a classifier on a dataset source and write its checkpoint.

    python -m jobs.train                                   # ResNet-8 on Fashion-MNIST, to outputs/models/
    python -m jobs.train --seed 0 --threads 1 --output models/weights/resnet8-fashion-mnist.pt   # the shipped one
    python -m jobs.train --epochs 2 --limit 10000 --output s3://bucket/models/fm.pt \\
        --storage-options '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:8333"}}'

Reads the train and test splits through ``storage.sources``, trains with
``models.training.train_classifier``, evaluates on the test split, and writes next to
each other (any fsspec URL):

- ``<output>``: the checkpoint (weights + ModelSpec + metrics; ``storage.checkpoints``);
- ``<output>.metrics.json``: the metrics, hyperparameters and data source, the command, and the
  versions of python, torch, numpy and the project's git commit (also inside the checkpoint);
- ``<output>.metrics.png``: train loss and train / test accuracy per epoch.

The spec comes from the data: class names from the source, channels and size from the
images (``--input-size`` resizes), normalization from the train split's per-channel
mean / std (ImageNet's with ``--pretrained``). Exits 2 on bad arguments and 1, with one
line naming the problem, when the data, the model or the output cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.runtime.cli import (JobError, device_name, job_parser, json_object, non_negative_float, positive_float,
                      positive_int, run_main, source_flags, source_policy_of, storage_flags, storage_options_from,
                      trust_flags, trust_of)

# Not the shipped DEFAULT_CHECKPOINT: a retrain replaces it only when asked to (--output DEFAULT_CHECKPOINT).
DEFAULT_OUTPUT = "outputs/models/resnet8-fashion-mnist.pt"
# Defaults chosen to pass 90 % Fashion-MNIST test accuracy in a few CPU minutes (2 cores): what they
# reach per epoch, and in how long, is in benchmarks/RESULTS.md, "Training" (benchmarks/bench_train.py).
DEFAULT_EPOCHS = 4
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 0.1


def _input_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W or one size, got {text!r}") from None
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W or one size, got {text!r}")
    return size  # type: ignore[return-value]


def arch_name(text: str) -> str:
    """An arch that resolves here (an import path is imported now, so a typo fails at once; the operator
    names it, so its module is trusted)."""
    from models.archs import resolve
    from models.registry import ModelError

    try:
        resolve(text, trust_code=[text.partition(":")[0]] if ":" in text and not text.startswith("timm:") else [])
    except ModelError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from models.training import OPTIMIZERS, SCHEDULES

    p = job_parser("python -m jobs.train", __doc__, [storage_flags(), trust_flags(), source_flags()])
    p.add_argument("--source", default="fashion-mnist", help="dataset source name or URL (storage.sources)")
    p.add_argument("--test-split", default="test", help="split to evaluate on; 'none' to skip evaluation")
    p.add_argument("--arch", default="resnet8", metavar="ARCH", type=arch_name,
                   help="resnet8, a torchvision classification model (resnet18, densenet121, convnext_tiny, ...), "
                        "timm:<name>, or your own package.module:ClassOrFactory (on PYTHONPATH)")
    p.add_argument("--arch-kwargs", type=json_object, default={}, metavar="JSON",
                   help="keyword arguments of the arch's constructor, e.g. '{\"width\": 16}'")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights (needs network)")
    p.add_argument("--input-size", type=_input_size, default=None, help="resize images to H,W (default: as stored)", metavar="H,W")
    p.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="passes over the train set")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="samples per step")
    p.add_argument("--lr", type=positive_float, default=DEFAULT_LR, help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd: Nesterov momentum 0.9")
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle", help="learning-rate schedule")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="on weights, not on BN or biases")
    p.add_argument("--augment", action="store_true", help="random crop with 2 px padding (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seeds init, data order, augmentation and --limit")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on a seeded random subset of this size (only it and the statistics' share are decoded)")
    p.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: $OMP_NUM_THREADS if set, else every CPU this process may use)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="checkpoint URL (local path, s3://...)")
    p.add_argument("--nondeterministic", action="store_true",
                   help="on CUDA, allow cuDNN autotuning: faster, but a rerun may differ in the last bits")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _open(name: str, split: str, options: dict[str, Any], policy: Any = None):
    from storage.sources import open_source

    return open_source(name, split=split, storage_options=options, policy=policy)


#: The most images the channel statistics are taken from: every ``N // STATS_SAMPLES``-th of the source.
STATS_SAMPLES = 20_000


def stats_stride(n: int, max_samples: int | None = None) -> int:
    """The channel statistics take every ``stats_stride(n)``-th of ``n`` images: no more than about
    ``max_samples`` (default :data:`STATS_SAMPLES`, read when called)."""
    return max(1, n // (STATS_SAMPLES if max_samples is None else max_samples))


def limit_subset(n: int, limit: int, seed: int) -> np.ndarray:
    """The seeded ``--limit`` subset of ``n`` samples, as sorted indices."""
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def channel_stats(images: np.ndarray, max_samples: int = STATS_SAMPLES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std of uint8 ``[N, H, W, C]`` pixels scaled to [0, 1] (4 decimals), over every
    ``N // max_samples``-th image. Counted as a histogram of the 256 byte values per channel, about 4 M
    pixels at a time: exact, and the memory it takes does not grow with the images (a float64 copy of
    20,000 RGB images at 224 px would take 24 GB)."""
    sample = images[::stats_stride(images.shape[0], max_samples)]
    channels = sample.shape[-1]
    counts = np.zeros((channels, 256), np.int64)
    chunk = max(1, (1 << 22) // max(1, int(np.prod(sample.shape[1:]))))  # about 4 M pixels at a time
    for start in range(0, sample.shape[0], chunk):
        pixels = sample[start:start + chunk].reshape(-1, channels)
        for c in range(channels):
            counts[c] += np.bincount(pixels[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1).astype(np.float64)
    mean = counts @ values / total
    var = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    std = np.maximum(np.sqrt(var), 1e-3)  # a constant channel must not divide by zero
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


@dataclass(frozen=True)
class TrainingSet:
    """What training reads of the train split."""

    images: np.ndarray  # uint8 [N, H, W, C], the seeded ``--limit`` subset or every sample
    labels: np.ndarray  # int64 [N]
    stats_images: np.ndarray  # the images the channel statistics are taken from
    classes: list[str]  # the source's class names, else "0".."max label" over the whole split
    listed: int  # samples in the split


def training_set(source: Any, limit: int | None, seed: int) -> TrainingSet:
    """The train split as training uses it.

    With ``limit`` under the split's size only what is used is decoded: the seeded subset and every
    ``N // STATS_SAMPLES``-th sample, so ``--limit 2000`` of a folder of a million JPEGs reads about
    22,000 of them. The subset and the statistics are those of decoding everything as long as every
    sample decodes (one that does not is logged and skipped, and the subset is that much smaller). A
    source that names no classes is read whole: its classes are its labels up to the largest."""
    from storage.sources import load_arrays

    refs = source.list()
    named = [str(c) for c in getattr(source, "classes", None) or []]
    if limit is not None and limit < len(refs) and named:
        keep = limit_subset(len(refs), limit, seed)
        stats = np.arange(0, len(refs), stats_stride(len(refs)))
        images, labels, ids = load_arrays(source, [refs[i] for i in np.union1d(keep, stats)])
        row = {sample_id: k for k, sample_id in enumerate(ids)}

        def rows(picks: np.ndarray) -> list[int]:
            """Where the decoded ones of ``picks`` (indices into the listing) lie among ``images``."""
            return [row[refs[i].sample_id] for i in picks if refs[i].sample_id in row]

        train_rows = rows(keep)
        return TrainingSet(images[train_rows], labels[train_rows], images[rows(stats)], named, len(refs))
    images, labels, _ids = load_arrays(source, refs)
    classes = named or [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    stats_images = images[::stats_stride(len(images))]
    if limit is not None and limit < len(images):
        keep = limit_subset(len(images), limit, seed)
        images, labels = images[keep], labels[keep]
    return TrainingSet(images, labels, stats_images, classes, len(refs))


def make_spec(args: argparse.Namespace, data: TrainingSet):
    """The checkpoint's spec: the training images' channels and size, the classes, and the channel
    statistics (ImageNet's for a pretrained model on RGB images)."""
    from models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

    images = data.images
    if images.ndim != 4 or images.dtype != np.uint8:
        raise JobError(f"source {args.source!r} gave images of shape {images.shape} and dtype {images.dtype}; "
                       "expected uint8 [N, H, W, C]")
    channels = images.shape[-1]
    if args.pretrained and channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = channel_stats(data.stats_images, max_samples=max(1, len(data.stats_images)))
    return ModelSpec(arch=args.arch, num_classes=len(data.classes), in_channels=channels,
                     input_size=args.input_size or tuple(images.shape[1:3]), mean=mean, std=std,
                     class_names=data.classes, arch_kwargs=args.arch_kwargs)


def provenance(argv: Sequence[str] | None) -> dict[str, Any]:
    """What made a checkpoint, for its metrics: the command (an inline ``--storage-options`` value
    and URL credentials redacted), the versions of python, torch and numpy, and the project's git
    commit (``git_dirty``: tracked files differed from it; both None outside a git checkout)."""
    import platform
    import shlex
    import subprocess
    from pathlib import Path

    import torch

    from storage.io.fs import redact_url

    words: list[str] = []
    for i, word in enumerate(argv or []):
        previous = argv[i - 1] if i else ""
        if previous == "--storage-options" and not word.startswith("@"):
            word = "<redacted>"
        elif word.startswith("--storage-options=") and not word.startswith("--storage-options=@"):
            word = "--storage-options=<redacted>"
        words.append(redact_url(word))
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        def git(*cmd: str) -> str:
            return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()

        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "command": None if argv is None else shlex.join(["python", "-m", "jobs.train", *words]),
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "numpy": np.__version__, "git_commit": commit, "git_dirty": dirty},
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from jobs.reporting.plots import training_curves
    from models.registry import check_input_size
    from models.training import resolve_device, train_classifier
    from storage.checkpoints import redact_url, save_checkpoint
    from storage.io.location import put_url
    from storage.sources import load_arrays

    options = storage_options_from(args.storage_options)
    device = resolve_device(args.device)
    started = time.time()

    train_src = _open(args.source, "train", options, source_policy_of(args))
    data = training_set(train_src, args.limit, args.seed)
    if data.images.shape[0] == 0:
        raise JobError(f"source {args.source!r} has no training samples")
    spec = make_spec(args, data)
    images, labels, n_total = data.images, data.labels, data.listed

    test_images = test_labels = None
    if args.test_split.lower() != "none":
        test_src = _open(args.source, args.test_split, options, source_policy_of(args))
        test_images, test_labels, _ = load_arrays(test_src)
        test_images, test_labels = np.asarray(test_images), np.asarray(test_labels)
    load_seconds = time.time() - started
    # A bad --arch or --arch-kwargs is one line here, before the first message (on meta: no memory, no math).
    check_input_size(spec, trust_code=trust_of(args, args.arch))

    print(f"training {spec.arch} on {redact_url(args.source)} ({images.shape[0]} of {n_total} train images"
          f"{'' if test_images is None else f', {test_images.shape[0]} {args.test_split} images'}) "
          f"on {device}: {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}",
          file=sys.stderr, flush=True)
    model, metrics = train_classifier(
        spec, images, labels, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=device, test_images=test_images, test_labels=test_labels, progress=not args.no_progress,
        optimizer=args.optimizer, schedule=args.schedule, weight_decay=args.weight_decay, augment=args.augment,
        num_threads=args.threads, pretrained=args.pretrained, deterministic=not args.nondeterministic,
        trust_code=trust_of(args, args.arch),
    )
    metrics.update({
        "source": redact_url(args.source), "test_split": None if test_images is None else args.test_split,
        "limit": args.limit, "test_samples": None if test_images is None else int(test_images.shape[0]),
        "load_seconds": load_seconds, "spec": spec.to_dict(), "checkpoint": redact_url(args.output),
        "pretrained": args.pretrained, "torch_version": str(torch.__version__),
        **provenance(getattr(args, "argv", None)),
    })
    save_checkpoint(args.output, model.cpu(), spec, storage_options=options, metrics=metrics,
                    trust_code=trust_of(args, args.arch))
    put_url(f"{args.output}.metrics.json",
                       (json.dumps(metrics, indent=2, default=float) + "\n").encode(), options)
    put_url(f"{args.output}.metrics.png", training_curves(metrics), options)
    return metrics


def run(args: argparse.Namespace) -> int:
    from storage.io.fs import redact_url
    from storage.io.outputs import check_apart
    from storage.sources import source_location

    # The checkpoint and its .metrics.png inside an image folder would become samples of it.
    check_apart(args.output, {"--source": source_location(args.source)})
    try:
        metrics = train(args)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (jobs.runtime.stopping): one line, no traceback
        from jobs.runtime.stopping import as_interrupted

        raise as_interrupted(err, "no checkpoint written (it is written when training ends); rerun the same "
                                  "command to train again") from None
    acc = metrics["test_accuracy"]
    print(f"{metrics['arch']} on {metrics['source']}: "
          f"test accuracy {'n/a' if acc is None else f'{acc:.4f}'}, "
          f"final train loss {metrics['train_loss'][-1]:.4f}, {metrics['epochs']} epochs in "
          f"{metrics['seconds']:.1f} s on {metrics['device']} ({metrics['num_threads']} threads)\n"
          f"checkpoint: {redact_url(args.output)} (+ .metrics.json, .metrics.png)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the metrics (provenance)
    return run_main("jobs.train", run, args)


if __name__ == "__main__":
    sys.exit(main())
