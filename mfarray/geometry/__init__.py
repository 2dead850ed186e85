"""Geometry of hypersurfaces in P^n: bare formulas on arrays (no Dask, no xarray)."""

from .charts import (chart_transition, elim_index, embedding_jacobian, local_indices,
                     omega_squared, patch_index, to_patch, transform_metric)
from .distance import fs_distance, fs_distance_block, nearest, unit_vectors
from .fubini_study import fs_metric_ambient, fs_metric_chart, hermitian_det, pullback
from .hypersurface import (Hypersurface, cubic_curve, dwork_quintic, fermat, fermat_quintic,
                           quartic_k3, surface_named)
from .local import ChartGeometry, chart_geometry
from .projection import Projection, fs_distance_rows, project_to_hypersurface
from . import measures

__all__ = [name for name in dir() if not name.startswith("_")]
