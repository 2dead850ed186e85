"""Point sets of given points in one given chart, on X or -- flagged approximate -- off it.

The paper's noise study (§3.2, Figure 3 left) tests a flow on train points plus Gaussian noise:
points that are only approximately on X.  There |Omega|^2 = 1/|dp/dz_elim|^2, the "pulled-back"
g_FS (onto the plane dp . dz = 0 of the chart) and the weight |Omega|^2 / det g_FS are chart
formulas evaluated anyway, not quantities of X.  :func:`points_from_z` refuses such points
unless ``tol=None``, and then says nothing in its Dataset; :func:`points_in_chart` makes them
only when asked (``on_surface=False``) and records it: attributes ``on_surface = False``,
``approximate = True``, descriptions saying so, and every point's ``residual``.

Every point gets the chart (patch, elim) given -- not its own -- so that noised points share the
chart of the train set they came from (a flow adds metric components only within one chart).
Off X the chart formulas depend on the chart (the level sets of the affine polynomial differ
from chart to chart), which is one more reason to compute them once, in the flow's chart.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .. import backend
from ..geometry import measures
from ..geometry.hypersurface import Hypersurface
from ..geometry.local import chart_geometry
from .charts import _check_chart
from .construct import _check_tol, _few, mean_one
from .provenance import POINTSET_DOCS, WEIGHT_NOT_CY, describe, format_call, provenance

if TYPE_CHECKING:
    import dask.array as da
    from numpy.typing import ArrayLike

__all__ = ["points_in_chart", "OFF_SURFACE_DOCS"]

_OFF = " -- OFF X: the chart formula evaluated at a point with p(z) != 0, an approximation (attribute approximate)"

OFF_SURFACE_DOCS: dict[str, dict[str, str]] = {
    "omega2": {"description": POINTSET_DOCS["omega2"]["description"] + _OFF,
               "convention": POINTSET_DOCS["omega2"]["convention"]},
    "g_fs": {"description": "Fubini-Study metric of P^n restricted to the plane dp . dz = 0 through the point, in "
                            "the chart's local coordinates (the pull-back formula of X)" + _OFF,
             "convention": POINTSET_DOCS["g_fs"]["convention"]},
    "det_g_fs": {"description": "det g_fs (real, > 0) in the chart's local coordinates" + _OFF,
                 "convention": POINTSET_DOCS["det_g_fs"]["convention"]},
    "weight": {"description": "|Omega|^2 / det g_fs in the given chart, normalised to mean 1 over this point set"
                              + _OFF + "; off X it depends on the chart",
               "convention": POINTSET_DOCS["weight"]["convention"]},
}

CHART_DOCS: dict[str, dict[str, str]] = {
    "patch": {"description": "chart patch: index of the homogeneous coordinate set to 1 (the chart given to "
                             "points_in_chart, the same at every point)",
              "convention": "0-based index into ambient"},
    "elim": {"description": "eliminated coordinate, solved for from p = 0 (the chart given to points_in_chart, the "
                            "same at every point)",
             "convention": "0-based index into ambient"},
}

RESIDUAL_DOC = {"description": "relative residual |p(z)| / sum_k |c_k z^m_k| of the point (Hypersurface."
                               "relative_residual): its backward error as a point of X",
                "convention": "scale invariant; ~1e-16 on X, order 1 for random points of P^n"}


def _outputs(surface: Hypersurface, z: Any, patch: int, elim: int, tol: float | None,
             singular_tol: float) -> tuple:
    """z (N, n+1) scaled to z_patch = 1, omega2, g_fs (N, k, k), det_g_fs, residual in chart
    (patch, elim) (bare, one chunk); tol None: no residual check (off-X points)."""
    xp = backend.namespace(z)
    if not bool(xp.all(xp.isfinite(z))):
        raise ValueError(f"z contains NaN or inf coordinates at points "
                         f"{_few(xp.nonzero(~xp.all(xp.isfinite(z), axis=-1))[0])}")
    zero = xp.all(z == 0, axis=-1)
    if bool(xp.any(zero)):
        raise ValueError(f"z contains zero vectors (not points of P^n) at points {_few(xp.nonzero(zero)[0])}")
    residual = surface.relative_residual(z)
    if tol is not None:
        off = ~(residual <= tol)
        if bool(xp.any(off)):
            raise ValueError(
                f"{int(xp.sum(xp.astype(off, xp.int64)))} point(s) of z are not on X: relative residual up to "
                f"{float(xp.max(xp.where(off, residual, 0.0))):.3g} > tol = {tol:g} (e.g. points "
                f"{_few(xp.nonzero(off)[0])}); project them (mfarray.geometry.projection.project_to_hypersurface) "
                "or pass on_surface=False for the flagged, approximate off-X formulas")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # reported below
        geo = chart_geometry(surface, z, patch=patch, elim=elim)
        grad = surface.relative_gradient(geo.z, geo.dp)
    singular = ~(grad >= singular_tol)
    if bool(xp.any(singular)):
        raise ValueError(
            f"{int(xp.sum(xp.astype(singular, xp.int64)))} point(s) are (numerically) critical points of p, where "
            f"dp = 0 and Omega is infinite (relative gradient < singular_tol = {singular_tol:g}), e.g. points "
            f"{_few(xp.nonzero(singular)[0])}: remove them")
    finite = [xp.all(xp.isfinite(backend.per_row(a)), axis=-1)
              for a in (geo.z, geo.omega2, geo.g_fs, geo.det_g_fs)]
    ok = finite[0] & finite[1] & finite[2] & finite[3] & (geo.det_g_fs > 0)
    if not bool(xp.all(ok)):
        raise ValueError(
            f"chart (patch={patch}, elim={elim}) is singular at {int(xp.sum(xp.astype(~ok, xp.int64)))} point(s) "
            f"(z_patch = 0 or dp/dz_elim = 0: |Omega|^2, g_FS or det g_FS not finite and positive), e.g. points "
            f"{_few(xp.nonzero(~ok)[0])}; drop them or choose another chart")
    return geo.z, geo.omega2, geo.g_fs, geo.det_g_fs, residual


def _as_points(surface: Hypersurface, z: Any) -> Any:
    """z as a complex128 (N, n+1) NumPy, CuPy or Dask array (ValueError naming z otherwise)."""
    if isinstance(z, xr.DataArray):
        z = z.data
    if backend.is_dask(z):
        if any(np.isnan(size) for size in z.shape):
            raise ValueError("z is a Dask array of unknown shape: call z.compute_chunk_sizes() first")
    elif not backend.is_cupy(z):
        try:
            z = np.asarray(z)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"z must be an array of shape (n_points, {surface.n_ambient}); got a "
                             f"{type(z).__name__} that is not one ({exc})") from None
    if z.dtype.kind not in "fciu":
        raise ValueError(f"z must be a numeric array (real or complex); got dtype {z.dtype}")
    if z.ndim != 2 or z.shape[1] != surface.n_ambient:
        raise ValueError(f"z must have shape (n_points, {surface.n_ambient}) for {surface.label} in P^{surface.n}; "
                         f"got shape {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise ValueError("z holds no points")
    z = z.astype(np.complex128)
    return z.rechunk({1: -1}) if backend.is_dask(z) else z


def points_in_chart(surface: Hypersurface, z: ArrayLike | da.Array, *, patch: int, elim: int,
                    on_surface: bool = True, tol: float = 1e-8, singular_tol: float = 1e-10,
                    point: ArrayLike | None = None, attrs: dict | None = None) -> xr.Dataset:
    """The point-set Dataset of points z (N, n+1), every point in the chart (patch, elim).

    Like :func:`mfarray.points_from_z` (same variables, descriptions and provenance), except that
    the chart is given rather than each point's own, and a variable ``residual`` (point,) holds
    each point's relative residual |p(z)| / sum_k |c_k z^m_k|.

    ``on_surface=True`` (default): the points must be on X, ``residual <= tol`` (ValueError
    otherwise, naming the fix).  ``on_surface=False``: points near X, the paper's noised test
    points (§3.2); no residual check, |Omega|^2, g_FS, det g_FS and the weights are the chart
    formulas evaluated off X, and the Dataset says so: attributes ``on_surface`` (False) and
    ``approximate`` (True), and those variables' descriptions.  On X (on_surface=True) the
    attributes are ``on_surface = True``, ``approximate = False``.  Both refuse non-finite points,
    zero vectors, critical points of p (``surface.relative_gradient < singular_tol``) and points
    where the chart is singular (z_patch = 0 or dp/dz_elim = 0).

    ``point``: the ``point`` coordinate (N,) int (default 0..N-1), e.g. the indices of the train
    points the noised points came from.  Attributes: the surface, n, degree, ``chart`` =
    [patch, elim], ``on_surface``, ``approximate``, ``call`` and the versions; ``attrs`` last.
    Lazy (Dask) z gives a lazy Dataset.
    """
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    surface.require_dimension("points_in_chart")
    _check_chart(surface, patch, elim)
    if not isinstance(on_surface, (bool, np.bool_)):
        raise TypeError(f"on_surface must be True (points on X, checked) or False (flagged approximate); "
                        f"got {on_surface!r}")
    tol = _check_tol("tol", tol)
    singular_tol = _check_tol("singular_tol", singular_tol)
    if attrs is not None and not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of JSON attributes or None; got {type(attrs).__name__}")
    call = format_call("mfarray.pointset.offsurface.points_in_chart", surface, z, patch=patch, elim=elim,
                       on_surface=bool(on_surface), tol=tol, singular_tol=singular_tol)
    z = _as_points(surface, z)
    n_points = int(z.shape[0])
    if point is None:
        index = np.arange(n_points, dtype=np.int64)
    else:
        index = np.asarray(backend.to_numpy(point))
        if index.shape != (n_points,) or index.dtype.kind not in "iu":
            raise ValueError(f"point must be (N,) = ({n_points},) integers (the point index); got "
                             f"{index.dtype} of shape {index.shape}")
        index = index.astype(np.int64)
    k = surface.dim
    outs = xr.apply_ufunc(
        functools.partial(_outputs, surface, patch=int(patch), elim=int(elim),
                          tol=tol if on_surface else None, singular_tol=singular_tol),
        xr.DataArray(z, dims=("point", "ambient")),
        input_core_dims=[["ambient"]],
        output_core_dims=[["ambient"], [], ["row", "col"], [], []],
        dask="parallelized",
        dask_gufunc_kwargs={
            "output_sizes": {"row": k, "col": k},
            "meta": tuple(np.empty((0,) * nd, dtype=t) for nd, t in
                          ((2, np.complex128), (1, np.float64), (3, np.complex128), (1, np.float64),
                           (1, np.float64))),
        },
    )
    za, omega2, g_fs, det_g, residual = outs
    variables = {"z": za, "patch": xr.full_like(det_g, int(patch), dtype=np.int64),
                 "elim": xr.full_like(det_g, int(elim), dtype=np.int64), "g_fs": g_fs, "det_g_fs": det_g,
                 "residual": residual}
    if surface.is_calabi_yau:
        variables.update(omega2=omega2, weight=mean_one(measures.mc_weight_raw(omega2, det_g)))
    else:
        variables.update(weight=xr.ones_like(det_g))
    chunk_size = int(max(z.chunks[0])) if backend.is_dask(z) else n_points
    info = {"title": f"mfarray point set {'on' if on_surface else 'near (off)'} {surface.label} in one chart",
            **surface.to_attrs(), "n": int(surface.n), "degree": int(surface.degree), "chunk_size": chunk_size,
            "chart": [int(patch), int(elim)], "on_surface": bool(on_surface), "approximate": not on_surface,
            **provenance(call), **(attrs or {})}
    ds = xr.Dataset(variables, coords={"point": index}, attrs=info)
    docs = {**POINTSET_DOCS, "residual": RESIDUAL_DOC, **CHART_DOCS}
    if not on_surface:
        docs.update(OFF_SURFACE_DOCS)
    if not surface.is_calabi_yau:
        docs["weight"] = WEIGHT_NOT_CY
    return describe(ds, docs)
