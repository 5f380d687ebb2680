"""The training loop on a small real Fashion-MNIST subset: it learns, it is deterministic,
it leaves the caller's state alone, and it rejects bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ModelError, fashion_mnist_spec
from models.training import cpu_threads, evaluate, predict, random_crop_flip, train_classifier
from tests.helpers import fashion_mnist

pytestmark = pytest.mark.slow  # starts Ray or trains a model

N_TRAIN, N_TEST = 3000, 1000


@pytest.fixture(scope="module")
def fashion() -> dict[str, np.ndarray]:
    (x, y), (xt, yt) = fashion_mnist("train", N_TRAIN), fashion_mnist("test", N_TEST)
    return {"x": x, "y": y, "xt": xt, "yt": yt}


def _train(data: dict, **kw):
    args = {"epochs": 1, "batch_size": 32, "lr": 0.1, "seed": 0, "device": "cpu", "progress": False, "num_threads": 1,
            "test_images": data["xt"], "test_labels": data["yt"]}
    args.update(kw)
    return train_classifier(fashion_mnist_spec(), data["x"], data["y"], **args)


@pytest.fixture(scope="module")
def trained(fashion):
    return _train(fashion)


def test_learns_well_above_chance(fashion, trained) -> None:
    model, metrics = trained
    assert not model.training
    # Chance is 10 %; one epoch on 3000 images (94 steps) reaches about 70 %.
    assert metrics["test_accuracy"] > 0.55
    assert metrics["test_accuracy"] == pytest.approx(evaluate(model, fashion_mnist_spec(), fashion["xt"], fashion["yt"]))
    steps = [loss for _, loss in metrics["train_loss_steps"]]
    assert len(steps) >= 10
    assert np.mean(steps[-3:]) < 0.5 * np.mean(steps[:2]), steps
    assert metrics["epochs"] == 1 and metrics["train_samples"] == N_TRAIN and metrics["seconds"] > 0
    assert len(metrics["train_loss"]) == 1 and len(metrics["test_accuracy_curve"]) == 1


def test_same_seed_same_model_other_seed_other_model(fashion) -> None:
    small = {k: v[:800] for k, v in fashion.items()}
    model, metrics = _train(small)
    again, metrics_again = _train(small)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert metrics_again["train_loss_steps"] == metrics["train_loss_steps"]
    assert metrics_again["test_accuracy"] == metrics["test_accuracy"]
    other, _ = _train(small, seed=1)
    assert not torch.equal(other.conv1.weight, model.conv1.weight)


def test_caller_rng_and_threads_are_left_alone(fashion) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    _train({k: v[:256] for k, v in fashion.items()}, test_images=None, test_labels=None)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads


def test_augmentation_and_other_optimizers_run_deterministically(fashion) -> None:
    small = {k: v[:512] for k, v in fashion.items()}
    kw = {"augment": True, "augment_flip": True, "optimizer": "adamw", "lr": 3e-3, "schedule": "cosine", "epochs": 2}
    a, ma = _train(small, **kw)
    b, mb = _train(small, **kw)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert ma["train_loss"] == mb["train_loss"] and len(ma["train_loss"]) == 2
    plain, _ = _train(small, **{**kw, "augment": False})
    assert not torch.equal(a.fc.weight, plain.fc.weight)


def test_random_crop_flip() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.uint8).reshape(2, 5, 6, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, 0, False, g), x)
    out = random_crop_flip(x, 2, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(2):  # each output is a shifted window of the zero-padded input
        padded = torch.nn.functional.pad(x[i, :, :, 0], (2, 2, 2, 2))
        assert any(torch.equal(out[i, :, :, 0], padded[dy:dy + 5, dx:dx + 6]) for dy in range(5) for dx in range(5))
    flipped = random_crop_flip(x.repeat(16, 1, 1, 1), 0, True, torch.Generator().manual_seed(0))
    is_flipped = [torch.equal(f, x[i % 2].flip(1)) for i, f in enumerate(flipped)]
    assert any(is_flipped) and not all(is_flipped)


def test_evaluate_and_predict_restore_mode(fashion, trained) -> None:
    model, _ = trained
    model.train()
    preds = predict(model, fashion_mnist_spec(), fashion["xt"][:10])
    assert model.training and preds.shape == (10,) and preds.dtype == torch.int64
    model.eval()


@pytest.mark.parametrize("kw, match", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": -1}, "batch_size"),
    ({"lr": float("nan")}, "lr"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"test_labels": None}, "together"),
])
def test_bad_arguments(fashion, kw, match) -> None:
    with pytest.raises(ModelError, match=match):
        _train({k: v[:64] for k, v in fashion.items()}, **kw)


def test_bad_arrays(fashion) -> None:
    spec = fashion_mnist_spec()
    x, y = fashion["x"][:64], fashion["y"][:64]
    with pytest.raises(ModelError, match=r"labels must lie in \[0, 10\)"):
        train_classifier(spec, x, y + 10, epochs=1, batch_size=32, lr=0.1, seed=0, device="cpu", progress=False)
    with pytest.raises(ModelError, match="labels must be \\[N\\]"):
        train_classifier(spec, x, y[:10], epochs=1, batch_size=32, lr=0.1, seed=0, device="cpu", progress=False)
    with pytest.raises(ModelError, match="uint8"):
        train_classifier(spec, x.astype(np.float32), y, epochs=1, batch_size=32, lr=0.1, seed=0, device="cpu",
                         progress=False)
    with pytest.raises(ModelError, match="empty"):
        train_classifier(spec, x[:0], y[:0], epochs=1, batch_size=32, lr=0.1, seed=0, device="cpu", progress=False)


def test_diverging_training_is_reported(fashion) -> None:
    with pytest.raises(ModelError, match="diverged"):
        _train({k: v[:512] for k, v in fashion.items()}, lr=1e6, optimizer="sgd", schedule="constant")


def test_cpu_threads_restores() -> None:
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_tiny_runs_and_a_last_batch_of_one(fashion) -> None:
    """65 samples at batch 32: the lone 65th would break BatchNorm, so it is left out;
    two steps are too few for one-cycle, which falls back to a constant rate."""
    _, metrics = _train({k: v[:65] for k, v in fashion.items()}, test_images=None, test_labels=None)
    assert metrics["steps"] == 2 and metrics["schedule"].startswith("constant")
    assert np.isfinite(metrics["train_loss"][0])
