"""mfarray: metric flows with neural networks, array-first (NumPy/CuPy + Dask + xarray).

Layers (lower never imports higher): backend <- geometry <- sampling/pointset <- kernels
<- flows <- pipeline <- cli.  See docs/architecture.md.
"""

__version__ = "0.1.0"

from .geometry import (Hypersurface, cubic_curve, dwork_quintic, fermat, fermat_quintic,
                       fs_distance, nearest, quartic_k3)
from . import kernels, losses
from .flows import FlowError, evaluate, kernel_flow
from .io import open_zarr, to_zarr
from .pointset import (chart_counts, eta, express_in_chart, kappa, points_from_z, sample_points, select_chart,
                       sigma_measure, surface_of, to_chart)

__all__ = [
    "Hypersurface", "fermat", "fermat_quintic", "dwork_quintic", "cubic_curve", "quartic_k3",
    "fs_distance", "nearest", "sample_points", "points_from_z", "select_chart", "to_chart", "express_in_chart",
    "kernel_flow", "evaluate", "FlowError", "kernels", "losses",
    "chart_counts", "sigma_measure", "kappa", "eta", "surface_of", "to_zarr", "open_zarr",
]
