"""SpRAy-style spectral relevance analysis (Lapuschkin et al. 2019; Anders et al., arXiv 2106.13200):
the math behind ``jobs.analyze``, on plain arrays (no Ray, no I/O), so it is tested on synthetic maps.

One class's maps are made comparable (:func:`features`: downsampled by area means, optionally
|.|, then scaled per map), joined into a symmetric k-nearest-neighbour graph, and clustered
spectrally (:func:`cluster`): the eigenvalues of the graph's normalized Laplacian say how many
groups there are (the relative eigengap, :func:`eigengap`), the smallest eigenvectors embed the maps, and k-means on the
row-normalized embedding (Ng, Jordan and Weiss 2002) names the groups. A sample drawn for the
embedding carries its cluster; every other map of the class is placed by its nearest sampled
maps (:func:`assign`), which is what lets the analysis scale past what one eigen-solve holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Per-map scalings: ``l2`` (unit Euclidean norm: compares shapes, not strengths) or ``max_abs``.
NORMS = ("l2", "max_abs")
#: 2-D layouts for drawing: t-SNE of the spectral embedding, or its first two non-trivial coordinates.
LAYOUTS = ("tsne", "spectral")
#: Up to this many maps the eigenvectors come from a dense solve; above it, from ARPACK.
DENSE_LIMIT = 3000


def downsample(maps: np.ndarray, size: int) -> np.ndarray:
    """[n, H, W] -> [n, size, size] float32 by area means (adaptive average pooling), so a shortcut of
    a few pixels still weighs in proportion to its area."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.nn.functional.adaptive_avg_pool2d(x, (size, size))[:, 0].numpy()


def normalize(maps: np.ndarray, norm: str) -> np.ndarray:
    """Each map divided by its L2 norm or its max |.| (all-zero maps stay zero)."""
    flat = maps.reshape(len(maps), -1).astype(np.float32)
    if norm == "l2":
        scale = np.linalg.norm(flat, axis=1)
    elif norm == "max_abs":
        scale = np.abs(flat).max(axis=1) if flat.size else np.zeros(len(flat), np.float32)
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    scale = np.where(scale > 0, scale, 1.0)
    return (flat / scale[:, None]).reshape(maps.shape)


def features(maps: np.ndarray, size: int, norm: str, absolute: bool) -> np.ndarray:
    """The vectors the maps are compared by: [n, size * size] float32 (|.| first when ``absolute``:
    relevance of either sign counts as use of the region)."""
    maps = np.asarray(maps, dtype=np.float32)
    if absolute:
        maps = np.abs(maps)
    return normalize(downsample(maps, size), norm).reshape(len(maps), -1)


def affinity(x: np.ndarray, neighbors: int) -> "scipy.sparse.csr_matrix":  # noqa: F821
    """The symmetric binary k-nearest-neighbour graph of the rows of ``x`` (SpRAy's affinity)."""
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(x, n_neighbors=min(neighbors, len(x) - 1), mode="connectivity", include_self=False)
    return graph.maximum(graph.T).tocsr()


def spectrum(graph: "scipy.sparse.csr_matrix", count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: F821
    """The ``count`` smallest eigenvalues of the normalized Laplacian and their eigenvectors [n, count]."""
    from scipy.sparse.csgraph import laplacian

    n = graph.shape[0]
    count = min(count, n)
    lap = laplacian(graph.astype(np.float64), normed=True)
    if n <= DENSE_LIMIT:
        values, vectors = np.linalg.eigh(lap.toarray())
        return values[:count], vectors[:, :count]
    from scipy.sparse import identity
    from scipy.sparse.linalg import eigsh

    # The largest of I - L converge fast (the smallest of L do not): the same eigenvectors.
    v0 = np.random.default_rng(seed).uniform(-1, 1, n)
    values, vectors = eigsh(identity(n) - lap, k=count, which="LA", v0=v0)
    order = np.argsort(1.0 - values)
    return (1.0 - values)[order], vectors[:, order]


def eigengap(values: np.ndarray, max_clusters: int, min_clusters: int = 2) -> int:
    """The cluster count k in [min_clusters, max_clusters] with the largest relative eigengap
    (values[k] - values[k-1]) / values[k]: k groups that barely touch give k eigenvalues near 0,
    then a jump. Relative, because noise inside one strategy splits it into loose sub-groups whose
    eigenvalues are larger and more evenly spread; an absolute gap there can outgrow the real one."""
    top = min(max_clusters, len(values) - 1)
    if top < min_clusters:
        return max(1, min(min_clusters, len(values)))
    values = np.maximum(np.asarray(values, np.float64), 0.0)
    ks = np.arange(min_clusters, top + 1)
    gaps = (values[ks] - values[ks - 1]) / np.maximum(values[ks], 1e-12)
    return int(ks[np.argmax(gaps)])


@dataclass
class Clustering:
    """One class's sampled maps, clustered: ``labels`` [n], ``layout`` [n, 2] (for drawing),
    ``eigenvalues`` (the smallest, ascending), the chosen ``k`` and its relative eigengap ``gap``
    (near 1: k groups that barely touch; near 0: no real split, as for one strategy plus noise)."""

    labels: np.ndarray
    layout: np.ndarray
    eigenvalues: np.ndarray
    k: int
    gap: float = 0.0


def cluster(x: np.ndarray, neighbors: int = 10, max_clusters: int = 8, clusters: int | None = None,
            layout: str = "spectral", seed: int = 0) -> Clustering:
    """Spectral clustering of the rows of ``x``; ``clusters`` fixes k, else the eigengap picks it.
    Clusters are numbered by size, largest first, so reruns and readers agree on the names."""
    from sklearn.cluster import KMeans

    n = len(x)
    if n < 3:  # too few maps for a graph: one cluster, drawn at the origin
        return Clustering(np.zeros(n, np.int64), np.zeros((n, 2), np.float32), np.zeros(0), 1)
    values, vectors = spectrum(affinity(x, neighbors), max(max_clusters, clusters or 0, 3) + 1, seed)
    k = clusters if clusters is not None else eigengap(values, max_clusters)
    k = max(1, min(k, n))
    embedding = vectors[:, :k]
    rows = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rows) if k > 1 else np.zeros(n, np.int64)
    sizes = np.bincount(raw, minlength=k)
    rank = np.empty(k, np.int64)
    rank[np.lexsort((np.arange(k), -sizes))] = np.arange(k)
    labels = rank[raw]
    gap = float((values[k] - values[k - 1]) / max(values[k], 1e-12)) if k < len(values) else 0.0
    return Clustering(labels.astype(np.int64), draw(vectors, layout, seed), values, int(k), gap)


def draw(vectors: np.ndarray, layout: str, seed: int) -> np.ndarray:
    """A 2-D layout of the spectral embedding: t-SNE of it, or its coordinates 1 and 2."""
    n = len(vectors)
    if layout == "spectral" or n < 5:
        coords = vectors[:, 1:3]
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        return coords.astype(np.float32)
    if layout != "tsne":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=float(min(30.0, (n - 1) / 3)), init="pca", random_state=seed)
    return tsne.fit_transform(vectors[:, :min(vectors.shape[1], 16)]).astype(np.float32)


def assign(sample_x: np.ndarray, sample_labels: np.ndarray, sample_layout: np.ndarray, x: np.ndarray,
           neighbors: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample placement: each row of ``x`` takes the majority cluster of its nearest sampled
    maps (ties: the smaller cluster number) and the mean of their 2-D positions."""
    from sklearn.neighbors import NearestNeighbors

    if not len(x):
        return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
    k = min(neighbors, len(sample_x))
    index = NearestNeighbors(n_neighbors=k).fit(sample_x)
    _, near = index.kneighbors(x)
    votes = sample_labels[near]
    top = int(sample_labels.max()) + 1
    counts = np.stack([(votes == c).sum(axis=1) for c in range(top)], axis=1)
    return counts.argmax(axis=1).astype(np.int64), sample_layout[near].mean(axis=1).astype(np.float32)
