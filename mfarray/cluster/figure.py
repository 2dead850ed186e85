"""The data of the paper's Figure 2: a subsample's FS distance matrix (3.2) in unclustered,
batched-clustering and full-clustering order (drawn by :func:`mfarray.plots.plot_figure2`).

Paper: 1000 points, 10 clusters, 5 batches for the batched clustering.  Ordered by cluster, a
good clustering shows dark (small-distance) blocks on the diagonal.
"""

from __future__ import annotations

import math

import dask
import numpy as np
import xarray as xr

from .. import backend
from ..geometry.distance import fs_distance
from ..pointset.charts import _require_point_set
from .batched import cluster

__all__ = ["figure2_data", "size_for_clusters", "FIGURE2_STREAM", "ORDERS"]

FIGURE2_STREAM = 0x46494732  # "FIG2": the subsample's random stream
ORDERS = ("unclustered", "batched", "full")


def size_for_clusters(n: int, clusters: int) -> int:
    """The whole target size s whose C = max(1, round(n / s)) (:func:`cluster`) is ``clusters``;
    ValueError where none is (round(n / s) skips values once s is small)."""
    s = int(n // (clusters - 0.5)) if clusters > 1 else n
    for size in (n // clusters, s):  # n // clusters where it works (1000 // 10 = 100, the paper's ratio)
        if size >= 1 and max(1, math.floor(n / size + 0.5)) == clusters:
            return size
    near = sorted({max(1, math.floor(n / t + 0.5)) for t in range(max(1, s - 1), s + 3)})
    raise ValueError(f"clusters={clusters} of n={n} points: no whole cluster size s gives round(n / s) = {clusters} "
                     f"(mf.cluster's rule); choose one of {near} or another n")


def figure2_data(points: xr.Dataset, n: int = 1000, clusters: int = 10, batches: int = 5,
                 merge: str = "assignment", seed: int = 0) -> xr.Dataset:
    """Figure 2's data: ``distance`` (order, row, col) float, the FS distances of a random
    subsample of ``n`` points (n, n), with rows and columns in three orders (``order`` =
    unclustered, batched, full): as drawn, and stably sorted by the labels of
    ``cluster(sub, size=s, batch=ceil(n / batches))`` (s the size that makes exactly ``clusters``
    clusters; refused where none does) and of the full clustering
    (batch = n).  Also ``point`` (order, row), the input's point coordinate of each row, and
    ``cluster`` (order, row), its label (-1 in the unclustered order).  Memory 3 n^2 floats.
    """
    _require_point_set(points, "points", needs=("z",))
    total = points.sizes["point"]
    for name, value in (("n", n), ("clusters", clusters), ("batches", batches)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {name}={value!r}")
    if n > total:
        raise ValueError(f"n={n} exceeds the {total} points of the set")
    if clusters > n // batches:
        raise ValueError(f"each of the {batches} batches of {n // batches} points must hold {clusters} clusters")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(FIGURE2_STREAM,)))
    pick = np.sort(rng.choice(total, size=n, replace=False))
    sub = points.isel(point=pick)
    size = size_for_clusters(n, clusters)
    batch = max(size, -(-n // batches))
    batched = cluster(sub, size=size, batch=batch, merge=merge, seed=seed)["cluster"].data
    full = cluster(sub, size=size, batch=n, merge=merge, seed=seed)["cluster"].data
    z, batched, full = dask.compute(sub["z"].transpose("point", ...).data, batched, full)
    z, batched, full = (backend.to_numpy(a) for a in (z, batched, full))
    d = fs_distance(z, method="gemm")
    orders = [np.arange(n), np.argsort(batched, kind="stable"), np.argsort(full, kind="stable")]
    labels = [np.full(n, -1), batched[orders[1]], full[orders[2]]]
    point = sub["point"].values if "point" in sub.coords else pick
    return xr.Dataset(
        {
            "distance": (("order", "row", "col"), np.stack([d[np.ix_(o, o)] for o in orders]), {
                "description": "FS distance (eq. 3.2) between the subsample's points, rows and columns in the order"}),
            "point": (("order", "row"), np.stack([point[o] for o in orders]), {
                "description": "the input point set's point coordinate of each row"}),
            "cluster": (("order", "row"), np.stack(labels).astype(np.int64), {
                "description": "the row's cluster in that order's clustering (-1: unclustered)"}),
        },
        coords={"order": ("order", list(ORDERS), {
            "description": "row order: as drawn, by batched-clustering label, by full-clustering label"})},
        attrs={"n": int(n), "clusters": int(clusters), "batches": int(batches), "size": int(size),
               "batch": int(batch), "merge": merge, "seed": int(seed),
               "title": "paper Figure 2: FS distances with no, batched and full clustering"},
    )

