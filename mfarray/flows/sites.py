"""The boundary of a flow: point sets materialised and validated once.

A flow works on arrays, never on Datasets: the train and test point sets (lazy Dask or computed,
also mixed) are computed together in ONE ``dask.compute``, checked once (non-empty, one shared
chart, one surface, finite points, weights and |Omega|^2, valid initial metrics by the rule of
:mod:`mfarray.linalg`) and handed to the flow as :class:`Sites`.  The arrays keep the namespace
of the data (NumPy, or CuPy for a Dataset of CuPy arrays); nothing is converted back and forth
inside the loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import xarray as xr

from .. import backend, linalg
from ..pointset.charts import require_same_surface
from ..pointset.checks import require_point_values

__all__ = ["Sites", "materialize", "point_index"]

Array = Any  # a NumPy, CuPy or Dask array


@dataclasses.dataclass(frozen=True, eq=False)
class Sites:
    """The arrays of one point set a flow needs (N points, k x k metrics).

    z : (N, n+1) complex homogeneous points; g_fs, g0 : (N, k, k) pulled-back FS and initial
    metrics; m0 : :class:`~mfarray.linalg.Metrics` of g0; weight : (N,) MC weights;
    omega2 : (N,) |Omega|^2, or None on a surface without a Calabi-Yau form; point : (N,)
    int64 point index; chart : (patch, elim) shared by all points, or None where each point
    keeps its own (Kähler-potential flows); patch, elim : (N,) int64 NumPy, each point's chart;
    attrs : the Dataset's attributes.
    """

    z: object
    g_fs: object
    g0: object
    m0: linalg.Metrics
    weight: object
    omega2: object
    point: np.ndarray
    chart: tuple | None
    attrs: dict
    patch: np.ndarray
    elim: np.ndarray

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])

    @property
    def k(self) -> int:
        return int(self.g0.shape[-1])


def point_index(ds: xr.Dataset) -> np.ndarray:
    """The ``point`` index of a point set (its coordinate, else 0..N-1), int64 NumPy."""
    if "point" in ds.coords:
        return np.asarray(ds["point"].values, dtype=np.int64)
    return np.arange(ds.sizes["point"], dtype=np.int64)


_SURFACE_KEYS = ("surface_monomials", "surface_coefficients_real", "surface_coefficients_imag")


def _require_point_set(ds, name):
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{name} must be a point set (xarray.Dataset from mfarray.sample_points); "
                        f"got {type(ds).__name__}")
    missing = [v for v in ("z", "patch", "elim", "g_fs", "weight") if v not in ds]
    if missing:
        raise ValueError(f"{name} is not a point set: variables {missing} are missing "
                         "(make it with mfarray.sample_points or mfarray.points_from_z)")
    if ds.sizes.get("point", 0) == 0:
        raise ValueError(f"{name} holds no points: pass a set of at least one point")


def _compute_together(*datasets):
    """Every variable a flow reads, of every given set, computed in one pass (dict per set)."""
    import dask

    names = ("z", "patch", "elim", "g_fs", "weight", "omega2")
    arrays = [{v: ds[v].data for v in names if v in ds} for ds in datasets]
    flat = [a for d in arrays for a in d.values()]
    lazy = [i for i, a in enumerate(flat) if backend.is_dask(a)]
    if lazy:
        done = dask.compute(*[flat[i] for i in lazy])
        for i, value in zip(lazy, done):
            flat[i] = value
    out, it = [], iter(flat)
    for d in arrays:
        out.append({v: _host_or_device(next(it)) for v in d})
    return out


def _host_or_device(a):
    return a if backend.is_cupy(a) else np.asarray(a)


def _chart(arrays, name):
    patch = backend.to_numpy(arrays["patch"])
    elim = backend.to_numpy(arrays["elim"])
    pairs = np.unique(np.stack([patch, elim], 1), axis=0)
    if len(pairs) > 1:
        raise ValueError(
            f"{name} metrics are in {len(pairs)} different charts {[tuple(p) for p in pairs[:4].tolist()]}...: "
            "their components cannot be added.  Use mfarray.select_chart (rejection sampling) or "
            "mfarray.express_in_chart (transform every point) so all points share one chart"
        )
    return tuple(int(v) for v in pairs[0])


def _sites(ds, arrays, name, g0, chart):
    xp = backend.namespace(arrays["g_fs"])
    k = arrays["g_fs"].shape[-1]
    omega2 = arrays.get("omega2")
    require_point_values(name, z=arrays["z"], weight=arrays["weight"], omega2=omega2)
    weight = xp.astype(arrays["weight"], xp.float64)
    if omega2 is not None:
        omega2 = xp.astype(omega2, xp.float64)
    g_fs = xp.astype(arrays["g_fs"], xp.complex128)
    if g0 is None:
        g_init, label = g_fs, f"{name}.g_fs"
    else:
        g_init = g0.data if isinstance(g0, xr.DataArray) else g0
        if backend.is_dask(g_init):
            g_init = g_init.compute()
        g_init = xp.asarray(g_init) if backend.is_cupy(g_fs) else backend.to_numpy(g_init)
        label = "g0_test" if name == "test" else "g0"
        if tuple(g_init.shape) != tuple(g_fs.shape):
            raise ValueError(f"{label} must have shape {tuple(g_fs.shape)} (one {k}x{k} metric per {name} point); "
                             f"got {tuple(g_init.shape)}")
        g_init = xp.astype(g_init, xp.complex128)
    m0 = linalg.require_valid(g_init, label)
    return Sites(z=xp.astype(arrays["z"], xp.complex128), g_fs=g_fs, g0=m0.g, m0=m0, weight=weight,
                 omega2=omega2, point=point_index(ds), chart=chart, attrs=dict(ds.attrs),
                 patch=backend.to_numpy(arrays["patch"]).astype(np.int64),
                 elim=backend.to_numpy(arrays["elim"]).astype(np.int64))


def materialize(train: xr.Dataset, test: xr.Dataset | None = None, *, g0: Array | None = None,
                g0_test: Array | None = None, one_chart: bool = True, name: str = "train") -> tuple[Sites, Sites | None]:
    """(train Sites, test Sites or None): both sets computed together, checked once.

    Refuses (ValueError/TypeError naming the argument): a non-Dataset, a set missing point-set
    variables, an empty set, points of more than one chart (unless ``one_chart=False``: the
    metric models of Kähler potentials give each point its metric in its own chart), a test set
    in another chart or on another surface than train, non-finite points, weights or |Omega|^2,
    and initial metrics (g_fs, g0, g0_test) that are not valid metrics.  ``name``: what the
    messages call the first set (``"points"`` for a prediction).
    """
    _require_point_set(train, name)
    sets = [train]
    if test is not None:
        _require_point_set(test, "test")
        sets.append(test)
        if any(key in train.attrs for key in _SURFACE_KEYS):
            require_same_surface(test, train, "test")
    arrays = _compute_together(*sets)
    chart = _chart(arrays[0], name) if one_chart else None
    out = [_sites(train, arrays[0], name, g0, chart)]
    if test is not None:
        test_chart = _chart(arrays[1], "test") if one_chart else None
        if test_chart != chart:
            raise ValueError(
                f"train and test metrics are in 2 different charts {[chart, test_chart]}: their components "
                "cannot be added.  Select the test chart with mfarray.select_chart(test_set, like=train) "
                f"(or patch={chart[0]}, elim={chart[1]})"
            )
        out.append(_sites(test, arrays[1], "test", g0_test, chart))
    else:
        if g0_test is not None:
            raise ValueError("g0_test was given without a test set: pass test=...")
        out.append(None)
    return tuple(out)
