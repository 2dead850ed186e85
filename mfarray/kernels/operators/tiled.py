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

The mat-vec is deterministic: the same bits for any number of threads, any thread timing and
any cache state, because every sum has one fixed order (:meth:`BlockwiseOperator.matvec`) and
every product runs on one BLAS thread (cached tiles too: OpenBLAS's products change bits with
its thread count).  Threads compute tile products ahead, in the fixed tile order; the calling
thread adds them into the output strictly in that order (:func:`_in_order`).
"""

from __future__ import annotations

import threading
from collections import deque
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
    check_flag,
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
    tile_text,
    unflatten,
)

Array = Any  # a NumPy, CuPy or Dask array

AHEAD = 4
"""Tiles each thread may compute ahead of the in-order consumer of :func:`_in_order`: at most
``AHEAD * workers`` tile results, running or waiting to be added, whatever the number of
tiles.  For a mat-vec that is two ``(block, m)`` products a tile, ``2 * AHEAD * workers *
block * m`` numbers: 9.4 MB for 16 threads, block 1024, m = 9 in float64 (per-thread
accumulators of the whole output would be ``workers * n_out * m``, 115 MB at N = 10^5)."""


def _in_order(task: Callable, consume: Callable, tiles: list, workers: int) -> None:
    """``consume(rows, cols, task(rows, cols))`` for each tile of ``tiles``, consumed in the
    order of ``tiles`` in the calling thread; ``task`` runs on ``workers`` threads, at most
    ``AHEAD * workers`` tiles ahead of the consumer (a bounded window of pending results).

    Whatever the threads' timing, ``consume`` sees the same results in the same order, so
    sums it forms are reproducible bit for bit.  The first error (of a task or of
    ``consume``) is raised after the tiles not yet started are cancelled and the running ones
    finished.  BLAS is held to one thread throughout (:func:`mfarray.backend.one_blas_thread`),
    also for ``workers == 1``: OpenBLAS's products change bits with its thread count (the
    setting is process-wide and reference-counted: other threads leaving their own
    ``one_blas_thread`` meanwhile leave it at one thread)."""
    with backend.one_blas_thread():
        if workers <= 1:
            for rows, cols in tiles:
                consume(rows, cols, task(rows, cols))
            return
        with ThreadPoolExecutor(workers) as pool:
            pending = deque()
            try:
                for rows, cols in tiles:
                    pending.append((rows, cols, pool.submit(task, rows, cols)))
                    if len(pending) >= AHEAD * workers:
                        rows_, cols_, fut = pending.popleft()
                        consume(rows_, cols_, fut.result())
                while pending:
                    rows_, cols_, fut = pending.popleft()
                    consume(rows_, cols_, fut.result())
            finally:
                for *_, fut in pending:
                    fut.cancel()


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
        GIL), each holding BLAS to one thread; None = all usable cores
        (:func:`mfarray.backend.cores`).  The result does not depend on it (see
        :meth:`matvec`).
    cache_bytes : keep computed tiles up to this many bytes and reuse them in later
        mat-vecs (a kernel cache, as in SVM solvers: the flow applies the same frozen kernel
        every step).  0 (default) recomputes every tile every time; tiles beyond the budget
        are recomputed.  The cache lives as long as the operator; cached or recomputed, a
        tile gives the same bits.
    """

    kernel: Callable
    x_out: Any
    x_in: Any
    block: int = backend.TILE
    symmetric: bool | None = None
    workers: int | None = None
    cache_bytes: int = 0
    _cache: _TileCache = field(init=False, repr=False, compare=False)
    _symmetric_passed: bool = field(init=False, repr=False, compare=False)  # symmetric=True given, not the spec's

    def __post_init__(self):
        if not callable(self.kernel):
            raise ValueError(f"kernel must be callable k(x1, x2) -> (n1, n2); got {type(self.kernel).__name__}")
        check_tileable(self.kernel)
        check_pair(self.x_out, self.x_in)
        object.__setattr__(self, "block", check_positive(self.block))
        symmetric = check_flag(self.symmetric, "symmetric", "x_out is x_in and the kernel's spec says symmetric")
        object.__setattr__(self, "symmetric", symmetric)
        object.__setattr__(self, "_symmetric_passed", symmetric is not None)
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
                # once per operator: three passes over a tile
                check_symmetric_tile(K, kernel=self.kernel, passed=self._symmetric_passed)
                self._cache.symmetry_checked = True
            self._cache.offer(key, K)
        return K

    def _workers(self, tiles, like) -> int:
        """Threads for ``tiles``: one for CuPy (the device orders its own work), else
        ``workers`` (default :func:`mfarray.backend.cores`), at most one per tile."""
        return 1 if backend.is_cupy(like) else min(self.workers or backend.cores(), len(tiles))

    def matvec(self, v: Array) -> Array:
        """``K @ v`` for ``v (n_in, *trailing)`` -> ``(n_out, *trailing)``, real or complex
        (lazy Dask if any input is Dask, :mod:`.graph`).

        The same bits on every call, whatever ``workers``, the thread timing and the tile
        cache: row block ``I`` of the result is the sum, in increasing column block ``J``,
        ``((c_I0 + c_I1) + c_I2) + ...`` (starting from ``c_I0`` itself), of
        ``c_IJ = apply_block(K_IJ, v_J)`` -- for a symmetric operator below the diagonal
        ``c_IJ = apply_block(K_JI, v_J, transpose=True)`` from the computed tile ``K_JI``,
        the order and products of :func:`.graph.symmetric_kernel_matvec`, so the eager and the
        lazy symmetric mat-vec agree bit for bit -- each product with one BLAS thread.
        Tiles are visited row by row (the upper triangle only for a symmetric operator),
        which brings every row block's contributions in increasing ``J``; threads compute
        the tile products at most ``AHEAD * workers`` tiles ahead and the calling thread adds
        them in that order (:func:`_in_order`; extra memory ``2 * AHEAD * workers * block *
        m`` numbers beside the ``(n_out, m)`` result).
        """
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        if self.lazy or backend.is_dask(v2):
            if self.symmetric:
                out = graph.symmetric_kernel_matvec(self.kernel, self.x_out, v2, self.block,
                                                    passed=self._symmetric_passed)
            else:
                out = graph.kernel_matvec(self.kernel, self.x_out, self.x_in, v2, self.block)
            return unflatten(out, n_out, trailing)
        xp = array_api_compat.array_namespace(v2)
        tiles = self._tiles()
        if not tiles:  # an operator with 0 rows or columns
            return unflatten(xp.zeros((n_out, v2.shape[1]), dtype=result_dtype(v2.dtype)), n_out, trailing)

        def products(rows, cols):  # on a worker thread: (c_IJ, c_JI or None) of tile (I, J)
            K = self._tile(rows, cols)
            on = apply_block(K, v2[cols[0]:cols[1]])
            off = apply_block(K, v2[rows[0]:rows[1]], transpose=True) if self.symmetric and rows != cols else None
            return on, off

        out = None

        def add(block, other, p):  # c_{block, other}: the first term of its sum where other is J = 0
            if other[0] == 0:
                out[block[0]:block[1]] = p
            else:
                out[block[0]:block[1]] += p

        def consume(rows, cols, pq):  # in the calling thread, in tile order
            nonlocal out
            if out is None:  # the first tile, (0, 0)
                out = xp.empty((n_out, v2.shape[1]), dtype=pq[0].dtype)
            add(rows, cols, pq[0])
            if pq[1] is not None:
                add(cols, rows, pq[1])

        _in_order(products, consume, tiles, self._workers(tiles, v2))
        return unflatten(out, n_out, trailing)

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

        def task(rows, cols):  # tiles write disjoint regions of K
            t = first if (rows, cols) == (r0, c0) else self._tile(rows, cols)
            K[rows[0]:rows[1], cols[0]:cols[1]] = t
            if self.symmetric and rows != cols:
                K[cols[0]:cols[1], rows[0]:rows[1]] = t.T

        tiles = self._tiles()
        _in_order(task, lambda *_: None, tiles, self._workers(tiles, first))
        return K

    @property
    def T(self) -> BlockwiseOperator:
        if self.symmetric:
            return self
        k = self.kernel.kernel if isinstance(self.kernel, _Swapped) else _Swapped(self.kernel)
        return BlockwiseOperator(k, self.x_in, self.x_out, self.block, False, self.workers, self.cache_bytes)

    def transpose(self) -> BlockwiseOperator:
        return self.T
