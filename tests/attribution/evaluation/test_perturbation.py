import numpy as np
import pytest
import torch
from torch import nn

from attribution.evaluation.imputation import noisy_linear_imputation
from attribution.evaluation.perturbation import (
    DEFAULT_FRACTIONS, EvaluationError, auc, perturbation_curve, perturbation_scores, random_ranking, relative_drops,
)
from attribution.evaluation.removal import remove_top, removed_mask

CLASSES = (2, 4)  # Pullover vs Coat: similar classes, so the fitted probabilities are not all saturated


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def linear_setup(fmnist_train, fmnist_test):
    """A two-class logistic regression fitted on real Fashion-MNIST images, its test images,
    the per-channel train mean, and each test pixel's exact effect on the predicted class.

    With two classes, softmax(z)[c] = sigmoid(z_c - z_o) and z_c - z_o is linear in x: replacing
    pixel j with the mean m changes it by -(w_c - w_o)_j (x_j - m). So ranking pixels by that
    contribution is the best possible MoRF order (it removes the k largest contributions) and its
    reverse the best LeRF order, for every image and every k.
    """
    torch.manual_seed(0)
    x_tr, y_tr = fmnist_train
    keep = np.isin(y_tr, CLASSES)
    x = _pixels(x_tr[keep])
    y = torch.from_numpy((y_tr[keep] == CLASSES[1]).astype(np.int64))
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().requires_grad_(False)
    fill = [float(x.mean())]
    x_te, y_te = fmnist_test
    test = _pixels(x_te[np.isin(y_te, CLASSES)][:40])
    pred = model(test).argmax(1)
    w = model[1].weight
    diff = (w[pred] - w[1 - pred]).reshape(-1, 28, 28)
    effect = diff * (test[:, 0] - fill[0])
    return model, test, fill, effect, pred


def test_morf_beats_random_beats_lerf_on_a_linear_model(linear_setup):
    model, images, fill, effect, pred = linear_setup
    confidence = torch.softmax(model(images), 1).max(1).values
    assert 0.55 < float(confidence.median()) < 0.9999, "probabilities are saturated: the test would be weak"
    morf = relative_drops(model, images, effect, fill=fill, order="morf")
    rand = relative_drops(model, images, effect, fill=fill, order="random", seed=0)
    lerf = relative_drops(model, images, effect, fill=fill, order="lerf")
    # Exact optimality per image and fraction (up to float error).
    assert torch.all(morf >= rand - 1e-6) and torch.all(rand >= lerf - 1e-6)
    mean = [d.mean(0).numpy() for d in (morf, rand, lerf)]
    inner = slice(1, len(DEFAULT_FRACTIONS) - 1)
    assert np.all(mean[0][inner] > mean[1][inner] + 1e-3) and np.all(mean[1][inner] > mean[2][inner] + 1e-3)
    assert mean[0][0] == mean[1][0] == mean[2][0] == 0.0  # nothing removed
    np.testing.assert_allclose(mean[0][-1], mean[2][-1], atol=1e-9)  # everything removed
    areas = [auc(DEFAULT_FRACTIONS, m) for m in mean]
    assert areas[0] > areas[1] > areas[2]
    assert areas[2] < 0 < areas[0]  # LeRF removes evidence against the class: its probability rises


def test_curve_is_mean_of_per_image_drops_and_batch_independent(linear_setup):
    model, images, fill, effect, pred = linear_setup
    fr = (0.0, 0.05, 0.3)
    curve = perturbation_curve(model, images, effect, fr, fill, "morf")
    drops = relative_drops(model, images, effect, fr, fill, "morf")
    np.testing.assert_allclose(curve, drops.mean(0).numpy())
    halves = torch.cat([relative_drops(model, images[:7], effect[:7], fr, fill),
                        relative_drops(model, images[7:], effect[7:], fr, fill)])
    torch.testing.assert_close(halves, drops, atol=1e-5, rtol=1e-4)  # float32 BLAS may differ by batch size
    # By hand, at 5 %: (p0 - pk) / p0 for the predicted class.
    p0 = torch.softmax(model(images).double(), 1).gather(1, pred[:, None]).squeeze(1)
    pk = torch.softmax(model(remove_top(images, effect, 0.05, fill)).double(), 1).gather(1, pred[:, None]).squeeze(1)
    torch.testing.assert_close(drops[:, 1], ((p0 - pk) / p0).cpu())


def test_given_target_and_random_seeds(linear_setup):
    model, images, fill, effect, pred = linear_setup
    fr = (0.1, 0.5)
    same = relative_drops(model, images, effect, fr, fill, target=pred)
    torch.testing.assert_close(same, relative_drops(model, images, effect, fr, fill))
    other = relative_drops(model, images, effect, fr, fill, target=1 - pred)
    assert torch.all(other[:, 0] < 0), "removing evidence for the predicted class raises the other one"
    a = relative_drops(model, images, None, fr, fill, order="random", seed=3)
    torch.testing.assert_close(a, relative_drops(model, images, None, fr, fill, order="random", seed=3))
    assert not torch.equal(a, relative_drops(model, images, None, fr, fill, order="random", seed=4))
    per_image = list(range(100, 100 + len(images)))
    b = relative_drops(model, images, None, fr, fill, order="random", seed=per_image)
    alone = relative_drops(model, images[5:6], None, fr, fill, order="random", seed=[105])
    torch.testing.assert_close(b[5:6], alone, atol=1e-5, rtol=1e-4)


def test_random_ranking_is_a_permutation_per_image():
    order = random_ranking(4, 5, 6, seed=7)
    assert order.shape == (4, 30)
    assert all(sorted(row) == list(range(30)) for row in order.tolist())
    assert torch.equal(order[1], random_ranking(1, 5, 6, seed=8)[0])


def test_auc_trapezoid_and_errors():
    assert auc([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.5)
    x, y = np.array(DEFAULT_FRACTIONS), np.sqrt(DEFAULT_FRACTIONS)
    assert auc(x, y) == pytest.approx(np.trapezoid(y, x))
    assert DEFAULT_FRACTIONS[:3] == (0.0, 0.01, 0.02) and DEFAULT_FRACTIONS[10:13] == (0.1, 0.2, 0.3)
    assert DEFAULT_FRACTIONS[-1] == 1.0
    with pytest.raises(EvaluationError, match="increasing"):
        auc([0.2, 0.1], [0, 0])
    with pytest.raises(EvaluationError, match="entries"):
        auc([0.1, 0.2], [0, 0, 0])


def test_bad_inputs(linear_setup):
    model, images, fill, effect, _ = linear_setup
    with pytest.raises(EvaluationError, match="needs maps"):
        relative_drops(model, images, None, (0.1,), fill, "morf")
    with pytest.raises(EvaluationError, match="order"):
        relative_drops(model, images, effect, (0.1,), fill, "best")
    with pytest.raises(EvaluationError, match="out of range"):
        relative_drops(model, images, effect, (0.1,), fill, target=5)
    with pytest.raises(EvaluationError, match="float"):
        relative_drops(model, (images * 255).to(torch.uint8), effect, (0.1,), fill)


def test_nli_scores_are_those_of_the_imputed_images(linear_setup):
    """perturbation_scores with ROAD's imputation: drops and predictions of exactly the images that
    noisy_linear_imputation makes (same per-image seeds), and MoRF still above LeRF."""
    model, images, fill, effect, pred = linear_setup
    seeds = list(range(500, 500 + len(images)))
    fr = (0.0, 0.1, 0.5)
    scores = perturbation_scores(model, images, effect, fr, fill, "morf", seed=seeds, imputation="nli")
    assert torch.equal(scores.predicted[:, 0], pred)
    mask = removed_mask(effect, 0.1, "top")
    imputed = noisy_linear_imputation(images, mask, 0.01, seeds, fill)
    logits = model(imputed).double()
    p0 = torch.softmax(model(images).double(), 1).gather(1, pred[:, None]).squeeze(1)
    pk = torch.softmax(logits, 1).gather(1, pred[:, None]).squeeze(1)
    torch.testing.assert_close(scores.drops[:, 1], (p0 - pk) / p0)
    assert torch.equal(scores.predicted[:, 1], logits.argmax(1))
    lerf = perturbation_scores(model, images, effect, fr, fill, "lerf", seed=seeds, imputation="nli")
    assert float(scores.drops[:, 1:].mean()) > float(lerf.drops[:, 1:].mean()) + 0.05
    with pytest.raises(EvaluationError, match="imputation"):
        perturbation_scores(model, images, effect, fr, fill, imputation="black")
