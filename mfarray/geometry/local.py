"""Everything about a point of X in one chart, composed from the bare formulas.

:func:`chart_geometry` is the single place where the per-point quantities of a point set are
computed (the sampler, ``points_from_z`` and the chart tools all call it), so that the weights,
Omega and g_FS of every point set in mfarray come from the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from .. import backend
from . import charts, fubini_study

if TYPE_CHECKING:
    from .hypersurface import Hypersurface

Array = Any  # a NumPy, CuPy or Dask array


class ChartGeometry(NamedTuple):
    """Per-point geometry in one chart; N points, n+1 homogeneous coordinates, k = n-1."""

    z: object  # (N, n+1) affine representative, z[patch] = 1
    patch: object  # (N,) int
    elim: object  # (N,) int
    local: object  # (N, k) int, the local coordinates' indices
    dp: object  # (N, n+1) gradient of p at z
    slopes: object  # (N, k) dz_elim / dx_b
    omega2: object  # (N,) |Omega|^2
    g_fs: object  # (N, k, k) pulled-back Fubini-Study metric
    det_g_fs: object  # (N,)


def chart_geometry(surface: Hypersurface, z: Array, patch: int | Array | None = None,
                   elim: int | Array | None = None) -> ChartGeometry:
    """Chart data of points z (N, n+1) on X.

    ``patch``/``elim`` default to the paper's choice (largest |z_i|; largest |dp/dz_j| among
    the others); give integers or (N,) arrays to force a chart.  Points must lie on X and
    the chart must be valid there (z_patch != 0, dp/dz_elim != 0); callers validate.
    """
    surface.require_dimension("chart geometry")
    xp = backend.namespace(z)
    n1 = surface.n_ambient
    if patch is None:
        patch = charts.patch_index(z)
    else:
        patch = xp.broadcast_to(xp.asarray(patch), z.shape[:-1])
    za = charts.to_patch(z, patch)
    dp = surface.gradient(za)
    if elim is None:
        elim = charts.elim_index(dp, patch)
    else:
        elim = xp.broadcast_to(xp.asarray(elim), z.shape[:-1])
    local = charts.local_indices(n1, patch, elim)
    slopes = charts.implicit_slopes(dp, elim, local)
    g = fubini_study.fs_metric_chart(za, slopes, elim, local)
    return ChartGeometry(
        z=za,
        patch=patch,
        elim=elim,
        local=local,
        dp=dp,
        slopes=slopes,
        omega2=charts.omega_squared(dp, elim),
        g_fs=g,
        det_g_fs=fubini_study.hermitian_det(g),
    )
