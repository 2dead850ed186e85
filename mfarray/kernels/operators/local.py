"""Operators of LOCAL kernels on Fubini-Study distance: tiles that provably do not matter are skipped.

The Gaussian kernels of §3.2 (eq. 3.5, ``exp(-d / (2 sigma))``, and the heat-kernel form
``exp(-d^2 / (2 sigma^2))``, :func:`mfarray.kernels.gaussian_fs`) decay with the FS distance
d (eq. 3.2), and the Delta kernel only looks at nearest neighbours.  Both are applied here
without visiting the whole ``(n_out, n_in)`` matrix:

* points are ordered into spatially coherent tiles of ``block`` points (:func:`coherent_order`:
  a deterministic median split, O(N log^2 N), along the widest coordinate of the projective
  embedding ``u u^*`` of the unit vectors u, whose Euclidean distance is the chordal distance
  ``sqrt(2) sin d``);
* every tile gets a bounding ball in FS distance (:func:`tile_balls`: its centre is the
  principal eigenvector of ``sum_i u_i u_i^*``, a point of P^n, the radius the largest FS
  distance of a tile point to it);
* by the triangle inequality of the FS metric (a true metric), every entry of the tile pair
  (a, b) has ``d >= L_ab = max(min_{x in a} d(x, c_b) - r_b, min_{y in b} d(y, c_a) - r_a)``
  (point to ball, O(N * tiles) distances; less :data:`SLACK` for rounding), which is at least
  the ball-to-ball bound ``d(c_a, c_b) - r_a - r_b``.

:class:`LocalGaussianOperator` skips a tile pair when ``k(L_ab) < tol`` (k decreasing in d, and
k <= 1 = k(0)) and computes every kept tile exactly (:func:`~.protocol.kernel_block`, the tile
code of :class:`~.tiled.BlockwiseOperator`; threads with one BLAS thread each, the upper
triangle only for a symmetric kernel on one point set), deterministically: the same bits for
any number of threads, thread timing and cache state (:meth:`LocalGaussianOperator.matvec`:
the calling thread adds the tile products in one fixed order, :func:`.tiled._in_order`).
The kept tiles are recomputed every mat-vec, optionally from a byte-budgeted tile cache.
Measured on quintic points of one chart (6 real dimensions, benchmarks/RESULTS.md): tiles of
even 64 points have FS radii ~0.6-0.8, so tile skipping alone removes a modest fraction of a
sigma = 0.05 heat kernel, while the entries >= 1e-12 are ~0.3% of the matrix: the sparse form
(:class:`.sparse.SparseGaussianOperator`, its pairs found by screening) is the one that pays,
and ``method="local"`` builds it by default (:func:`local_operator`, ``sparse="auto"``).  The
tiles state a rigorous bound on what was left out::

    |(K - K_local) v|_inf <= error_factor * |v|_inf <= tol * max_skipped_per_row * |v|_inf

with ``error_factor`` = the largest row sum of k(L_ab) |b| over skipped tiles
(:meth:`LocalGaussianOperator.error_bound`, :meth:`LocalGaussianOperator.describe`).  Not local at tol = 1e-12 (nothing can be skipped,
max d on P^n is pi/2): the paper's form exp(-d / (2 sigma)) for sigma >~ 0.03 and the heat
kernel for sigma >~ 0.2; the operator is then exact (error_factor 0) and no faster.

:class:`NearestOperator` is the Delta kernel (:func:`mfarray.kernels.delta`): row i of K is 1
at the nearest point of ``x_in`` to ``x_out[i]`` (the first index among equally near ones) --
on one point set the identity up to exact duplicates.  :func:`.screen.nearest_screened` finds
those indices (every pair screened by |<u, v>|^2, the survivors decided by the entrywise
distances of :func:`mfarray.geometry.distance.fs_distance_block` that the dense Delta kernel
uses), so the indices, and the O(N) mat-vec (a gather), equal the dense operator's exactly.
(Branch and bound over the tile balls, its predecessor, pruned too little on quintic points:
242 s at 10^5 points, benchmarks/RESULTS.md.)

NumPy inputs (CuPy for the Gaussian mat-vec, untested); Dask point sets are computed first
(``(n, n+1)`` complex numbers, small next to the kernel).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from ... import backend
from ...geometry.distance import fs_distance_block, fs_distance_block_gemm, unit_vectors
from ..spec import Kernel
from .protocol import (
    apply_block,
    bounds,
    check_flag,
    check_pair,
    check_positive,
    check_square,
    check_symmetric_tile,
    diagonal,
    flatten,
    kernel_block,
    kernel_spec,
    result_dtype,
    tile_text,
    unflatten,
)
from .screen import SCREEN_BLOCK, nearest_screened
from .tiled import _in_order

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_TOL",
    "LOCAL_KERNELS",
    "SLACK",
    "LocalGaussianOperator",
    "NearestOperator",
    "coherent_order",
    "local_operator",
    "tile_balls",
]

Array = Any  # a NumPy or CuPy array

#: kernel entries below this (relative to the kernel's maximum, 1 at d = 0) may be skipped
DEFAULT_TOL = 1e-12
#: points per tile of the local Gaussian operator (smaller tiles have smaller balls, so more
#: of them are skipped, but cost more per entry; benchmarks/RESULTS.md)
DEFAULT_BLOCK = 256
#: kernel entries a task of the tile threads covers at least (a run of consecutive kept tile
#: pairs): 4 tiles of 256 points, 64 of 64 points.  Each task costs a future handed to the
#: in-order consumer; measured at 10^4 points on 2 cores, one 256-point tile a task was 5-27%
#: slower than the former per-thread sums, 2^18 entries a task within 0-10%
TASK_ENTRIES = 2**18
#: subtracted from every distance lower bound: covers the rounding of d(c_a, c_b), r_a and
#: r_b (each a few ulps, <= 1e-15; fs_distance_block is accurate at every distance)
SLACK = 1e-12
#: the kernels method="local" accepts (their spec names)
LOCAL_KERNELS = ("gaussian_fs", "delta")


# ----------------------------------------------------------------------------- tiles and balls


def _host_points(x: Any, name: str) -> np.ndarray:
    """Homogeneous points as a host complex array (n, n+1), Dask computed."""
    if backend.is_dask(x):
        x = x.compute()
    x = backend.to_numpy(x)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"{name} must be homogeneous points (n, n+1) of P^n, n >= 1; got shape {x.shape}")
    return x


def _units(z: np.ndarray, name: str) -> np.ndarray:
    """Unit vectors (n, m) of homogeneous points, row by row as the FS distance forms them."""
    u = unit_vectors(z)
    if not bool(np.all(np.isfinite(u))):
        raise ValueError(f"{name} contains NaN/inf coordinates or zero vectors (which are not points of P^n)")
    return u


def _embedding(u: np.ndarray) -> np.ndarray:
    """Real coordinates (n, m^2) of the Hermitian projector u u^* (phase invariant): the diagonal
    |u_k|^2 and sqrt(2) Re / Im of u_k conj(u_l), k < l.  Euclidean distance: sqrt(2) sin d."""
    m = u.shape[1]
    k, l = np.triu_indices(m, 1)
    off = u[:, k] * np.conj(u[:, l]) * math.sqrt(2.0)
    return np.concatenate([np.abs(u) ** 2, off.real, off.imag], axis=1)


def coherent_order(z: Array, block: int) -> np.ndarray:
    """A permutation (n,) int64 of the points z (n, n+1) into spatially coherent tiles.

    Recursive median split: a node of n > ``block`` points with L = ceil(n / block) tiles is
    sorted (stably) along its principal axis in the projective embedding ``u u^*`` (the top
    eigenvector of the node's 25 x 25 covariance for P^4) and cut after ceil(L / 2) * block
    points, so every tile but the last has exactly ``block`` points and the tiles are
    ``bounds(n, block)`` of the ordered points.  Deterministic, O(N) per level (plus the sorts),
    log2(N / block) levels; never an N x N matrix.
    """
    block = check_positive(block, "block")
    z = _host_points(z, "z")
    emb = _embedding(_units(z, "z"))
    perm = np.arange(z.shape[0], dtype=np.int64)
    stack = [(0, z.shape[0])]
    while stack:
        start, stop = stack.pop()
        n = stop - start
        if n <= block:
            continue
        idx = perm[start:stop]
        e = emb[idx] - emb[idx].mean(axis=0)
        axis = np.linalg.eigh(e.T @ e)[1][:, -1]
        axis *= np.sign(axis[np.argmax(np.abs(axis))])  # the eigenvector's sign fixed: deterministic
        perm[start:stop] = idx[np.argsort(e @ axis, kind="stable")]
        cut = start + (math.ceil(n / block) + 1) // 2 * block
        stack += [(start, cut), (cut, stop)]
    return perm


def tile_balls(u: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounding balls in FS distance of the tiles ``bounds(n, block)`` of ordered unit vectors
    u (n, m): centres (T, m) complex unit vectors (principal eigenvector of each tile's
    ``sum_i u_i u_i^*``) and radii (T,) (largest FS distance of a tile point to its centre,
    entrywise sine form).  Every point of tile t lies within radii[t] of centres[t] (up to the
    few ulps of the distance, covered by :data:`SLACK`)."""
    tiles = bounds(u.shape[0], block)
    centres = np.empty((len(tiles), u.shape[1]), dtype=np.complex128)
    radii = np.empty(len(tiles))
    for t, (a, b) in enumerate(tiles):
        U = u[a:b]
        M = U.T @ np.conj(U)  # sum_i u_i u_i^* (m, m), Hermitian
        c = np.linalg.eigh(M)[1][:, -1]
        centres[t] = c / np.linalg.norm(c)
        radii[t] = float(np.max(fs_distance_block(centres[t:t + 1], U)))
    return centres, radii


def _tile_min(u: np.ndarray, centres: np.ndarray, block: int) -> np.ndarray:
    """(T, T') the minimum over the points of each tile ``bounds(n, block)`` of u (n, m) of
    their FS distances to ``centres`` (T', m) (GEMM tile, one tile of u at a time)."""
    out = np.empty((len(bounds(u.shape[0], block)), centres.shape[0]))
    for t, (a, b) in enumerate(bounds(u.shape[0], block)):
        out[t] = fs_distance_block_gemm(u[a:b], centres).min(axis=0)
    return out


def _lower_bounds(u_out: np.ndarray, u_in: np.ndarray, block: int, symmetric: bool) -> np.ndarray:
    """L (T_out, T_in): a lower bound on the FS distance of every pair of the tile pair (a, b).

    By the triangle inequality, for x in tile a and y in tile b, d(x, y) >= d(x, c_b) - r_b
    and >= d(y, c_a) - r_a; so L_ab = max(min_{x in a} d(x, c_b) - r_b, min_{y in b} d(y, c_a)
    - r_a) - SLACK: point-to-ball, O(N * tiles) distances (the GEMM tile, abs error < 3e-15),
    about a radius tighter than ball-to-ball."""
    c_out, r_out = tile_balls(u_out, block)
    c_in, r_in = (c_out, r_out) if symmetric else tile_balls(u_in, block)
    one = _tile_min(u_out, c_in, block) - r_in[None, :]
    two = one.T if symmetric else _tile_min(u_in, c_out, block).T - r_out[:, None]
    return np.maximum(one, two) - SLACK


# ----------------------------------------------------------------------------- the Gaussian


def _gaussian_hyper(spec: Kernel) -> tuple[float, bool]:
    """sigma and squared of a gaussian_fs spec, refusing anything else."""
    from ..fs import gaussian_fs

    if spec.fn is not gaussian_fs.fn or spec.factors:
        raise ValueError(_not_local(spec, "LocalGaussianOperator needs gaussian_fs without rescaling"))
    if "sigma" not in spec.hyper:
        raise ValueError("gaussian_fs has no sigma bound: bind it, e.g. gaussian_fs.bind(sigma=0.3)")
    return float(spec.hyper["sigma"]), bool(spec.hyper.get("squared", False))


def _kernel_dtype(spec: Kernel) -> np.dtype:
    """The dtype of a gaussian_fs spec's values, as gaussian_fs makes them: float32 when bound
    with ``dtype="float32"``, else float64."""
    dtype = spec.hyper.get("dtype")
    return np.dtype(np.float32 if dtype is not None and np.dtype(dtype) == np.float32 else np.float64)


def _profile(d: np.ndarray, sigma: float, squared: bool) -> np.ndarray:
    """k as a function of a distance (the largest value for distances >= d), as gaussian_fs."""
    d = np.maximum(d, 0.0)
    with np.errstate(over="ignore"):
        t = d / (math.sqrt(2.0) * sigma if squared else 2.0 * sigma)
        return np.exp(-(t * t) if squared else -t)


class _Cache:
    """Kernel tiles kept up to a byte budget (thread-safe insertion)."""

    def __init__(self, budget: int):
        self.budget, self.used, self.tiles = budget, 0, {}
        self.symmetry_checked = False
        self._lock = threading.Lock()

    def offer(self, key: tuple[int, int], K: Array) -> None:
        with self._lock:
            if key not in self.tiles and self.used + K.nbytes <= self.budget:
                self.tiles[key] = K
                self.used += K.nbytes


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
        raise ValueError(f"tol must be a real number in (0, 1) (kernel entries below tol may be skipped; "  # noqa: TRY004
                         f"default {DEFAULT_TOL}); got {tol!r}")
    tol = float(tol)
    if not (0.0 < tol < 1.0):
        raise ValueError(f"tol must be in (0, 1) (kernel entries below tol, relative to the kernel's maximum 1, "
                         f"may be skipped; default {DEFAULT_TOL}); got tol={tol!r}")
    return tol


class LocalGaussianOperator:
    """``K[a, b] = gaussian_fs(x_out[a], x_in[b])`` with the tile pairs whose entries are all
    provably below ``tol`` left out (module docstring); shape (n_out, n_in).

    kernel : :func:`mfarray.kernels.gaussian_fs` with sigma bound (either ``squared``), no
        rescaling.
    x_out (n_out, n+1), x_in (n_in, n+1) : homogeneous points (Dask ones are computed).
    tol : an entry may be skipped only if it is < tol (the kernel's maximum is 1); in (0, 1).
    block : points per tile (default :data:`DEFAULT_BLOCK`).
    symmetric, workers, cache_bytes : as :class:`~.tiled.BlockwiseOperator` (symmetric:
        default ``x_out is x_in``; workers: threads, default all usable cores, which the
        results do not depend on; cache_bytes: keep computed tiles up to this many bytes).

    Attributes: ``perm_out`` (n_out,), ``perm_in`` (n_in,) the tile orders; ``kept`` the list
    of kept tile pairs (a, b) (a <= b when symmetric); ``lower`` (T_out, T_in) distance lower
    bounds; ``error_factor`` with |(K - K_local) v|_inf <= error_factor |v|_inf.
    """

    def __init__(self, kernel: Callable[..., Array], x_out: Array, x_in: Array | None = None, *,
                 tol: float = DEFAULT_TOL, block: int = DEFAULT_BLOCK, symmetric: bool | None = None,
                 workers: int | None = None, cache_bytes: int = 0) -> None:
        spec = kernel_spec(kernel)
        self.sigma, self.squared = _gaussian_hyper(spec)
        self.dtype = _kernel_dtype(spec)  # the kernel's tiles (a float32 kernel: a float32 operator)
        self.kernel = kernel
        self.tol = _check_tol(tol)
        symmetric = check_flag(symmetric, "symmetric", "x_out is x_in")
        self._symmetric_passed = symmetric is not None
        self.block = check_positive(block, "block")
        if x_in is None:
            x_in = x_out
        same = x_in is x_out
        if backend.is_dask(x_out) or backend.is_dask(x_in):
            x_out = x_out.compute() if backend.is_dask(x_out) else x_out
            x_in = x_out if same else (x_in.compute() if backend.is_dask(x_in) else x_in)
        check_pair(x_out, x_in)
        self.x_out, self.x_in = x_out, x_in
        self.symmetric = bool(same) if symmetric is None else bool(symmetric)
        if self.symmetric and not same:
            raise ValueError("symmetric=True needs one point set (x_in is x_out)")
        if workers is not None:
            workers = check_positive(workers, "workers")
        self.workers = workers
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, np.integer)) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer (0: no cache); got {cache_bytes!r}")
        self.cache_bytes = int(cache_bytes)
        self._cache = _Cache(self.cache_bytes)
        z_out = _host_points(x_out, "x_out")
        z_in = z_out if self.symmetric else _host_points(x_in, "x_in")
        self.perm_out = coherent_order(z_out, self.block)
        self.perm_in = self.perm_out if self.symmetric else coherent_order(z_in, self.block)
        u_out = _units(z_out, "x_out")[self.perm_out]
        u_in = u_out if self.symmetric else _units(z_in, "x_in")[self.perm_in]
        self.lower = _lower_bounds(u_out, u_in, self.block, self.symmetric)
        kmax = _profile(self.lower, self.sigma, self.squared)
        skip = kmax < self.tol
        T_out, T_in = skip.shape
        self.rows, self.cols = bounds(self.shape[0], self.block), bounds(self.shape[1], self.block)
        widths = np.array([c1 - c0 for c0, c1 in self.cols], dtype=np.float64)
        heights = np.array([r1 - r0 for r0, r1 in self.rows], dtype=np.float64)
        self.kept = [(a, b) for a in range(T_out) for b in range(a if self.symmetric else 0, T_in) if not skip[a, b]]
        # rigorous bound: per row tile, the skipped tiles' largest possible entries times their widths
        per_row = (np.where(skip, kmax, 0.0) * widths[None, :]).sum(axis=1) if T_in else np.zeros(T_out)
        self.error_factor = float(per_row.max()) if T_out else 0.0
        self.max_skipped_per_row = int((skip * widths[None, :]).sum(axis=1).max()) if T_out and T_in else 0
        total = T_out * T_in
        self.skipped_tiles = int(skip.sum())
        self.skipped_tile_fraction = self.skipped_tiles / total if total else 0.0
        n_entries = self.shape[0] * self.shape[1]
        skipped_entries = float((skip * heights[:, None] * widths[None, :]).sum()) if total else 0.0
        self.skipped_entry_fraction = skipped_entries / n_entries if n_entries else 0.0
        xp = array_api_compat.array_namespace(x_out)
        self._p_out = xp.asarray(self.perm_out)
        self._p_in = self._p_out if self.symmetric else xp.asarray(self.perm_in)
        self._xo = x_out[self._p_out]
        self._xi = self._xo if self.symmetric else x_in[self._p_in]
        self.nnz = None

    @property
    def sparse(self) -> bool:
        """Always False: the kept tiles are recomputed every mat-vec (the sparse form is
        :class:`.sparse.SparseGaussianOperator`)."""
        return False

    # ------------------------------------------------------------------ protocol
    @property
    def shape(self) -> tuple[int, int]:
        """(n_out, n_in)."""
        return (int(self.x_out.shape[0]), int(self.x_in.shape[0]))

    def error_bound(self, v: Array) -> float:
        """The bound on ``|(K - K_local) v|_inf`` (max over rows and components) for ``v
        (n_in, ...)``: ``error_factor * |v|_inf`` (<= ``tol * max_skipped_per_row * |v|_inf``);
        the rounding of the kept tiles (~1e-16 relative; a float32 kernel's tiles and products ~1e-6)
        comes on top."""
        vmax = float(np.max(np.abs(backend.to_numpy(v)))) if math.prod(v.shape) else 0.0
        return self.error_factor * vmax

    def describe(self) -> dict:
        """JSON-safe record: method, kernel, tol, block, tiles, fractions skipped and the bound
        ``|(K - K_local) v|_inf <= error_factor * |v|_inf``."""
        return {
            "operator": "LocalGaussianOperator", "method": "local", "kernel": kernel_spec(self.kernel).describe(),
            "shape": list(self.shape), "dtype": self.dtype.name, "tol": self.tol, "block": self.block,
            "symmetric": self.symmetric, "sparse": self.sparse, "nnz": self.nnz,
            "tiles": [len(self.rows), len(self.cols)], "skipped_tiles": self.skipped_tiles,
            "skipped_tile_fraction": self.skipped_tile_fraction,
            "skipped_entry_fraction": self.skipped_entry_fraction,
            "max_skipped_per_row": self.max_skipped_per_row, "error_factor": self.error_factor,
            "error_bound": "|(K - K_local) v|_inf <= error_factor * |v|_inf <= tol * max_skipped_per_row * |v|_inf",
        }

    def _tile(self, a: int, b: int) -> Array:
        K = self._cache.tiles.get((a, b))
        if K is None:
            (r0, r1), (c0, c1) = self.rows[a], self.cols[b]
            K = kernel_block(self.kernel, self._xo[r0:r1], self._xi[c0:c1],
                             tile_text((r0, r1), (c0, c1), self.shape) + " (in tile order)")
            if self.symmetric and a == b and not self._cache.symmetry_checked:
                check_symmetric_tile(K, kernel=self.kernel, passed=self._symmetric_passed)
                self._cache.symmetry_checked = True
            self._cache.offer((a, b), K)
        return K

    def _each_kept(self, task: Callable, consume: Callable, like: Array) -> None:
        """``consume(a, b, task(a, b))`` for the kept tile pairs (a, b), consumed in the order
        of ``kept`` in the calling thread (:func:`.tiled._in_order`, one BLAS thread); ``task``
        runs on threads, one task a run of consecutive kept pairs of at least
        :data:`TASK_ENTRIES` kernel entries (one pair from ``block`` 512 up).  Threads: one for
        CuPy (the device orders its own work), else ``workers`` (default
        :func:`mfarray.backend.cores`), at most one per run.  At most ``AHEAD * workers`` runs'
        results wait to be consumed (for a mat-vec ``2 * TASK_ENTRIES / block * m`` numbers a
        run: 9.4 MB at 16 threads, block 256, m = 9 in float64; 4x that at block 64)."""
        kept, n = self.kept, len(self.kept)
        step = max(1, TASK_ENTRIES // self.block**2)
        runs = [(i, min(i + step, n)) for i in range(0, n, step)]

        def run(i0, i1):  # on a worker thread
            return [task(a, b) for a, b in kept[i0:i1]]

        def take(i0, i1, results):  # in the calling thread, in order
            for (a, b), result in zip(kept[i0:i1], results):
                consume(a, b, result)

        workers = 1 if backend.is_cupy(like) else min(self.workers or backend.cores(), max(len(runs), 1))
        _in_order(run, take, runs, workers)

    def matvec(self, v: Array) -> Array:
        """``K_local @ v`` for v (n_in, *trailing) -> (n_out, *trailing), real or complex; in
        memory (a Dask v is computed).

        The same bits on every call, whatever ``workers``, the thread timing and the tile
        cache: in the tile order of the points (``perm_out``, ``perm_in``),
        row tile ``a`` of the result is the sum over its kept tile pairs in increasing ``b``,
        ``((c_ab1 + c_ab2) + c_ab3) + ...`` (starting from ``c_ab1`` itself; zeros where no
        pair of row tile ``a`` is kept), of ``c_ab = apply_block(K_ab, v_b)`` -- for a
        symmetric operator below the diagonal ``c_ab = apply_block(K_ba, v_b,
        transpose=True)`` from the kept tile ``K_ba`` -- each product with one BLAS thread;
        the rows are then put back in the original order (a copy).  As
        :meth:`.tiled.BlockwiseOperator.matvec`: threads compute the products of the kept
        pairs, visited row tile by row tile (in runs of :data:`TASK_ENTRIES` entries), ahead
        and the calling thread adds them in that order (:meth:`_each_kept`).
        """
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        if backend.is_dask(v2):
            v2 = v2.compute()
        xp = array_api_compat.array_namespace(v2)
        vp = v2[self._p_in]

        def products(a, b):  # on a worker thread: (c_ab, c_ba or None) of the kept pair (a, b)
            (r0, r1), (c0, c1) = self.rows[a], self.cols[b]
            K = self._tile(a, b)
            on = apply_block(K, vp[c0:c1])
            off = apply_block(K, vp[r0:r1], transpose=True) if self.symmetric and a != b else None
            return on, off

        outp, started = None, np.zeros(len(self.rows), dtype=bool)

        def add(a, p):  # c_{a, .}: the first term of row tile a's sum, or the next one
            r0, r1 = self.rows[a]
            if started[a]:
                outp[r0:r1] += p
            else:
                outp[r0:r1] = p
                started[a] = True

        def consume(a, b, pq):  # in the calling thread, in the order of self.kept
            nonlocal outp
            if outp is None:
                outp = xp.empty((n_out, v2.shape[1]), dtype=pq[0].dtype)
            add(a, pq[0])
            if pq[1] is not None:
                add(b, pq[1])

        self._each_kept(products, consume, v2)
        if outp is None:  # nothing kept (or no rows)
            outp = xp.zeros((n_out, v2.shape[1]), dtype=result_dtype(v2.dtype))
        for a in np.flatnonzero(~started):  # row tiles without a kept pair
            outp[self.rows[a][0]:self.rows[a][1]] = 0
        out = xp.empty_like(outp)
        out[self._p_out] = outp
        return unflatten(out, n_out, trailing)

    def diagonal(self) -> Array:
        """(n,) the diagonal of K_local (square operators): the kernel's diagonal, zero where
        its tile pair is skipped (never on one point set: there d(x, x) = 0)."""
        check_square(self)
        pieces = [diagonal(kernel_block(self.kernel, self.x_out[a:b], self.x_in[a:b],
                                        tile_text((a, b), (a, b), self.shape)))
                  for a, b in bounds(self.shape[0], self.block)]
        xp = array_api_compat.array_namespace(self.x_out)
        d = pieces[0] if len(pieces) == 1 else xp.concat(pieces) if pieces else xp.zeros((0,))
        if self.symmetric:
            return d
        inv_out, inv_in = np.argsort(self.perm_out), np.argsort(self.perm_in)
        kept = np.zeros(self.lower.shape, dtype=bool)
        for a, b in self.kept:
            kept[a, b] = True
        mask = kept[inv_out // self.block, inv_in // self.block]
        return d * xp.asarray(mask)

    def to_dense(self) -> Array:
        """The (n_out, n_in) matrix K_local, skipped tiles as zeros.  Small cases only."""
        xp = array_api_compat.array_namespace(self.x_out)
        Kp = np.zeros(self.shape, dtype=self.dtype)

        def put(a, b, t):  # the tiles on threads with one BLAS thread each, as in matvec (they may be cached)
            (r0, r1), (c0, c1) = self.rows[a], self.cols[b]
            t = backend.to_numpy(t)
            Kp[r0:r1, c0:c1] = t
            if self.symmetric and a != b:
                Kp[c0:c1, r0:r1] = t.T

        self._each_kept(self._tile, put, self.x_out)
        K = np.empty_like(Kp)
        K[np.ix_(self.perm_out, self.perm_in)] = Kp
        return xp.asarray(K)

    @property
    def T(self) -> LocalGaussianOperator:
        """The transposed operator (the Gaussian is symmetric: the same kernel on (x_in, x_out))."""
        if self.symmetric:
            return self
        return LocalGaussianOperator(self.kernel, self.x_in, self.x_out, tol=self.tol, block=self.block,
                                     workers=self.workers, cache_bytes=self.cache_bytes)

    def transpose(self) -> LocalGaussianOperator:
        """:attr:`T`."""
        return self.T


# ----------------------------------------------------------------------------- Delta


class NearestOperator:
    """The Delta kernel as a sparse operator: ``K[i, index[i]] = 1``, shape (n_out, n_in);
    ``matvec`` is a gather, O(n_out * m).  ``transposed=True`` is K^T (a scatter-add), shape
    (n_in, n_out).  :meth:`build` finds the indices (:func:`.screen.nearest_screened`: exactly
    those of the dense Delta kernel)."""

    def __init__(self, index: Array, n_in: int, transposed: bool = False) -> None:
        index = np.asarray(backend.to_numpy(index))
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise ValueError(f"index must be a 1-D integer array (n_out,); got {index.dtype} {index.shape}")
        self.n_in = check_positive(n_in, "n_in")
        if index.size and (index.min() < 0 or index.max() >= self.n_in):
            raise ValueError(f"index must lie in [0, n_in = {self.n_in})")
        self.index = index.astype(np.int64)
        self.transposed = bool(transposed)

    @classmethod
    def build(cls, x_out: Array, x_in: Array | None = None, *, block: int = SCREEN_BLOCK,
              workers: int | None = None) -> NearestOperator:
        """The Delta kernel on points x_out (n_out, n+1), x_in (n_in, n+1) (default x_out);
        ``block``, ``workers``: the screening tiles and threads."""
        x_in = x_out if x_in is None else x_in
        return cls(nearest_screened(x_out, x_in, block=block, workers=workers), int(x_in.shape[0]))

    @property
    def shape(self) -> tuple[int, int]:
        """(n_out, n_in), or (n_in, n_out) when transposed."""
        s = (int(self.index.shape[0]), self.n_in)
        return s[::-1] if self.transposed else s

    def describe(self) -> dict:
        """JSON-safe record: the operator is exact (no error bound needed)."""
        return {"operator": "NearestOperator", "method": "local", "kernel": "delta", "shape": list(self.shape),
                "transposed": self.transposed, "error_factor": 0.0, "exact": True}

    def matvec(self, v: Array) -> Array:
        """``K @ v`` for v (shape[1], *trailing) -> (shape[0], *trailing)."""
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        if backend.is_dask(v2):
            v2 = v2.compute()
        xp = array_api_compat.array_namespace(v2)
        idx = xp.asarray(self.index)
        if not self.transposed:
            return unflatten(v2[idx], n_out, trailing)
        out = np.zeros((n_out, v2.shape[1]), dtype=result_dtype(v2.dtype))
        np.add.at(out, self.index, backend.to_numpy(v2))
        return unflatten(xp.asarray(out), n_out, trailing)

    def diagonal(self) -> np.ndarray:
        """(n,) 1.0 where a point is its own nearest (square operators)."""
        check_square(self)
        return (self.index == np.arange(self.index.shape[0])).astype(np.float64)

    def to_dense(self) -> np.ndarray:
        """The one-hot matrix (small cases only)."""
        K = np.zeros((self.index.shape[0], self.n_in))
        K[np.arange(self.index.shape[0]), self.index] = 1.0
        return K.T.copy() if self.transposed else K

    @property
    def T(self) -> NearestOperator:
        """The transposed operator."""
        return NearestOperator(self.index, self.n_in, not self.transposed)

    def transpose(self) -> NearestOperator:
        """:attr:`T`."""
        return self.T


# ----------------------------------------------------------------------------- the method


#: the options of method="local" for gaussian_fs besides ``block`` (delta takes only ``block``)
GAUSSIAN_OPTIONS = ("tol", "sparse", "sparse_max_bytes", "symmetric", "workers", "cache_bytes")


def _not_local(spec: Kernel, why: str = "") -> str:
    return (f"method='local' needs a local kernel on FS distance: gaussian_fs (either squared form, no rescaling) "
            f"or delta; kernel {spec.name}{' (rescaled)' if spec.factors else ''} is not one"
            f"{' (' + why + ')' if why else ''}.  Use method='dense', 'blockwise' or 'zarr' for it")


def local_operator(kernel: Callable[..., Array], x_out: Array, x_in: Array | None = None, *,
                   block: int | None = None, **options: Any) -> Any:
    """``as_operator(..., method="local")`` on points x_out (n_out, n+1), x_in (n_in, n+1):

    * gaussian_fs: ``sparse`` True -> :class:`.sparse.SparseGaussianOperator` (the entries >=
      ``tol`` in a CSR matrix, found by screening; ValueError when it does not pay: beyond
      ``sparse_max_bytes``, a quarter of the matrix, or nothing to drop); False ->
      :class:`LocalGaussianOperator` (the tiles, ``block``, ``cache_bytes``); "auto" (default):
      the sparse form where it pays, else the tiles.  ``tol``, ``symmetric`` (False: screen a
      point set against itself as two sets), ``workers`` go to either;
    * delta: :class:`NearestOperator` (exact; ``block``, ``workers`` of the screening).

    Any other kernel is refused (ValueError naming the methods that fit)."""
    from ..fs import delta, gaussian_fs
    from .sparse import SparseGaussianOperator, TooLarge

    spec = kernel_spec(kernel)
    x_in = x_out if x_in is None else x_in
    if spec.fn is delta.fn and not spec.factors:
        unknown = sorted(set(options) - {"workers"})
        if unknown:
            raise ValueError(f"method='local' with the delta kernel is exact and takes only block and workers; got "
                             f"{unknown}")
        return NearestOperator.build(x_out, x_in, block=SCREEN_BLOCK if block is None else block, **options)
    if spec.fn is not gaussian_fs.fn or spec.factors:
        raise ValueError(_not_local(spec))
    unknown = sorted(set(options) - set(GAUSSIAN_OPTIONS))
    if unknown:
        raise ValueError(f"method='local' with gaussian_fs takes block, {', '.join(GAUSSIAN_OPTIONS)}; got {unknown}")
    if "symmetric" in options:
        options["symmetric"] = check_flag(options["symmetric"], "symmetric", "x_out is x_in")
    sparse = options.pop("sparse", "auto")
    if not (isinstance(sparse, (bool, np.bool_)) or sparse == "auto"):
        raise ValueError(f"sparse must be True (the entries >= tol in a sparse matrix, built once), False (recompute "
                         f"the kept tiles every mat-vec) or 'auto' (sparse where it pays); got {sparse!r}")
    max_bytes = options.pop("sparse_max_bytes", 2**30)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
        raise ValueError(f"sparse_max_bytes must be a non-negative integer; got {max_bytes!r}")
    tile_options = {"block": DEFAULT_BLOCK if block is None else block, **options}
    cupy = backend.is_cupy(x_out) or backend.is_cupy(x_in)
    if sparse is True and cupy:
        raise ValueError("sparse=True keeps a SciPy sparse matrix (NumPy inputs): pass sparse=False for CuPy")
    if sparse is not False and not cupy:
        two_sets = x_in is not x_out or options.get("symmetric") is False
        try:
            return SparseGaussianOperator(kernel, x_out, x_in if two_sets else None, tol=options.get("tol", DEFAULT_TOL),
                                          sparse_max_bytes=max_bytes, workers=options.get("workers"))
        except TooLarge as exc:
            if sparse is True:
                raise ValueError(f"sparse=True: {exc}; raise sparse_max_bytes or pass sparse=False (recompute the "
                                 "kept tiles every mat-vec)") from None
    tile_options.pop("sparse_max_bytes", None)
    return LocalGaussianOperator(kernel, x_out, x_in, **tile_options)
