"""Clustering point sets on X by FS distance (paper §3.1, eqs. 3.2, 3.3): the paper's batched
procedure as a lazy stage, its quality, and the data of the paper's Figure 2.

    cluster(points, size=5000, batch=10_000, merge="assignment" | "paper", seed=0)
        -> the point set with an integer ``cluster`` variable (lazy in, lazy out)
    cluster_quality(points, k=10) -> Dataset: mean intra-cluster FS distance, fraction of each
        point's k nearest neighbours in its own cluster, cluster sizes
    figure2_data(points, n=1000, clusters=10, batches=5) -> Dataset: a subsample's distance
        matrix in unclustered, batched and full-clustering order (mfarray.plots draws it)
        (matplotlib, optional)

Modules: ``linkage`` (one mini-batch: condensed FS distances, average linkage, the cut into C
clusters), ``merge`` (largest-distance cost summaries, the paper's greedy rule eq. 3.3 and the
optimal assignment), ``batched`` (configuration, the batch plan, the Dask graph, ``cluster``),
``quality`` (cluster_quality, k nearest neighbours streamed), ``figure`` (Figure 2).
Layer: above ``pointset`` (uses geometry.distance and pointset), below everything else.
"""

from .batched import (
    CLUSTER_STREAM,
    BatchPlan,
    ClusterConfig,
    cluster,
    cluster_labels,
    plan_batches,
)
from .figure import figure2_data
from .linkage import average_linkage_labels
from .merge import MERGE_RULES, max_distances, merge_assignment, merge_paper
from .quality import cluster_quality, k_nearest

__all__ = [
    "cluster", "cluster_labels", "ClusterConfig", "BatchPlan", "plan_batches", "CLUSTER_STREAM",
    "average_linkage_labels", "MERGE_RULES", "max_distances", "merge_paper", "merge_assignment",
    "cluster_quality", "k_nearest", "figure2_data",
]
