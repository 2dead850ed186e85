"""The Calabi-Yau measures of a point set: det g, kappa (B.10), eta and sigma (B.11).

Metrics g (point, row, col) are given in each point's own chart (the set's patch/elim) as NumPy,
Dask or DataArrays; default g_FS.  Given metrics must be valid (:mod:`mfarray.linalg`: finite,
Hermitian, positive definite, not numerically singular), else ValueError.  The floats
(:func:`kappa`, :func:`sigma_measure`) compute everything they need in one pass; the per-point
results (:func:`det_metric`, :func:`eta`) are lazy where an input is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from .. import backend, linalg
from ..geometry import measures
from .checks import require_point_values
from .charts import _as_metric, _point_coords, _require_point_set, _unify, surface_of

if TYPE_CHECKING:
    from .charts import Metrics

__all__ = ["det_metric", "kappa", "eta", "sigma_measure"]

ETA_DOC = {"description": "eta = det g / (kappa |Omega|^2) (B.11), kappa = E_w[det g / |Omega|^2] (B.10) over the "
                          "same points: 1 everywhere for the Calabi-Yau metric",
           "convention": "chart independent"}


def _valid_det_block(g: Any, name: str, block_info: list | None = None) -> Any:
    """det (n,) of one chunk of metrics (n, k, k), refused unless valid (``linalg`` rule)."""
    m = linalg.metrics(g)
    if m.n and not m.all_valid:
        start, stop = block_info[0]["array-location"][0] if block_info else (0, m.n)
        first = (np.flatnonzero(~backend.to_numpy(m.valid))[:5] + start).tolist()
        raise ValueError(
            f"{name}, in the chunk of points {start}..{stop - 1}: {linalg.describe_invalid(m)} "
            f"(positions within the chunk; in the whole set: points {first})"
        )
    return m.det


def _det(ds: xr.Dataset, g: Metrics | None) -> xr.DataArray:
    """det g (point,) of metrics g, lazy where g is; g_FS (None): the stored det_g_fs.

    A given g must be valid metrics (``mfarray.linalg``: finite, Hermitian, positive definite,
    not numerically singular), else ValueError with a count and the reason: when g is computed,
    here; when g is lazy, when the result is computed (naming the first failing chunk).  det is
    the product of the LDL pivots.
    """
    _require_point_set(ds, needs=("det_g_fs", "weight"))
    if g is None:
        return ds["det_g_fs"]
    g = _as_metric(ds, g)
    if backend.is_dask(g.data):
        det = g.data.rechunk({1: -1, 2: -1}).map_blocks(
            _valid_det_block, "g", drop_axis=(1, 2), dtype=np.float64, meta=np.empty((0,), np.float64)
        )
    else:
        det = linalg.require_valid(g.data, "g").det
    return xr.DataArray(det, dims=("point",), coords=_point_coords(ds), name="det_g",
                        attrs={"description": "det g (real, > 0) of the given metrics, in each point's own chart",
                               "convention": "product of the LDL pivots; same normalisation as g"})


def det_metric(ds: xr.Dataset, g: Metrics | None = None) -> xr.DataArray:
    """det g (point,) per point (real), g given in each point's own chart (default g_FS).

    g: NumPy, Dask or a DataArray (point, row, col); it must be a valid metric at every point
    (the rule of ``mfarray.linalg``), else ValueError.  Lazy where ds or g is.
    """
    return _unify(_det(ds, g), ds["weight"])[0]


def _require_cy(ds: xr.Dataset, what: str) -> None:
    surface_of(ds).require_calabi_yau(what)


def _cy_inputs(ds: xr.Dataset, g: Metrics | None, what: str) -> tuple[xr.DataArray, ...]:
    """det g, |Omega|^2 and the MC weights w, each (point,), as DataArrays."""
    _require_point_set(ds, needs=("det_g_fs", "weight"))
    _require_cy(ds, what)
    _require_point_set(ds, needs=("omega2",))
    return _det(ds, g), ds["omega2"], ds["weight"]


def _cy_values(ds: xr.Dataset, g: Metrics | None, what: str) -> tuple:
    """det g, |Omega|^2 and w as computed arrays, computed together: one pass over lazy inputs;
    ValueError for an empty set and for weights or |Omega|^2 that make the MC average meaningless."""
    det, omega2, weight = dask.compute(*(a.data for a in _cy_inputs(ds, g, what)))
    require_point_values("ds", weight=weight, omega2=omega2)
    return det, omega2, weight


def kappa(ds: xr.Dataset, g: Metrics | None = None) -> float:
    """kappa = E_w[det g/|Omega|^2] (B.10) of metric g (default g_FS), computed."""
    return float(backend.to_numpy(measures.kappa(*_cy_values(ds, g, "kappa"))))


def eta(ds: xr.Dataset, g: Metrics | None = None) -> xr.DataArray:
    """eta = det g/(kappa |Omega|^2) (point,) per point (B.11), kappa from the same points (B.10).

    Lazy where ds or g is: kappa is then part of the graph, so computing eta runs over the
    inputs once.
    """
    det, omega2, weight = _unify(*_cy_inputs(ds, g, "eta"))
    if weight.shape[0] == 0:  # no points, no eta (and no kappa to check)
        return xr.DataArray(det.data * 0.0, dims=("point",), coords=det.coords, name="eta", attrs=ETA_DOC)
    w = weight.data
    w = w.map_blocks(_usable_weights, dtype=w.dtype) if backend.is_dask(w) else _usable_weights(w)
    k = measures.kappa(det.data, omega2.data, w)
    k = k.map_blocks(_usable_kappa, dtype=k.dtype) if backend.is_dask(k) else _usable_kappa(k)
    return xr.DataArray(measures.eta(det.data, omega2.data, k), dims=("point",), coords=det.coords,
                        name="eta", attrs=ETA_DOC)


def _usable_weights(w: Any) -> Any:
    """``w`` (a block of MC weights), refused where not finite or negative (lazily per chunk)."""
    require_point_values("ds", weight=w, chunk=True)
    return w


def _usable_kappa(k: Any) -> Any:
    """kappa (B.10), refused where the weights sum to 0 (or |Omega|^2 is off): no NaN eta."""
    if not bool(np.all(np.isfinite(backend.to_numpy(k)) & (backend.to_numpy(k) > 0))):
        raise ValueError("eta: kappa = E_w[det g / |Omega|^2] is not a positive number: the MC weights of ds "
                         "must not all be 0, and omega2 must be finite and > 0")
    return k


def sigma_measure(ds: xr.Dataset, g: Metrics | None = None) -> float:
    """The sigma measure (B.11) of metric g (default g_FS) on a point set, MC-weighted.

    sigma = E_w[|1 - eta|], eta = det g / (kappa |Omega|^2), kappa = E_w[det g / |Omega|^2].
    g must be given in each point's own chart (the Dataset's patch/elim) and be a valid metric
    at every point (``mfarray.linalg``: finite, Hermitian, positive definite), else ValueError;
    the value is chart independent, 0 for the Calabi-Yau metric.  ds and g may be lazy or
    computed, mixed; everything needed is computed in one pass.
    """
    value = float(backend.to_numpy(measures.sigma(*_cy_values(ds, g, "sigma_measure"))))
    if not np.isfinite(value):
        raise ValueError("sigma is not finite: g has non-finite entries or a vanishing determinant")
    return value
