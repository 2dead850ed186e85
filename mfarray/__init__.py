"""mfarray: metric flows with neural networks, array-first (NumPy/CuPy + Dask + xarray).

Layers, lowest first (a module never imports one listed after it):
backend, io, linalg <- geometry <- roots, sampling <- pointset <- cluster (batched
clustering, its quality, Figure 2) <- networks <- optim (Adam, mini-batches) <- kernels
(specs, kernels, operators) <- losses <- kahler (sections, phi-models, algebraic metrics,
phi-networks) <- flows (sites, models, integrate, results, entry
points, evaluate) <- tune <- experiments <- plots <- study <- cli.  See docs/architecture.md.
"""

__version__ = "0.1.0"

from .geometry import (Hypersurface, cubic_curve, dwork_quintic, fermat, fermat_quintic,
                       fs_distance, nearest, quartic_k3)
from . import backend, kahler, kernels, linalg, losses
from .cluster import cluster, cluster_quality, figure2_data
from .flows import FlowError, clustered_flow, evaluate, kahler_flow, kernel_flow, network_flow, predict
from .io import open_zarr, to_zarr
from . import plots, tune
from .plots import plot_figure2
from .pointset import (chart_counts, eta, express_in_chart, kappa, points_from_z, sample_points, select_chart,
                       sample_chart, sigma_measure, split, surface_of, to_chart)

__all__ = [
    "Hypersurface", "fermat", "fermat_quintic", "dwork_quintic", "cubic_curve", "quartic_k3",
    "fs_distance", "nearest", "sample_points", "points_from_z", "select_chart", "sample_chart", "split", "to_chart",
    "express_in_chart", "kernel_flow", "kahler_flow", "kahler", "clustered_flow", "network_flow", "predict", "evaluate", "FlowError",
    "kernels", "losses", "linalg", "chart_counts", "sigma_measure", "kappa", "eta", "surface_of", "to_zarr", "open_zarr",
    "cluster", "cluster_quality", "figure2_data", "plot_figure2", "plots", "tune",
]
