"""Train and evaluate a classifier on in-memory arrays. Pure torch, no I/O.

``jobs.train`` uses this on a dataset as read; ROAR calls the same function on images
with pixels removed, so it takes raw uint8 ``[N, H, W, C]`` arrays plus int labels and
applies the spec's preprocessing per batch.

Determinism: the same seed gives the same model and metrics on the same device and
thread count. The weights' initialization is seeded inside a forked RNG (the caller's
global RNG state is left alone), and the data order and augmentation draw from their
own ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.determinism import deterministic_kernels
from models.preprocess import preprocess
from models.registry import ModelError, ModelSpec, build_model

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` / None -> cuda if available, else mps, else cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


@contextlib.contextmanager
def cpu_threads(num_threads: int | None = None) -> Iterator[int]:
    """Use ``num_threads`` intra-op threads for the block, then restore the old count.

    By default: keep what the process was given when ``OMP_NUM_THREADS`` is set (Ray
    sets it to an actor's CPU share), else use every CPU this process may run on.
    """
    old = torch.get_num_threads()
    if num_threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            num_threads = old
        else:
            try:
                num_threads = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                num_threads = os.cpu_count() or old
    num_threads = max(1, int(num_threads))
    torch.set_num_threads(num_threads)
    try:
        yield num_threads
    finally:
        torch.set_num_threads(old)


def _check_arrays(spec: ModelSpec, images: Any, labels: Any, what: str) -> tuple[np.ndarray | torch.Tensor, torch.Tensor]:
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise ModelError(f"{what} images must be a uint8 numpy array or tensor, got {type(images).__name__}")
    if images.dtype not in (np.uint8, torch.uint8):
        raise ModelError(f"{what} images must be uint8 [N, H, W, C], got dtype {images.dtype}")
    if images.ndim == 3 and spec.in_channels == 1:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != spec.in_channels:
        raise ModelError(f"{what} images must be [N, H, W, {spec.in_channels}], got shape {tuple(images.shape)}")
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or y.shape[0] != images.shape[0]:
        raise ModelError(f"{what} labels must be [N] with N={images.shape[0]}, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ModelError(f"{what} labels must be integers, got dtype {y.dtype}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise ModelError(f"{what} labels must lie in [0, {spec.num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    if images.shape[0] == 0:
        raise ModelError(f"{what} set is empty")
    return images, y


def _batch(images: np.ndarray | torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images[idx.numpy()])
    return images[idx]


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Seeded augmentation on a uint8 ``[B, H, W, C]`` batch: a random crop of the
    zero-padded image (same size), and optionally a random horizontal flip."""
    b, h, w, _ = x.shape
    if padding > 0:
        padded = F.pad(x.permute(0, 3, 1, 2), (padding, padding, padding, padding)).permute(0, 2, 3, 1)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # [B, H, 1]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # [B, 1, W]
        x = padded[torch.arange(b)[:, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(2), x)
    return x


@torch.inference_mode()
def predict(model: nn.Module, spec: ModelSpec, images: np.ndarray | torch.Tensor, batch_size: int = 1000,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Predicted class per image (int64 ``[N]`` on CPU). The model's train/eval mode is restored."""
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        preds = []
        for start in range(0, images.shape[0], batch_size):
            x = preprocess(spec, images[start:start + batch_size], device=dev)
            preds.append(model(x).argmax(1).cpu())
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, spec: ModelSpec, images: np.ndarray | torch.Tensor, labels: Any,
             batch_size: int = 1000, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy in [0, 1] on uint8 ``images`` with int ``labels``."""
    images, y = _check_arrays(spec, images, labels, "evaluation")
    return float((predict(model, spec, images, batch_size, device) == y).float().mean())


def train_classifier(
    spec: ModelSpec,
    train_images: np.ndarray | torch.Tensor,
    train_labels: Any,
    *,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    test_images: np.ndarray | torch.Tensor | None = None,
    test_labels: Any = None,
    progress: bool = True,
    optimizer: str = "sgd",
    schedule: str = "onecycle",
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    augment: bool = False,
    augment_padding: int = 2,
    augment_flip: bool = False,
    eval_each_epoch: bool = True,
    num_threads: int | None = None,
    pretrained: bool = False,
    deterministic: bool = True,
    batch_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    trust_code: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``build_model(spec)`` from scratch on uint8 ``[N, H, W, C]`` images.

    Returns the model (eval mode, on ``device``) and JSON-ready metrics: the
    hyperparameters, the per-epoch train loss and accuracy, a loss curve every few
    steps, test accuracy (per epoch when ``eval_each_epoch``, and final), and seconds.
    SGD uses Nesterov momentum 0.9; ``lr`` is the peak learning rate of the schedule.
    On CUDA, ``deterministic`` (default) makes a retrain repeat its weights bit for bit
    (:func:`models.determinism.deterministic_kernels`); False trades that for cuDNN autotuning.
    ``batch_transform(batch, generator)`` rewrites every uint8 ``[B, H, W, C]`` training batch as it
    is read, before augmentation, drawing from a generator of its own seeded from ``seed`` (ROAR's
    control that removes a fresh random mask on every read uses it). ``trust_code``: the modules an
    import-path arch may import (models.trust).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ModelError(f"lr must be a positive number, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ModelError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ModelError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    train_images, y_train = _check_arrays(spec, train_images, train_labels, "train")
    if (test_images is None) != (test_labels is None):
        raise ModelError("pass test_images and test_labels together")
    if test_images is not None:
        test_images, _ = _check_arrays(spec, test_images, test_labels, "test")
    dev = resolve_device(device)

    n = train_images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    if n > 1 and n % batch_size == 1:
        steps_per_epoch -= 1  # a last batch of one sample breaks BatchNorm; drop it (a different one each epoch)
    total_steps = epochs * steps_per_epoch
    log_every = max(1, steps_per_epoch // 20)
    metrics: dict[str, Any] = {
        "arch": spec.arch, "epochs": epochs, "batch_size": batch_size, "lr": float(lr), "seed": seed,
        "optimizer": optimizer, "schedule": schedule, "weight_decay": weight_decay,
        "label_smoothing": label_smoothing, "augment": augment, "device": str(dev),
        "train_samples": int(n), "steps": total_steps, "log_every_steps": log_every,
        "train_loss": [], "train_accuracy": [], "train_loss_steps": [], "test_accuracy_curve": [],
    }

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        threads = stack.enter_context(cpu_threads(num_threads))
        metrics["num_threads"] = threads
        fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        stack.enter_context(torch.random.fork_rng(devices=fork_devices))
        metrics["deterministic"] = stack.enter_context(deterministic_kernels(dev, deterministic))
        torch.manual_seed(seed)  # weight init (and dropout, for archs that have it)
        order_gen = torch.Generator().manual_seed(seed)
        aug_gen = torch.Generator().manual_seed(seed + 1_000_003)
        transform_gen = torch.Generator().manual_seed(seed + 2_000_003)

        model = build_model(spec, pretrained=pretrained, trust_code=trust_code).to(dev)
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=lr)
        if schedule == "onecycle" and total_steps < 4:
            sched: Any = None  # OneCycleLR needs a step in each phase; too short a run trains at lr
            metrics["schedule"] = "constant (onecycle needs >= 4 steps)"
        elif schedule == "onecycle":
            pct = min(0.5, max(0.25, 2.0 / total_steps))  # warm up for 25 % of the steps, at least 2
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=pct)
        elif schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        else:
            sched = None

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=total_steps, desc="train", unit="step", file=sys.stderr,
                                           dynamic_ncols=True, mininterval=1.0))
        step = 0
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=order_gen)
            seen = 0
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.long, device=dev)
            window = torch.zeros((), device=dev)
            window_n = 0
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
            for b in range(steps_per_epoch):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                xb = _batch(train_images, idx)
                if batch_transform is not None:
                    xb = batch_transform(xb, transform_gen)
                if augment:
                    xb = random_crop_flip(xb, augment_padding, augment_flip, aug_gen)
                x = preprocess(spec, xb, device=dev)
                yb = y_train[idx].to(dev, non_blocking=True)
                logits = model(x)
                loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                detached = loss.detach()
                loss_sum += detached * idx.numel()
                seen += idx.numel()
                correct += (logits.detach().argmax(1) == yb).sum()
                window += detached
                window_n += 1
                if window_n == log_every or b == steps_per_epoch - 1:
                    value = float(window) / window_n
                    if not math.isfinite(value):
                        raise ModelError(f"training diverged at epoch {epoch + 1}, step {step} (loss {value}); "
                                         f"lower the learning rate (lr={lr})")
                    metrics["train_loss_steps"].append([step, value])
                    window.zero_()
                    window_n = 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{value:.3f}", lr=f"{opt.param_groups[0]['lr']:.3g}", refresh=False)
                if bar is not None:
                    bar.update(1)
            metrics["train_loss"].append(float(loss_sum) / seen)
            metrics["train_accuracy"].append(float(correct) / seen)
            if test_images is not None and (eval_each_epoch or epoch == epochs - 1):
                acc = evaluate(model, spec, test_images, test_labels, batch_size=max(batch_size, 500), device=dev)
                metrics["test_accuracy_curve"].append([epoch + 1, acc])
                if bar is not None:
                    bar.write(f"epoch {epoch + 1}/{epochs}: train loss {metrics['train_loss'][-1]:.4f}, "
                              f"train acc {metrics['train_accuracy'][-1]:.4f}, test acc {acc:.4f}")
            elif bar is not None:
                bar.write(f"epoch {epoch + 1}/{epochs}: train loss {metrics['train_loss'][-1]:.4f}, "
                          f"train acc {metrics['train_accuracy'][-1]:.4f}")
    model.eval()
    seconds = time.perf_counter() - start
    metrics["test_accuracy"] = metrics["test_accuracy_curve"][-1][1] if metrics["test_accuracy_curve"] else None
    metrics["seconds"] = seconds
    metrics["samples_per_second"] = epochs * n / seconds if seconds > 0 else None
    return model, metrics
