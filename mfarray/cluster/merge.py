"""Merging the clusters of later mini-batches into the first batch's (paper §3.1, steps 3-5, eq. 3.3).

The cost of joining cluster beta of batch I to cluster alpha of the first batch is the largest FS
distance (3.2) between their points,

    cost[alpha, beta] = max_{x in c^1_alpha, y in c^I_beta} d_FS(x, y),          (C, C)

computed by :func:`max_distances` in tiles of the (M_1, M_I) distance block, each tile reduced at
once to per-cluster maxima (never the block itself).  Then, for each later batch on its own:

- ``"paper"`` (:func:`merge_paper`): eq. (3.3) as the paper's steps 4-5 run it: for alpha = 0,
  1, ..., C-1 in turn, the not yet merged cluster beta of batch I with the smallest
  cost[alpha, beta] joins alpha (ties: the smaller beta).  Eq. (3.3) read literally takes the
  argmin over all beta for every alpha, which could give one batch cluster to two alphas and
  none to a third, leaving its points unclustered; steps 4-5 ("continue for all clusters") merge
  each batch cluster once, which is what this does.
- ``"assignment"`` (:func:`merge_assignment`): the one-to-one map minimising the summed cost
  (``scipy.optimize.linear_sum_assignment``), so an early alpha cannot take the cluster a later
  alpha needed more.

Both return ``target`` (C,) with ``target[beta] = alpha``, a permutation of 0..C-1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MERGE_RULES", "max_distances", "merge_paper", "merge_assignment", "merge_targets"]

MERGE_RULES = ("assignment", "paper")


def max_distances(u_ref: np.ndarray, labels_ref: np.ndarray, u: np.ndarray, labels: np.ndarray,
                  n_clusters: int, block_elements: int = 1 << 21) -> np.ndarray:
    """cost (C, C): cost[alpha, beta] = max FS distance between the points of reference cluster
    alpha (unit vectors u_ref (M_1, n+1) with labels_ref (M_1,)) and cluster beta of a later
    batch (u (M_I, n+1), labels (M_I,)); labels in 0..C-1, every cluster non-empty.  Tiles of
    about ``block_elements`` entries.

    d = arccos |<u, v>| (3.2) decreases with |<u, v>|, so the largest distance is the arccos of
    the smallest |<u, v>|: each tile is one complex GEMM and a min, with a single arccos per
    (alpha, beta) at the end -- the value of :func:`mfarray.geometry.distance.fs_distance_block_gemm` at that pair wherever
    the maximum is at least its ``near`` radius 0.5 (below it the arccos form's error,
    ~eps / sin d, is still < 1e-15 for d > 0.1: immaterial for choosing merges).
    """
    col_order = np.argsort(labels, kind="stable")
    v_t = u[col_order].T
    col_starts = np.searchsorted(labels[col_order], np.arange(n_clusters))
    low = np.full((n_clusters, n_clusters), np.inf)  # smallest |<u, v>| per cluster pair
    rows = max(1, block_elements // max(v_t.shape[1], 1))
    for alpha in range(n_clusters):
        ua = np.conj(u_ref[labels_ref == alpha])
        for s in range(0, ua.shape[0], rows):
            c = np.abs(ua[s : s + rows] @ v_t)  # (rows, M_I), columns by cluster
            np.minimum(low[alpha], np.minimum.reduceat(c.min(axis=0), col_starts), out=low[alpha])
    return np.arccos(np.minimum(low, 1.0))


def _check_cost(cost: Any) -> np.ndarray:
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square (C, C) matrix; got shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost must be finite (an empty cluster?)")
    return cost


def merge_paper(cost: Any) -> np.ndarray:
    """Eq. (3.3) in the paper's greedy order: target (C,), target[beta] = alpha.  For alpha = 0..C-1
    the remaining beta minimising cost[alpha, beta] (C, C) joins alpha (ties: the smaller beta)."""
    cost = _check_cost(cost)
    c = cost.shape[0]
    free = np.ones(c, dtype=bool)
    target = np.empty(c, dtype=np.int64)
    for alpha in range(c):
        beta = int(np.argmin(np.where(free, cost[alpha], np.inf)))
        target[beta] = alpha
        free[beta] = False
    return target


def merge_assignment(cost: Any) -> np.ndarray:
    """One-to-one optimal assignment on cost (C, C): target (C,), target[beta] = alpha, minimising
    sum_beta cost[target[beta], beta] (scipy.optimize.linear_sum_assignment)."""
    from scipy.optimize import linear_sum_assignment

    cost = _check_cost(cost)
    alpha, beta = linear_sum_assignment(cost)
    target = np.empty(cost.shape[0], dtype=np.int64)
    target[beta] = alpha
    return target


def merge_targets(cost: Any, merge: str) -> np.ndarray:
    """target (C,) of the merge rule named ``merge`` ("assignment" or "paper") on cost (C, C)."""
    if merge == "paper":
        return merge_paper(cost)
    if merge == "assignment":
        return merge_assignment(cost)
    raise ValueError(f"merge must be one of {MERGE_RULES}; got merge={merge!r}")
