"""A kernel matrix recomputed tile by tile, never held whole: :class:`BlockwiseOperator`.

``K[a, b] = k(x_out[a], x_in[b])`` for points ``x_out (n_out, d)``, ``x_in (n_in, d)``
(features, or homogeneous points for the FS kernels) is the scalar kernel of the Kronecker
metric-NTK, eq. (2.23); the flow's mat-vec (eq. 2.12) ``(n_out, n_in) @ (n_in, m)`` is
accumulated over ``block x block`` tiles.  For N = 10^5 points (paper §3.1) the matrix is
10^10 entries (80 GB in float64); a tile is ``block^2``.

NumPy/CuPy inputs run the tiles on threads (the kernel and BLAS release the GIL) following
the policy of :mod:`mfarray.backend` (:func:`~mfarray.backend.cores` threads, one BLAS
thread each), with an optional cache of computed tiles, and a symmetric kernel on one point
set computes only the tiles on and above the diagonal.  Dask inputs give lazy results
(:mod:`.graph`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from ... import backend
from . import graph
from .protocol import (
    apply_block,
    bounds,
    check_pair,
    check_positive,
    check_square,
    check_symmetric_tile,
    check_tileable,
    concat_rows,
    diagonal,
    flatten,
    kernel_block,
    kernel_spec,
    result_dtype,
    sum_parts,
    tile_text,
    unflatten,
)

Array = Any  # a NumPy, CuPy or Dask array


@dataclass(frozen=True)
class _Swapped:
    """``(a, b) -> kernel(b, a).T``: the kernel of the transposed operator."""

    kernel: Callable

    def __call__(self, a, b):
        return self.kernel(b, a).T


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
        means ``x_out is x_in`` and the kernel's spec says it is symmetric
        (``as_kernel(kernel).symmetric``); pass False for a kernel that is not symmetric.
    workers : threads over tiles for NumPy inputs (kernel evaluation and BLAS release the
        GIL); None = all usable cores (:func:`mfarray.backend.cores`).  Each thread holds its
        own output accumulator.
    cache_bytes : keep computed tiles up to this many bytes and reuse them in later
        mat-vecs (a kernel cache, as in SVM solvers: the flow applies the same frozen kernel
        every step).  0 (default) recomputes every tile every time; tiles beyond the budget
        are recomputed.  The cache lives as long as the operator.
    """

    kernel: Callable
    x_out: Any
    x_in: Any
    block: int = backend.TILE
    symmetric: bool | None = None
    workers: int | None = None
    cache_bytes: int = 0
    _cache: _TileCache = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not callable(self.kernel):
            raise ValueError(f"kernel must be callable k(x1, x2) -> (n1, n2); got {type(self.kernel).__name__}")
        check_tileable(self.kernel)
        check_pair(self.x_out, self.x_in)
        object.__setattr__(self, "block", check_positive(self.block))
        if self.symmetric is None:
            object.__setattr__(self, "symmetric", self.x_out is self.x_in and kernel_spec(self.kernel).symmetric)
        if self.symmetric and self.x_out.shape[0] != self.x_in.shape[0]:
            raise ValueError(f"symmetric=True needs a square operator; x_out, x_in give {self.shape}")
        if self.workers is not None:
            object.__setattr__(self, "workers", check_positive(self.workers, "workers"))
        if isinstance(self.cache_bytes, bool) or not isinstance(self.cache_bytes, (int, np.integer)) or self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer (0: no cache); got {self.cache_bytes!r}")
        object.__setattr__(self, "_cache", _TileCache(int(self.cache_bytes)))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x_out.shape[0]), int(self.x_in.shape[0]))

    @property
    def lazy(self) -> bool:
        return backend.is_dask(self.x_out) or backend.is_dask(self.x_in)

    def _tiles(self):
        """(row bounds, column bounds) of the tiles a mat-vec visits."""
        rb, cb = bounds(self.shape[0], self.block), bounds(self.shape[1], self.block)
        if self.symmetric:
            return [(rb[i], rb[j]) for i in range(len(rb)) for j in range(i, len(rb))]
        return [(r, c) for r in rb for c in cb]

    def _tile(self, rows, cols):
        key = (rows[0], cols[0])
        K = self._cache.tiles.get(key)
        if K is None:
            K = kernel_block(self.kernel, self.x_out[rows[0]:rows[1]], self.x_in[cols[0]:cols[1]],
                             tile_text(rows, cols, self.shape))
            if self.symmetric and rows == cols and not self._cache.symmetry_checked:
                check_symmetric_tile(K, kernel=self.kernel)  # once per operator: three passes over a tile
                self._cache.symmetry_checked = True
            self._cache.offer(key, K)
        return K

    def _each_tile(self, task, like):
        """Run ``acc = task(rows, cols, acc)`` over every tile, on ``workers`` threads (one
        for CuPy) pulling tiles from a shared queue; returns the threads' final ``acc``s."""
        tiles = self._tiles()
        workers = 1 if backend.is_cupy(like) else min(self.workers or backend.cores(), len(tiles))
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
        with backend.one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            return [f.result() for f in [pool.submit(run) for _ in range(workers)]]

    def matvec(self, v: Array) -> Array:
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        if self.lazy or backend.is_dask(v2):
            if self.symmetric:
                out = graph.symmetric_kernel_matvec(self.kernel, self.x_out, v2, self.block)
            else:
                out = graph.kernel_matvec(self.kernel, self.x_out, self.x_in, v2, self.block)
            return unflatten(out, n_out, trailing)
        xp = array_api_compat.array_namespace(v2)

        def task(rows, cols, out):  # out: this thread's own accumulator (n_out, m)
            K = self._tile(rows, cols)
            p = apply_block(K, v2[cols[0]:cols[1]])
            if out is None:
                out = xp.zeros((n_out, v2.shape[1]), dtype=p.dtype)
            out[rows[0]:rows[1]] += p
            if self.symmetric and rows != cols:
                out[cols[0]:cols[1]] += apply_block(K, v2[rows[0]:rows[1]], transpose=True)
            return out

        parts = [p for p in self._each_tile(task, v2) if p is not None]
        if not parts:  # no tiles: an operator with 0 rows or columns
            return unflatten(xp.zeros((n_out, v2.shape[1]), dtype=result_dtype(v2.dtype)), n_out, trailing)
        return unflatten(sum_parts(*parts), n_out, trailing)

    def diagonal(self) -> Array:
        """``k(x_out[a], x_in[a])`` from the diagonal tiles (cost ~ n * block)."""
        check_square(self)
        if self.lazy:
            return graph.kernel_matrix(self.kernel, self.x_out, self.x_in, self.block, diagonal_only=True)
        pieces = [
            diagonal(kernel_block(self.kernel, self.x_out[a:b], self.x_in[a:b], tile_text((a, b), (a, b), self.shape)))
            for a, b in bounds(self.shape[0], self.block)
        ]
        return concat_rows(pieces, self.x_out)

    def to_dense(self) -> Array:
        """The full matrix (lazy Dask for Dask inputs).  Small cases only."""
        if self.lazy:
            return graph.kernel_matrix(self.kernel, self.x_out, self.x_in, self.block)
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
