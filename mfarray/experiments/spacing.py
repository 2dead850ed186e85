"""Figure 3 right (§3, "Results and Discussion"): how close N train points come to a test set.

For an independent test set and nested train sets (the first N points of one train pool),
:func:`nearest_distance_scaling` measures the FS geodesic distance (3.2) from every test point
to its nearest train point, for each N, and summarises it (mean, median, min, max, the standard
error of the mean).  The paper fits the mean on log-log axes,

    mu = 0.968 N^-0.184                                                    (3.6)

and expects mu ~ N^(-1/m) on a real m-dimensional manifold (m = 6 for the quintic: -0.167).
:func:`fit_power_law` fits ln mu = ln a + b ln N by least squares and states its uncertainty.

The paper then turns the noise study (Figure 3 left: gain in the test sigma-loss against the
mean nearest distance) into the number of points a kernel would need: read off the distance
at which the gain reaches its target, and invert (3.6),

    N = (d / a)^(1/b).

:func:`distance_for_gain` is the first step, with the gain-distance relation an explicit input
(the noise study's measurement, or :data:`PAPER_GAIN_DISTANCE`, the paper's stated numbers);
:func:`points_needed` the second, with a range from the fit's uncertainty;
:func:`points_for_gain` both; :func:`paper_estimates` the paper's three examples (10^12,
10^8, 10^35 points) recomputed from the paper's fit and from ours.

Recomputed from the paper's own numbers, (3.6) and d = 5e-3 give 10^12.4 points (the paper:
10^12), but d = 5e-2 gives 10^7.0 (the paper: 10^8; 10^8 would need d = 3.3e-2), and no
distance is stated for the 10^35 estimate (it implies d = 3.5e-7; the straight line through
the paper's Gaussian-kernel statements "gain ~100 at 5e-3" and "gain ~1 at distance 1" reaches
a gain of 10^6 at d = 1.25e-7, i.e. 10^37.4 points).

Measured (Fermat quintic, seed 0, n_test = 1000, N = 10^2 .. 10^5, weights="covariance"): on
one chart mu = 1.063 N^(-0.193 +- 0.003), chi^2/dof = 3.9 (the local slope drifts from -0.20
at N <= 3000 to -0.177 at 3 10^4 .. 10^5); on all charts mu = 1.193 N^(-0.1648 +- 0.0013),
i.e. -1/6.  With the one-chart fit the paper's three targets need 10^12.1, 10^6.9 and 10^35.9
points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import numpy as np
import xarray as xr

from .. import backend
from ..geometry.distance import nearest
from ..geometry.hypersurface import Hypersurface
from ..pointset.charts import _require_point_set, select_chart
from ..pointset.construct import sample_points
from ..pointset.provenance import describe, format_call, json_attrs, provenance

__all__ = [
    "PAPER_COEFFICIENT",
    "PAPER_ESTIMATES",
    "PAPER_EXPONENT",
    "PAPER_GAIN_DISTANCE",
    "SIZES",
    "STATS",
    "WEIGHTS",
    "distance_for_gain",
    "distance_for_points",
    "fit_power_law",
    "nearest_distance_scaling",
    "paper_estimates",
    "paper_fit",
    "points_for_gain",
    "points_needed",
    "power_law",
]

SIZES = (100, 300, 1000, 3000, 10_000, 30_000, 100_000)
PAPER_COEFFICIENT = 0.968  # eq. 3.6
PAPER_EXPONENT = -0.184  # eq. 3.6
# The paper's statements about Figure 3 left, as (distances, gains) through which
# distance_for_gain draws straight lines on log-log axes: "a gain factor of ~100 requires a mean
# geodesic distance of 5e-3" (Gaussian kernel) / "5e-2" (Delta kernel), and "the gain factor is
# only ~1 for distance 1" (both).
PAPER_GAIN_DISTANCE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "gaussian": ((5e-3, 1.0), (100.0, 1.0)),
    "delta": ((5e-2, 1.0), (100.0, 1.0)),
}
# (name, kernel whose gain-distance relation gives the target distance, target gain, the paper's
# number of points).  The paper names no kernel or distance for the third; we read it with the
# Gaussian line (the kernel reaching the larger gains).
PAPER_ESTIMATES: tuple[tuple[str, str, float, float], ...] = (
    ("gaussian_gain_100", "gaussian", 100.0, 1e12),
    ("delta_gain_100", "delta", 100.0, 1e8),
    ("gain_1e6", "gaussian", 1e6, 1e35),
)
STATS = ("mean", "median", "min", "max")
WEIGHTS = ("covariance", "diagonal", "none")

_SCALING_DOCS: dict[str, dict[str, str]] = {
    "n_train": {"description": "number of train points N: the train set is the first N points of the train pool, "
                              "so the sets are nested and every curve is monotone"},
    "test": {"description": "the test point's `point` coordinate in the point set it was taken from (the "
                            "chart-selected sample where the points were sampled here)"},
    "distance": {"description": "FS geodesic distance (eq. 3.2) from the test point to its nearest train point "
                                "among the first n_train (mfarray.nearest, exact)",
                 "units": "radians of the Fubini-Study metric (K = log|z|^2), in [0, pi/2]"},
    "mean": {"description": "mean over the test points of the nearest-train FS distance (the paper's mu, eq. 3.6; "
                            "unweighted, as the points are Shiffman-Zelditch distributed)"},
    "median": {"description": "median over the test points of the nearest-train FS distance"},
    "min": {"description": "minimum over the test points of the nearest-train FS distance"},
    "max": {"description": "maximum over the test points of the nearest-train FS distance"},
    "sem": {"description": "standard error of `mean` over the test set: std(ddof=1) / sqrt(n_test) (the test "
                           "set's sampling error only; the train set's is not included)"},
}

_FIT_DOCS: dict[str, dict[str, str]] = {
    "coefficient": {"description": "a of the power law mu = a N^b (eq. 3.6: a = 0.968)"},
    "exponent": {"description": "b of the power law mu = a N^b (eq. 3.6: b = -0.184)"},
    "log_coefficient_se": {"description": "standard error of ln a (the relative standard error of a)"},
    "exponent_se": {"description": "standard error of b"},
    "correlation": {"description": "correlation of the estimates of ln a and b"},
    "n_train": {"description": "number of train points N of the fitted data"},
    "observed": {"description": "the fitted statistic of the nearest-train FS distance at N"},
    "fitted": {"description": "the power law a N^b at N"},
}

_NEEDED_DOCS: dict[str, dict[str, str]] = {
    "target_distance": {"description": "target mean nearest-train FS distance d"},
    "points": {"description": "number of train points at which the power law reaches d: N = (d/a)^(1/b)"},
    "log10_points": {"description": "log10 of `points`"},
    "points_low": {"description": "lower end of the range of N: the smallest N at which the fit's band "
                                  "ln a + b ln N +- n_sigma se contains ln d (0 where unbounded)"},
    "points_high": {"description": "upper end of the range of N: the largest N at which the fit's band "
                                   "ln a + b ln N +- n_sigma se contains ln d (inf where unbounded)"},
    "gain": {"description": "target gain factor in the test sigma-loss"},
    "extrapolated": {"description": "True where the target gain lies outside the gains of the gain-distance "
                                    "relation, so its distance is extrapolated along the end segment"},
    "estimate": {"description": "the paper's example (§3, Results): which kernel's gain and what gain"},
    "kernel": {"description": "the kernel whose gain-distance relation (PAPER_GAIN_DISTANCE) gives the distance"},
    "paper_points": {"description": "the number of points the paper states for the estimate"},
    "points_paper_fit": {"description": "N = (d/a)^(1/b) with the paper's fit (eq. 3.6: a = 0.968, b = -0.184)"},
    "implied_distance": {"description": "the distance at which the paper's fit (eq. 3.6) reaches the paper's "
                                        "number of points: 0.968 paper_points^-0.184"},
}


# ------------------------------------------------------------------------ checks
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {name}={value!r}")
    return int(value)


def _check_sizes(sizes: Any) -> tuple[int, ...]:
    try:
        values = tuple(sizes)
    except TypeError:
        raise ValueError(f"sizes must be a sequence of train-set sizes N; got sizes={sizes!r}") from None
    if not values:
        raise ValueError("sizes must hold at least one train-set size N; got an empty sequence")
    out = tuple(_check_int("sizes", v, 1) for v in values)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"sizes must increase strictly (the train sets are nested); got sizes={out}")
    return out


def _check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                positive: bool = False) -> float:
    """A finite real number (not a bool) within the bounds, as a float; ValueError naming it."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok or (positive and value <= 0):
        bounds = " > 0" if positive else "".join(
            [f" >= {low}" if low is not None else "", f" and <= {high}" if high is not None else ""])
        raise ValueError(f"{name} must be a finite real number{bounds}; got {name}={value!r}")
    return float(value)


def _check_positive(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.dtype.kind == "b":
        raise ValueError(f"{name} must be positive real numbers; got {name}={value!r}")
    arr = np.atleast_1d(arr.astype(np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive finite numbers (a scalar or a 1-D sequence); got {name}={value!r}")
    return arr


def _check_chart(chart: Any) -> str | tuple[int, int]:
    if isinstance(chart, str) and chart in ("one", "any"):
        return chart
    if (isinstance(chart, (tuple, list)) and len(chart) == 2
            and all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) and c >= 0
                    for c in chart)):
        return int(chart[0]), int(chart[1])
    raise ValueError(f"chart must be 'one' (the paper's one-chart points, select_chart's default chart), 'any' "
                     f"(all points) or a (patch, elim) pair; got chart={chart!r}")


# --------------------------------------------------------------------- the points
def _select(ds: xr.Dataset, chart: str | tuple[int, int], like: xr.Dataset | None = None) -> xr.Dataset:
    if chart == "any":
        return ds
    if like is not None:
        return select_chart(ds, like=like)
    if chart == "one":
        return select_chart(ds)
    return select_chart(ds, *chart)


def _sampled_pool(surface: Hypersurface, need: int, seed: int,
                  chart: str | tuple[int, int]) -> tuple[xr.Dataset, int]:
    """The first ``need`` points of one seeded sample in the requested chart, and how many points
    were sampled for them.  Points depend only on (surface, seed, index), so a larger sample extends
    a smaller one: grow it until the chart holds ``need`` (the chart fixed by the first round)."""
    n = need
    like = None
    while True:
        sample = sample_points(surface, n, seed=seed)
        if chart != "any":  # one pass over the sample (select_chart's lazy result would sample again for z)
            sample = sample[["z", "patch", "elim", "weight"]].compute()
        sel = _select(sample, chart, like)
        have = sel.sizes["point"]
        if have >= need:
            return sel.isel(point=slice(0, need)), n
        if chart != "any" and like is None and have:
            like = sel
        # ~10% margin over the observed fraction (at least doubling when no point landed yet)
        n = max(2 * n, math.ceil(n * need / have * 1.1)) if have else 20 * n


def _real_dimension(source: Hypersurface | xr.Dataset) -> int | None:
    """Real dimension 2 (n - 1) of a hypersurface in P^n, or of a point set's manifold where it
    says (its local coordinates ``row``, or its surface's ``n``); None for bare z."""
    if isinstance(source, Hypersurface):
        return 2 * (int(source.n) - 1)
    if "row" in source.sizes:
        return 2 * int(source.sizes["row"])
    if isinstance(source.attrs.get("n"), (int, np.integer)) and "surface_monomials" in source.attrs:
        return 2 * (int(source.attrs["n"]) - 1)
    return None


def _nearest_curve(z_test: np.ndarray, z_train: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """(n_test, len(sizes)) nearest FS distance from each test point to the first N train points.

    Incremental over the nested sets: the nearest among the first N is the smaller of the nearest
    among the first N' < N and among points N'..N-1; distances are entrywise (block independent),
    so each column equals ``nearest(z_test, z_train[:N])`` exactly.  Test blocks run in threads
    (one per core)."""
    n_test = z_test.shape[0]
    blocks = np.array_split(np.arange(n_test), max(1, min(backend.cores(), n_test)))
    best = np.full(n_test, np.inf)
    out = np.empty((n_test, len(sizes)))
    start = 0
    with ThreadPoolExecutor(len(blocks)) as pool:
        for k, size in enumerate(sizes):
            segment = z_train[start:size]
            parts = pool.map(lambda b, seg=segment: backend.to_numpy(nearest(z_test[b], seg)[1]), blocks)
            best = np.minimum(best, np.concatenate(list(parts)))
            out[:, k] = best
            start = size
    return out


def nearest_distance_scaling(surface_or_points: Hypersurface | xr.Dataset, sizes: Sequence[int] = SIZES, *,
                             n_test: int = 1000, seed: int | None = None,
                             chart: str | tuple[int, int] = "one") -> xr.Dataset:
    """Figure 3 right: the nearest-train FS distance (3.2) of a test set against N train points.

    ``surface_or_points``: a Hypersurface (``seed`` samples it, default 0) or a point set (at
    least ``z``; ``patch``/``elim`` where a chart is selected).  ``chart``: "one" (the paper's
    rejection sampling, §3.1: the points of ``select_chart``'s default chart; for the quintic
    ~1 point in 20, so ~20 (n_test + max(sizes)) points are sampled), "any" (all points: the
    Shiffman-Zelditch density on all of X), or a (patch, elim) pair.  Of the selected points in
    order, the first ``n_test`` are the test set and the next max(sizes) the train pool; train
    set N is the pool's first N (nested, so every point's distance decreases with N).

    Returns a Dataset with dims ``test`` (n_test) and ``n_train`` (len(sizes)): ``distance``
    (test, n_train), and along n_train its ``mean``, ``median``, ``min``, ``max`` and ``sem``
    (standard error of the mean over the test set).  Attributes: the settings, the chart, the
    point set's ``call`` (``points_call``), the manifold's real dimension m and the exponent
    -1/m expected for uniform points where known, the paper's fit (3.6), provenance.

    Cost: n_test * max(sizes) exact distances (10^8 for the defaults: 10-20 s on 2 cores) plus
    the sampling (the quintic's one-chart defaults sample 2.2 10^6 points: ~45 s on 2 cores,
    ~220 MB for their z, patch, elim and weight; "any" samples n_test + max(sizes)).
    """
    sizes = _check_sizes(sizes)
    n_test = _check_int("n_test", n_test, 2)
    chart = _check_chart(chart)
    need = n_test + sizes[-1]
    call = format_call("mfarray.experiments.nearest_distance_scaling", surface_or_points, sizes, n_test=n_test,
                       seed=seed, chart=chart)
    if isinstance(surface_or_points, Hypersurface):
        seed = 0 if seed is None else _check_int("seed", seed, 0)
        pool, n_sampled = _sampled_pool(surface_or_points, need, seed, chart)
        source = {"source": "sampled", "n_sampled": int(n_sampled), "seed": seed}
    else:
        if not isinstance(surface_or_points, xr.Dataset):
            raise TypeError("surface_or_points must be a Hypersurface (to sample) or a point set (an xarray.Dataset "
                            f"with z); got {type(surface_or_points).__name__}")
        _require_point_set(surface_or_points, "surface_or_points",
                           needs=("z",) if chart == "any" else ("z", "patch", "elim", "weight"))
        if seed is not None:
            raise ValueError("seed applies only when sampling a Hypersurface; a point set has its own points "
                             f"(got seed={seed!r}): leave seed=None")
        pool = _select(surface_or_points, chart)
        have = pool.sizes["point"]
        if have < need:
            where = "" if chart == "any" else f" in chart {chart}"
            raise ValueError(f"surface_or_points has {have} points{where}; n_test + max(sizes) = {need} are needed "
                             "(sample more points, or lower n_test or sizes)")
        pool = pool.isel(point=slice(0, need))
        source = {"source": "point set", "n_sampled": int(surface_or_points.sizes["point"])}
    z, ids = dask.compute(pool["z"].transpose("point", ...).data,
                          pool["point"].data if "point" in pool.coords else np.arange(need))
    z, ids = backend.to_numpy(z), backend.to_numpy(ids)
    d = _nearest_curve(z[:n_test], z[n_test:], sizes)
    chosen = pool.attrs.get("chart", "any") if chart != "any" else "any"
    m = _real_dimension(surface_or_points)
    attrs = {
        "title": "paper Figure 3 right: nearest-train FS distance of a test set against the number of train points",
        "sizes": list(sizes), "n_test": n_test, "chart_rule": chart if isinstance(chart, str) else list(chart),
        "chart": chosen if isinstance(chosen, str) else [int(c) for c in chosen],
        "split": "test = the first n_test selected points; train pool = the next max(sizes); train set N = the "
                 "pool's first N",
        **source,
        "points_call": str(pool.attrs.get("call", "<point set>")),
        "paper_coefficient": PAPER_COEFFICIENT, "paper_exponent": PAPER_EXPONENT,
        **({"real_dimension": m, "expected_exponent": -1.0 / m} if m else {}),
        **provenance(call),
    }
    if "surface_name" in pool.attrs:
        attrs["surface_name"] = pool.attrs["surface_name"]
    ds = xr.Dataset(
        {
            "distance": (("test", "n_train"), d),
            "mean": ("n_train", d.mean(axis=0)),
            "median": ("n_train", np.median(d, axis=0)),
            "min": ("n_train", d.min(axis=0)),
            "max": ("n_train", d.max(axis=0)),
            "sem": ("n_train", d.std(axis=0, ddof=1) / math.sqrt(n_test)),
        },
        coords={"n_train": ("n_train", np.asarray(sizes, dtype=np.int64)),
                "test": ("test", ids[:n_test].astype(np.int64))},
        attrs=json_attrs(attrs),
    )
    return describe(ds, _SCALING_DOCS)


# ---------------------------------------------------------------------- the fit
def _gls(x: np.ndarray, y: np.ndarray, cov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Least squares of y = beta0 + beta1 x: (beta, covariance of beta, chi^2, dof).

    With ``cov`` (the covariance of y): generalised least squares, weights cov^-1, and the
    covariance (X^T cov^-1 X)^-1 scaled by chi^2/dof where that exceeds 1 (scatter beyond the
    stated errors).  Without: ordinary least squares, covariance s^2 (X^T X)^-1 with s^2 the
    residual variance (chi^2 then is the residual sum of squares)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    dof = len(x) - 2
    if cov is None:
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        r = y - X @ beta
        rss = float(r @ r)
        return beta, rss / dof * np.linalg.inv(X.T @ X), rss, dof
    L = np.linalg.cholesky(cov)
    Xw, yw = np.linalg.solve(L, X), np.linalg.solve(L, y)
    beta, *_ = np.linalg.lstsq(Xw, yw, rcond=None)
    r = yw - Xw @ beta
    chi2 = float(r @ r)
    return beta, np.linalg.inv(Xw.T @ Xw) * max(1.0, chi2 / dof), chi2, dof


def _fit_dataset(a: float, b: float, se_ln_a: float, se_b: float, rho: float, attrs: dict[str, Any],
                 data: dict[str, Any] | None = None, coords: dict[str, Any] | None = None) -> xr.Dataset:
    ds = xr.Dataset(
        {"coefficient": ((), float(a)), "exponent": ((), float(b)), "log_coefficient_se": ((), float(se_ln_a)),
         "exponent_se": ((), float(se_b)), "correlation": ((), float(rho)), **(data or {})},
        coords=coords or {}, attrs=json_attrs(attrs))
    return describe(ds, _FIT_DOCS)


def fit_power_law(ds: xr.Dataset, stat: str = "mean", weights: str = "covariance") -> xr.Dataset:
    """The power law mu = a N^b fitted to ``ds[stat]`` from :func:`nearest_distance_scaling`.

    Least squares of ln mu = ln a + b ln N over the sizes of ``ds`` (select some first with
    ``ds.sel(n_train=...)``; at least 3).  ``weights``:

    - "covariance" (default, stat="mean" only): generalised least squares with the covariance
      of ln mean across sizes that the shared test set gives, cov(d_N, d_M) / (n_test mu_N mu_M)
      (the delta method; the same test points at every N make the means correlated).
    - "diagonal" (stat="mean" only): weights 1 / (sem / mu)^2, correlations ignored.
    - "none": ordinary least squares on log-log axes (the paper's "best linear fit"), standard
      errors from the residual scatter.

    With weights, the parameter covariance is scaled by chi^2/dof where that exceeds 1 (the
    train set's sampling error and any curvature of the log-log curve are not in the weights).

    Returns a Dataset of 0-d ``coefficient`` a, ``exponent`` b, ``log_coefficient_se`` (se of
    ln a), ``exponent_se``, ``correlation`` (of ln a and b), and along ``n_train`` the
    ``observed`` statistic and the ``fitted`` law; attributes: stat, weights, chi2 (with
    weights; residual_sum_of_squares without), dof, the scale applied, the paper's a and b,
    and the distance of b from the paper's and from the expected -1/m in standard errors.
    """
    if not isinstance(ds, xr.Dataset) or any(v not in ds.variables for v in ("n_train", *STATS, "sem")):
        raise ValueError("ds must be a Dataset from nearest_distance_scaling (with n_train, "
                         f"{', '.join(STATS)} and sem)")
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}; got stat={stat!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}; got weights={weights!r}")
    if weights != "none" and stat != "mean":
        raise ValueError(f"weights={weights!r} needs the covariance of the statistic, known for stat='mean' only; "
                         f"use weights='none' for stat={stat!r}")
    if weights == "covariance" and "distance" not in ds:
        raise ValueError("ds has no per-test-point `distance` for weights='covariance'; use weights='diagonal'")
    n = ds["n_train"].values.astype(np.float64)
    if n.ndim != 1 or n.size < 3:
        raise ValueError(f"ds must hold at least 3 sizes n_train to fit 2 parameters with an error; got {n.size}")
    y = np.asarray(ds[stat].transpose("n_train").values, dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"ds[{stat!r}] must be positive and finite to fit on log axes; got {y}")
    x, ly = np.log(n), np.log(y)
    cov = None
    if weights == "covariance":
        d = np.asarray(ds["distance"].transpose("test", "n_train").values, dtype=np.float64)
        cov = np.cov(d, rowvar=False, ddof=1).reshape(n.size, n.size) / d.shape[0] / np.outer(y, y)
    elif weights == "diagonal":
        cov = np.diag((np.asarray(ds["sem"].transpose("n_train").values) / y) ** 2)
    if cov is not None and not np.all(np.linalg.eigvalsh(cov) > 0):
        raise ValueError(f"the covariance of ln {stat} is singular (identical distances at every size?); "
                         "use weights='none'")
    beta, pcov, chi2, dof = _gls(x, ly, cov)
    se = np.sqrt(np.diag(pcov))
    rho = float(pcov[0, 1] / (se[0] * se[1])) if se[0] > 0 and se[1] > 0 else 0.0
    a, b = float(np.exp(beta[0])), float(beta[1])
    attrs: dict[str, Any] = {
        "title": f"power-law fit {stat} = a N^b of the nearest-train FS distance (paper eq. 3.6)",
        "stat": stat, "weights": weights, "dof": dof,
        **({"chi2": chi2} if cov is not None else {"residual_sum_of_squares": chi2}),
        "scale": float(max(1.0, chi2 / dof)) if cov is not None and dof > 0 else 1.0,
        "sizes": [int(v) for v in n],
        "paper_coefficient": PAPER_COEFFICIENT, "paper_exponent": PAPER_EXPONENT,
        "exponent_minus_paper_in_se": float((b - PAPER_EXPONENT) / se[1]) if se[1] > 0 else None,
        "data_call": str(ds.attrs.get("call", "<dataset>")),
        **provenance(format_call("mfarray.experiments.fit_power_law", ds, stat=stat, weights=weights)),
    }
    for key in ("chart", "real_dimension", "expected_exponent", "surface_name", "n_test"):
        if key in ds.attrs:
            attrs[key] = ds.attrs[key]
    if "expected_exponent" in ds.attrs and se[1] > 0:
        attrs["exponent_minus_expected_in_se"] = float((b - ds.attrs["expected_exponent"]) / se[1])
    data = {"observed": ("n_train", y), "fitted": ("n_train", a * n ** b)}
    return _fit_dataset(a, b, se[0], se[1], rho, attrs, data, {"n_train": ("n_train", n.astype(np.int64))})


def power_law(coefficient: float, exponent: float, *, log_coefficient_se: float = 0.0, exponent_se: float = 0.0,
              correlation: float = 0.0, source: str = "given") -> xr.Dataset:
    """A power law mu = a N^b with the schema of :func:`fit_power_law` (without data), for
    :func:`points_needed`: e.g. a published fit, or a fit with assumed uncertainties."""
    _check_real("coefficient", coefficient, positive=True)
    _check_real("exponent", exponent)
    _check_real("log_coefficient_se", log_coefficient_se, low=0.0)
    _check_real("exponent_se", exponent_se, low=0.0)
    _check_real("correlation", correlation, low=-1.0, high=1.0)
    attrs = {"title": "power law mu = a N^b", "source": source,
             **provenance(format_call("mfarray.experiments.power_law", coefficient, exponent,
                                      log_coefficient_se=log_coefficient_se, exponent_se=exponent_se,
                                      correlation=correlation, source=source))}
    return _fit_dataset(coefficient, exponent, log_coefficient_se, exponent_se, correlation, attrs)


def paper_fit() -> xr.Dataset:
    """The paper's fit (3.6), mu = 0.968 N^-0.184, as a :func:`power_law` (no uncertainty given)."""
    return power_law(PAPER_COEFFICIENT, PAPER_EXPONENT, source="paper eq. 3.6 (Figure 3 right)")


def _law(fit: Any) -> tuple[float, float, np.ndarray]:
    """(ln a, b, covariance of (ln a, b)) of a fit Dataset; ValueError naming ``fit`` otherwise."""
    names = ("coefficient", "exponent", "log_coefficient_se", "exponent_se", "correlation")
    if not isinstance(fit, xr.Dataset) or any(v not in fit for v in names):
        raise ValueError(f"fit must be a Dataset from fit_power_law, power_law or paper_fit (with {', '.join(names)})")
    a, b, sa, sb, rho = (float(fit[v]) for v in names)
    if not (a > 0 and np.isfinite(a)) or not (b < 0):
        raise ValueError(f"fit must describe a decreasing power law (coefficient > 0, exponent < 0); got a={a}, b={b}")
    return math.log(a), b, np.array([[sa * sa, rho * sa * sb], [rho * sa * sb, sb * sb]])


def distance_for_points(fit: xr.Dataset, points: Any) -> np.ndarray:
    """The power law's distance a N^b at N = ``points`` (scalar or 1-D): the inverse of
    :func:`points_needed`, e.g. the distance implied by one of the paper's estimates."""
    ln_a, b, _ = _law(fit)
    n = _check_positive("points", points)
    return np.exp(ln_a + b * np.log(n))


# -------------------------------------------------------------- points needed
def _band_interval(y: np.ndarray, ln_a: float, b: float, cov: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """The ln N at which the fit's band ln a + b ln N +- k se(ln N) contains y (Fieller's interval).

    With x = x0 + u around the point estimate x0 = (y - ln a)/b and v(x) = v_aa + 2 v_ab x + v_bb x^2
    the variance of ln a + b x, the condition (b u)^2 <= k^2 v(x0 + u) is A u^2 + B u + C <= 0 with
    A = b^2 - k^2 v_bb, B = -2 k^2 (v_ab + v_bb x0), C = -k^2 v(x0) <= 0 (so no cancellation in
    the discriminant B^2 - 4 A C >= 0).  For A > 0 (b further than k se from 0) it is the interval
    between the roots, around x0 (a point when the fit has no uncertainty); otherwise unbounded,
    (-inf, inf) reported."""
    x0 = (y - ln_a) / b
    A = b * b - k * k * cov[1, 1]
    if A <= 0:
        return np.full_like(y, -np.inf), np.full_like(y, np.inf)
    B = -2.0 * k * k * (cov[0, 1] + cov[1, 1] * x0)
    C = -k * k * np.maximum(cov[0, 0] + 2 * cov[0, 1] * x0 + cov[1, 1] * x0 * x0, 0.0)
    q = -0.5 * (B + np.copysign(np.sqrt(B * B - 4 * A * C), B))  # the stable quadratic formula
    with np.errstate(divide="ignore", invalid="ignore"):
        u1, u2 = q / A, np.where(q != 0, C / q, 0.0)
    return x0 + np.minimum(np.minimum(u1, u2), 0.0), x0 + np.maximum(np.maximum(u1, u2), 0.0)


def points_needed(fit: xr.Dataset, target_distance: Any, n_sigma: float = 1.0) -> xr.Dataset:
    """Train points a kernel would need for a mean nearest distance d: N = (d/a)^(1/b) (eq. 3.6
    inverted), for every ``target_distance`` (scalar or 1-D, dim ``target``).

    The range [points_low, points_high] is where the fit's band ln a + b ln N +- n_sigma se
    (se from the covariance of ln a and b) contains ln d: Fieller's interval, exact for a linear
    model with Gaussian errors and honest far outside the fitted sizes (it widens with the
    extrapolation); unbounded (0, inf) when b is within n_sigma se of 0.  A fit without
    uncertainty (:func:`paper_fit`) gives points_low = points = points_high.
    """
    ln_a, b, cov = _law(fit)
    d = _check_positive("target_distance", target_distance)
    _check_real("n_sigma", n_sigma, low=0.0)
    y = np.log(d)
    x = (y - ln_a) / b
    lo, hi = _band_interval(y, ln_a, b, cov, float(n_sigma))
    attrs = {"title": "train points needed for a target mean nearest-train FS distance (paper eq. 3.6 inverted)",
             "coefficient": math.exp(ln_a), "exponent": b, "n_sigma": float(n_sigma),
             "fit_call": str(fit.attrs.get("call", "<fit>")),
             **provenance(format_call("mfarray.experiments.points_needed", fit, target_distance, n_sigma=n_sigma))}
    ds = xr.Dataset(
        {"target_distance": ("target", d), "points": ("target", np.exp(x)), "log10_points": ("target", x / math.log(10)),
         "points_low": ("target", np.exp(lo)), "points_high": ("target", np.exp(hi))},
        attrs=json_attrs(attrs))
    return describe(ds, _NEEDED_DOCS)


def distance_for_gain(target_gain: Any, distances: Sequence[float], gains: Sequence[float]) -> xr.Dataset:
    """The mean nearest distance at which a kernel's gain reaches ``target_gain`` (scalar or 1-D,
    dim ``target``), read off a gain-distance relation the way the paper reads Figure 3 left.

    The relation is given explicitly: ``distances`` and ``gains`` (>= 2 points each, e.g. the
    noise study's measurement or :data:`PAPER_GAIN_DISTANCE`), gains decreasing strictly as
    distances grow.  It is drawn as straight segments on log-log axes (two points: one power law
    gain = c d^s) and the end segments extended beyond it (the paper's extrapolation), flagged in
    ``extrapolated``.  A noisy measured curve that is not monotone should be fitted first (e.g. a
    line on log-log axes, passed as its two end points).

    Returns a Dataset with ``gain``, ``target_distance`` and ``extrapolated`` along ``target``;
    the relation in the attributes.
    """
    g = _check_positive("target_gain", target_gain)
    dist = _check_positive("distances", distances)
    gain = _check_positive("gains", gains)
    if dist.size != gain.size or dist.size < 2:
        raise ValueError(f"distances and gains must be two sequences of the same length >= 2; got {dist.size} and "
                         f"{gain.size}")
    order = np.argsort(dist)
    dist, gain = dist[order], gain[order]
    if np.any(np.diff(dist) <= 0) or np.any(np.diff(gain) >= 0):
        raise ValueError("gains must decrease strictly as distances grow (distinct distances); fit a line to a noisy "
                         f"relation first; got distances={dist.tolist()}, gains={gain.tolist()}")
    # ln d as a function of ln gain, increasing arguments for np.interp
    lg, ld = np.log(gain[::-1]), np.log(dist[::-1])
    t = np.log(g)
    out = np.interp(t, lg, ld)
    below, above = t < lg[0], t > lg[-1]
    out[below] = ld[0] + (t[below] - lg[0]) * (ld[1] - ld[0]) / (lg[1] - lg[0])
    out[above] = ld[-1] + (t[above] - lg[-1]) * (ld[-1] - ld[-2]) / (lg[-1] - lg[-2])
    attrs = {"title": "target distance for a target gain, from a gain-distance relation (paper Figure 3 left)",
             "relation_distances": dist.tolist(), "relation_gains": gain.tolist(),
             "interpolation": "piecewise linear in (ln distance, ln gain), end segments extended",
             **provenance(format_call("mfarray.experiments.distance_for_gain", target_gain, distances, gains))}
    ds = xr.Dataset({"gain": ("target", g), "target_distance": ("target", np.exp(out)),
                     "extrapolated": ("target", below | above)}, attrs=json_attrs(attrs))
    return describe(ds, _NEEDED_DOCS)


def points_for_gain(fit: xr.Dataset, target_gain: Any, distances: Sequence[float], gains: Sequence[float],
                    n_sigma: float = 1.0) -> xr.Dataset:
    """:func:`distance_for_gain` then :func:`points_needed`: the train points a kernel would need
    for ``target_gain`` (dim ``target``), with the target distance, the extrapolation flag and the
    range from the fit's uncertainty (the relation itself is taken as exact)."""
    target = distance_for_gain(target_gain, distances, gains)
    needed = points_needed(fit, target["target_distance"].values, n_sigma=n_sigma)
    out = xr.merge([target, needed.drop_vars("target_distance")], combine_attrs="drop")
    out.attrs = json_attrs({
        "title": "train points needed for a target gain (paper §3: Figure 3 left, then eq. 3.6 inverted)",
        **{k: v for k, v in target.attrs.items() if k.startswith("relation") or k == "interpolation"},
        "coefficient": needed.attrs["coefficient"], "exponent": needed.attrs["exponent"], "n_sigma": float(n_sigma),
        "fit_call": str(fit.attrs.get("call", "<fit>")),
        **provenance(format_call("mfarray.experiments.points_for_gain", fit, target_gain, distances, gains,
                                 n_sigma=n_sigma))})
    return describe(out, _NEEDED_DOCS)


def paper_estimates(fit: xr.Dataset | None = None, n_sigma: float = 1.0) -> xr.Dataset:
    """The paper's three estimates (§3, Results) recomputed: dim ``estimate`` = the names of
    :data:`PAPER_ESTIMATES`.

    Each takes its target distance from :data:`PAPER_GAIN_DISTANCE` (the paper's own statements;
    for gain 100 these are the stated distances 5e-3 and 5e-2 exactly), and gives
    ``points_paper_fit`` (from eq. 3.6) beside ``paper_points`` (the paper's number) and the
    paper fit's ``implied_distance`` for that number; with ``fit`` (e.g. :func:`fit_power_law`
    of mfarray's measurement) also ``points``, ``points_low``, ``points_high`` from it.
    """
    names = [e[0] for e in PAPER_ESTIMATES]
    parts = [points_for_gain(paper_fit(), gain, *PAPER_GAIN_DISTANCE[kernel], n_sigma=n_sigma)
             for _, kernel, gain, _ in PAPER_ESTIMATES]
    paper = xr.concat(parts, dim="target", combine_attrs="drop").rename({"target": "estimate"})
    paper_points = np.array([e[3] for e in PAPER_ESTIMATES])
    out = xr.Dataset(
        {"gain": paper["gain"], "target_distance": paper["target_distance"], "extrapolated": paper["extrapolated"],
         "kernel": ("estimate", [e[1] for e in PAPER_ESTIMATES]),
         "paper_points": ("estimate", paper_points),
         "points_paper_fit": paper["points"],
         "implied_distance": ("estimate", distance_for_points(paper_fit(), paper_points))},
        coords={"estimate": ("estimate", names)})
    if fit is not None:
        ours = points_needed(fit, out["target_distance"].values, n_sigma=n_sigma)
        for v in ("points", "points_low", "points_high", "log10_points"):
            out[v] = ("estimate", ours[v].values)
    for v in out.variables:
        out[v].attrs = {}
    out.attrs = json_attrs({
        "title": "the paper's estimates of the train points a kernel needs (§3, Results), recomputed",
        "paper_coefficient": PAPER_COEFFICIENT, "paper_exponent": PAPER_EXPONENT, "n_sigma": float(n_sigma),
        "relations": {k: {"distances": list(v[0]), "gains": list(v[1])} for k, v in PAPER_GAIN_DISTANCE.items()},
        "fit_call": str(fit.attrs.get("call", "<fit>")) if fit is not None else None,
        **provenance(format_call("mfarray.experiments.paper_estimates", fit, n_sigma=n_sigma))})
    return describe(out, _NEEDED_DOCS)
