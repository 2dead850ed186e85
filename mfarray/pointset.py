"""Point sets on X as xarray Datasets: construction, sampling, charts and measures.

A point set has dims ``point``, ``ambient`` (n+1), ``row``/``col`` (k = n-1), the coordinate

    point    (point,) int64            index of the point in the sample it was drawn from (0..n-1),
                                       kept by every stage (select_chart, split, isel, Zarr)

and variables

    z        (point, ambient) complex  homogeneous coordinates, largest one scaled to 1
    patch    (point,) int              chart patch (index of the coordinate set to 1)
    elim     (point,) int              eliminated coordinate (largest |dp/dz_j|, j != patch)
    omega2   (point,) float            |Omega|^2 in the point's chart
    g_fs     (point, row, col) complex pulled-back Fubini-Study metric in the point's chart
    det_g_fs (point,) float
    weight   (point,) float            MC weight |Omega|^2/det g_FS, normalised to mean 1

and attributes describing the polynomial (see ``Hypersurface.to_attrs``), the seed and the
package version; :func:`select_chart` adds ``chart`` = [patch, elim] and :func:`split` adds
``split``.  The per-point geometry always comes from :func:`mfarray.geometry.local.chart_geometry`.

Lazy in, lazy out: every function taking a point set accepts it lazy (Dask: fresh from
:func:`sample_points`, from ``open_zarr`` or ``.persist()``) or computed, and metrics g as NumPy,
Dask or xarray DataArrays, in any mixture.  Results are lazy where an input is lazy, except
where a value must be known: the floats of :func:`kappa` / :func:`sigma_measure` and the point
index of :func:`select_chart`, each computed in one pass (``dask.compute`` of everything it
needs together), so nothing is computed twice.  Mixed inputs are converted once, where they
enter: computed arrays are chunked like the lazy ones.
"""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

from . import backend, linalg, sampling
from .geometry import charts, measures
from .geometry.hypersurface import Hypersurface, fermat_quintic
from .geometry.local import chart_geometry

DEFAULT_CHUNK = 50_000  # measured fastest of 10k/20k/50k for 10^5 quintic points on 2 cores
MAX_POINTS = 2**53  # sample_points: largest n (point indices stay exact in int64 and float64)
MAX_CHUNKS = 1_000_000  # sample_points: largest n / chunk_size (a bigger Dask graph takes minutes)


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
            f"{bad.shape[0]} point(s) of z are not on X: relative residual |p(z)|/sum_k|c_k z^m_k| = "
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
            f"Omega is infinite: relative gradient < singular_tol = {singular_tol:g} at points "
            f"{_few(bad)}. Remove them, e.g. z[surface.relative_gradient(z) > singular_tol]"
        )
    return geo.z, geo.patch, geo.elim, geo.omega2, geo.g_fs, geo.det_g_fs


def _check_tol(name, value, allow_none=False):
    """A tolerance: a finite non-negative real number (or None where allowed), as a float."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{name} must be a real number >= 0{' or None' if allow_none else ''}; got {value!r}"
        )
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite (a real number >= 0); got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative (a real number >= 0); got {value!r}")
    return float(value)


def _check_count(name, value, what):
    """A non-bool integer argument (TypeError otherwise), as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {what}, not a bool or float; got {value!r}")
    return int(value)


def _few(idx, k=5):
    idx = backend.to_numpy(idx).tolist()
    return str(idx[:k])[:-1] + (", ...]" if len(idx) > k else "]")


def points_from_z(surface: Hypersurface, z, *, tol: float | None = 1e-8, singular_tol: float = 1e-10,
                  attrs: dict | None = None) -> xr.Dataset:
    """The point-set Dataset of given homogeneous points z (N, n+1) on X.

    ``z`` may be NumPy, CuPy or Dask (then the result is lazy and errors surface at compute
    time).  Points must satisfy ``surface.relative_residual(z) <= tol``, i.e.
    |p(z)| <= tol * sum_k |c_k z^m_k| (p vanishes up to a relative change ``tol`` of its
    coefficients); None skips the check, for points known to be on X.  Points where the
    gradient of p vanishes (``surface.relative_gradient(z) < singular_tol``: singular X, e.g.
    the Dwork conifold) are reported with an error instead of becoming infinite weights.  Both
    measures are scale invariant and about 1e-16 for exact points at any degree; random points
    of P^n have both of order 1, so the defaults tol = 1e-8 and singular_tol = 1e-10 separate
    the two at every degree.  Tolerances must be finite real numbers >= 0.  The Dataset's
    ``point`` coordinate numbers the rows of z, 0..N-1.
    """
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    tol = _check_tol("tol", tol, allow_none=True)
    singular_tol = _check_tol("singular_tol", singular_tol)
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
        variables, coords={"point": np.arange(z.shape[0], dtype=np.int64)},
        attrs={**surface.to_attrs(), "mfarray_version": _version(), **(attrs or {})},
    )
    ds["point"].attrs["description"] = "index of the point in the sample it was drawn from"
    ds["z"].attrs["description"] = "homogeneous coordinates, largest |z_i| scaled to 1"
    ds["weight"].attrs["description"] = weight_doc
    ds["g_fs"].attrs["description"] = "pulled-back Fubini-Study metric g_{b cbar} in the point's chart"
    return ds


def sample_points(surface: Hypersurface | None = None, n: int = 10_000, *, seed: int = 0,
                  chunk_size: int = DEFAULT_CHUNK) -> xr.Dataset:
    """``n`` Shiffman-Zelditch points on X as a lazy, Dask-backed Dataset.

    The points depend only on (surface, seed) and their index: any ``chunk_size`` or
    scheduler gives the same values (see :mod:`mfarray.sampling`), and the ``point``
    coordinate is that index, 0..n-1.  Default surface: the Fermat quintic.

    ``n``, ``seed`` and ``chunk_size`` are integers (not bools); n <= :data:`MAX_POINTS`
    (2**53) and n / chunk_size <= :data:`MAX_CHUNKS` (10**6 chunks).  The z and geometry
    variables stay lazy, but the ``point`` coordinate is held in memory (8 bytes per point),
    so in practice n is also limited by memory.
    """
    import dask.array as da

    surface = fermat_quintic() if surface is None else surface
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    n = _check_count("n", n, "a positive integer number of points")
    chunk_size = _check_count("chunk_size", chunk_size, "a positive integer")
    seed = _check_count("seed", seed, "a non-negative integer")
    if n < 1:
        raise ValueError(f"n must be a positive integer number of points; got {n!r}")
    if n > MAX_POINTS:
        raise ValueError(
            f"n = {n} exceeds the maximum number of points, mfarray.pointset.MAX_POINTS = 2**53; "
            "sample fewer points (or several sets with different seeds)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if -(-n // chunk_size) > MAX_CHUNKS:
        raise ValueError(
            f"n = {n} points in chunks of chunk_size = {chunk_size} make {-(-n // chunk_size)} chunks, "
            f"more than mfarray.pointset.MAX_CHUNKS = {MAX_CHUNKS}; pass a larger chunk_size "
            f"(at least {-(-n // MAX_CHUNKS)})"
        )
    if seed < 0:
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
    # the sampler guarantees surface.relative_residual(z) <= sampling.RESIDUAL_TOL: no second check
    return points_from_z(
        surface, z, tol=None, attrs={"seed": int(seed), "sampler": "Shiffman-Zelditch random lines"}
    )


# ------------------------------------------------------------------------- charts
def surface_of(ds: xr.Dataset) -> Hypersurface:
    """The hypersurface recorded in a point set's attributes."""
    return Hypersurface.from_attrs(ds.attrs)


def _charts_of(ds: xr.Dataset):
    """patch and elim (N,) as NumPy, computed together: one pass over a lazy set."""
    patch, elim = dask.compute(ds["patch"].data, ds["elim"].data)
    return backend.to_numpy(patch), backend.to_numpy(elim)


def _count(patch, elim) -> dict:
    keys, counts = np.unique(np.stack([patch, elim], axis=1), axis=0, return_counts=True)
    return {(int(a), int(e)): int(c) for (a, e), c in zip(keys, counts)}


def chart_counts(ds: xr.Dataset) -> dict:
    """{(patch, elim): number of points} for a point set (computes patch and elim, once)."""
    return _count(*_charts_of(ds))


def default_chart(counts: dict) -> tuple:
    """The chart :func:`select_chart` picks by default from {(patch, elim): count}.

    The lexicographically smallest (patch, elim) among the charts holding at least half as
    many points as the most populated one.  Independent samples of one surface agree on it
    wherever charts are about equally likely (the Fermat quintic's 20 charts: (0, 1) for every
    seed of a few thousand points, where "the most populated chart" changes with the seed),
    so independently sampled train and test sets land in the same chart; on skewed surfaces it
    is still a well-populated chart (>= half the largest count).
    """
    top = max(counts.values())
    return min(key for key, c in counts.items() if 2 * c >= top)


def _chart_of(ds: xr.Dataset) -> tuple:
    """(patch, elim) of a single-chart point set: its ``chart`` attribute, else its points'."""
    if "chart" in ds.attrs:
        patch, elim = ds.attrs["chart"]
        return int(patch), int(elim)
    counts = chart_counts(ds)
    if len(counts) != 1:
        raise ValueError(
            f"like= needs a point set in a single chart (from select_chart or express_in_chart); "
            f"this one has points in {len(counts)} charts {sorted(counts)[:4]}"
        )
    return next(iter(counts))


def _renormalised(ds: xr.Dataset) -> xr.Dataset:
    """ds with its MC weights rescaled to mean 1 (lazy where ds is)."""
    w = ds["weight"]
    return ds.assign(weight=(w / w.mean()).assign_attrs(w.attrs))


def select_chart(ds: xr.Dataset, patch: int | None = None, elim: int | None = None, *,
                 like: xr.Dataset | None = None) -> xr.Dataset:
    """The points of one (patch, elim) chart, weights renormalised to mean 1.

    This is the paper's rejection sampling (§3.1): keep the points whose own chart is the
    requested one.  For the Fermat quintic about 1 point in 20 survives; use
    :func:`express_in_chart` / :func:`to_chart` to keep every point instead.

    The chart: ``like=other`` takes the chart of another selected set (its ``chart``
    attribute, or its points' patch/elim if they share one), so that train and test sets
    match; else (patch, elim) where given, else :func:`default_chart` among the populated
    charts agreeing with the given patch or elim: the lexicographically smallest chart with at
    least half the points of the most populated one, which independent samples share.

    Lazy in, lazy out: patch and elim are computed once, together, for the index of the kept
    points; the selected Dataset stays lazy (ds.isel with that index).  Its ``point``
    coordinate says which points were kept; attrs gain ``chart`` = [patch, elim].
    """
    if like is not None:
        if patch is not None or elim is not None:
            raise ValueError("give either like= or patch/elim, not both")
        patch, elim = _chart_of(like)
    for name, v in (("patch", patch), ("elim", elim)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise TypeError(f"{name} must be an integer or None; got {v!r}")
    patches, elims = _charts_of(ds)
    counts = _count(patches, elims)
    candidates = {
        key: c for key, c in counts.items()
        if (patch is None or key[0] == patch) and (elim is None or key[1] == elim)
    }
    if not candidates:
        raise ValueError(
            f"no point of this set lies in a chart with patch={patch}, elim={elim}; "
            f"populated charts: {sorted(counts)}"
        )
    key = default_chart(candidates)
    out = _renormalised(ds.isel(point=np.flatnonzero((patches == key[0]) & (elims == key[1]))))
    out.attrs["chart"] = [int(key[0]), int(key[1])]
    return out


# ------------------------------------------------------------------------ subsets
SPLIT_STREAM = 0x53504C54  # "SPLT": split draws never share a random stream with sampled lines


def split(ds: xr.Dataset, test: float = 0.25, seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """A random split (train, test) of a point set: ``round(test * N)`` points go to test.

    The parts are disjoint and cover ds, keep the order of ds, and depend only on (N, test,
    seed): the same call on the lazy or the computed set, with any chunking, gives the same
    points (the ``point`` coordinate says which).  MC weights are renormalised to mean 1 in
    each part; attrs are kept, plus ``split`` = {part, test, seed, n_train, n_test}.  Lazy in,
    lazy out (ds.isel with the drawn indices).  The permutation comes from
    ``SeedSequence(seed, spawn_key=(SPLIT_STREAM,))``, apart from the sampler's line blocks.
    """
    if isinstance(test, bool) or not isinstance(test, (int, float, np.integer, np.floating)):
        raise TypeError(f"test must be a fraction of the points in (0, 1); got {test!r}")
    if not 0 < test < 1:
        raise ValueError(f"test must be a fraction of the points in (0, 1); got {test!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer; got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    n = ds.sizes["point"]
    n_test = int(round(test * n))
    if not 0 < n_test < n:
        raise ValueError(
            f"test={test!r} of {n} points leaves an empty {'test' if n_test == 0 else 'train'} part"
        )
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPLIT_STREAM,)))
    perm = rng.permutation(n)
    info = {"test": float(test), "seed": int(seed), "n_train": n - n_test, "n_test": n_test}
    parts = []
    for part, index in (("train", perm[n_test:]), ("test", perm[:n_test])):
        out = _renormalised(ds.isel(point=np.sort(index)))
        out.attrs["split"] = {"part": part, **info}
        parts.append(out)
    return parts[0], parts[1]


# ------------------------------------------------------------------ chart changes
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

    ``g`` (point, row, col): NumPy, Dask or a DataArray (None: g_FS); the result is lazy where
    ds or g is.
    """
    surface = surface_of(ds)
    _check_chart(surface, patch, elim)
    return xr.apply_ufunc(
        lambda z, a, e, gg: _to_chart_bare(surface, z, a, e, gg, patch, elim),
        *_unify(ds["z"], ds["patch"], ds["elim"], _as_metric(ds, g)),
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


def _as_metric(ds: xr.Dataset, g) -> xr.DataArray:
    """Metrics g given in each point's own chart as a (point, row, col) DataArray on ds's points.

    g: None (g_FS), a NumPy/CuPy/Dask array (N, k, k) or a DataArray with dims point, row, col
    (in any order); a DataArray's ``point`` coordinate, where it has one, must be ds's.
    Laziness is left as given (see :func:`_unify`).
    """
    if g is None:
        return ds["g_fs"]
    k = ds.sizes["row"]
    if isinstance(g, xr.DataArray):
        if set(g.dims) != {"point", "row", "col"}:
            raise ValueError(f"g must have dims (point, row, col); got {g.dims}")
        g = g.transpose("point", "row", "col")
        if ("point" in g.coords and "point" in ds.coords and g.sizes["point"] == ds.sizes["point"]
                and not np.array_equal(g["point"].values, ds["point"].values)):
            raise ValueError(
                "g's point coordinate differs from the point set's: g holds the metrics of other "
                "points (select the same points, or pass g.data)"
            )
        data = g.data
    else:
        data = g if backend.is_dask(g) or backend.is_cupy(g) else np.asarray(g)
    if tuple(data.shape) != (ds.sizes["point"], k, k):
        raise ValueError(
            f"g must have shape (point={ds.sizes['point']}, row={k}, col={k}); got {tuple(data.shape)}"
        )
    return xr.DataArray(data, dims=("point", "row", "col"), coords=_point_coords(ds))


def _point_coords(ds: xr.Dataset) -> dict:
    return {"point": ds["point"]} if "point" in ds.coords else {}


def _unify(*arrays: xr.DataArray) -> tuple:
    """DataArrays on the same points, all computed or, where one is lazy, all lazy.

    The boundary conversion, done once: computed arrays are chunked along ``point`` like the
    first lazy one, so lazy and computed inputs mix without a second computation.
    """
    lazy = next((a for a in arrays if backend.is_dask(a.data)), None)
    if lazy is None:
        return arrays
    chunks = {"point": lazy.chunks[lazy.dims.index("point")]}
    return tuple(a if backend.is_dask(a.data) else a.chunk(chunks) for a in arrays)


# ----------------------------------------------------------------------- measures
def _valid_det_block(g, name, block_info=None):
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


def _det(ds: xr.Dataset, g) -> xr.DataArray:
    """det g (point,) of metrics g, lazy where g is; g_FS (None): the stored det_g_fs.

    A given g must be valid metrics (``mfarray.linalg``: finite, Hermitian, positive definite,
    not numerically singular), else ValueError with a count and the reason: when g is computed,
    here; when g is lazy, when the result is computed (naming the first failing chunk).  det is
    the product of the LDL pivots.
    """
    if g is None:
        return ds["det_g_fs"]
    g = _as_metric(ds, g)
    if backend.is_dask(g.data):
        det = g.data.rechunk({1: -1, 2: -1}).map_blocks(
            _valid_det_block, "g", drop_axis=(1, 2), dtype=np.float64, meta=np.empty((0,), np.float64)
        )
    else:
        det = linalg.require_valid(g.data, "g").det
    return xr.DataArray(det, dims=("point",), coords=_point_coords(ds), name="det_g")


def det_metric(ds: xr.Dataset, g=None) -> xr.DataArray:
    """det g (point,) per point (real), g given in each point's own chart (default g_FS).

    g: NumPy, Dask or a DataArray (point, row, col); it must be a valid metric at every point
    (the rule of ``mfarray.linalg``), else ValueError.  Lazy where ds or g is.
    """
    return _unify(_det(ds, g), ds["weight"])[0]


def _require_cy(ds, what):
    surface_of(ds).require_calabi_yau(what)


def _cy_inputs(ds: xr.Dataset, g, what: str) -> tuple:
    """det g, |Omega|^2 and the MC weights w, each (point,), as DataArrays."""
    _require_cy(ds, what)
    return _det(ds, g), ds["omega2"], ds["weight"]


def _cy_values(ds: xr.Dataset, g, what: str) -> tuple:
    """det g, |Omega|^2 and w as computed arrays, computed together: one pass over lazy inputs."""
    return dask.compute(*(a.data for a in _cy_inputs(ds, g, what)))


def kappa(ds: xr.Dataset, g=None) -> float:
    """kappa = E_w[det g/|Omega|^2] (B.10) of metric g (default g_FS), computed."""
    return float(backend.to_numpy(measures.kappa(*_cy_values(ds, g, "kappa"))))


def eta(ds: xr.Dataset, g=None) -> xr.DataArray:
    """eta = det g/(kappa |Omega|^2) (point,) per point (B.11), kappa from the same points (B.10).

    Lazy where ds or g is: kappa is then part of the graph, so computing eta runs over the
    inputs once.
    """
    det, omega2, weight = _unify(*_cy_inputs(ds, g, "eta"))
    k = measures.kappa(det.data, omega2.data, weight.data)
    return xr.DataArray(measures.eta(det.data, omega2.data, k), dims=("point",), coords=det.coords,
                        name="eta")


def sigma_measure(ds: xr.Dataset, g=None) -> float:
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
