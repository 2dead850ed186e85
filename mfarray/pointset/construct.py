"""Making point sets: :func:`points_from_z` (given points) and :func:`sample_points` (sampled).

Both validate their inputs (ValueError/TypeError naming the argument and the fix), compute the
per-point geometry with :func:`mfarray.geometry.local.chart_geometry` chunk by chunk, and return
a Dataset with the schema of :mod:`mfarray.pointset`, every variable described and the
provenance attributes of :mod:`mfarray.pointset.provenance`.  MC weights are normalised to mean
1 by :func:`mean_one`, whose mean is exactly rounded, so the weights are the same bits for any
chunking and scheduler.
"""

from __future__ import annotations

import functools

import os
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from .. import backend, sampling
from ..geometry import measures
from ..geometry.hypersurface import Hypersurface, fermat_quintic
from ..geometry.local import chart_geometry
from .provenance import POINTSET_DOCS, WEIGHT_NOT_CY, describe, format_call, provenance

if TYPE_CHECKING:
    import dask.array as da
    from numpy.typing import ArrayLike

__all__ = ["points_from_z", "sample_points", "mean_one", "DEFAULT_CHUNK", "MAX_POINTS", "MAX_CHUNKS"]

DEFAULT_CHUNK = 50_000  # measured fastest of 10k/20k/50k for 10^5 quintic points on 2 cores
MAX_POINTS = 2**53  # sample_points: largest n (point indices stay exact in int64 and float64)
MAX_CHUNKS = 1_000_000  # sample_points: largest n / chunk_size (a bigger Dask graph takes minutes)


def _geometry_outputs(surface: Hypersurface, z: Any, tol: float | None, singular_tol: float) -> tuple:
    """Validate points z (N, n+1) and compute their chart data (bare, one chunk).

    Returns z (N, n+1) scaled to z_patch = 1, patch (N,), elim (N,), omega2 (N,), g_fs (N, k, k),
    det_g_fs (N,).  A NaN residual or gradient measure counts as failing its test.
    """
    xp = backend.namespace(z)
    if not bool(xp.all(xp.isfinite(z))):
        bad = xp.nonzero(~xp.all(xp.isfinite(z), axis=-1))[0]
        raise ValueError(f"z contains NaN or inf coordinates at points {_few(bad)}")
    zero = xp.all(z == 0, axis=-1)
    if bool(xp.any(zero)):
        raise ValueError(
            f"z contains zero vectors (not points of P^n) at points {_few(xp.nonzero(zero)[0])}"
        )
    if tol is not None:
        res = surface.relative_residual(z)
        off = ~(res <= tol)
        if bool(xp.any(off)):
            bad = xp.nonzero(off)[0]
            raise ValueError(
                f"{bad.shape[0]} point(s) of z are not on X: relative residual |p(z)|/sum_k|c_k z^m_k| = "
                f"{float(xp.max(xp.where(off, res, 0))):.3g} > tol = {tol:g} (e.g. points {_few(bad)}); "
                "project them onto X or pass a larger tol"
            )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # singular points are reported below
        geo = chart_geometry(surface, z)
    grad = surface.relative_gradient(geo.z, geo.dp)
    singular = ~(grad >= singular_tol)
    if bool(xp.any(singular)):
        bad = xp.nonzero(singular)[0]
        raise ValueError(
            f"{bad.shape[0]} point(s) are (numerically) singular points of X, where dp = 0 and "
            f"Omega is infinite: relative gradient < singular_tol = {singular_tol:g} at points "
            f"{_few(bad)}. Remove them, e.g. z[surface.relative_gradient(z) > singular_tol]"
        )
    finite = [xp.all(xp.isfinite(backend.per_row(a)), axis=-1) for a in (geo.omega2, geo.g_fs, geo.det_g_fs)]
    ok = finite[0] & finite[1] & finite[2] & (geo.det_g_fs > 0)
    if not bool(xp.all(ok)):
        bad = xp.nonzero(~ok)[0]
        raise ValueError(
            f"the chart geometry of {bad.shape[0]} point(s) is not finite (|Omega|^2, g_FS or det g_FS "
            f"overflows or vanishes) at points {_few(bad)}: the points are too close to a singular point of X"
        )
    return geo.z, geo.patch, geo.elim, geo.omega2, geo.g_fs, geo.det_g_fs


def _check_tol(name: str, value: Any, allow_none: bool = False) -> float | None:
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


def _check_count(name: str, value: Any, what: str) -> int:
    """A non-bool integer argument (TypeError otherwise), as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {what}, not a bool or float; got {value!r}")
    return int(value)


def _memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 where unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 0


def _check_index_memory(n: int, name: str) -> None:
    """ValueError when the in-memory ``point`` index of n points (8 bytes each) would take more
    than half of this machine's memory: a clear refusal instead of a MemoryError or an OOM kill."""
    memory = _memory_bytes()
    if memory and 8 * n > memory // 2:
        raise ValueError(
            f"{name}: {n} points need {8 * n / 2**30:.3g} GiB for the point index alone (held in memory), more "
            f"than half of this machine's {memory / 2**30:.3g} GiB; make several smaller point sets (e.g. "
            "different seeds) and process them one at a time"
        )


def _few(idx: Any, k: int = 5) -> str:
    idx = backend.to_numpy(idx).tolist()
    return str(idx[:k])[:-1] + (", ...]" if len(idx) > k else "]")


def _exact_mean(data: Any) -> Any:
    """The mean of a 1-D array from its exactly rounded sum: a float, or a lazy 0-d Dask array
    (one :func:`measures.sum_partials` task per chunk, on the chunks' own keys, so computing it
    together with the data computes the data once)."""
    n = data.shape[0]
    if not backend.is_dask(data):
        return _mean_from_partials([measures.sum_partials(data)], n)
    import dask.array as da

    parts = [dask.delayed(measures.sum_partials, pure=True)(block)
             for block in data.to_delayed(optimize_graph=False).ravel()]
    mean = dask.delayed(_mean_from_partials, pure=True)(parts, n)
    # meta from zeros, not empty: Dask hashes its bytes into the graph's names, and a store's
    # resume fingerprint (mfarray.io) must not depend on uninitialised memory
    return da.from_delayed(mean, shape=(), dtype=np.float64, meta=np.zeros((), np.float64))


def _mean_from_partials(parts: list[list[float]], n: int) -> float:
    total = measures.exact_sum(parts)
    if not (np.isfinite(total) and total > 0):
        raise ValueError(
            f"the MC weights cannot be normalised to mean 1: their sum is {total!r} (they must be finite, "
            ">= 0 and not all 0)"
        )
    return total / n


def mean_one(w: xr.DataArray) -> xr.DataArray:
    """``w / mean(w)`` (point,), keeping w's attributes; lazy where w is.

    The mean comes from the exactly rounded sum of w (:func:`measures.sum_partials` per chunk,
    combined by :func:`measures.exact_sum`), so the result has the same bits for any chunking
    and scheduler.  ValueError (at compute time where w is lazy) unless the sum is finite and
    positive.
    """
    if w.sizes["point"] == 0:
        return w
    return w.copy(data=w.data / _exact_mean(w.data))


def points_from_z(surface: Hypersurface, z: ArrayLike | da.Array, *, tol: float | None = 1e-8,
                  singular_tol: float = 1e-10, attrs: dict | None = None) -> xr.Dataset:
    """The point-set Dataset of given homogeneous points z (N, n+1) on X.

    ``z`` may be NumPy, CuPy, Dask or a DataArray of one (Dask: the result is lazy and errors
    surface at compute time), real or complex.  Points must satisfy ``surface.relative_residual(z) <= tol``, i.e.
    |p(z)| <= tol * sum_k |c_k z^m_k| (p vanishes up to a relative change ``tol`` of its
    coefficients); None skips the check, for points known to be on X.  Points where the
    gradient of p vanishes (``surface.relative_gradient(z) < singular_tol``: singular X, e.g.
    the Dwork conifold) are reported with an error instead of becoming infinite weights.  Both
    measures are scale invariant and about 1e-16 for exact points at any degree; random points
    of P^n have both of order 1, so the defaults tol = 1e-8 and singular_tol = 1e-10 separate
    the two at every degree.  Tolerances must be finite real numbers >= 0.

    Returns the Dataset of :mod:`mfarray.pointset` (every variable described): its ``point``
    coordinate numbers the rows of z, 0..N-1; its attributes record the surface, n, the
    chunking (``chunk_size``: the largest Dask chunk of z, or N), the call (``call``) and the
    versions; ``attrs`` are added last (and win).
    """
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    tol = _check_tol("tol", tol, allow_none=True)
    singular_tol = _check_tol("singular_tol", singular_tol)
    if attrs is not None and not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of JSON attributes or None; got {type(attrs).__name__}")
    surface.require_dimension("points_from_z")
    if isinstance(z, xr.DataArray):  # e.g. another set's z: its array, lazy or not
        z = z.data
    call = format_call("mfarray.points_from_z", surface, z, tol=tol, singular_tol=singular_tol)
    if backend.is_dask(z):
        if z.dtype.kind not in "fciu":
            raise ValueError(f"z must be a numeric array (real or complex); got dtype {z.dtype}")
        if any(np.isnan(size) for size in z.shape):
            raise ValueError("z is a Dask array of unknown shape (chunk sizes NaN, e.g. after boolean indexing): "
                             "call z.compute_chunk_sizes() first")
        z = z.astype(np.complex128)
        if z.ndim == 2:
            z = z.rechunk({1: -1})
    else:
        try:
            z = np.asarray(z) if not backend.is_cupy(z) else z
        except (ValueError, TypeError) as exc:
            raise ValueError(f"z must be an array of shape (n_points, {surface.n_ambient}); got a "
                             f"{type(z).__name__} that is not one ({exc})") from None
        if z.dtype.kind not in "fciu":
            raise ValueError(f"z must be a numeric array (real or complex); got dtype {z.dtype}")
        z = z.astype(np.complex128)
    if z.ndim != 2 or z.shape[1] != surface.n_ambient:
        raise ValueError(
            f"z must have shape (n_points, {surface.n_ambient}) for {surface.label} in P^{surface.n}; "
            f"got shape {tuple(z.shape)}"
        )
    if z.shape[0] == 0:
        raise ValueError("z holds no points")
    _check_index_memory(int(z.shape[0]), "z")
    chunk_size = int(max(z.chunks[0])) if backend.is_dask(z) else int(z.shape[0])
    k = surface.dim
    zarr_ = xr.DataArray(z, dims=("point", "ambient"))
    outs = xr.apply_ufunc(  # module-level functions, not closures: see _sample_block
        functools.partial(_geometry_outputs, surface, tol=tol, singular_tol=singular_tol),
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
        variables.update(omega2=omega2, weight=mean_one(measures.mc_weight_raw(omega2, det_g)))
    else:  # no holomorphic top form: the natural measure is the sampler's own, FS volume
        variables.update(weight=xr.ones_like(det_g))
    info = {"title": f"mfarray point set on {surface.label}", **surface.to_attrs(), "n": int(surface.n),
            "degree": int(surface.degree), "chunk_size": chunk_size, **provenance(call), **(attrs or {})}
    ds = xr.Dataset(variables, coords={"point": np.arange(z.shape[0], dtype=np.int64)}, attrs=info)
    docs = POINTSET_DOCS if surface.is_calabi_yau else {**POINTSET_DOCS, "weight": WEIGHT_NOT_CY}
    return describe(ds, docs)


def _sample_block(index: Any, surface: Hypersurface, seed: int) -> np.ndarray:
    """The sampled z of the points ``index`` (a contiguous range): one Dask chunk.  A module-level
    function, not a closure: Dask names a closure's tasks from its pickled code, which holds the
    file's path, so the same sample would get other names (and a store's resume fingerprint,
    mfarray.io, would change) when mfarray is imported from another place."""
    return sampling.sample_z(surface, seed, int(index[0]), int(index[-1]) + 1)


def sample_points(surface: Hypersurface | None = None, n: int = 10_000, *, seed: int = 0,
                  chunk_size: int = DEFAULT_CHUNK) -> xr.Dataset:
    """``n`` Shiffman-Zelditch points on X as a lazy, Dask-backed Dataset.

    The points depend only on (surface, seed) and their index: any ``chunk_size`` or
    scheduler gives the same values, weights included (see :mod:`mfarray.sampling` and
    :func:`mean_one`), and the ``point`` coordinate is that index, 0..n-1.  Default surface:
    the Fermat quintic.  Attributes: those of :func:`points_from_z` with ``call`` this call,
    plus ``seed``, ``sampler`` and ``chunk_size``.

    ``n``, ``seed`` and ``chunk_size`` are integers (not bools); n <= :data:`MAX_POINTS`
    (2**53) and n / chunk_size <= :data:`MAX_CHUNKS` (10**6 chunks); a chunk_size above n means
    one chunk.  The z and geometry variables stay lazy, but the ``point`` coordinate is held in
    memory (8 bytes per point): n whose index would take more than half of the machine's memory
    is refused (ValueError).
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
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if -(-n // chunk_size) > MAX_CHUNKS:
        raise ValueError(
            f"n = {n} points in chunks of chunk_size = {chunk_size} make {-(-n // chunk_size)} chunks, "
            f"more than mfarray.pointset.MAX_CHUNKS = {MAX_CHUNKS}; pass a larger chunk_size "
            f"(at least {-(-n // MAX_CHUNKS)})"
        )
    surface.require_dimension("sample_points")
    _check_index_memory(n, "n")
    index = da.arange(n, chunks=min(chunk_size, n), dtype=np.int64)
    z = index.map_blocks(
        _sample_block,
        surface=surface,
        seed=int(seed),
        new_axis=1,
        chunks=(index.chunks[0], (surface.n_ambient,)),
        dtype=np.complex128,
        meta=np.empty((0, 0), dtype=np.complex128),
    )
    info = {"seed": int(seed), "sampler": "Shiffman-Zelditch random lines", "chunk_size": min(chunk_size, n),
            "call": format_call("mfarray.sample_points", surface, n, seed=seed, chunk_size=chunk_size)}
    # the sampler guarantees surface.relative_residual(z) <= sampling.RESIDUAL_TOL: no second check
    return points_from_z(surface, z, tol=None, attrs=info)
