"""Kernel operators: the metric-NTK as a linear map, without materialising it.

The metric flow (Halverson & Ruehle eq. 2.8/2.12) is driven by ``Theta . dl/dg``.  With the
Kronecker structure (2.21)-(2.23), ``Theta_{ijkl}(x, x') = delta_ik delta_jl k(x, x')``, so
applying Theta to a metric-shaped array ``v`` of shape ``(n_in, *component_shape)`` (e.g.
``(n, 3, 3)`` complex Hermitian metrics or ``(n, 9)`` real) is the *scalar* kernel matrix
acting on every component at once::

    (Theta . v)[a, ...] = sum_b k(x_a, x'_b) v[b, ...]

i.e. one ``(n_out, n_in) @ (n_in, m)`` matrix product with the trailing components
flattened to ``m`` columns -- the 81 components of Theta are never formed.  For
``N = 10^5`` points (paper §3.1) even the scalar kernel is 10^10 entries (80 GB in float64),
so it is applied blockwise: recomputed on the fly (:class:`BlockwiseOperator`), streamed
from a Zarr store on disk (:class:`ZarrOperator`), or through a low-rank factorisation
(:class:`FactoredOperator`, random features or Jacobians).  :class:`DenseOperator` holds
the matrix in memory, and also accepts a general component-mixing metric-NTK as
``(n_out, n_in, c, c)`` blocks.

Every operator follows one small protocol (:class:`KernelOperator`)::

    op.shape        -> (n_out, n_in)
    op.matvec(v)    v: (n_in, *trailing) -> (n_out, *trailing); real or complex v
    op.diagonal()   (n,) where square
    op.to_dense()   the full matrix (small cases only)
    op.T            the transposed operator

NumPy and CuPy inputs work alike (the namespace comes from the inputs); Dask inputs give
lazy Dask results whose tasks each hold about one ``block x block`` kernel block.
CuPy is never imported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, runtime_checkable

import array_api_compat
import numpy as np

from .. import backend

__all__ = [
    "KernelOperator",
    "DenseOperator",
    "BlockwiseOperator",
    "ZarrOperator",
    "FactoredOperator",
    "as_operator",
    "acts_componentwise",
]

_ATTR_META = "mfarray_kernel_operator"
_ATTR_DONE = "mfarray_done_blocks"


@runtime_checkable
class KernelOperator(Protocol):
    """The protocol shared by every kernel operator."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def matvec(self, v): ...


# ----------------------------------------------------------------------------- helpers


_is_dask = backend.is_dask
_is_cupy = backend.is_cupy
_to_numpy = backend.to_numpy


def _check_points(x, name: str):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name} must be an array of shape (n, d); got {type(x).__name__}")
    if len(x.shape) != 2:
        raise ValueError(f"{name} must have shape (n, d) (points x features); got shape {tuple(x.shape)}")
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise ValueError(f"{name} has unknown (NaN) chunk sizes; call compute_chunk_sizes() first")


def _check_pair(x_out, x_in):
    _check_points(x_out, "x_out")
    _check_points(x_in, "x_in")
    if x_out.shape[1] != x_in.shape[1]:
        raise ValueError(
            f"x_in has {x_in.shape[1]} features per point but x_out has {x_out.shape[1]}: "
            f"x_out {tuple(x_out.shape)} and x_in {tuple(x_in.shape)} must share d"
        )


def _check_block(block, name: str = "block") -> int:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"{name} must be a positive integer; got {block!r}")
    return int(block)


def _is_complex_dtype(dt) -> bool:
    return np.dtype(dt).kind == "c"


def _flatten(v, n_in: int):
    """``v (n_in, *trailing) -> (v2 (n_in, m), trailing)``; ints promoted to float64."""
    if not hasattr(v, "shape") or not hasattr(v, "dtype"):
        v = np.asarray(v)
    if len(v.shape) < 1:
        raise ValueError(f"v must have shape (n_in, ...) with n_in = {n_in}; got a scalar")
    if v.shape[0] != n_in:
        raise ValueError(
            f"v has {v.shape[0]} rows (shape {tuple(v.shape)}) but the operator has "
            f"n_in = {n_in} columns: v must have shape (n_in, ...)"
        )
    if np.dtype(v.dtype).kind not in "fc":
        v = v.astype(np.float64)
    trailing = tuple(v.shape[1:])
    if _is_dask(v) and len(trailing) > 1:
        v = v.rechunk({i: -1 for i in range(1, len(v.shape))})
    m = math.prod(trailing)
    return v.reshape((n_in, m)), trailing


def _unflatten(out, n_out: int, trailing):
    return out.reshape((n_out, *trailing))


def _apply_block(K, v2, transpose: bool = False):
    """``K @ v2`` (or ``K.T @ v2``), shape ``(n_out, m)``.

    Computed as ``(v2.T @ K.T).T``: for a skinny v2 (m ~ 9-18 columns) OpenBLAS streams a
    large K 1.3-1.5x faster in this orientation than ``K @ v2`` (benchmarks/RESULTS.md).  A
    real K meeting a complex v2 is not complexified: one real product on ``[Re v | Im v]``;
    the real dtype is the promotion of K's and v's.
    """
    xp = array_api_compat.array_namespace(K, v2)
    Kt = K if transpose else K.T  # the product below is v2.T @ Kt
    if _is_complex_dtype(v2.dtype) and not _is_complex_dtype(K.dtype):
        m = v2.shape[1]
        wt = xp.concat([xp.real(v2).T, xp.imag(v2).T], axis=0)
        dt = np.result_type(K.dtype, wt.dtype)
        r = xp.matmul(wt.astype(dt, copy=False), Kt.astype(dt, copy=False))
        return (r[:m] + 1j * r[m:]).T
    dt = np.result_type(K.dtype, v2.dtype)
    return xp.matmul(v2.T.astype(dt, copy=False), Kt.astype(dt, copy=False)).T


def _result_dtype(*dtypes):
    dt = np.result_type(*[np.dtype(d) for d in dtypes])
    if dt.kind not in "fc":
        dt = np.result_type(dt, np.float64)
    return dt


def _pairwise(kernel) -> bool:
    """False for kernels whose k(x, x') depends on the whole point sets (the Delta kernel's
    nearest neighbour): they cannot be evaluated tile by tile (attribute ``pairwise``)."""
    while isinstance(kernel, partial):
        kernel = kernel.func
    return getattr(kernel, "pairwise", True)


def _check_tileable(kernel):
    if not _pairwise(kernel):
        raise ValueError(
            "this kernel is not pairwise (k(x, x') depends on the whole point sets, e.g. the Delta "
            "kernel's nearest neighbour), so it cannot be computed in tiles: use method='dense', or "
            "for large sets mfarray.kernels.nearest_index and a gather"
        )


def _kernel_block(kernel, a, b):
    K = kernel(a, b)
    if tuple(K.shape) != (a.shape[0], b.shape[0]):
        raise ValueError(
            f"kernel returned a block of shape {tuple(K.shape)} for inputs of {a.shape[0]} "
            f"and {b.shape[0]} points; a kernel must map (n1, d), (n2, d) -> (n1, n2)"
        )
    return K


def _concat_rows(pieces, like):
    xp = array_api_compat.array_namespace(like)
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=0)


def _diagonal(M):
    """Diagonal of a 2-D matrix (``(n,)``) or of the leading two axes of a 4-D block
    matrix (``(n, c, c)``), for NumPy, CuPy and Dask."""
    if _is_dask(M):
        import dask.array as da

        d = da.diagonal(M, axis1=0, axis2=1)
    else:
        d = M.diagonal(axis1=0, axis2=1)
    return d if len(M.shape) == 2 else d.transpose(2, 0, 1)


def _as_dask(x, row_chunk: int):
    import dask.array as da

    if _is_dask(x):
        return x.rechunk((row_chunk,) + (-1,) * (len(x.shape) - 1))
    return da.from_array(x, chunks=(row_chunk,) + (-1,) * (len(x.shape) - 1))


def _unify_dask(*arrays):
    """Return the arrays as they are, or all as Dask arrays when any one is."""
    if not any(_is_dask(a) for a in arrays):
        return arrays
    import dask.array as da

    return tuple(a if _is_dask(a) else da.asarray(a) for a in arrays)


def _meta_like(x, dtype, ndim):
    meta = getattr(x, "_meta", x)
    xp = array_api_compat.array_namespace(meta)
    return xp.empty((0,) * ndim, dtype=dtype)


# Block functions used inside Dask graphs (module level: picklable for distributed).


_BLAS = None


def _one_blas_thread():
    """Context holding BLAS to one thread where tiles already run one per core (tile
    threads, Dask's threaded scheduler): nested BLAS threads oversubscribe the cores
    (1.8-2.2x slower mat-vecs measured on 2 cores).  Process-global, so overlapping Dask
    tasks may briefly restore it: a speed matter only.  (dask.distributed workers start
    with one BLAS thread anyway.)"""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()  # scanning the loaded libraries once, not per task
    return _BLAS.limit(limits=1, user_api="blas")


def _partial_kernel_product(xo, xi, v, *, kernel, out_dtype):
    with _one_blas_thread():
        K = _kernel_block(kernel, xo, xi)
        return _apply_block(K, v).astype(out_dtype, copy=False)[:, None, :]


def _symmetric_tile_products(xa, xb, va, vb, *, kernel, out_dtype, diagonal):
    """For tile K = k(xa, xb) above the diagonal: (K @ vb, K^T @ va); on it (xa = xb):
    (K @ va, None) after checking K = K^T."""
    with _one_blas_thread():
        K = _kernel_block(kernel, xa, xb)
        if diagonal:
            _check_symmetric_tile(K)
            return _apply_block(K, vb).astype(out_dtype, copy=False), None
        return (_apply_block(K, vb).astype(out_dtype, copy=False),
                _apply_block(K, va, transpose=True).astype(out_dtype, copy=False))


def _sum_parts(*parts):
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def _partial_matrix_product(K, v, *, out_dtype):
    return _apply_block(K, v).astype(out_dtype, copy=False)[:, None, :]


def _kernel_dense_block(xo, xi, *, kernel):
    return _kernel_block(kernel, xo, xi)


def _kernel_diag_block(xo, xi, *, kernel):
    return _diagonal(_kernel_block(kernel, xo, xi))


def _dask_reduce_partials(partials, split_every):
    # partials: (n_out, n_col_blocks, m) with unit chunks along axis 1 -> tree-sum
    return partials.sum(axis=1, split_every=split_every, dtype=partials.dtype)


def _dask_kernel_matvec(kernel, x_out, x_in, v2, block, split_every=8):
    """Lazy ``K(x_out, x_in) @ v2``: one task per (row block, column block) computing the
    kernel block and its product with v (memory ~ block^2), tree-reduced over columns."""
    import dask.array as da

    xo = _as_dask(x_out, block)
    xi = _as_dask(x_in, block)
    vv = _as_dask(v2, block)
    dtype = _result_dtype(x_out.dtype, x_in.dtype, v2.dtype)
    with warnings.catch_warnings():  # (row x column) tiles by design: one task per tile
        warnings.simplefilter("ignore", da.PerformanceWarning)
        partials = da.blockwise(
            _partial_kernel_product, "ijc",
            xo, "id", xi, "jd", vv, "jc",
            kernel=kernel, out_dtype=dtype, dtype=dtype,
            adjust_chunks={"j": 1}, concatenate=True,
            meta=_meta_like(vv, dtype, 3),
        )  # fmt: skip
    return _dask_reduce_partials(partials, split_every)


def _dask_symmetric_kernel_matvec(kernel, x, v2, block):
    """Lazy ``K(x, x) @ v2`` for a symmetric kernel: one task per tile on or above the
    diagonal giving both K_ab v_b and K_ab^T v_a, then one sum per row block (half the
    kernel evaluations of :func:`_dask_kernel_matvec`)."""
    import dask
    import dask.array as da

    xb = _as_dask(x, block).to_delayed().ravel()
    vb = _as_dask(v2, block).to_delayed().ravel()
    rows = _bounds(int(x.shape[0]), block)
    dtype = _result_dtype(x.dtype, v2.dtype)
    tile = dask.delayed(_symmetric_tile_products, nout=2, pure=True)
    parts = [[] for _ in rows]
    for a in range(len(rows)):
        for b in range(a, len(rows)):
            on, off = tile(xb[a], xb[b], vb[a], vb[b], kernel=kernel, out_dtype=dtype, diagonal=a == b)
            parts[a].append(on)
            if b != a:
                parts[b].append(off)
    meta = _meta_like(v2, dtype, 2)
    return da.concatenate([
        da.from_delayed(dask.delayed(_sum_parts, pure=True)(*p), shape=(r1 - r0, v2.shape[1]), dtype=dtype, meta=meta)
        for p, (r0, r1) in zip(parts, rows)
    ])


def _dask_matrix_matvec(K, v2, split_every=8):
    """Lazy ``K @ v2`` for a chunked Dask matrix K: one task per block of K."""
    import dask.array as da

    vv = v2.rechunk((K.chunks[1], -1)) if _is_dask(v2) else da.from_array(v2, chunks=(K.chunks[1], -1))
    dtype = _result_dtype(K.dtype, v2.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", da.PerformanceWarning)
        partials = da.blockwise(
            _partial_matrix_product, "ijc",
            K, "ij", vv, "jc",
            out_dtype=dtype, dtype=dtype, adjust_chunks={"j": 1}, concatenate=True,
            meta=_meta_like(vv, dtype, 3),
        )  # fmt: skip
    return _dask_reduce_partials(partials, split_every)


def _fingerprint(x) -> str:
    a = np.ascontiguousarray(_to_numpy(x))
    h = hashlib.sha256()
    h.update(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _json_safe(value, depth=0):
    """A JSON-encodable stand-in for a hyper-parameter (complex -> {"real", "imag"})."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else repr(f)
    if isinstance(value, (complex, np.complexfloating)):
        return {"real": float(value.real), "imag": float(value.imag)}
    if isinstance(value, (list, tuple)) and depth < 3 and len(value) <= 64:
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict) and depth < 3:
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        a = _to_numpy(value)
        if a.size <= 64:
            return _json_safe(a.tolist(), depth)
        return {"array_shape": list(a.shape), "dtype": str(a.dtype), "sha256": _fingerprint(a)}
    return repr(value)


def _kernel_info(kernel, name=None, params=None) -> dict:
    """Kernel name and hyper-parameters (keywords of a functools.partial), JSON-safe."""
    func, kw = kernel, {}
    while isinstance(func, partial):
        kw = {**func.keywords, **kw}
        func = func.func
    if name is None:
        mod = getattr(func, "__module__", None) or type(func).__module__
        qual = getattr(func, "__qualname__", None) or type(func).__qualname__
        name = f"{mod}.{qual}"
    info = {"name": str(name), "params": _json_safe(kw if params is None else params)}
    json.dumps(info)  # guaranteed JSON by construction; fail loudly otherwise
    return info


def _bounds(n: int, block: int):
    return [(s, min(s + block, n)) for s in range(0, n, block)]


# ----------------------------------------------------------------------------- Dense


@dataclass(frozen=True, eq=False)
class DenseOperator:
    """An in-memory matrix: ``(n_out, n_in)`` scalar kernel (acting on every component,
    eq. 2.23) or ``(n_out, n_in, c, c)`` component-mixing metric-NTK blocks acting on v
    whose trailing dims flatten to ``c``.  NumPy, CuPy or Dask (lazy result).

    symmetric : the caller's promise that the scalar matrix equals its transpose (a symmetric
        kernel on one point set); the mat-vec then reads it in BLAS's faster orientation.
    """

    matrix: Any
    symmetric: bool = False

    def __post_init__(self):
        M = self.matrix
        if not hasattr(M, "shape"):
            object.__setattr__(self, "matrix", M := np.asarray(M))
        if len(M.shape) not in (2, 4):
            raise ValueError(
                f"matrix must have shape (n_out, n_in) or (n_out, n_in, c, c); got {tuple(M.shape)}"
            )
        if len(M.shape) == 4 and M.shape[2] != M.shape[3]:
            raise ValueError(f"matrix component blocks must be square (c, c); got {tuple(M.shape[2:])}")
        if self.symmetric and (len(M.shape) != 2 or M.shape[0] != M.shape[1]):
            raise ValueError(f"symmetric=True needs a square (n, n) matrix; got {tuple(M.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def components(self) -> int | None:
        """``c`` for a component-mixing operator, None for a scalar (Kronecker) kernel."""
        return int(self.matrix.shape[2]) if len(self.matrix.shape) == 4 else None

    def matvec(self, v):
        n_out, n_in = self.shape
        v2, trailing = _flatten(v, n_in)
        M, v2 = _unify_dask(self.matrix, v2)
        if self.components is None:
            if _is_dask(M):
                out = _dask_matrix_matvec(M, v2)
            else:
                out = _apply_block(M, v2, transpose=self.symmetric)  # M.T == M, read row-major
            return _unflatten(out, n_out, trailing)
        c = self.components
        if v2.shape[1] != c:
            raise ValueError(
                f"v has trailing shape {trailing} ({v2.shape[1]} components) but the mixing "
                f"operator acts on c = {c} components"
            )
        xp = array_api_compat.array_namespace(M, v2)
        dt = _result_dtype(M.dtype, v2.dtype)
        out = xp.tensordot(M.astype(dt, copy=False), v2.astype(dt, copy=False), axes=([1, 3], [0, 1]))
        return _unflatten(out, n_out, trailing)

    def diagonal(self):
        n_out, n_in = self.shape
        if n_out != n_in:
            raise ValueError(f"diagonal() needs a square operator; shape is {self.shape}")
        return _diagonal(self.matrix)

    def to_dense(self):
        return self.matrix

    @property
    def T(self) -> DenseOperator:
        M = self.matrix
        if self.symmetric:
            return self
        return DenseOperator(M.T if len(M.shape) == 2 else M.transpose(1, 0, 3, 2))

    def transpose(self) -> DenseOperator:
        return self.T


# ----------------------------------------------------------------------------- Blockwise


@dataclass(frozen=True)
class _Swapped:
    """``(a, b) -> kernel(b, a).T``: the kernel of the transposed operator."""

    kernel: Callable

    def __call__(self, a, b):
        return self.kernel(b, a).T


def _check_symmetric_tile(K, rtol: float = 1e-10):
    """A diagonal tile of a symmetric operator must equal its transpose (up to rounding):
    catches a kernel that is not symmetric before half of its matrix is mirrored."""
    xp = array_api_compat.array_namespace(K)
    gap, top = float(xp.max(xp.abs(K - K.T))), float(xp.max(xp.abs(K)))
    if not gap <= rtol * top:
        raise ValueError(
            f"the kernel is not symmetric on these points (max |K - K^T| = {gap:.3g} on a diagonal "
            f"tile, max |K| = {top:.3g}), but x_out is x_in made the operator symmetric: pass "
            "symmetric=False (operator_options={'symmetric': False} in kernel_flow)"
        )


class _TileCache:
    """Kernel tiles kept up to a byte budget (thread-safe insertion), and the operator's
    other run-time state."""

    def __init__(self, budget: int):
        self.budget, self.used, self.tiles = budget, 0, {}
        self.symmetry_checked = False
        self._lock = threading.Lock()

    def offer(self, key, K):
        with self._lock:
            if key not in self.tiles and self.used + K.nbytes <= self.budget:
                self.tiles[key] = K
                self.used += K.nbytes


@dataclass(frozen=True, eq=False)
class BlockwiseOperator:
    """``K[a, b] = kernel(x_out[a], x_in[b])``, computed in ``block x block`` tiles on
    demand and never held whole.  With NumPy/CuPy inputs :meth:`matvec` streams over the
    tiles; if any of ``x_out``, ``x_in``, ``v`` is a Dask array the result is a lazy Dask
    array, one task per tile (kernel tile + its product with v), tree-summed over column
    tiles -- memory ~ block^2 per task.

    symmetric : the square operator of a symmetric kernel on one point set, k(x, x') =
        k(x', x): only tiles on and above the diagonal are computed, each used for both
        ``K_ab`` and ``K_ba = K_ab^T`` (half the kernel evaluations).  ``None`` (default)
        means ``x_out is x_in``; pass False for a kernel that is not symmetric.
    workers : threads over tiles for NumPy inputs (kernel evaluation and BLAS release the
        GIL); None = all cores.  Each thread holds its own output accumulator.
    cache_bytes : keep computed tiles up to this many bytes and reuse them in later
        mat-vecs (a kernel cache, as in SVM solvers: the flow applies the same frozen kernel
        every step).  0 (default) recomputes every tile every time; tiles beyond the budget
        are recomputed.  The cache lives as long as the operator.
    """

    kernel: Callable
    x_out: Any
    x_in: Any
    block: int = 1024  # measured: 1024^2 tiles 15% faster than 2048^2 (cache-resident temporaries)
    symmetric: bool | None = None
    workers: int | None = None
    cache_bytes: int = 0
    _cache: _TileCache = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not callable(self.kernel):
            raise ValueError(f"kernel must be callable k(x1, x2) -> (n1, n2); got {type(self.kernel).__name__}")
        _check_tileable(self.kernel)
        _check_pair(self.x_out, self.x_in)
        object.__setattr__(self, "block", _check_block(self.block))
        if self.symmetric is None:
            object.__setattr__(self, "symmetric", self.x_out is self.x_in)
        if self.symmetric and self.x_out.shape[0] != self.x_in.shape[0]:
            raise ValueError(f"symmetric=True needs a square operator; x_out, x_in give {self.shape}")
        if self.workers is not None:
            object.__setattr__(self, "workers", _check_block(self.workers, "workers"))
        if isinstance(self.cache_bytes, bool) or not isinstance(self.cache_bytes, (int, np.integer)) or self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer (0: no cache); got {self.cache_bytes!r}")
        object.__setattr__(self, "_cache", _TileCache(int(self.cache_bytes)))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x_out.shape[0]), int(self.x_in.shape[0]))

    @property
    def lazy(self) -> bool:
        return _is_dask(self.x_out) or _is_dask(self.x_in)

    def _row_blocks(self):
        return _bounds(self.shape[0], self.block)

    def _col_blocks(self):
        return _bounds(self.shape[1], self.block)

    def _tiles(self):
        """(row bounds, column bounds) of the tiles a mat-vec visits."""
        rb, cb = self._row_blocks(), self._col_blocks()
        if self.symmetric:
            return [(rb[i], rb[j]) for i in range(len(rb)) for j in range(i, len(rb))]
        return [(r, c) for r in rb for c in cb]

    def _tile(self, rows, cols):
        key = (rows[0], cols[0])
        K = self._cache.tiles.get(key)
        if K is None:
            K = _kernel_block(self.kernel, self.x_out[rows[0]:rows[1]], self.x_in[cols[0]:cols[1]])
            if self.symmetric and rows == cols and not self._cache.symmetry_checked:
                _check_symmetric_tile(K)  # once per operator: it costs three passes over a tile
                self._cache.symmetry_checked = True
            self._cache.offer(key, K)
        return K

    def _each_tile(self, task, like):
        """Run ``acc = task(rows, cols, acc)`` over every tile, on ``workers`` threads (one
        for CuPy) pulling tiles from a shared queue; returns the threads' final ``acc``s."""
        tiles = self._tiles()
        workers = 1 if _is_cupy(like) else min(self.workers or os.cpu_count() or 1, len(tiles))
        if all((r[0], c[0]) in self._cache.tiles for r, c in tiles):
            # products only: BLAS's own threads do them; Python threads with one BLAS thread
            # each ran 2x slower right after any multi-threaded BLAS call, whose idle
            # OpenBLAS threads keep spinning on a core for a while (measured)
            workers = 1
        queue, lock = iter(tiles), threading.Lock()

        def run():
            acc = None
            while True:
                with lock:
                    rows, cols = next(queue, (None, None))
                if rows is None:
                    return acc
                acc = task(rows, cols, acc)

        if workers == 1:
            return [run()]
        with _one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            return [f.result() for f in [pool.submit(run) for _ in range(workers)]]

    def matvec(self, v):
        n_out, n_in = self.shape
        v2, trailing = _flatten(v, n_in)
        if self.lazy or _is_dask(v2):
            if self.symmetric:
                out = _dask_symmetric_kernel_matvec(self.kernel, self.x_out, v2, self.block)
            else:
                out = _dask_kernel_matvec(self.kernel, self.x_out, self.x_in, v2, self.block)
            return _unflatten(out, n_out, trailing)
        xp = array_api_compat.array_namespace(v2)

        def task(rows, cols, out):  # out: this thread's own accumulator (n_out, m)
            K = self._tile(rows, cols)
            p = _apply_block(K, v2[cols[0]:cols[1]])
            if out is None:
                out = xp.zeros((n_out, v2.shape[1]), dtype=p.dtype)
            out[rows[0]:rows[1]] += p
            if self.symmetric and rows != cols:
                out[cols[0]:cols[1]] += _apply_block(K, v2[rows[0]:rows[1]], transpose=True)
            return out

        parts = [p for p in self._each_tile(task, v2) if p is not None]
        if not parts:  # no tiles: an operator with 0 rows or columns
            return _unflatten(xp.zeros((n_out, v2.shape[1]), dtype=_result_dtype(v2.dtype)), n_out, trailing)
        return _unflatten(_sum_parts(*parts), n_out, trailing)

    def diagonal(self):
        """``k(x_out[a], x_in[a])`` from the diagonal tiles (cost ~ n * block)."""
        n_out, n_in = self.shape
        if n_out != n_in:
            raise ValueError(f"diagonal() needs a square operator; shape is {self.shape}")
        if self.lazy:
            import dask.array as da

            xo, xi = _as_dask(self.x_out, self.block), _as_dask(self.x_in, self.block)
            dtype = _result_dtype(xo.dtype, xi.dtype)
            return da.blockwise(
                _kernel_diag_block, "i", xo, "id", xi, "id", kernel=self.kernel, dtype=dtype,
                concatenate=True, meta=_meta_like(xo, dtype, 1),
            )  # fmt: skip
        pieces = [
            _diagonal(_kernel_block(self.kernel, self.x_out[a:b], self.x_in[a:b])) for a, b in self._row_blocks()
        ]
        return _concat_rows(pieces, self.x_out)

    def to_dense(self):
        """The full matrix (lazy Dask for Dask inputs).  Small cases only."""
        if self.lazy:
            import dask.array as da

            xo, xi = _as_dask(self.x_out, self.block), _as_dask(self.x_in, self.block)
            dtype = _result_dtype(xo.dtype, xi.dtype)
            return da.blockwise(
                _kernel_dense_block, "ij", xo, "id", xi, "jd", kernel=self.kernel, dtype=dtype,
                concatenate=True, meta=_meta_like(xo, dtype, 2),
            )  # fmt: skip
        r0, c0 = self._tiles()[0]
        first = self._tile(r0, c0)
        xp = array_api_compat.array_namespace(first)
        K = xp.empty(self.shape, dtype=first.dtype)

        def task(rows, cols, _):  # tiles write disjoint regions of K
            t = first if (rows, cols) == (r0, c0) else self._tile(rows, cols)
            K[rows[0]:rows[1], cols[0]:cols[1]] = t
            if self.symmetric and rows != cols:
                K[cols[0]:cols[1], rows[0]:rows[1]] = t.T

        self._each_tile(task, first)
        return K

    @property
    def T(self) -> BlockwiseOperator:
        if self.symmetric:
            return self
        k = self.kernel.kernel if isinstance(self.kernel, _Swapped) else _Swapped(self.kernel)
        return BlockwiseOperator(k, self.x_in, self.x_out, self.block, False, self.workers, self.cache_bytes)

    def transpose(self) -> BlockwiseOperator:
        return self.T


# ----------------------------------------------------------------------------- Factored


@dataclass(frozen=True, eq=False)
class FactoredOperator:
    """``K = Phi_out Phi_in^T`` (random features, Jacobians): ``matvec = Phi_out (Phi_in^T v)``
    in O((n_out + n_in) * rank * m).  ``phi_in`` defaults to ``phi_out`` (square, PSD)."""

    phi_out: Any
    phi_in: Any = None

    def __post_init__(self):
        if self.phi_in is None:
            object.__setattr__(self, "phi_in", self.phi_out)
        for name in ("phi_out", "phi_in"):
            p = getattr(self, name)
            if not hasattr(p, "shape") or len(p.shape) != 2:
                raise ValueError(f"{name} must have shape (n, rank); got {getattr(p, 'shape', type(p).__name__)}")
        if self.phi_out.shape[1] != self.phi_in.shape[1]:
            raise ValueError(
                f"phi_in has rank {self.phi_in.shape[1]} but phi_out has rank {self.phi_out.shape[1]}: "
                f"phi_out {tuple(self.phi_out.shape)} and phi_in {tuple(self.phi_in.shape)} must share the rank"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.phi_out.shape[0]), int(self.phi_in.shape[0]))

    @property
    def rank(self) -> int:
        return int(self.phi_out.shape[1])

    def matvec(self, v):
        n_out, n_in = self.shape
        v2, trailing = _flatten(v, n_in)
        po, pi, v2 = _unify_dask(self.phi_out, self.phi_in, v2)
        t = _apply_block(pi.T, v2)  # (rank, m)
        return _unflatten(_apply_block(po, t), n_out, trailing)

    def diagonal(self):
        n_out, n_in = self.shape
        if n_out != n_in:
            raise ValueError(f"diagonal() needs a square operator; shape is {self.shape}")
        po, pi = _unify_dask(self.phi_out, self.phi_in)
        xp = array_api_compat.array_namespace(po, pi)
        return xp.sum(po * pi, axis=1)

    def to_dense(self):
        po, pi = _unify_dask(self.phi_out, self.phi_in)
        xp = array_api_compat.array_namespace(po, pi)
        return xp.matmul(po, pi.T)

    @property
    def T(self) -> FactoredOperator:
        return FactoredOperator(self.phi_in, self.phi_out)

    def transpose(self) -> FactoredOperator:
        return self.T


# ----------------------------------------------------------------------------- Zarr


def _open_existing(path):
    import zarr

    try:
        return zarr.open_array(store=path, mode="r+")
    except FileNotFoundError:
        return None


@dataclass(frozen=True, eq=False)
class ZarrOperator:
    """A kernel matrix stored on disk as a Zarr v3 array with ``block x block`` chunks,
    applied out of core: :meth:`matvec` streams one chunk at a time (reading the next
    while multiplying the current), or builds a lazy Dask graph for Dask ``v``.

    Create with :meth:`build` (resumable), reopen with :meth:`open`."""

    array: Any  # zarr.Array
    transposed: bool = False

    # --- construction -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        kernel: Callable,
        x_out,
        x_in=None,
        path=None,
        *,
        block: int = 1024,
        dtype: str = "float32",
        compressors=None,
        symmetric: bool = False,
        overwrite: bool = False,
        workers: int = 1,
        progress: bool = False,
        callback: Callable | None = None,
        name: str | None = None,
        params: dict | None = None,
    ) -> ZarrOperator:
        """Write ``kernel(x_out, x_in)`` block by block into a Zarr v3 array at ``path``.

        The array is created first (``zarr.create_array``, chunks ``(block, block)``,
        ``fill_value=NaN`` so an unwritten block can never pass for data).  Each block is
        written and *then* recorded as done in the array attributes (the local store
        writes atomically), so an interrupted build never marks a half-written block and
        a rerun with the same inputs writes only the missing blocks.  A rerun whose
        inputs (shapes, block, dtype, kernel name, point fingerprints) differ raises
        ValueError unless ``overwrite=True``.

        ``symmetric=True`` (x_in is x_out and k(x, y) = k(y, x)) computes only the blocks
        with ``i <= j`` and writes their transposes.  ``workers > 1`` computes blocks in a
        thread pool.  ``callback(i, j, n_done, n_total)`` is called after each block is
        recorded; ``progress=True`` prints progress to stderr.  ``name``/``params`` override
        the kernel description stored in the attributes (default: the function's name and
        the keywords of a ``functools.partial``).
        """
        import zarr

        if path is None:
            raise ValueError("path is required: where to write the Zarr store")
        if not callable(kernel):
            raise ValueError(f"kernel must be callable k(x1, x2) -> (n1, n2); got {type(kernel).__name__}")
        _check_tileable(kernel)
        same = x_in is None or x_in is x_out
        x_in = x_out if x_in is None else x_in
        _check_pair(x_out, x_in)
        block = _check_block(block)
        workers = _check_block(workers, "workers")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype("float32"), np.dtype("float64")):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype}")
        if symmetric and not same and x_out.shape != x_in.shape:
            raise ValueError("symmetric=True needs x_in = x_out (a square kernel matrix)")

        # Points are small (n x d): bring Dask ones into memory, keep CuPy on the device.
        xo = x_out.compute() if _is_dask(x_out) else x_out
        xi = xo if same else (x_in.compute() if _is_dask(x_in) else x_in)
        fp_out = _fingerprint(xo)
        fp_in = fp_out if same else _fingerprint(xi)
        if symmetric and fp_in != fp_out:
            raise ValueError("symmetric=True needs x_in = x_out (a square kernel matrix)")
        n_out, n_in = int(xo.shape[0]), int(xi.shape[0])
        meta = {
            "kind": "kernel_matrix",
            "version": 1,
            "n_out": n_out,
            "n_in": n_in,
            "block": block,
            "dtype": dtype.name,
            "kernel": _kernel_info(kernel, name, params),
            "x_out_sha256": fp_out,
            "x_in_sha256": fp_in,
            "symmetric": bool(symmetric),
        }

        arr = None if overwrite else _open_existing(path)
        if arr is not None:
            old = dict(arr.attrs).get(_ATTR_META)
            keys = ("kind", "n_out", "n_in", "block", "dtype", "x_out_sha256", "x_in_sha256")
            if old is None or any(old.get(k) != meta[k] for k in keys) or old["kernel"]["name"] != meta["kernel"]["name"]:
                diff = [k for k in keys if old is None or old.get(k) != meta[k]]
                raise ValueError(
                    f"path {path!s} holds a different array (mismatch in {diff or ['kernel']}); "
                    f"pass overwrite=True or choose another path"
                )
            if old["kernel"] != meta["kernel"]:
                raise ValueError(
                    f"path {path!s} was built with kernel {old['kernel']}, not {meta['kernel']}; "
                    f"pass overwrite=True or choose another path"
                )
        if arr is None:
            arr = zarr.create_array(
                store=path,
                shape=(n_out, n_in),
                chunks=(block, block),
                dtype=dtype.name,
                compressors=compressors,
                fill_value=float("nan"),
                attributes={_ATTR_META: meta, _ATTR_DONE: []},
                overwrite=True,
            )

        rb, cb = _bounds(n_out, block), _bounds(n_in, block)
        ncol = len(cb)
        n_total = len(rb) * ncol
        done = set(int(k) for k in dict(arr.attrs).get(_ATTR_DONE, []))
        tasks = [
            (i, j)
            for i in range(len(rb))
            for j in range(ncol)
            if (not symmetric or i <= j) and (i * ncol + j not in done or (symmetric and j * ncol + i not in done))
        ]

        def compute_write(i, j):
            (i0, i1), (j0, j1) = rb[i], cb[j]
            K = _kernel_block(kernel, xo[i0:i1], xi[j0:j1])
            if _is_complex_dtype(K.dtype):
                raise ValueError("kernel returned complex values; ZarrOperator stores real kernels")
            K = np.asarray(_to_numpy(K), dtype=dtype)
            arr[i0:i1, j0:j1] = K
            written = [i * ncol + j]
            if symmetric and i != j:
                arr[j0:j1, i0:i1] = K.T
                written.append(j * ncol + i)
            return written

        t0 = time.perf_counter()

        def record(written):
            done.update(written)
            arr.update_attributes({_ATTR_DONE: sorted(done)})
            if callback is not None:
                for k in written:
                    callback(k // ncol, k % ncol, len(done), n_total)
            if progress:
                el = time.perf_counter() - t0
                print(f"\r[ZarrOperator.build] {len(done)}/{n_total} blocks, {el:.1f} s", end="", file=sys.stderr)

        if workers == 1:
            for i, j in tasks:
                record(compute_write(i, j))
        else:
            with ThreadPoolExecutor(workers) as pool:
                pending = {pool.submit(compute_write, i, j) for i, j in tasks}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    error = None
                    for f in finished:
                        if f.exception() is None:
                            record(f.result())
                        else:
                            error = error or f.exception()
                    if error is not None:
                        for f in pending:
                            f.cancel()
                        for f in wait(pending)[0]:
                            if not f.cancelled() and f.exception() is None:
                                record(f.result())
                        raise error
        if progress:
            print(file=sys.stderr)
        return cls(arr)

    @classmethod
    def open(cls, path, *, mode: str = "r", require_complete: bool = True) -> ZarrOperator:
        """Reopen a store written by :meth:`build`; an incomplete one raises ValueError
        (``require_complete=False`` to open it anyway: missing blocks read as NaN)."""
        import zarr

        arr = zarr.open_array(store=path, mode=mode)
        op = cls(arr)
        if len(arr.shape) != 2:
            raise ValueError(f"path {path!s} holds an array of shape {arr.shape}, not a (n_out, n_in) kernel matrix")
        if require_complete and _ATTR_META in dict(arr.attrs) and not op.complete:
            n_done, n_total = op.progress
            raise ValueError(
                f"kernel store at {path!s} is incomplete ({n_done}/{n_total} blocks written); "
                f"rerun ZarrOperator.build with the same arguments to finish it"
            )
        return op

    # --- metadata ---------------------------------------------------------------------

    @property
    def attrs(self) -> dict:
        return dict(self.array.attrs).get(_ATTR_META, {})

    @property
    def block(self) -> tuple[int, int]:
        return tuple(int(c) for c in self.array.chunks)

    @property
    def dtype(self):
        return np.dtype(self.array.dtype)

    @property
    def progress(self) -> tuple[int, int]:
        n, m = self.array.shape
        b0, b1 = self.array.chunks
        return len(dict(self.array.attrs).get(_ATTR_DONE, [])), (-(-n // b0)) * (-(-m // b1))

    @property
    def complete(self) -> bool:
        d, t = self.progress
        return d == t

    @property
    def shape(self) -> tuple[int, int]:
        n, m = (int(s) for s in self.array.shape)
        return (m, n) if self.transposed else (n, m)

    # --- linear algebra ---------------------------------------------------------------

    def to_dask(self):
        """The matrix as a lazy Dask array (``dask.array.from_zarr``), chunks = blocks."""
        import dask.array as da

        K = da.from_zarr(self.array)
        return K.T if self.transposed else K

    def matvec(self, v):
        n_out, n_in = self.shape
        v2, trailing = _flatten(v, n_in)
        if _is_dask(v2):
            return _unflatten(_dask_matrix_matvec(self.to_dask(), v2), n_out, trailing)
        xp = array_api_compat.array_namespace(v2)
        on_device = _is_cupy(v2)
        b0, b1 = self.block
        if self.transposed:
            b0, b1 = b1, b0
        rb, cb = _bounds(n_out, b0), _bounds(n_in, b1)
        arr, tr = self.array, self.transposed

        def read(i, j):
            (i0, i1), (j0, j1) = rb[i], cb[j]
            return arr[j0:j1, i0:i1] if tr else arr[i0:i1, j0:j1]

        order = [(i, j) for i in range(len(rb)) for j in range(len(cb))]
        rows, acc = [], None
        with ThreadPoolExecutor(1) as pool:  # prefetch the next block while multiplying
            fut = pool.submit(read, *order[0])
            for k, (i, j) in enumerate(order):
                K = fut.result()
                if k + 1 < len(order):
                    fut = pool.submit(read, *order[k + 1])
                if tr:
                    K = K.T
                if on_device:
                    K = xp.asarray(K)
                (j0, j1) = cb[j]
                p = _apply_block(K, v2[j0:j1])
                acc = p if acc is None else acc + p
                if j == len(cb) - 1:
                    rows.append(acc)
                    acc = None
        return _unflatten(_concat_rows(rows, v2), n_out, trailing)

    def diagonal(self):
        n_out, n_in = self.shape
        if n_out != n_in:
            raise ValueError(f"diagonal() needs a square operator; shape is {self.shape}")
        b = min(self.block)
        return np.concatenate([np.diagonal(self.array[a:c, a:c]) for a, c in _bounds(n_out, b)])

    def to_dense(self):
        K = self.array[...]
        return K.T if self.transposed else K

    @property
    def T(self) -> ZarrOperator:
        return ZarrOperator(self.array, not self.transposed)

    def transpose(self) -> ZarrOperator:
        return self.T


# ----------------------------------------------------------------------------- as_operator


def acts_componentwise(op) -> bool:
    """True when ``op`` applies one scalar kernel to every trailing component alike (eq.
    2.23), so it may be fed any real coordinates of the metrics (e.g. the 9 real coordinates
    of a Hermitian 3x3 instead of its 18 real and imaginary parts).  Component-mixing and
    unknown operators answer False.  (A blockwise kernel is assumed real; see
    ``flows.frozen.metric_matvec`` for the check.)"""
    if isinstance(op, DenseOperator):
        return op.components is None and not _is_complex_dtype(op.matrix.dtype)
    if isinstance(op, FactoredOperator):
        return not (_is_complex_dtype(op.phi_out.dtype) or _is_complex_dtype(op.phi_in.dtype))
    return isinstance(op, (BlockwiseOperator, ZarrOperator))


_METHODS = ("auto", "dense", "blockwise", "zarr", "factored")


def as_operator(
    kernel_or_operator,
    x_out=None,
    x_in=None,
    *,
    method: str = "auto",
    block: int | None = None,
    path=None,
    dense_max_bytes: int = 2**28,
    **build_kwargs,
):
    """The operator a flow applies: pass through an operator, wrap a matrix, open a Zarr
    path, or turn a kernel ``k(x1, x2)`` on ``x_out`` (and ``x_in``, default ``x_out``)
    into one.

    ``method``:
      ``"dense"``     ``DenseOperator(k(x_out, x_in))`` (lazy Dask for Dask points);
      ``"blockwise"`` :class:`BlockwiseOperator` (``block`` default 1024; ``symmetric``,
                      ``workers``, ``cache_bytes`` pass through, also to the tiled "dense" build);
      ``"zarr"``      :meth:`ZarrOperator.build` at ``path`` (``block`` default 1024, measured 4x faster to read than 4096 here;
                      ``build_kwargs`` such as ``dtype``, ``workers`` go there);
      ``"factored"``  ``kernel_or_operator`` is a feature map ``phi(x) -> (n, rank)``:
                      :class:`FactoredOperator` ``(phi(x_out), phi(x_in))``;
      ``"auto"``      dense when the float64 matrix fits in ``dense_max_bytes`` and no
                      input is Dask, blockwise otherwise.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    obj = kernel_or_operator
    if hasattr(obj, "matvec") and hasattr(obj, "shape"):
        if x_out is not None:
            x_in_ = x_out if x_in is None else x_in
            want = (int(x_out.shape[0]), int(x_in_.shape[0]))
            if tuple(obj.shape) != want:
                raise ValueError(f"operator has shape {tuple(obj.shape)} but x_out, x_in give {want}")
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return ZarrOperator.open(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and not callable(obj):
        return DenseOperator(obj)
    if not callable(obj):
        raise ValueError(
            f"kernel_or_operator must be an operator, a matrix, a Zarr path or a kernel callable; "
            f"got {type(obj).__name__}"
        )
    if x_out is None:
        raise ValueError("x_out is required to build an operator from a kernel")
    x_in = x_out if x_in is None else x_in
    if method == "factored":
        return FactoredOperator(obj(x_out), obj(x_in) if x_in is not x_out else None)
    _check_pair(x_out, x_in)
    lazy = _is_dask(x_out) or _is_dask(x_in)
    if method == "auto":
        method = "dense" if (not lazy and 8 * x_out.shape[0] * x_in.shape[0] <= dense_max_bytes) else "blockwise"
    if method == "dense" and not _pairwise(obj):
        return DenseOperator(_kernel_block(obj, x_out, x_in))
    if method in ("dense", "blockwise"):
        blockwise_kwargs = {k: build_kwargs.pop(k) for k in ("symmetric", "workers", "cache_bytes") if k in build_kwargs}
        if build_kwargs:
            raise ValueError(f"method={method!r} takes block, symmetric, workers, cache_bytes; got {sorted(build_kwargs)}")
    if method == "dense":
        # built tile by tile (threads; the upper triangle only when x_out is x_in): bounded
        # temporaries and half the kernel evaluations of one kernel(x_out, x_in) call
        tiled = BlockwiseOperator(obj, x_out, x_in, block or 1024, **blockwise_kwargs)
        return DenseOperator(tiled.to_dense(), symmetric=bool(tiled.symmetric) and not lazy)
    if method == "blockwise":
        return BlockwiseOperator(obj, x_out, x_in, block or 1024, **blockwise_kwargs)
    # zarr
    if path is None:
        raise ValueError("path is required for method='zarr'")
    return ZarrOperator.build(obj, x_out, x_in, path, block=block or 1024, **build_kwargs)
