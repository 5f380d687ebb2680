import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from attribution.evaluation.similarity import (
    METRICS, EvaluationError, compare, hog_features, normalize, spearman, ssim,
)


def _noise(seed: int, shape=(16, 28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def test_identical_maps_score_one_whatever_their_scale():
    a = _noise(0)
    for other in (a, 3.0 * a, torch.from_numpy(a).float()):
        scores = compare(a, other)
        assert set(scores) == set(METRICS)
        for name, values in scores.items():
            assert values.shape == (16,)
            np.testing.assert_allclose(values, 1.0, atol=1e-6, err_msg=name)


def test_negated_map_flips_signed_spearman_only():
    a = _noise(1)
    scores = compare(a, -a)
    np.testing.assert_allclose(scores["spearman"], -1.0, atol=1e-12)
    np.testing.assert_allclose(scores["spearman_abs"], 1.0, atol=1e-12)
    np.testing.assert_allclose(scores["hog_pearson"], 1.0, atol=1e-9)  # unsigned orientations
    assert np.all(scores["ssim"] < 0.9)


def test_independent_noise_scores_near_zero():
    scores = compare(_noise(2), _noise(3))
    for name in ("spearman_abs", "spearman", "ssim"):
        assert abs(scores[name].mean()) < 0.05 and np.abs(scores[name]).max() < 0.2, name
    # HOG blocks share their normalization, which leaves a small positive bias between any two maps.
    assert abs(scores["hog_pearson"].mean()) < 0.15


def test_a_related_map_scores_between_noise_and_identity():
    smooth = np.cumsum(np.cumsum(_noise(4), axis=1), axis=2)  # large-scale structure
    scores = compare(smooth, smooth + 0.1 * smooth.std() * _noise(5))
    noisier = compare(smooth, smooth + 0.3 * smooth.std() * _noise(5))
    unrelated = compare(smooth, np.cumsum(np.cumsum(_noise(6), axis=1), axis=2))
    for name in METRICS:
        assert 0.3 < scores[name].mean() < 0.999, name
        assert scores[name].mean() > noisier[name].mean() > unrelated[name].mean(), name
        assert scores[name].mean() > unrelated[name].mean() + 0.2, name


def test_spearman_averages_tied_ranks_like_scipy():
    a = np.maximum(_noise(7, (4, 28, 28)), 0).round(1)  # ReLU-like: half the pixels tie at 0
    b = np.maximum(a + _noise(8, (4, 28, 28)), 0).round(1)
    ours = spearman(a, b)
    ref = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_works_on_224_px_maps():
    a, b = _noise(9, (2, 224, 224)), _noise(10, (2, 224, 224))
    assert hog_features(a).shape == (2, 6 * 6 * 2 * 2 * 9)  # 7 x 7 cells of 32 px
    assert hog_features(a[:, :28, :28]).shape == (2, 6 * 6 * 2 * 2 * 9)  # 7 x 7 cells of 4 px
    scores = compare(a, b)
    assert all(np.abs(v).max() < 0.1 for k, v in scores.items() if k != "hog_pearson")


def test_constant_maps_are_undefined_not_zero():
    zero = np.zeros((2, 28, 28))
    np.testing.assert_array_equal(normalize(zero), zero)
    scores = compare(zero, _noise(11, (2, 28, 28)))
    assert np.isnan(scores["spearman"]).all() and np.isnan(scores["hog_pearson"]).all()
    assert np.isfinite(ssim(zero, zero)).all()


def test_bad_inputs():
    with pytest.raises(EvaluationError, match="reduce_map"):
        compare(np.zeros((2, 1, 28, 28)), np.zeros((2, 1, 28, 28)))
    with pytest.raises(EvaluationError, match="differ in shape"):
        compare(_noise(0, (2, 28, 28)), _noise(0, (3, 28, 28)))
    with pytest.raises(EvaluationError, match="too small"):
        hog_features(np.ones((1, 10, 10)))
    with pytest.raises(EvaluationError, match="NaN"):
        compare(np.full((1, 28, 28), np.nan), np.ones((1, 28, 28)))
