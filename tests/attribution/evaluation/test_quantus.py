"""Our evaluation math against Quantus' implementations (the dev extra), configured alike, on a small
trained ResNet-8 and real Fashion-MNIST test images.

Quantus 0.6.0 has two known bugs the tests work around:
* ``ROAD`` averages only the scores of its *first* batch (``custom_postprocess`` reads
  ``evaluation_scores[0]``): every call here passes all images as one batch.
* Its AUC helper (``quantus.helpers.utils.calculate_auc``, used by ``return_auc_per_sample``)
  calls ``np.trapz``, which numpy 2.4 removed: the test that uses it supplies ``np.trapz`` as
  ``np.trapezoid`` (same rule, renamed) for the duration of the call.

Where both sides feed the *same* float32 tensors to the same model, results agree to float32
rounding; where each side draws its own random numbers (cascading randomization), they agree
within the spread over draws. Each test says which and why its tolerance holds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attribution
from attribution.evaluation import (auc, cascade, compare, linear_imputation, perturbation_scores, randomized,
                                    ranking)
from models.preprocess import preprocess
from models.training import evaluate
from storage.checkpoints import load_checkpoint
from tests.helpers import tiny_checkpoint

quantus = pytest.importorskip("quantus", reason="the Quantus cross-check needs the dev extra: pip install quantus")
pytestmark = pytest.mark.slow  # trains a model

N = 48
STEP = 16  # pixels per Quantus perturbation step: 49 steps over 784 pixels


@pytest.fixture(scope="module")
def setup(fmnist_test, tmp_path_factory):
    """A ResNet-8 trained 2 epochs on 4000 images (about 80 % accurate; trained once per content, see
    tests/helpers.py tiny_checkpoint), 48 test inputs, their labels, its predictions, and gradient and
    pathway maps (signed_max_abs, float32)."""
    torch.set_num_threads(1)
    model, spec = load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("quantus"), n=4000, epochs=2, lr=0.1))
    assert evaluate(model, spec, *fmnist_test) > 0.7
    model = model.eval().requires_grad_(False)
    x = preprocess(spec, fmnist_test[0][:N])
    labels = fmnist_test[1][:N].astype(np.int64)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = {name: attribution.reduce_map(attribution.get(name, model).attribute(x, target=predicted),
                                         "signed_max_abs").float() for name in ("gradient", "pathway")}
    return model, x, labels, predicted, maps


def distinct(values: torch.Tensor) -> bool:
    """No ties within any image: then every sort (stable or not) gives the same order."""
    flat = values.reshape(values.shape[0], -1)
    return all(torch.unique(row).numel() == row.numel() for row in flat)


def scores_for_quantus(magnitude: torch.Tensor, order: str) -> torch.Tensor:
    """What Quantus ranks by (descending) to remove pixels in our order. Untied |map| (gradient) goes in
    as it is for MoRF, so Quantus' own sort is checked too. Pathway maps hold exact ties (pruned paths
    leave equal or zero gradients); Quantus' unstable argsort breaks them arbitrarily and ours by raster
    index, so for them, and for LeRF (Quantus removes the highest first and rejects negative maps), each
    pixel's score is 784 minus its position in our order."""
    if order == "morf" and distinct(magnitude):
        return magnitude
    position = ranking(magnitude, "top" if order == "morf" else "bottom")
    scores = torch.empty_like(position).scatter_(1, position, torch.arange(784, 0, -1).expand(len(position), -1))
    return scores.reshape(magnitude.shape).float()


@pytest.mark.parametrize("method", ["gradient", "pathway"])
def test_morf_and_lerf_agree_with_pixel_flipping(setup, method, monkeypatch):
    """Mean fill (0 = the train mean in input units), ranking by |map|; Quantus' PixelFlipping gets
    :func:`scores_for_quantus` (its LeRF is our order given as scores). Both sides perturb the same pixels to the same
    value and run the same float32 inputs through the same model, so the probabilities differ only by
    Quantus' float32 softmax against our float64 log-softmax of the same logits: a few float32 ulps
    (measured here and under ATEN_CPU_CAPABILITY=default: 3e-7 on the drops, 1.4e-9 on the areas, 3e-6 on
    Quantus' 49-step per-sample sums), hence 1e-5 on the drops, 1e-4 on the areas, and 1e-5 relative on its
    per-sample areas. 49 steps check what 98 did, in less than half the time."""
    model, x, _, predicted, maps = setup
    magnitude = maps[method].abs()
    fractions = [STEP * k / 784 for k in range(0, 784 // STEP + 1)]
    with torch.no_grad():
        p0 = torch.softmax(model(x).double(), 1).gather(1, predicted[:, None]).squeeze(1).numpy()
    for order in ("morf", "lerf"):
        a_batch = scores_for_quantus(magnitude, order)
        metric = quantus.PixelFlipping(features_in_step=STEP, perturb_baseline=0.0, abs=False, normalise=False,
                                       disable_warnings=True)
        curves = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=predicted.numpy(),
                                   a_batch=a_batch[:, None].numpy(), channel_first=True, softmax=True, device="cpu",
                                   batch_size=N))
        theirs = 1.0 - curves / p0[:, None]
        ours = perturbation_scores(model, x, magnitude, fractions, 0.0, order, predicted).drops.numpy()
        np.testing.assert_allclose(ours[:, 1:], theirs, rtol=0, atol=1e-5)
        mean_theirs = np.concatenate([[0.0], theirs.mean(0)])
        assert auc(fractions, ours.mean(0)) == pytest.approx(auc(fractions, mean_theirs), abs=1e-4)
        # Quantus' own per-sample AUC (trapezoid over the probabilities, dx = 1), with np.trapz restored.
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
        metric = quantus.PixelFlipping(features_in_step=STEP, perturb_baseline=0.0, abs=False, normalise=False,
                                       return_auc_per_sample=True, disable_warnings=True)
        areas = metric(model=model, x_batch=x.numpy(), y_batch=predicted.numpy(), a_batch=a_batch[:, None].numpy(),
                       channel_first=True, softmax=True, device="cpu", batch_size=N)
        expected = np.trapezoid(p0[:, None] * (1.0 - ours[:, 1:]), dx=1, axis=1)
        np.testing.assert_allclose(areas, expected, rtol=1e-5, atol=1e-5)
        monkeypatch.undo()


def test_noisy_linear_imputation_matches_quantus_without_noise(setup):
    """The same sparse system solved two ways (SuperLU in natural order here, scipy's spsolve there):
    float64 solutions of a diagonally dominant system agree to ~1e-12."""
    from quantus.functions.perturb_func import noisy_linear_imputation as theirs

    _, x, _, _, maps = setup
    order = torch.argsort(maps["pathway"].abs().reshape(N, -1), dim=1, descending=True, stable=True).numpy()
    for count in (8, 392, 700):
        removed = np.zeros((N, 784), bool)
        np.put_along_axis(removed, order[:, :count], True, axis=1)
        ours = linear_imputation(x.double().permute(0, 2, 3, 1).numpy(), removed.reshape(N, 28, 28))
        for i in range(0, N, 7):
            expected = theirs(x[i].double().numpy(), order[i, :count], noise=0.0)
            np.testing.assert_allclose(ours[i, :, :, 0], expected[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["gradient", "pathway"])
def test_road_accuracy_matches_quantus(setup, method):
    """ROAD's MoRF accuracy (predictions vs the true labels) at Quantus' percentages. Quantus truncates
    784 * p / 100 to whole pixels, so we ask for exactly those counts. Without noise both sides feed the
    model the same imputation up to ~1e-12 (cast to the same float32 values), so every prediction, and
    with it every accuracy, is the same. All images go in one batch (Quantus' first-batch bug)."""
    model, x, labels, _, maps = setup
    magnitude = maps[method].abs()
    percentages = [1, 5, 10, 20, 30, 50, 70, 90]
    fractions = [int(784 * p / 100) / 784 for p in percentages]
    metric = quantus.ROAD(percentages=percentages, noise=0.0, abs=True, normalise=False, disable_warnings=True)
    a_batch = scores_for_quantus(magnitude, "morf")
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=labels, a_batch=a_batch[:, None].numpy(),
                    channel_first=True, softmax=True, device="cpu", batch_size=N)
    ours = perturbation_scores(model, x, magnitude, fractions, 0.0, "morf", seed=list(range(N)), imputation="nli",
                               noise=0.0)
    accuracy = (ours.predicted.numpy() == labels[:, None]).mean(0)
    np.testing.assert_array_equal(accuracy, [theirs[p] for p in percentages])
    assert accuracy[-1] < accuracy[0]  # removing the most relevant pixels costs accuracy


def test_cascading_randomization_in_reset_mode_agrees_with_mprt(setup):
    """Quantus' MPRT (reset_parameters(), module by module, top down; Spearman of |map|) against ours.

    1. Its layer order is our module cascade (definition and execution order coincide for ResNet-8).
    2. Given Quantus' own randomized models, our maps and our Spearman |map| reproduce its scores to
       float64 rounding (identical maps; scipy's spearmanr vs our average-rank Pearson).
    3. With each side's own random draws (3 seeds each), the per-layer means agree within 4 standard
       errors of their difference (from the spread over draws, floored at 0.01): both reset the same
       modules with the same initializers, so their means differ only by the draws.
    """
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model, x, _, predicted, _ = setup
    x, predicted = x[:24], predicted[:24]

    def explain(model, inputs, targets, **kwargs):  # noqa: ANN001 - Quantus' explain_func signature
        inputs = torch.as_tensor(inputs)
        maps = attribution.get("gradient", model).attribute(inputs, target=torch.as_tensor(targets))
        return attribution.reduce_map(maps, "signed_max_abs")[:, None].detach().numpy()

    steps = cascade(model, example=x[:1], group="module")
    original = explain(model, x, predicted)[:, 0]
    wrapped = PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
    names = []
    for name, random_model in wrapped.get_random_layer_generator(order="top_down", seed=7):
        names.append(name)
        if len(names) in (1, 2, 10, len(steps)):
            mine = compare(original, explain(random_model.eval(), x, predicted)[:, 0])["spearman_abs"]
            metric = quantus.MPRT(layer_order="top_down", seed=7, abs=True, normalise=True, disable_warnings=True)
            scores = metric(model=model, x_batch=x.numpy(), y_batch=predicted.numpy(), a_batch=None,
                            explain_func=explain, channel_first=True, device="cpu", batch_size=len(x))
            np.testing.assert_allclose(mine, scores[name], rtol=0, atol=1e-9)
    assert names == [s for s, _ in steps]

    ours = np.array([[np.mean(compare(original, explain(randomized(model, k, seed=s, steps=steps, mode="reset"), x,
                                                         predicted)[:, 0])["spearman_abs"])
                      for k in range(len(steps))] for s in range(3)])
    theirs = []
    for s in range(3):
        metric = quantus.MPRT(layer_order="top_down", seed=100 + s, abs=True, normalise=True, disable_warnings=True)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=predicted.numpy(), a_batch=None,
                        explain_func=explain, channel_first=True, device="cpu", batch_size=len(x))
        theirs.append([np.mean(scores[name]) for name in names])
    theirs = np.array(theirs)
    error = np.sqrt(ours.var(0, ddof=1) / 3 + theirs.var(0, ddof=1) / 3)
    assert np.all(np.abs(ours.mean(0) - theirs.mean(0)) <= 4 * np.maximum(error, 0.01))
    assert ours.mean(0)[-1] < 0.5 and theirs.mean(0)[-1] < 0.5  # the fully reset net explains differently
