"""The paper's batched clustering (§3.1, steps 1-5, eq. 3.3) as a lazy stage: :func:`cluster`.

1. The N points are put in a fixed random order (a permutation drawn from
   ``SeedSequence(seed, spawn_key=(CLUSTER_STREAM,))``) and cut into B = ceil(N / batch)
   mini-batches of nearly equal size (``numpy.array_split``), each a uniform subsample of the
   set whatever order it came in (after ``select_chart`` or ``split`` the stored order is not
   random), so every batch sees every region of X and its clusters have partners in the first
   batch's.
2. Each batch is cut into C = max(1, round(N / size)) clusters by average linkage on its
   (M, M) FS distances (3.2) (:mod:`mfarray.cluster.linkage`, the tree of scikit-learn's
   ``AgglomerativeClustering(metric="precomputed", linkage="average")``).
3-5. The clusters of batches 2..B are merged into the first batch's clusters by their largest
   distance (eq. 3.3; :mod:`mfarray.cluster.merge`), by the paper's greedy order or by an
   optimal one-to-one assignment.

With batch >= N there is one batch: the full (unbatched) clustering.  Memory: one batch's
condensed distances and scipy's copy (8 M^2 bytes, 0.8 GB at M = 10^4) per running batch, and
(C, C) cost summaries; never an (N, N) matrix.  Every batch clustering and every cost summary is
one Dask task (``dask.delayed``), so a lazy point set gives a lazy ``cluster`` variable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from .. import backend
from ..pointset.charts import _require_point_set
from ..pointset.provenance import derived_call
from .linkage import average_linkage_labels, unit_points
from .merge import MERGE_RULES, max_distances, merge_targets

__all__ = ["ClusterConfig", "BatchPlan", "CLUSTER_STREAM", "CLUSTER_DOC", "plan_batches", "cluster_labels",
           "cluster"]

CLUSTER_STREAM = 0x434C5553  # "CLUS": the batch permutation never shares a stream with sampling or split

CLUSTER_DOC = {
    "description": "cluster of the point (0..C-1): the paper's batched average-linkage clustering on FS "
                   "distances (section 3.1, eq. 3.3), mfarray.cluster",
}


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class ClusterConfig:
    """The settings of :func:`cluster`, checked once.

    size   target points per cluster (paper: about 5000); C = max(1, round(N / size))
    batch  points per mini-batch M (paper: 10,000), at least ``size``
    merge  "assignment" (one-to-one optimal, the default) or "paper" (eq. 3.3, greedy)
    seed   the batch permutation's seed
    """

    size: int = 5000
    batch: int = 10_000
    merge: str = "assignment"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "batch"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"{name} must be a positive integer (points); got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be a positive integer (points); got {name}={value!r}")
        if self.batch < self.size:
            raise ValueError(f"batch must be at least size (a mini-batch holds whole clusters); got "
                             f"batch={self.batch}, size={self.size}")
        if self.merge not in MERGE_RULES:
            raise ValueError(f"merge must be one of {MERGE_RULES}; got merge={self.merge!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got seed={self.seed!r}")
        for name in ("size", "batch", "seed"):  # NumPy integers as Python ones: they go into JSON attrs
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass(frozen=True)
class BatchPlan:
    """Which points form which mini-batch: ``order`` (N,) the permutation, batch I is
    ``order[bounds[I]:bounds[I+1]]``; ``n_clusters`` C."""

    order: np.ndarray
    bounds: tuple[int, ...]
    n_clusters: int

    @property
    def n_batches(self) -> int:
        return len(self.bounds) - 1

    def batch(self, i: int) -> np.ndarray:
        return self.order[self.bounds[i] : self.bounds[i + 1]]


def plan_batches(n: int, config: ClusterConfig) -> BatchPlan:
    """The mini-batches of N points under ``config``: B = ceil(N / batch) batches of sizes differing
    by at most one, in a random order from the seed; C = max(1, round(N / size))."""
    if n < 1:
        raise ValueError("points is empty: there is nothing to cluster")
    n_clusters = max(1, int(math.floor(n / config.size + 0.5)))
    n_batches = max(1, math.ceil(n / config.batch))
    rng = np.random.default_rng(np.random.SeedSequence(int(config.seed), spawn_key=(CLUSTER_STREAM,)))
    order = rng.permutation(n) if n_batches > 1 else np.arange(n)
    bounds = tuple(int(b) for b in np.linspace(0, n, n_batches + 1).round().astype(np.int64))
    smallest = min(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    if smallest < n_clusters:
        raise ValueError(f"{n} points in {n_batches} batches of {smallest}+ points cannot each hold "
                         f"C = round(N / size) = {n_clusters} clusters: raise size or batch")
    return BatchPlan(order, bounds, n_clusters)


def _batch_task(z: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors (M, n+1), labels (M,)) of one mini-batch z (M, n+1)."""
    with backend.one_blas_thread():
        u = unit_points(backend.to_numpy(z), "points.z")
        return u, average_linkage_labels(u, n_clusters)


def _cost_task(ref: tuple, later: tuple, n_clusters: int) -> np.ndarray:
    with backend.one_blas_thread():
        return max_distances(ref[0], ref[1], later[0], later[1], n_clusters)


def _assemble(order: np.ndarray, bounds: tuple, batches: list, costs: list, merge: str) -> np.ndarray:
    """Labels (N,) in the points' own order: batch 1's clusters, later batches' mapped onto them."""
    labels = np.empty(order.shape[0], dtype=np.int64)
    labels[order[bounds[0] : bounds[1]]] = batches[0][1]
    for i, cost in enumerate(costs, start=1):
        labels[order[bounds[i] : bounds[i + 1]]] = merge_targets(cost, merge)[batches[i][1]]
    return labels


def cluster_labels(z: Any, config: ClusterConfig, plan: BatchPlan | None = None) -> Any:
    """Cluster labels (N,) int64 of homogeneous points z (N, n+1) (NumPy, CuPy or Dask) under
    ``config``: a Dask array chunked like z's rows for Dask z (nothing computed), else NumPy.

    The graph: one task per batch (labels), one per later batch (its (C, C) cost against the
    first batch), one assembling the labels.
    """
    lazy = backend.is_dask(z)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"points.z must have shape (point, ambient) with at least 2 coordinates; got {z.shape}")
    plan = plan_batches(int(z.shape[0]), config) if plan is None else plan
    c = plan.n_clusters
    batch_task = dask.delayed(_batch_task, pure=True)
    cost_task = dask.delayed(_cost_task, pure=True)
    batches = []
    for i in range(plan.n_batches):
        batches.append(batch_task(z[plan.batch(i)], c))
    costs = [cost_task(batches[0], b, c) for b in batches[1:]]
    labels = dask.delayed(_assemble, pure=True)(plan.order, plan.bounds, batches, costs, config.merge)
    if not lazy:
        return labels.compute()
    import dask.array as da

    out = da.from_delayed(labels, shape=(int(z.shape[0]),), dtype=np.int64)
    return out.rechunk((z.chunks[0],))


def cluster(points: xr.Dataset, size: int = 5000, batch: int = 10_000, merge: str = "assignment",
            seed: int = 0) -> xr.Dataset:
    """The point set with an integer ``cluster`` variable (point,): the paper's batched clustering.

    Mini-batches of ``batch`` points (a fixed random permutation from ``seed``, cut into
    ceil(N / batch) nearly equal parts) are each cut into C = max(1, round(N / size)) clusters by
    average linkage on their FS distances (3.2); the clusters of later batches join the first
    batch's by their largest distance (eq. 3.3): ``merge="paper"`` in the paper's greedy order,
    ``"assignment"`` by an optimal one-to-one assignment on the same cost: the default, measured
    better on quintic points in every run (benchmarks/RESULTS.md "Batched clustering"): at 10^4
    points, C = 20, mean of 3 seeds, 10-NN in own cluster 0.171 vs 0.161 (batch 1000) and 0.236
    vs 0.224 (batch 2000), mean intra-cluster FS distance 1.082 vs 1.093 and 1.067 vs 1.078; at
    10^5 with the paper's settings 0.152 vs 0.151 and 1.111 vs 1.114.  Both fall well short of
    the full clustering (10-NN 0.60 at 10^4): the largest distance between two clusters of
    hundreds of points is within a few percent of pi/2 for almost every pair, so eq. (3.3)'s cost
    barely tells partners apart.  ``batch >= N`` is the full clustering.
    Every point is in exactly one cluster; labels 0..C-1 are the first batch's clusters in the
    order of their first point in the batch.

    Lazy in, lazy out: for a Dask-backed set the ``cluster`` variable is a Dask array (each
    mini-batch one task) chunked like ``point``.  Memory 8 M^2 bytes per running batch (M = batch),
    never (N, N).  Attributes: ``cluster`` = {size, batch, merge, seed, n_clusters, n_batches},
    ``call`` wrapped around the input's.
    """
    config = ClusterConfig(size=size, batch=batch, merge=merge, seed=seed)
    _require_point_set(points, "points", needs=("z",))
    z = points["z"]
    if "point" not in z.dims or z.ndim != 2:
        raise ValueError(f"points.z must have dims (point, ambient); got {z.dims}")
    z = z.transpose("point", ...)
    plan = plan_batches(int(z.shape[0]), config)
    labels = cluster_labels(z.data, config, plan)
    out = points.assign(cluster=xr.Variable(("point",), labels, attrs=dict(CLUSTER_DOC)))
    out.attrs["cluster"] = {**asdict(config), "n_clusters": plan.n_clusters, "n_batches": plan.n_batches}
    out.attrs["call"] = derived_call("mfarray.cluster", points, size=size, batch=batch, merge=merge, seed=seed)
    return out
