"""Point sets on X as xarray Datasets: construction, sampling, charts and measures.

A point set has dims ``point``, ``ambient`` (n+1), ``row``/``col`` (k = n-1) and variables

    z        (point, ambient) complex  homogeneous coordinates, largest one scaled to 1
    patch    (point,) int              chart patch (index of the coordinate set to 1)
    elim     (point,) int              eliminated coordinate (largest |dp/dz_j|, j != patch)
    omega2   (point,) float            |Omega|^2 in the point's chart
    g_fs     (point, row, col) complex pulled-back Fubini-Study metric in the point's chart
    det_g_fs (point,) float
    weight   (point,) float            MC weight |Omega|^2/det g_FS, normalised to mean 1

and attributes describing the polynomial (see ``Hypersurface.to_attrs``), the seed and the
package version.  Arrays stay lazy (Dask) when the input is lazy; the per-point geometry
always comes from :func:`mfarray.geometry.local.chart_geometry`.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import backend, sampling
from .geometry import charts, measures
from .geometry.fubini_study import hermitian_det
from .geometry.hypersurface import Hypersurface, fermat_quintic
from .geometry.local import chart_geometry

DEFAULT_CHUNK = 50_000  # measured fastest of 10k/20k/50k for 10^5 quintic points on 2 cores


def _version() -> str:
    from . import __version__

    return __version__


def _geometry_outputs(surface, z, tol, singular_tol):
    """Validate points z (N, n+1) and compute their chart data (bare, one chunk)."""
    xp = backend.namespace(z)
    if not bool(xp.all(xp.isfinite(z))):
        bad = xp.nonzero(~xp.all(xp.isfinite(z), axis=-1))[0]
        raise ValueError(f"z contains NaN or inf coordinates at points {_few(bad)}")
    zero = xp.all(z == 0, axis=-1)
    if bool(xp.any(zero)):
        raise ValueError(
            f"z contains zero vectors (not points of P^n) at points {_few(xp.nonzero(zero)[0])}"
        )
    res = surface.relative_residual(z) if tol is not None else None
    if tol is not None and bool(xp.any(res > tol)):
        bad = xp.nonzero(res > tol)[0]
        raise ValueError(
            f"{bad.shape[0]} point(s) of z are not on X: |p(z)|/(|z|^d max|c|) = "
            f"{float(xp.max(res)):.3g} > tol = {tol:g} (e.g. points {_few(bad)}); "
            "project them onto X or pass a larger tol"
        )
    with np.errstate(divide="ignore", invalid="ignore"):  # singular points are reported below
        geo = chart_geometry(surface, z)
    grad = surface.relative_gradient(geo.z, geo.dp)
    if bool(xp.any(grad < singular_tol)):
        bad = xp.nonzero(grad < singular_tol)[0]
        raise ValueError(
            f"{bad.shape[0]} point(s) are (numerically) singular points of X, where dp = 0 and "
            f"Omega is infinite: |dp|/(|z|^(d-1) max|c|) < {singular_tol:g} at points {_few(bad)}. "
            "Remove them, e.g. z[surface.relative_gradient(z) > tol]"
        )
    return geo.z, geo.patch, geo.elim, geo.omega2, geo.g_fs, geo.det_g_fs


def _few(idx, k=5):
    idx = backend.to_numpy(idx).tolist()
    return str(idx[:k])[:-1] + (", ...]" if len(idx) > k else "]")


def points_from_z(surface: Hypersurface, z, *, tol: float | None = 1e-8, singular_tol: float = 1e-10,
                  attrs: dict | None = None) -> xr.Dataset:
    """The point-set Dataset of given homogeneous points z (N, n+1) on X.

    ``z`` may be NumPy, CuPy or Dask (then the result is lazy and errors surface at compute
    time).  Points must satisfy |p(z)| / (|z|^d max|c_k|) <= ``tol`` (None skips the check, for
    points known to be on X); points where the gradient
    of p vanishes (relative gradient < ``singular_tol``: singular X, e.g. the Dwork conifold)
    are reported with an error instead of becoming infinite weights.
    """
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    surface.require_dimension("points_from_z")
    if backend.is_dask(z):
        z = z.astype(np.complex128).rechunk({1: -1})
    else:
        z = np.asarray(z) if not backend.is_cupy(z) else z
        if z.dtype.kind not in "fciu":
            raise ValueError(f"z must be a numeric array; got dtype {z.dtype}")
        z = z.astype(np.complex128)
    if z.ndim != 2 or z.shape[1] != surface.n_ambient:
        raise ValueError(
            f"z must have shape (n_points, {surface.n_ambient}) for {surface.label} in P^{surface.n}; "
            f"got shape {tuple(z.shape)}"
        )
    if z.shape[0] == 0:
        raise ValueError("z holds no points")
    k = surface.dim
    zarr_ = xr.DataArray(z, dims=("point", "ambient"))
    outs = xr.apply_ufunc(
        lambda zz: _geometry_outputs(surface, zz, tol, singular_tol),
        zarr_,
        input_core_dims=[["ambient"]],
        output_core_dims=[["ambient"], [], [], [], ["row", "col"], []],
        dask="parallelized",
        dask_gufunc_kwargs={
            "output_sizes": {"row": k, "col": k},
            "meta": tuple(np.empty((0,) * nd, dtype=t) for nd, t in
                          ((2, np.complex128), (1, np.int64), (1, np.int64), (1, np.float64),
                           (3, np.complex128), (1, np.float64))),
        },
    )
    za, patch, elim, omega2, g_fs, det_g = outs
    variables = {"z": za, "patch": patch, "elim": elim, "g_fs": g_fs, "det_g_fs": det_g}
    if surface.is_calabi_yau:
        raw = measures.mc_weight_raw(omega2, det_g)
        variables.update(omega2=omega2, weight=raw / raw.mean())
        weight_doc = "|Omega|^2/det g_FS normalised to mean 1 (MC weight)"
    else:  # no holomorphic top form: the natural measure is the sampler's own, FS volume
        variables.update(weight=xr.ones_like(det_g))
        weight_doc = "1: points follow the FS volume and X has no Calabi-Yau volume form"
    ds = xr.Dataset(
        variables, attrs={**surface.to_attrs(), "mfarray_version": _version(), **(attrs or {})}
    )
    ds["z"].attrs["description"] = "homogeneous coordinates, largest |z_i| scaled to 1"
    ds["weight"].attrs["description"] = weight_doc
    ds["g_fs"].attrs["description"] = "pulled-back Fubini-Study metric g_{b cbar} in the point's chart"
    return ds


def sample_points(surface: Hypersurface | None = None, n: int = 10_000, *, seed: int = 0,
                  chunk_size: int = DEFAULT_CHUNK) -> xr.Dataset:
    """``n`` Shiffman-Zelditch points on X as a lazy, Dask-backed Dataset.

    The points depend only on (surface, seed) and their index: any ``chunk_size`` or
    scheduler gives the same values (see :mod:`mfarray.sampling`).  Default surface: the
    Fermat quintic.
    """
    import dask.array as da

    surface = fermat_quintic() if surface is None else surface
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of points; got {n!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    surface.require_dimension("sample_points")
    index = da.arange(n, chunks=chunk_size, dtype=np.int64)
    z = index.map_blocks(
        lambda i: sampling.sample_z(surface, int(seed), int(i[0]), int(i[-1]) + 1),
        new_axis=1,
        chunks=(index.chunks[0], (surface.n_ambient,)),
        dtype=np.complex128,
        meta=np.empty((0, 0), dtype=np.complex128),
    )
    # the sampler guarantees |p(z)|/(|z|^d max|c|) <= sampling.RESIDUAL_TOL: no second check
    return points_from_z(
        surface, z, tol=None, attrs={"seed": int(seed), "sampler": "Shiffman-Zelditch random lines"}
    )


# ------------------------------------------------------------------------- charts
def surface_of(ds: xr.Dataset) -> Hypersurface:
    """The hypersurface recorded in a point set's attributes."""
    return Hypersurface.from_attrs(ds.attrs)


def chart_counts(ds: xr.Dataset) -> dict:
    """{(patch, elim): number of points} for a point set (computes patch and elim)."""
    patch = backend.to_numpy(ds["patch"].data)
    elim = backend.to_numpy(ds["elim"].data)
    keys, counts = np.unique(np.stack([patch, elim], axis=1), axis=0, return_counts=True)
    return {(int(a), int(e)): int(c) for (a, e), c in zip(keys, counts)}


def select_chart(ds: xr.Dataset, patch: int | None = None, elim: int | None = None) -> xr.Dataset:
    """The points of one (patch, elim) chart, weights renormalised to mean 1.

    This is the paper's rejection sampling (§3.1): keep the points whose own chart is the
    requested one (default: the most populated chart, or the most populated one with the
    given patch/elim).  For the Fermat quintic about 1 point in 20 survives; use
    :func:`to_chart` to keep every point instead.
    """
    counts = chart_counts(ds)
    candidates = {
        key: c for key, c in counts.items()
        if (patch is None or key[0] == patch) and (elim is None or key[1] == elim)
    }
    if not candidates:
        raise ValueError(
            f"no point of this set lies in a chart with patch={patch}, elim={elim}; "
            f"populated charts: {sorted(counts)}"
        )
    key = max(candidates, key=lambda k: (candidates[k], -k[0], -k[1]))
    mask = (backend.to_numpy(ds["patch"].data) == key[0]) & (backend.to_numpy(ds["elim"].data) == key[1])
    out = ds.isel(point=np.nonzero(mask)[0])
    out["weight"] = out["weight"] / out["weight"].mean()
    out.attrs["chart"] = [int(key[0]), int(key[1])]
    return out


def _to_chart_bare(surface, z, src_patch, src_elim, g, patch, elim):
    xp = backend.namespace(z)
    with np.errstate(divide="ignore", invalid="ignore"):  # singular charts are reported below
        geo = chart_geometry(surface, z, patch=patch, elim=elim)
        jac = charts.embedding_jacobian(surface.n_ambient, geo.elim, geo.local, geo.slopes)
        src_local = charts.local_indices(surface.n_ambient, src_patch, src_elim)
        transition = charts.chart_transition(geo.z, jac, src_patch, src_local)
        out = charts.transform_metric(g, transition)
    ok = xp.all(xp.isfinite(xp.reshape(out, (out.shape[0], -1))), axis=-1)
    if not bool(xp.all(ok)):
        bad = xp.nonzero(~ok)[0]
        raise ValueError(
            f"chart (patch={patch}, elim={elim}) is singular at {bad.shape[0]} point(s) "
            f"(z_patch = 0 or dp/dz_elim = 0), e.g. points {_few(bad)}; choose another chart"
        )
    return out


def to_chart(ds: xr.Dataset, g, patch: int, elim: int) -> xr.DataArray:
    """Metrics g (point, row, col), given in each point's own chart, expressed in chart (patch, elim).

    g_dst = T^T g conj(T) with T = dx_src/dy_dst (see ``charts.chart_transition``), so every
    point's metric can be used in one coordinate system without rejection sampling.

    Precision: where the target chart is ill-conditioned at a point (|z_patch| or
    |dp/dz_elim| small compared with the largest coordinate / derivative), the metric in that
    chart has eigenvalues spread by about (max|dp| / |dp_elim|)^2 and quantities such as
    det g lose that factor in relative accuracy; choose a chart that is tame on your points.
    """
    surface = surface_of(ds)
    _check_chart(surface, patch, elim)
    g = _as_metric(ds, g)
    return xr.apply_ufunc(
        lambda z, a, e, gg: _to_chart_bare(surface, z, a, e, gg, patch, elim),
        ds["z"], ds["patch"], ds["elim"], g,
        input_core_dims=[["ambient"], [], [], ["row", "col"]],
        output_core_dims=[["row", "col"]],
        dask="parallelized",
        output_dtypes=[np.complex128],
    )


def _chart_outputs(surface, z, patch, elim):
    with np.errstate(divide="ignore", invalid="ignore"):  # singular charts are reported below
        geo = chart_geometry(surface, z, patch=patch, elim=elim)
    xp = backend.namespace(z)
    ok = xp.isfinite(geo.det_g_fs) & xp.isfinite(geo.omega2) & (geo.det_g_fs > 0)
    if not bool(xp.all(ok)):
        bad = xp.nonzero(~ok)[0]
        raise ValueError(
            f"chart (patch={patch}, elim={elim}) is singular at {bad.shape[0]} point(s) "
            f"(z_patch = 0 or dp/dz_elim = 0), e.g. points {_few(bad)}; choose another chart"
        )
    return geo.z, geo.omega2, geo.g_fs, geo.det_g_fs


def express_in_chart(ds: xr.Dataset, patch: int, elim: int) -> xr.Dataset:
    """The same points with every chart-dependent variable in one chart (patch, elim).

    z is rescaled to z_patch = 1 and omega2, g_fs, det_g_fs are recomputed there; the weights
    are chart independent and kept.  Use this instead of rejection sampling
    (:func:`select_chart`) to run a flow on all points in one coordinate system; metrics other
    than g_FS move with :func:`to_chart`.  The precision caveat of :func:`to_chart` applies.
    """
    surface = surface_of(ds)
    _check_chart(surface, patch, elim)
    k = surface.dim
    za, omega2, g_fs, det_g = xr.apply_ufunc(
        lambda z: _chart_outputs(surface, z, patch, elim),
        ds["z"],
        input_core_dims=[["ambient"]],
        output_core_dims=[["ambient"], [], ["row", "col"], []],
        dask="parallelized",
        dask_gufunc_kwargs={
            "output_sizes": {"row": k, "col": k},
            "meta": tuple(np.empty((0,) * nd, dtype=t) for nd, t in
                          ((2, np.complex128), (1, np.float64), (3, np.complex128), (1, np.float64))),
        },
    )
    out = ds.assign(z=za, g_fs=g_fs, det_g_fs=det_g, patch=xr.full_like(ds["patch"], patch),
                    elim=xr.full_like(ds["elim"], elim))
    if "omega2" in ds:
        out["omega2"] = omega2
    out.attrs["chart"] = [int(patch), int(elim)]
    return out


def _check_chart(surface, patch, elim):
    n1 = surface.n_ambient
    for name, v in (("patch", patch), ("elim", elim)):
        if not isinstance(v, (int, np.integer)) or not 0 <= v < n1:
            raise ValueError(f"{name} must be an integer in [0, {n1 - 1}]; got {v!r}")
    if patch == elim:
        raise ValueError("patch and elim must differ: the patch coordinate is 1, not eliminated")


def _as_metric(ds, g):
    if g is None:
        return ds["g_fs"]
    if not isinstance(g, xr.DataArray):
        g = xr.DataArray(g, dims=("point", "row", "col"))
    k = ds.sizes["row"]
    if g.sizes.get("point") != ds.sizes["point"] or g.sizes.get("row") != k or g.sizes.get("col") != k:
        raise ValueError(
            f"g must have shape (point={ds.sizes['point']}, row={k}, col={k}); got {dict(g.sizes)}"
        )
    return g


# ----------------------------------------------------------------------- measures
def det_metric(ds: xr.Dataset, g=None) -> xr.DataArray:
    """det g per point (real), g given in each point's own chart (default g_FS)."""
    if g is None:
        return ds["det_g_fs"]
    g = _as_metric(ds, g)
    return xr.apply_ufunc(hermitian_det, g, input_core_dims=[["row", "col"]], dask="parallelized",
                          output_dtypes=[np.float64])


def _require_cy(ds, what):
    surface_of(ds).require_calabi_yau(what)


def kappa(ds: xr.Dataset, g=None) -> float:
    """kappa = E_w[det g/|Omega|^2] (B.10) of metric g (default g_FS)."""
    _require_cy(ds, "kappa")
    value = measures.kappa(det_metric(ds, g).data, ds["omega2"].data, ds["weight"].data)
    return float(backend.to_numpy(value))


def eta(ds: xr.Dataset, g=None) -> xr.DataArray:
    """eta = det g/(kappa |Omega|^2) per point (B.11)."""
    _require_cy(ds, "eta")
    det = det_metric(ds, g)
    return measures.eta(det, ds["omega2"], kappa(ds, g)).rename("eta")


def sigma_measure(ds: xr.Dataset, g=None) -> float:
    """The sigma measure (B.11) of metric g (default g_FS) on a point set, MC-weighted.

    g must be given in each point's own chart (the Dataset's patch/elim); the value is
    chart independent.  0 for the Calabi-Yau metric.
    """
    _require_cy(ds, "sigma_measure")
    det = det_metric(ds, g)
    value = float(backend.to_numpy(measures.sigma(det.data, ds["omega2"].data, ds["weight"].data)))
    if not np.isfinite(value):
        raise ValueError("sigma is not finite: g has non-finite entries or a vanishing determinant")
    return value
