"""How good a clustering is, by FS distance (3.2): :func:`cluster_quality`.

- mean intra-cluster distance: the mean of d_FS(x, y) over all ordered pairs x != y in the same
  cluster, sum_c S_c / sum_c n_c (n_c - 1) (S_c the sum over cluster c's pairs), and per cluster;
  computed cluster by cluster in tiles (sum_c n_c^2 distances, never (N, N));
- k nearest neighbours in own cluster: for each query point, the fraction of its k nearest other
  points (FS distance, streamed by :func:`k_nearest`) in its own cluster, averaged;
- cluster sizes.
Smaller intra-cluster distance and a larger neighbour fraction are better.  The paper's cut of
the kernel into per-cluster blocks neglects the pairs across clusters, so the neighbour fraction
is the share of each point's closest (most strongly coupled) neighbours that a clustered flow keeps.
"""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

from .. import backend
from ..geometry.distance import fs_distance_block_gemm
from ..pointset.charts import _require_point_set
from .linkage import BLOCK_ELEMENTS, unit_points

__all__ = ["k_nearest", "intra_cluster_sums", "cluster_quality", "QUALITY_STREAM"]

QUALITY_STREAM = 0x51554C54  # "QULT": the query subsample's random stream


def k_nearest(u_query: np.ndarray, u_ref: np.ndarray, k: int, exclude: np.ndarray | None = None,
              block_elements: int = BLOCK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Indices (nq, k) and FS distances (nq, k) of the k nearest reference points of each query
    point (unit vectors u_query (nq, m), u_ref (n, m)), nearest first; ``exclude`` (nq,) the index
    of a reference point each query must not count (itself).  The reference set is streamed in
    blocks (about ``block_elements`` distances at once), keeping a running top k."""
    nq, n = u_query.shape[0], u_ref.shape[0]
    avail = n - (exclude is not None)
    if not 1 <= k <= avail:
        raise ValueError(f"k must be in 1..{avail} (the other points); got k={k!r}")
    q_rows = max(1, min(nq, 1024))
    ref_rows = max(k, block_elements // q_rows)
    best_i = np.empty((nq, k), dtype=np.int64)
    best_d = np.empty((nq, k))
    for qs in range(0, nq, q_rows):
        uq = u_query[qs : qs + q_rows]
        bd = np.full((uq.shape[0], 0), np.inf)
        bi = np.zeros((uq.shape[0], 0), dtype=np.int64)
        for rs in range(0, n, ref_rows):
            d = fs_distance_block_gemm(uq, u_ref[rs : rs + ref_rows])
            if exclude is not None:
                ex = exclude[qs : qs + q_rows] - rs
                hit = (ex >= 0) & (ex < d.shape[1])
                d[np.nonzero(hit)[0], ex[hit]] = np.inf
            idx = np.broadcast_to(np.arange(rs, rs + d.shape[1]), d.shape)
            cd, ci = np.concatenate([bd, d], axis=1), np.concatenate([bi, idx], axis=1)
            kk = min(k, cd.shape[1])
            part = np.argpartition(cd, kk - 1, axis=1)[:, :kk]
            bd, bi = np.take_along_axis(cd, part, 1), np.take_along_axis(ci, part, 1)
        order = np.argsort(bd, axis=1, kind="stable")
        best_d[qs : qs + q_rows] = np.take_along_axis(bd, order, 1)
        best_i[qs : qs + q_rows] = np.take_along_axis(bi, order, 1)
    return best_i, best_d


def intra_cluster_sums(u: np.ndarray, labels: np.ndarray, n_clusters: int,
                       block_elements: int = BLOCK_ELEMENTS) -> np.ndarray:
    """S (C,): the sum of d_FS over the ordered pairs of distinct points of each cluster (the
    diagonal d(x, x) is exactly 0), in tiles of about ``block_elements`` distances."""
    sums = np.zeros(n_clusters)
    for c in range(n_clusters):
        uc = u[labels == c]
        rows = max(1, block_elements // max(uc.shape[0], 1))
        for s in range(0, uc.shape[0], rows):
            sums[c] += fs_distance_block_gemm(uc[s : s + rows], uc).sum()
    return sums


def cluster_quality(points: xr.Dataset, k: int = 10, queries: int | None = None, seed: int = 0,
                    labels: str = "cluster") -> xr.Dataset:
    """Quality of the clustering ``points[labels]`` (point,) by FS distance: a Dataset with

        size              (cluster,) int    points per cluster
        intra_distance    (cluster,) float  mean d_FS over the cluster's pairs of distinct points
        knn_fraction      (cluster,) float  mean over the cluster's query points of the fraction of
                                            their k nearest other points in the cluster
        mean_intra_distance ()       float  sum_c S_c / sum_c n_c (n_c - 1), all intra pairs alike
        knn_in_cluster      ()       float  the neighbour fraction over all query points

    ``queries``: None evaluates the neighbours of every point (N^2 distances, streamed); an integer
    a seeded random subsample of that many query points (their neighbours still among all N).
    Cost sum_c n_c^2 + queries N distances; memory O(N + tiles).  Computed at once (a lazy set is
    computed in one pass: z and the labels together).
    """
    _require_point_set(points, "points", needs=("z",))
    if labels not in points.variables:
        raise ValueError(f"points has no {labels!r} labels: cluster it first, mfarray.cluster(points, ...), or pass "
                         "labels= the name of its integer (point,) labels")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (neighbours); got k={k!r}")
    z, lab = dask.compute(points["z"].transpose("point", ...).data, points[labels].data)
    u = unit_points(backend.to_numpy(z), "points.z")
    lab = np.asarray(backend.to_numpy(lab))
    n = u.shape[0]
    if lab.shape != (n,) or lab.dtype.kind not in "iu" or (n and lab.min() < 0):
        raise ValueError(f"points.{labels} must be non-negative integer labels (point,) (mf.cluster's); got "
                         f"dtype {lab.dtype}, shape {lab.shape}")
    lab = lab.astype(np.int64)
    n_clusters = int(lab.max()) + 1 if n else 0
    sizes = np.bincount(lab, minlength=n_clusters)
    if np.any(sizes == 0):
        raise ValueError(f"points.{labels} leaves clusters {np.nonzero(sizes == 0)[0].tolist()} empty")
    if queries is None:
        q = np.arange(n)
    else:
        if not isinstance(queries, (int, np.integer)) or not 1 <= queries <= n:
            raise ValueError(f"queries must be None or an integer in 1..{n}; got queries={queries!r}")
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(QUALITY_STREAM,)))
        q = np.sort(rng.choice(n, size=int(queries), replace=False))
    sums = intra_cluster_sums(u, lab, n_clusters)
    nn, _ = k_nearest(u[q], u, int(k), exclude=q)
    pairs = sizes * (sizes - 1)
    frac = (lab[nn] == lab[q][:, None]).mean(axis=1)
    per_cluster = np.bincount(lab[q], weights=frac, minlength=n_clusters)
    counted = np.bincount(lab[q], minlength=n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        intra = np.where(pairs > 0, sums / np.maximum(pairs, 1), np.nan)
        knn = np.where(counted > 0, per_cluster / np.maximum(counted, 1), np.nan)
    ds = xr.Dataset(
        {
            "size": ("cluster", sizes.astype(np.int64), {"description": "points in the cluster"}),
            "intra_distance": ("cluster", intra, {
                "description": "mean FS distance (eq. 3.2) over the cluster's ordered pairs of distinct points "
                               "(NaN for a single point)"}),
            "knn_fraction": ("cluster", knn, {
                "description": f"mean over the cluster's query points of the fraction of their {k} nearest "
                               "other points (FS distance) in the same cluster (NaN: no query point)"}),
            "mean_intra_distance": ((), float(sums.sum() / max(pairs.sum(), 1)), {
                "description": "mean FS distance over all ordered pairs of distinct points in the same cluster"}),
            "knn_in_cluster": ((), float(frac.mean()), {
                "description": f"fraction of each query point's {k} nearest other points in its own cluster, "
                               "averaged over the query points"}),
        },
        coords={"cluster": ("cluster", np.arange(n_clusters), {"description": "cluster label"})},
        attrs={"k": int(k), "queries": int(q.shape[0]), "n_points": int(n), "n_clusters": n_clusters,
               "labels": labels, "seed": int(seed)},
    )
    return ds

