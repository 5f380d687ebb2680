"""The SpRAy math on synthetic maps: two planted map patterns are two clusters, found by the eigengap."""

from __future__ import annotations

import numpy as np

from jobs.reporting import spray


def planted(n_a: int = 60, n_b: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps [n, 32, 32]: pattern A (a blob in the centre) or pattern B (a 4 x 4 corner mark), with noise."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0, 0.05, (n_a + n_b, 32, 32)).astype(np.float32)
    maps[:n_a, 10:22, 10:22] += rng.uniform(0.5, 1.5, (n_a, 1, 1))
    maps[n_a:, 0:4, 0:4] += rng.uniform(0.5, 1.5, (n_b, 1, 1)) * 3
    truth = np.r_[np.zeros(n_a, int), np.ones(n_b, int)]
    return maps, truth


def test_features_downsample_and_normalize() -> None:
    maps = np.zeros((2, 32, 32), np.float32)
    maps[0, :2, :2] = -4.0
    maps[1] = 1.0
    l2 = spray.features(maps, 16, "l2", absolute=True)
    assert l2.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(l2, axis=1), 1.0, rtol=1e-6)
    assert l2[0, 0] == 1.0 and np.count_nonzero(l2[0]) == 1  # a 2x2 corner is one 16x16 cell
    signed = spray.features(maps, 8, "max_abs", absolute=False)
    assert signed[0].min() == -1.0 and np.abs(signed[1]).max() == 1.0


def test_eigengap_picks_two_for_two_patterns() -> None:
    maps, truth = planted()
    x = spray.features(maps, 16, "l2", absolute=True)
    result = spray.cluster(x, neighbors=8, max_clusters=6, seed=0)
    assert result.k == 2
    assert result.eigenvalues[1] < 1e-6 < result.eigenvalues[2]  # two components, then the gap
    assert result.gap > 0.99
    # The largest cluster is number 0: pattern A (60 maps).
    np.testing.assert_array_equal(result.labels, truth)
    assert result.layout.shape == (100, 2)


def test_eigengap_counts_three_groups() -> None:
    values = np.array([0.0, 1e-4, 2e-4, 0.6, 0.65, 0.7])
    assert spray.eigengap(values, max_clusters=5) == 3
    assert spray.eigengap(np.array([0.0, 0.5, 0.55, 0.6]), max_clusters=3) == 2  # never below min_clusters


def test_fixed_cluster_count_and_tsne_layout() -> None:
    maps, _ = planted(30, 20)
    x = spray.features(maps, 8, "max_abs", absolute=False)
    result = spray.cluster(x, neighbors=5, clusters=3, layout="tsne", seed=1)
    assert result.k == 3 and set(result.labels) == {0, 1, 2}
    assert np.isfinite(result.layout).all() and result.layout.std() > 0
    again = spray.cluster(x, neighbors=5, clusters=3, layout="tsne", seed=1)
    np.testing.assert_array_equal(result.labels, again.labels)


def test_out_of_sample_assignment_follows_the_planted_pattern() -> None:
    maps, truth = planted(60, 40, seed=0)
    fresh, fresh_truth = planted(30, 30, seed=1)
    x = spray.features(maps, 16, "l2", absolute=True)
    result = spray.cluster(x, neighbors=8, seed=0)
    labels, layout = spray.assign(x, result.labels, result.layout, spray.features(fresh, 16, "l2", True))
    np.testing.assert_array_equal(labels, fresh_truth)
    assert layout.shape == (60, 2)


def test_large_sample_uses_the_sparse_solver(monkeypatch) -> None:
    monkeypatch.setattr(spray, "DENSE_LIMIT", 50)
    maps, truth = planted(60, 40)
    result = spray.cluster(spray.features(maps, 16, "l2", True), neighbors=8, seed=0)
    assert result.k == 2
    np.testing.assert_array_equal(result.labels, truth)


def test_one_pattern_plus_noise_has_no_real_gap() -> None:
    rng = np.random.default_rng(2)
    maps = rng.normal(0, 0.05, (80, 32, 32)).astype(np.float32)
    maps[:, 10:22, 10:22] += 1.0
    result = spray.cluster(spray.features(maps, 16, "l2", True), neighbors=8, seed=0)
    assert result.gap < 0.5 and result.eigenvalues[1] > 0.1  # a split is forced, and the record says so
