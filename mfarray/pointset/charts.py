"""Charts of point sets: which chart each point is in, rejection sampling, changes of chart.

:func:`chart_counts` / :func:`default_chart` / :func:`select_chart` pick the points of one
(patch, elim) chart (the paper's rejection sampling, weights renormalised to mean 1);
:func:`to_chart` moves metrics (point, row, col) to another chart and :func:`express_in_chart`
a whole point set.  Helpers shared with :mod:`mfarray.pointset.measures`: :func:`as_metric`
(metrics given as NumPy, Dask or DataArray, on a point set's points) and :func:`unify` (lazy and
computed inputs chunked alike, once).
"""

from __future__ import annotations

import functools

from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from .. import backend, linalg
from ..geometry import charts
from ..geometry.hypersurface import Hypersurface
from ..geometry.local import chart_geometry
from .construct import _few, mean_one
from .provenance import G_CONVENTION, POINTSET_DOCS, derived_call, describe

if TYPE_CHECKING:
    import dask.array as da
    from numpy.typing import ArrayLike

    Metrics = ArrayLike | da.Array | xr.DataArray

__all__ = ["surface_of", "chart_counts", "default_chart", "select_chart", "to_chart", "express_in_chart"]


def surface_of(ds: xr.Dataset) -> Hypersurface:
    """The hypersurface recorded in a point set's attributes."""
    if not isinstance(ds, (xr.Dataset, xr.DataArray)):
        raise TypeError(f"ds must be a point set (an xarray.Dataset from mfarray); got {type(ds).__name__}")
    return Hypersurface.from_attrs(ds.attrs)


def require_same_surface(ds: xr.Dataset, reference: Any, what: str = "points",
                         against: str = "the train points") -> None:
    """ValueError unless the point set ``ds`` (called ``what``) lies on the polynomial of
    ``reference`` (a point set, a result, or a Hypersurface; called ``against``): the one rule of
    "the same surface" for flows, predictions, experiments and the Kahler metrics."""
    found = surface_of(ds)
    ref = reference if isinstance(reference, Hypersurface) else surface_of(reference)
    if not found.same_polynomial(ref):
        raise ValueError(f"the points of `{what}` lie on {found.label}, another surface than {against} "
                         f"({ref.label}): sample them from the same Hypersurface")


def _require_point_set(ds: Any, name: str = "ds", needs: tuple[str, ...] = ("patch", "elim")) -> None:
    """TypeError unless ds is a Dataset, ValueError naming what it lacks of a point set."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{name} must be a point set (an xarray.Dataset from mfarray.sample_points or "
                        f"points_from_z); got {type(ds).__name__}")
    missing = [v for v in needs if v not in ds.variables]
    if missing:
        raise ValueError(f"{name} is not a point set: it has no {', '.join(missing)} (make it with "
                         "mfarray.sample_points or points_from_z)")


def _charts_of(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """patch and elim (N,) as NumPy, computed together: one pass over a lazy set."""
    _require_point_set(ds)
    patch, elim = dask.compute(ds["patch"].data, ds["elim"].data)
    return backend.to_numpy(patch), backend.to_numpy(elim)


def _count(patch: np.ndarray, elim: np.ndarray) -> dict[tuple[int, int], int]:
    keys, counts = np.unique(np.stack([patch, elim], axis=1), axis=0, return_counts=True)
    return {(int(a), int(e)): int(c) for (a, e), c in zip(keys, counts)}


def chart_counts(ds: xr.Dataset) -> dict[tuple[int, int], int]:
    """{(patch, elim): number of points} for a point set (computes patch and elim, once)."""
    return _count(*_charts_of(ds))


def default_chart(counts: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The chart :func:`select_chart` picks by default from {(patch, elim): count}.

    The lexicographically smallest (patch, elim) among the charts holding at least half as
    many points as the most populated one.  Independent samples of one surface agree on it
    wherever charts are about equally likely (the Fermat quintic's 20 charts: (0, 1) for every
    seed of a few thousand points, where "the most populated chart" changes with the seed),
    so independently sampled train and test sets land in the same chart; on skewed surfaces it
    is still a well-populated chart (>= half the largest count).
    """
    if not isinstance(counts, dict) or not counts:
        raise ValueError(f"counts must be a non-empty dict {{(patch, elim): count}} (chart_counts(ds)); got {counts!r}")
    top = max(counts.values())
    return min(key for key, c in counts.items() if 2 * c >= top)


def _chart_of(ds: xr.Dataset) -> tuple[int, int]:
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
    """ds with its MC weights rescaled to mean 1 (lazy where ds is; the same bits for any
    chunking, :func:`mfarray.pointset.construct.mean_one`)."""
    return ds.assign(weight=mean_one(ds["weight"]))


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
    coordinate says which points were kept; attrs gain ``chart`` = [patch, elim], and ``call``
    becomes this call around ds's (``mfarray.select_chart(<ds's call>, patch=.., elim=..)``).
    """
    _require_point_set(ds)
    if like is not None:
        _require_point_set(like, "like")
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
    out.attrs["call"] = derived_call("mfarray.select_chart", ds, patch=int(key[0]), elim=int(key[1]))
    return out


# ------------------------------------------------------------------ chart changes
def _to_chart_bare(surface: Hypersurface, z: Any, src_patch: Any, src_elim: Any, g: Any, patch: int,
                   elim: int) -> Any:
    """Metrics g (N, k, k) in the charts (src_patch, src_elim) (N,) moved to chart (patch, elim) (bare)."""
    xp = backend.namespace(z)
    with np.errstate(divide="ignore", invalid="ignore"):  # singular charts are reported below
        geo = chart_geometry(surface, z, patch=patch, elim=elim)
        jac = charts.embedding_jacobian(surface.n_ambient, geo.elim, geo.local, geo.slopes)
        src_local = charts.local_indices(surface.n_ambient, src_patch, src_elim)
        transition = charts.chart_transition(geo.z, jac, src_patch, src_local)
        out = charts.transform_metric(g, transition)
    ok = xp.all(xp.isfinite(backend.per_row(out)), axis=-1)
    if not bool(xp.all(ok)):
        bad = xp.nonzero(~ok)[0]
        raise ValueError(
            f"chart (patch={patch}, elim={elim}) is singular at {bad.shape[0]} point(s) "
            f"(z_patch = 0 or dp/dz_elim = 0), e.g. points {_few(bad)}; choose another chart"
        )
    return out


def to_chart(ds: xr.Dataset, g: Metrics | None, patch: int, elim: int) -> xr.DataArray:
    """Metrics g (point, row, col), given in each point's own chart, expressed in chart (patch, elim).

    g_dst = T^T g conj(T) with T = dx_src/dy_dst (see ``charts.chart_transition``), so every
    point's metric can be used in one coordinate system without rejection sampling.

    Precision: where the target chart is ill-conditioned at a point (|z_patch| or
    |dp/dz_elim| small compared with the largest coordinate / derivative), the metric in that
    chart has eigenvalues spread by about (max|dp| / |dp_elim|)^2 and quantities such as
    det g lose that factor in relative accuracy; choose a chart that is tame on your points.

    ``g`` (point, row, col): NumPy, Dask or a DataArray (None: g_FS); the result, named ``g``
    (point, row, col) with a description and ``chart`` = [patch, elim] in its attributes, is lazy
    where ds or g is.
    """
    _require_point_set(ds, needs=("z", "patch", "elim", "g_fs"))
    surface = surface_of(ds)
    _check_chart(surface, patch, elim)
    out = xr.apply_ufunc(
        functools.partial(_to_chart_bare, surface, patch=patch, elim=elim),  # no closure: construct._sample_block
        *_unify(ds["z"], ds["patch"], ds["elim"], _as_metric(ds, g)),
        input_core_dims=[["ambient"], [], [], ["row", "col"]],
        output_core_dims=[["row", "col"]],
        dask="parallelized",
        output_dtypes=[np.complex128],
    )
    what = "the pulled-back Fubini-Study metric g_fs" if g is None else "the given metrics"
    return out.rename("g").assign_attrs(
        description=f"{what}, moved from each point's own chart to the chart (patch={patch}, elim={elim}): "
                    "g_dst = T^T g conj(T), T = dx_src/dy_dst",
        convention=G_CONVENTION, chart=[int(patch), int(elim)])


def _chart_outputs(surface: Hypersurface, z: Any, patch: int, elim: int) -> tuple:
    """z (N, n+1), omega2 (N,), g_fs (N, k, k), det_g_fs (N,) of points z in chart (patch, elim) (bare)."""
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
    valid = linalg.valid(geo.g_fs)
    if not bool(xp.all(valid)):  # finite, but its metric lost to rounding (not positive definite to MARGIN)
        bad = xp.nonzero(~valid)[0]
        raise ValueError(
            f"chart (patch={patch}, elim={elim}) is too ill-conditioned at {bad.shape[0]} point(s) (|z_patch| or "
            f"|dp/dz_elim| tiny against the largest): g_FS there is not a valid metric to rounding "
            f"(mfarray.linalg), e.g. points {_few(bad)}; choose another chart"
        )
    return geo.z, geo.omega2, geo.g_fs, geo.det_g_fs


def express_in_chart(ds: xr.Dataset, patch: int, elim: int) -> xr.Dataset:
    """The same points with every chart-dependent variable in one chart (patch, elim).

    z is rescaled to z_patch = 1 and omega2, g_fs, det_g_fs are recomputed there; the weights
    are chart independent and kept.  Use this instead of rejection sampling
    (:func:`select_chart`) to run a flow on all points in one coordinate system; metrics other
    than g_FS move with :func:`to_chart`.  The precision caveat of :func:`to_chart` applies.
    """
    _require_point_set(ds, needs=("z", "patch", "elim", "g_fs", "det_g_fs", "weight"))
    surface = surface_of(ds)
    _check_chart(surface, patch, elim)
    k = surface.dim
    za, omega2, g_fs, det_g = xr.apply_ufunc(
        functools.partial(_chart_outputs, surface, patch=patch, elim=elim),
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
    out.attrs["call"] = derived_call("mfarray.express_in_chart", ds, int(patch), int(elim))
    return describe(out, {name: POINTSET_DOCS[name] for name in ("z", "omega2", "g_fs", "det_g_fs")})


def _check_chart(surface: Hypersurface, patch: Any, elim: Any) -> None:
    n1 = surface.n_ambient
    for name, v in (("patch", patch), ("elim", elim)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= v < n1:
            raise ValueError(f"{name} must be an integer in [0, {n1 - 1}]; got {v!r}")
    if patch == elim:
        raise ValueError("patch and elim must differ: the patch coordinate is 1, not eliminated")


def _as_metric(ds: xr.Dataset, g: Metrics | None) -> xr.DataArray:
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


def _point_coords(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    return {"point": ds["point"]} if "point" in ds.coords else {}


def _unify(*arrays: xr.DataArray) -> tuple[xr.DataArray, ...]:
    """DataArrays on the same points, all computed or, where one is lazy, all lazy.

    The boundary conversion, done once: computed arrays are chunked along ``point`` like the
    first lazy one, so lazy and computed inputs mix without a second computation.
    """
    lazy = next((a for a in arrays if backend.is_dask(a.data)), None)
    if lazy is None:
        return arrays
    chunks = {"point": lazy.chunks[lazy.dims.index("point")]}
    return tuple(a if backend.is_dask(a.data) else a.chunk(chunks) for a in arrays)
