"""Lazy kernel mat-vecs as Dask graphs, one task per ``block x block`` kernel tile.

For Dask points or a Dask ``v2`` (n_in, m) (the flattened metric components of eq. 2.23)
the product ``K @ v2`` with ``K[a, b] = k(x_out[a], x_in[b])`` is a graph whose tasks each
compute one kernel tile and its product with the matching rows of ``v2`` -- memory ~ block^2
per task -- tree-summed over column tiles (:func:`kernel_matvec`); for a symmetric kernel on
one point set only the tiles on and above the diagonal are computed, each giving both
``K_ab v_b`` and ``K_ab^T v_a`` (:func:`symmetric_kernel_matvec`).  A stored, chunked Dask
matrix (a Zarr store) is applied the same way, one task per chunk (:func:`matrix_matvec`).

The block functions run inside the graph (module level: picklable for dask.distributed) and
hold BLAS to one thread (:func:`mfarray.backend.one_blas_thread`): the tasks already run one
per core.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import array_api_compat

from ... import backend
from .protocol import apply_block, bounds, check_symmetric_tile, diagonal, kernel_block, result_dtype, sum_parts

if TYPE_CHECKING:
    import dask.array as da

Array = Any  # a NumPy, CuPy or Dask array


def as_dask(x: Array, row_chunk: int) -> da.Array:
    """``x`` as a Dask array chunked ``row_chunk`` rows at a time (other axes whole)."""
    import dask.array as da

    chunks = (row_chunk,) + (-1,) * (len(x.shape) - 1)
    return x.rechunk(chunks) if backend.is_dask(x) else da.from_array(x, chunks=chunks)


def _meta_like(x, dtype, ndim):
    meta = getattr(x, "_meta", x)
    xp = array_api_compat.array_namespace(meta)
    return xp.empty((0,) * ndim, dtype=dtype)


# ----------------------------------------------------------------------------- block functions


def _partial_kernel_product(xo, xi, v, *, kernel, out_dtype):
    with backend.one_blas_thread():
        K = kernel_block(kernel, xo, xi, "on a tile of the lazy operator")
        return apply_block(K, v).astype(out_dtype, copy=False)[:, None, :]


def _symmetric_tile_products(xa, xb, va, vb, *, kernel, out_dtype, diagonal, passed=False):
    """For tile K = k(xa, xb) above the diagonal: (K @ vb, K^T @ va); on it (xa = xb):
    (K @ va, None) after checking K = K^T (``passed``: symmetric=True was given, for the message)."""
    with backend.one_blas_thread():
        K = kernel_block(kernel, xa, xb, "on a tile of the lazy symmetric operator")
        if diagonal:
            check_symmetric_tile(K, kernel=kernel, passed=passed)
            return apply_block(K, vb).astype(out_dtype, copy=False), None
        return (apply_block(K, vb).astype(out_dtype, copy=False),
                apply_block(K, va, transpose=True).astype(out_dtype, copy=False))


def _partial_matrix_product(K, v, *, out_dtype):
    return apply_block(K, v).astype(out_dtype, copy=False)[:, None, :]


def _kernel_dense_block(xo, xi, *, kernel):
    return kernel_block(kernel, xo, xi, "on a tile of the lazy matrix")


def _kernel_diag_block(xo, xi, *, kernel):
    return diagonal(kernel_block(kernel, xo, xi, "on a diagonal tile of the lazy matrix"))


# ----------------------------------------------------------------------------- graphs


def _tree_sum(partials, split_every):
    # partials: (n_out, n_col_blocks, m) with unit chunks along axis 1 -> tree-sum
    return partials.sum(axis=1, split_every=split_every, dtype=partials.dtype)


def _column_partials(fn, *args, dtype, like, **kwargs):
    """``da.blockwise(fn, "ijc", *args)``: one (row, column) task each, column axis kept."""
    import dask.array as da

    with warnings.catch_warnings():  # (row x column) tiles by design: one task per tile
        warnings.simplefilter("ignore", da.PerformanceWarning)
        return da.blockwise(
            fn, "ijc", *args, out_dtype=dtype, dtype=dtype, adjust_chunks={"j": 1}, concatenate=True,
            meta=_meta_like(like, dtype, 3), **kwargs,
        )  # fmt: skip


def kernel_matvec(kernel: Callable[..., Array], x_out: Array, x_in: Array, v2: Array, block: int,
                  split_every: int = 8) -> da.Array:
    """Lazy ``K(x_out, x_in) @ v2``: one task per (row block, column block) computing the
    kernel block and its product with v (memory ~ block^2), tree-reduced over columns."""
    xo, xi, vv = as_dask(x_out, block), as_dask(x_in, block), as_dask(v2, block)
    dtype = result_dtype(x_out.dtype, x_in.dtype, v2.dtype)
    partials = _column_partials(_partial_kernel_product, xo, "id", xi, "jd", vv, "jc", dtype=dtype, like=vv,
                                kernel=kernel)
    return _tree_sum(partials, split_every)


def symmetric_kernel_matvec(kernel: Callable[..., Array], x: Array, v2: Array, block: int, *,
                            passed: bool = False) -> da.Array:
    """Lazy ``K(x, x) @ v2`` for a symmetric kernel: one task per tile on or above the
    diagonal giving both K_ab v_b and K_ab^T v_a, then one sum per row block (half the
    kernel evaluations of :func:`kernel_matvec`).  The diagonal tiles are checked to be
    symmetric (``passed``: symmetric=True was given rather than read from the spec)."""
    import dask
    import dask.array as da

    xb = as_dask(x, block).to_delayed().ravel()
    vb = as_dask(v2, block).to_delayed().ravel()
    rows = bounds(int(x.shape[0]), block)
    dtype = result_dtype(x.dtype, v2.dtype)
    tile = dask.delayed(_symmetric_tile_products, nout=2, pure=True)
    parts = [[] for _ in rows]
    for a in range(len(rows)):
        for b in range(a, len(rows)):
            on, off = tile(xb[a], xb[b], vb[a], vb[b], kernel=kernel, out_dtype=dtype, diagonal=a == b,
                                   passed=passed)
            parts[a].append(on)
            if b != a:
                parts[b].append(off)
    meta = _meta_like(v2, dtype, 2)
    return da.concatenate([
        da.from_delayed(dask.delayed(sum_parts, pure=True)(*p), shape=(r1 - r0, v2.shape[1]), dtype=dtype, meta=meta)
        for p, (r0, r1) in zip(parts, rows)
    ])


def matrix_matvec(K: Array, v2: Array, split_every: int = 8) -> da.Array:
    """Lazy ``K @ v2`` for a chunked Dask matrix K: one task per block of K."""
    import dask.array as da

    vv = v2.rechunk((K.chunks[1], -1)) if backend.is_dask(v2) else da.from_array(v2, chunks=(K.chunks[1], -1))
    dtype = result_dtype(K.dtype, v2.dtype)
    return _tree_sum(_column_partials(_partial_matrix_product, K, "ij", vv, "jc", dtype=dtype, like=vv), split_every)


def kernel_matrix(kernel: Callable[..., Array], x_out: Array, x_in: Array, block: int, *,
                  diagonal_only: bool = False) -> da.Array:
    """The lazy matrix ``k(x_out, x_in)`` in ``block x block`` tasks, or (``diagonal_only``)
    its diagonal ``k(x_out[a], x_in[a])`` from the diagonal tiles."""
    import dask.array as da

    xo, xi = as_dask(x_out, block), as_dask(x_in, block)
    dtype = result_dtype(xo.dtype, xi.dtype)
    fn, out, cols = (_kernel_diag_block, "i", "id") if diagonal_only else (_kernel_dense_block, "ij", "jd")
    return da.blockwise(
        fn, out, xo, "id", xi, cols, kernel=kernel, dtype=dtype, concatenate=True,
        meta=_meta_like(xo, dtype, len(out)),
    )  # fmt: skip
