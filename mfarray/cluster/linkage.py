"""Average-linkage agglomerative clustering of one mini-batch on FS distances (paper §3.1, step 2).

scikit-learn's ``AgglomerativeClustering(metric="precomputed", linkage="average")`` takes a
square (M, M) matrix, expands it to its upper triangle with ``np.triu_indices`` (two (M^2/2,)
int64 index arrays) and hands the condensed vector to ``scipy.cluster.hierarchy.linkage``;
at M = 10^4 that is 0.8 + 0.8 + 0.4 GB before scipy's own 0.4 GB working copy.  Here the
condensed vector (M (M-1) / 2,) is filled directly, row block by row block, from
:func:`mfarray.geometry.distance.fs_distance_block_gemm` (eq. 3.2 in the accurate form), and
reduced by the nearest-neighbour-chain algorithm (:func:`nn_chain_average`: scipy's
``linkage(method="average")`` step for step, the same Lance-Williams update in the same order,
so the same merges bit for bit, tested) compiled with numba *without* the GIL -- scipy's
holds it, so two batches on two threads ran one after the other -- and in place in the
condensed vector (no working copy): the same tree, at 0.4 GB instead of 2.4 GB
(``tests/test_cluster.py`` checks the labels against scikit-learn's).  The tree is then cut
into C clusters by undoing its last C - 1 merges, as scikit-learn's ``_hc_cut`` does.

Labels are canonical: clusters numbered 0..C-1 in the order of their first point.
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry.distance import fs_distance_block_gemm, unit_vectors

try:  # numba is a dependency; without it the reduction runs on scipy (holding the GIL)
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

__all__ = ["unit_points", "condensed_distances", "cut_tree", "canonical_labels", "average_linkage_labels",
           "nn_chain_average"]

BLOCK_ELEMENTS = 1 << 21  # distances per tile (16 MB): the temporaries of every blockwise loop here


def unit_points(z: np.ndarray, name: str = "z") -> np.ndarray:
    """Unit representatives u = z / |z| (n, n+1) of homogeneous points z (n, n+1); ValueError
    naming ``name`` for NaN/inf coordinates or zero vectors."""
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n_points, n+1) with n >= 1; got shape {z.shape}")
    u = unit_vectors(z.astype(np.complex128, copy=False))
    if not np.all(np.isfinite(u)):
        raise ValueError(f"{name} contains NaN/inf coordinates or zero vectors (not points of P^n)")
    return u


def condensed_distances(u: np.ndarray, block_elements: int = BLOCK_ELEMENTS) -> np.ndarray:
    """FS distances (3.2) between all pairs i < j of unit vectors u (M, n+1), in scipy's condensed
    order (M (M-1) / 2,) float64, computed in row blocks of about ``block_elements`` entries
    (never the (M, M) matrix)."""
    m = u.shape[0]
    out = np.empty(m * (m - 1) // 2, dtype=np.float64)
    rows = max(1, block_elements // max(m, 1))
    pos = 0
    for a in range(0, m - 1, rows):
        b = min(m - 1, a + rows)
        d = fs_distance_block_gemm(u[a:b], u[a + 1 :])  # (b - a, m - a - 1); row i needs j > i
        for i in range(a, b):
            seg = d[i - a, i - a :]
            out[pos : pos + seg.shape[0]] = seg
            pos += seg.shape[0]
    return out


def _nn_chain(D, n, Z):  # pragma: no cover - compiled; the Python original is only a fallback
    """The nearest-neighbour chain with average linkage on the condensed distances D (n (n-1)/2,),
    updated in place; Z (n - 1, 4) <- (x, y, distance, size) in the order found (x < y, the
    surviving index y).  scipy.cluster._hierarchy.nn_chain with _average, line for line."""
    size = np.ones(n, dtype=np.int64)
    chain = np.empty(n, dtype=np.int64)
    length = 0
    for k in range(n - 1):
        if length == 0:
            length = 1
            for i in range(n):
                if size[i] > 0:
                    chain[0] = i
                    break
        while True:
            x = chain[length - 1]
            y = -1
            if length > 1:  # prefer the previous element of the chain: no cycles
                y = chain[length - 2]
                lo, hi = (x, y) if x < y else (y, x)
                best = D[n * lo - (lo * (lo + 1)) // 2 + (hi - lo - 1)]
            else:
                best = math.inf
            for i in range(n):
                if size[i] == 0 or i == x:
                    continue
                lo, hi = (x, i) if x < i else (i, x)
                d = D[n * lo - (lo * (lo + 1)) // 2 + (hi - lo - 1)]
                if d < best:
                    best = d
                    y = i
            if length > 1 and y == chain[length - 2]:
                break
            chain[length] = y
            length += 1
        length -= 2
        if x > y:
            x, y = y, x
        nx, ny = size[x], size[y]
        Z[k, 0], Z[k, 1], Z[k, 2], Z[k, 3] = x, y, best, nx + ny
        size[x] = 0
        size[y] = nx + ny
        for i in range(n):
            ni = size[i]
            if ni == 0 or i == y:
                continue
            lo, hi = (i, x) if i < x else (x, i)
            ix = n * lo - (lo * (lo + 1)) // 2 + (hi - lo - 1)
            lo, hi = (i, y) if i < y else (y, i)
            iy = n * lo - (lo * (lo + 1)) // 2 + (hi - lo - 1)
            D[iy] = (nx * D[ix] + ny * D[iy]) / (nx + ny)


if numba is not None:
    _nn_chain = numba.njit(nogil=True, cache=True, error_model="numpy")(_nn_chain)


def _relabel(Z: np.ndarray, n: int) -> None:
    """scipy's ``label``: the children of merge k as the ids of the clusters they are then (node
    n + j for the cluster made by merge j, union-find), smaller first; sizes recomputed."""
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1, dtype=np.int64)

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for k in range(n - 1):
        a, b = find(int(Z[k, 0])), find(int(Z[k, 1]))
        Z[k, 0], Z[k, 1] = (a, b) if a < b else (b, a)
        parent[a] = parent[b] = n + k
        size[n + k] = size[a] + size[b]
        Z[k, 3] = size[n + k]


def nn_chain_average(D: np.ndarray, n: int) -> np.ndarray:
    """Average-linkage tree of n points from their condensed distances D (n (n-1)/2,) float64,
    CONSUMED (overwritten by the reduction): the linkage matrix (n - 1, 4) of
    ``scipy.cluster.hierarchy.linkage(D, method="average")``, bit for bit -- merges sorted by
    height (stable), children as cluster ids (node n + k made by merge k), sizes.  Compiled
    without the GIL (numba), so row batches reduce in parallel on threads."""
    if D.dtype != np.float64 or D.ndim != 1 or D.shape[0] != n * (n - 1) // 2:
        raise ValueError(f"D must be the condensed float64 distances of {n} points, shape ({n * (n - 1) // 2},); "
                         f"got {D.dtype} {D.shape}")
    Z = np.empty((max(n - 1, 0), 4))
    if n > 1:
        _nn_chain(D, n, Z)
    Z = Z[np.argsort(Z[:, 2], kind="mergesort")]
    _relabel(Z, n)
    return Z


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel (n,) cluster labels 0..C-1 in the order of each cluster's first point."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.shape[0], dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.shape[0])
    return rank[inverse.reshape(-1)]


def cut_tree(merges: np.ndarray, m: int, n_clusters: int) -> np.ndarray:
    """Labels (m,) of the n_clusters clusters left by undoing the last n_clusters - 1 merges of a
    scipy linkage matrix ``merges`` (m - 1, 4) (merge k creates node m + k), canonical order."""
    if not 1 <= n_clusters <= m:
        raise ValueError(f"cannot cut {m} points into {n_clusters} clusters")
    children = merges[:, :2].astype(np.int64)
    label = np.full(2 * m - 1, -1, dtype=np.int64)
    kept = m - n_clusters  # merges 0 .. kept-1 stay
    nxt = 0
    if n_clusters == 1:
        label[2 * m - 2] = 0
        nxt = 1
    for k in range(m - 2, -1, -1):
        node = m + k
        for c in children[k]:
            if k < kept:
                label[c] = label[node]
            elif c < m or c - m < kept:  # a root of the cut forest
                label[c] = nxt
                nxt += 1
    return canonical_labels(label[:m])


def average_linkage_labels(z: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster labels (M,) int64 of points z (M, n+1): average linkage on FS distances (3.2), cut
    into ``n_clusters`` clusters, numbered in the order of their first point.  Memory: the
    condensed distances, 4 M^2 bytes (reduced in place)."""
    u = unit_points(z)
    m = u.shape[0]
    if n_clusters == 1 or m == 1:
        return np.zeros(m, dtype=np.int64)
    if n_clusters >= m:
        return np.arange(m, dtype=np.int64)
    merges = nn_chain_average(condensed_distances(u), m)
    return cut_tree(merges, m, n_clusters)
