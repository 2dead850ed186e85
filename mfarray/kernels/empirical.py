r"""Empirical (finite-width) metric-NTK of an MLP, eq. (2.7), without forming Jacobians.

For a network :math:`f_\theta: \mathbb R^d \to \mathbb R^c` (:mod:`mfarray.networks`)
whose ``c`` outputs are the metric components :math:`g_{ij}` (flattened), the metric-NTK
of Halverson & Ruehle §2.1 is

.. math::

    \Theta_{ik}(x, x') = \sum_I \frac{\partial f_i(x)}{\partial\theta_I}
                                 \frac{\partial f_k(x')}{\partial\theta_I}      \qquad (2.7)

(``i, k`` run over the ``c`` outputs, i.e. over the pairs ``(ij)``, ``(kl)`` of the paper).
It drives the evolving-kernel flow (2.8) and, evaluated at initialisation, is the constant
kernel :math:`\Theta^L` of the linearised model (2.10)-(2.11).

Layer structure
---------------
With :math:`z^l = s_l h^l W_l + \sigma_b b_l`, :math:`s_l = \sigma_w/\sqrt{d_l}`, the
derivatives are :math:`\partial f_i/\partial W_l[a, b] = s_l h^l_a B_l[i, b]`,
:math:`\partial f_i/\partial b_l[b] = \sigma_b B_l[i, b]` with the back-propagated signal
:math:`B_l[i, :] = \partial f_i/\partial z^l` (:math:`B_L = 1`), so

.. math::

    \Theta_{ik}(x, x') = \sum_{l=0}^{L} \bigl(s_l^2\, h^l(x)\cdot h^l(x') + \sigma_b^2\bigr)
                         \sum_b B_l[i, b](x)\, B_l[k, b](x').

Each layer costs two GEMMs: a Gram ``(n1, n2)`` over ``d_l`` and a signal Gram
``(n1 c, n2 c)`` over ``d_{l+1}``, i.e. :math:`O(n_1 n_2 c^2 d)` per layer instead of
:math:`O(n_1 n_2 c^2 P)` for ``J J^T``.

Tiles
-----
NumPy inputs take the fused path (numba; ``method="auto"``): tiles of :data:`ROWS` points of
``x1`` by :data:`COLS` points of ``x2``, the tile's layer Grams by BLAS into per-thread buffers
(L2/L3-resident), then combined row by row in one compiled pass -- no (rows, c, n2, c)
temporaries, no transposition pass.  Row blocks are shared among threads (one per core, each
with a single-threaded BLAS, :func:`mfarray.backend.one_blas_thread`), taken as threads free up.
The array-API path (``method="array"``, also CuPy) does the same per row block with whole-block
array operations; both give the same numbers (the same operations in the same order).

For the kernel of a set with itself (``x2`` None) only each row block's upper part (columns
from its first row on) is computed and the rest mirrored, :math:`\Theta_{ik}(x', x) =
\Theta_{ki}(x, x')`: half the GEMMs.  :func:`empirical_ntk_upper` keeps just those upper row
blocks (half the memory; float32 optional) and :func:`empirical_ntk_products` streams a second
kernel's tiles against them for :math:`\langle\Theta_0, \Theta\rangle_F`,
:math:`\|\Theta\|_F^2` and :math:`\|\Theta - \Theta_0\|_F^2` without forming it
(:class:`mfarray.experiments.probe_kernel.ProbeKernel`).  Measured on a shared 2-core AMD EPYC,
width-64, 3-hidden-layer ReLU MLP, c = 9, 1000 points: the three sums take 0.56 s of one core in
float64 at load 3-4 (0.32 s in float32), 80 % of it the signal GEMMs (15.5 GFLOP at 28-40
GFLOP/s: the floor of this layered form); at load 4.5-5.8 they took 1.8-2.3x (float32 3.3-3.8x)
less time than the previous row blocks (``benchmarks/bench_feature_learning.py``).  The dense
(1000, 1000, 9, 9) kernel takes about 1 s, memory-bound (its 650 MB written once), vs about 28 s
for neural-tangents' Jacobian contraction (``benchmarks/bench_empirical_ntk.py``); results agree
to 4e-16.

For large ``n`` use :func:`ntk_matvec` / :func:`empirical_ntk_operator`:
:math:`\Theta v = J_{out}(J_{in}^T v)` via one reverse and one forward pass, never forming
:math:`\Theta`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from .. import backend
from .. import networks as _nw
from .checks import check_finite_values, kernel_input

try:  # numba is a dependency; without it empirical_ntk keeps its array path
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

Array = Any  # a NumPy, CuPy or Dask array

__all__ = [
    "COLS",
    "METHODS",
    "ROWS",
    "UpperBlocks",
    "empirical_ntk",
    "empirical_ntk_operator",
    "empirical_ntk_products",
    "empirical_ntk_trace",
    "empirical_ntk_upper",
    "ntk_matvec",
]

# Target size (bytes) of one row block of the (rows, c, n2, c) working array (array path).
_BLOCK_BYTES = 32 * 2**20

#: Points per tile of the fused path: ROWS of x1 against COLS of x2.  A tile's L signal Grams
#: (ROWS c, COLS c) stay in L2/L3 between the GEMM that writes them and the combination that reads
#: them (measured on 2 cores, 3 x 64, c = 9: 16 x 128 fastest of 4..32 x 128..1000).
ROWS = 16
COLS = 128

METHODS = ("auto", "fused", "array")


def _prep(config, params, x1, x2):
    """``(xp, params, x1, x2, same)``: the parameters as a tuple (a flat vector unflattened) and the
    inputs, checked as the scalar kernels check theirs (:func:`_check_inputs`)."""
    params = _nw.as_params(config, params)
    if not array_api_compat.is_array_api_obj(x1):
        x1 = np.asarray(x1, dtype=np.float64)
    same = x2 is None or x2 is x1
    if x2 is None:
        x2 = x1
    elif not array_api_compat.is_array_api_obj(x2):
        x2 = np.asarray(x2, dtype=np.float64)
    _check_inputs(config, x1, x2)
    xp = array_api_compat.array_namespace(x1, x2, params[0][0])
    return xp, params, x1, x2, same


def _check_inputs(config, x1, x2, label="empirical_ntk"):
    """Real (n, d_in) inputs (TypeError for complex ones: casting would drop the imaginary part), finite
    (:class:`~mfarray.kernels.checks.NonFiniteKernelError` naming the first of x1, x2 that is not)."""
    for name, x in (("x1", x1), ("x2", x2)):
        kernel_input(x, name, label, "features")
        if x.shape[1] != config.d_in:
            raise ValueError(f"{name} must have shape (n, {config.d_in}); got {tuple(x.shape)}")
    for x in (x1, x2):
        check_finite_values(x, label, (x1, x2))


def _layer_data(config, params, x1, x2, same):
    """Per-layer inputs ``h^l`` (n, d_l) and signals ``B_l`` (n, c, d_{l+1}) for x1 and x2."""
    hs1, B1 = _nw.output_signals(config, params, x1)
    if same:
        hs2, B2 = hs1, B1
    else:
        hs2, B2 = _nw.output_signals(config, params, x2)
    return hs1, B1, hs2, B2


def _raw_module(xp):
    """The NumPy or CuPy module behind ``xp`` (for ``out=`` arguments), else None."""
    if array_api_compat.is_numpy_namespace(xp):
        return np
    if array_api_compat.is_cupy_namespace(xp):
        from ..backend import cupy

        return cupy()
    return None


def _matmul(raw, a, b, out):
    if raw is not None:
        raw.matmul(a, b, out=out)
    else:
        out[...] = a @ b


def _mul(raw, a, b, out):
    if raw is not None:
        raw.multiply(a, b, out=out)
    else:
        out[...] = a * b


def _add(raw, a, b, out):
    if raw is not None:
        raw.add(a, b, out=out)
    else:
        out[...] = a + b


def _block_rows(n2, c, itemsize, block_rows):
    if block_rows is not None:
        return max(1, int(block_rows))
    per_row = max(1, c * n2 * c * itemsize)
    return max(1, min(256, _BLOCK_BYTES // per_row))


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "fused" and numba is None:
        raise ImportError("method='fused' needs numba (pip install numba); use method='array'")
    return method


def _fused(xp, method):
    """Whether the numba tiles run: NumPy inputs and method "fused", or "auto" with numba."""
    if method == "array" or not array_api_compat.is_numpy_namespace(xp):
        if method == "fused":
            raise ValueError("method='fused' takes NumPy inputs only")
        return False
    return numba is not None


def empirical_ntk(config: _nw.MLP, params: _nw.Params, x1: Array, x2: Array | None = None, *,
                  block_rows: int | None = None, n_threads: int | None = None, symmetric: bool | None = None,
                  method: str = "auto") -> Array:
    r"""Empirical metric-NTK :math:`\Theta_{ik}(x_1, x_2)`, eq. (2.7); shape (n1, n2, c, c).

    ``out[a, b, i, k] = sum_I d f_i(x1[a])/d theta_I  d f_k(x2[b])/d theta_I``.  Evaluated at
    the initial parameters it is the frozen kernel :math:`\Theta^L` of (2.11); at the current
    parameters it is the evolving kernel of (2.8).  The layout is that of neural-tangents'
    ``empirical_ntk_fn(..., trace_axes=())``.

    Parameters
    ----------
    config : mfarray.networks.MLP
    params : parameter tuple (:func:`mfarray.networks.init`)
    x1 : (n1, d_in) array
    x2 : (n2, d_in) array, optional (default ``x1``)
    block_rows : int, optional
        Rows of ``x1`` per block (default :data:`ROWS` for the fused tiles, else about 32 MiB of
        working memory per block and thread).
    n_threads : int, optional
        NumPy only: row blocks are processed by this many threads, each with a
        single-threaded BLAS (default: the number of usable cores).  ``1`` on the array path:
        one Python thread and the BLAS's own threading; on the fused path one thread, one BLAS
        thread (its tiles' GEMMs are too small for more).
    symmetric : bool, optional
        Compute only the row blocks' upper parts (columns from the block's first row on) and
        mirror them, :math:`\Theta_{ik}(x', x) = \Theta_{ki}(x, x')`: half the GEMMs.  Default:
        when ``x2`` is None or ``x1`` itself; True needs ``x2`` None or ``x1``.
    method : "auto", "fused" or "array"
        "fused": the numba tiles (NumPy inputs); "array": the array-API path (NumPy, CuPy);
        "auto": fused for NumPy inputs when numba is importable.  The two agree to rounding
        (the same operations; BLAS bits may differ with the tile shapes).

    Returns
    -------
    (n1, n2, c, c) array in the namespace of the inputs.
    """
    _check_method(method)
    xp, params, x1, x2, same = _prep(config, params, x1, x2)
    if symmetric is None:
        symmetric = same
    elif symmetric and not same:
        raise ValueError("symmetric=True needs x2 None or x1 itself (the kernel of a set with itself)")
    if _fused(xp, method):
        K = _empirical_ntk_fused(config, params, x1, x2, same, bool(symmetric), block_rows, n_threads)
    else:
        K = _empirical_ntk_array(xp, config, params, x1, x2, same, bool(symmetric), block_rows, n_threads)
    # finite inputs and parameters can still overflow (sigma_w = 1e200): refused, never passed on
    return check_finite_values(K, lambda: f"empirical_ntk of {config}", (x1, x2))


def _empirical_ntk_array(xp, config, params, x1, x2, same, symmetric, block_rows, n_threads):
    """The array-API path of :func:`empirical_ntk` (NumPy with ``out=``, CuPy, others)."""
    hs1, B1, hs2, B2 = _layer_data(config, params, x1, x2, same)
    dtype = hs1[0].dtype
    n1, n2, c = x1.shape[0], x2.shape[0], config.c_out
    L = config.n_layers - 1
    scales = config.layer_scales
    sb2 = config.sigma_b ** 2

    # Right-hand factors, transposed once: (d_l, n2) and (d, n2 c).
    H2T = [xp.matrix_transpose(s * h) for s, h in zip(scales, hs2)]
    B2T = [xp.matrix_transpose(xp.reshape(B, (n2 * c, B.shape[2]))) for B in B2]
    H1 = [s * h for s, h in zip(scales, hs1)]
    B1f = [xp.reshape(B, (n1 * c, B.shape[2])) for B in B1]

    out = xp.empty((n1, n2, c, c), dtype=dtype)
    if n1 == 0 or n2 == 0:
        return out
    rows = min(n1, _block_rows(n2, c, 8, block_rows))
    raw = _raw_module(xp)

    def work(starts):
        # Preallocated flat work buffers (fresh large arrays would page-fault on every block);
        # a block's (r c, m) views are their contiguous leading parts.
        bb_flat = xp.empty((rows * c * n2 * c,), dtype=dtype) if L else None
        acc_flat = xp.empty((rows * c * n2 * c,), dtype=dtype) if L else None
        for r0 in starts:
            r1 = min(n1, r0 + rows)
            r = r1 - r0
            c0 = r0 if symmetric else 0  # upper part only: columns from the block's first row
            w = n2 - c0
            blk = out[r0:r1, c0:]
            if L:
                bb = xp.reshape(bb_flat[:r * c * w * c], (r * c, w * c))
                acc = xp.reshape(acc_flat[:r * c * w * c], (r, c, w * c))
                for l in range(L):
                    G = H1[l][r0:r1] @ H2T[l][:, c0:]  # (r, w)
                    if sb2 != 0.0:
                        G += sb2
                    # G[a, b] repeated along k, so that it broadcasts over i with unit stride.
                    Gr = xp.reshape(xp.broadcast_to(G[:, :, None], (r, w, c)), (r, 1, w * c))
                    _matmul(raw, B1f[l][r0 * c:r1 * c], B2T[l][:, c0 * c:], bb)
                    bb3 = xp.reshape(bb, (r, c, w * c))  # [a, i, (b, k)]
                    if l == 0:
                        _mul(raw, bb3, Gr, acc)
                    else:
                        _mul(raw, bb3, Gr, bb3)
                        _add(raw, acc, bb3, acc)
                blk[...] = xp.permute_dims(xp.reshape(acc, (r, c, w, c)), (0, 2, 1, 3))
            else:
                blk[...] = 0.0
            # Output layer: B_L = identity -> delta_ik (Gram + sigma_b^2).
            GL = H1[L][r0:r1] @ H2T[L][:, c0:]
            if sb2 != 0.0:
                GL += sb2
            for i in range(c):
                blk[:, :, i, i] += GL
            if symmetric and r1 < n2:  # the strictly lower part of these columns, mirrored
                out[r1:, r0:r1] = xp.permute_dims(out[r0:r1, r1:], (1, 0, 3, 2))

    starts = list(range(0, n1, rows))
    if n_threads is None:
        n_threads = backend.cores() if raw is np else 1
    n_threads = max(1, min(int(n_threads), len(starts)))
    if n_threads == 1:
        work(starts)
        return out
    # Interleaved assignment balances the work; every block is written exactly once (a mirrored
    # part lies in rows below and columns left of every later block's).
    backend.thread_map(work, [starts[t::n_threads] for t in range(n_threads)], threads=n_threads)
    return out


# ----------------------------------------------------------------------------- fused tiles (numba)
class _Factors:
    """The two factors of every layer's term of the module docstring's sum, for points x (n):
    ``H[l]`` = s_l h^l (n, d_l) for l = 0..L and ``B[l]`` = the signals B_l as (n c, d_{l+1}) for
    l < L, all C-contiguous in ``dtype``."""

    def __init__(self, config, params, x, dtype):
        hs, Bs = _nw.output_signals(config, params, x)
        n, self.c = x.shape[0], config.c_out
        self.H = [np.ascontiguousarray(s * h, dtype=dtype) for s, h in zip(config.layer_scales, hs)]
        self.B = [np.ascontiguousarray(np.reshape(B, (n * self.c, B.shape[2])), dtype=dtype) for B in Bs]
        self.sb2 = config.sigma_b ** 2
        self.dtype = np.dtype(dtype)


class _Tile:
    """One thread's work buffers and the layer Grams of a tile: rows r0:r1 of x1 (at most ``rows``)
    against columns c0:c1 of x2 (at most ``cols``)."""

    def __init__(self, L, c, rows, cols, dtype):
        self.L, self.c = L, c
        self.bb = np.empty(L * rows * c * cols * c, dtype=dtype)
        self.G = np.empty((L + 1) * rows * cols, dtype=dtype)
        self.gr = np.empty(L * cols * c, dtype=dtype)
        self.row = np.empty(cols * c, dtype=dtype)

    def grams(self, f1, f2, r0, r1, c0, c1):
        r"""``(bb, G, gr, row)``: ``bb[l]`` (r c, w c) the signal Grams :math:`B_l(x_a) B_l(x_b)^T`
        (l < L), ``G[l]`` (r, w) the activation Grams :math:`s_l^2 h^l(x_a) \cdot h^l(x_b) +
        \sigma_b^2` (l <= L), and the row buffers of the combination, for w = c1 - c0."""
        L, c, r, w = self.L, self.c, r1 - r0, c1 - c0
        bb = self.bb[:L * r * c * w * c].reshape(L, r * c, w * c)
        G = self.G[:(L + 1) * r * w].reshape(L + 1, r, w)
        for l in range(L + 1):
            np.matmul(f1.H[l][r0:r1], f2.H[l][c0:c1].T, out=G[l])
            if f1.sb2 != 0.0:
                G[l] += f1.sb2
        for l in range(L):
            np.matmul(f1.B[l][r0 * c:r1 * c], f2.B[l][c0 * c:c1 * c].T, out=bb[l])
        return bb, G, self.gr[:L * w * c].reshape(L, w * c), self.row[:w * c]


def _blocks_in_threads(n_blocks, fn, make_tile, n_threads):
    """``fn(j, tile)`` for j = 0..n_blocks-1 in ``n_threads`` threads (each with its own tile
    buffers and a single-threaded BLAS), taking blocks in increasing j as threads free up; the
    results in the order of j."""
    out = [None] * n_blocks
    if n_blocks == 0:
        return out
    n_threads = max(1, min(backend.cores() if n_threads is None else int(n_threads), n_blocks))
    jobs = iter(range(n_blocks))
    lock = threading.Lock()

    def worker():
        tile = make_tile()
        while True:
            with lock:
                j = next(jobs, None)
            if j is None:
                return
            out[j] = fn(j, tile)

    with backend.one_blas_thread():
        if n_threads == 1:
            worker()
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(n_threads) as pool:
                for f in [pool.submit(worker) for _ in range(n_threads)]:
                    f.result()
    return out


def _empirical_ntk_fused(config, params, x1, x2, same, symmetric, block_rows, n_threads):
    """The fused path of :func:`empirical_ntk`: tiles of ROWS x COLS points, numba combination."""
    x1 = np.asarray(x1, dtype=np.float64)
    n1, n2, c, L = x1.shape[0], x2.shape[0], config.c_out, config.n_layers - 1
    out = np.empty((n1, n2, c, c))
    if n1 == 0 or n2 == 0:
        return out
    f1 = _Factors(config, params, x1, np.float64)
    f2 = f1 if same else _Factors(config, params, np.asarray(x2, dtype=np.float64), np.float64)
    rows = ROWS if block_rows is None else max(1, int(block_rows))
    starts = list(range(0, n1, rows))

    def block(j, tile):
        r0 = starts[j]
        r1 = min(n1, r0 + rows)
        for c0 in range(r0 if symmetric else 0, n2, COLS):
            c1 = min(n2, c0 + COLS)
            bb, G, gr, row = tile.grams(f1, f2, r0, r1, c0, c1)
            _tile_dense(bb, G, c, gr, row, out[r0:r1, c0:c1])
        if symmetric and r1 < n2:  # the strictly lower part of these columns, mirrored
            out[r1:, r0:r1] = np.transpose(out[r0:r1, r1:], (1, 0, 3, 2))

    _blocks_in_threads(len(starts), block, lambda: _Tile(L, c, rows, COLS, np.float64), n_threads)
    return out


@dataclass(frozen=True)
class UpperBlocks:
    r"""The symmetric empirical metric-NTK :math:`\Theta(x, x)` (n, n, c, c) of a point set with
    itself, kept as its upper row blocks (:func:`empirical_ntk_upper`).

    Block ``j`` holds rows ``r0 = j rows`` to ``r1 = min(n, r0 + rows)`` against columns ``r0:n``:
    ``blocks[j][a, i, b c + k]`` = :math:`\Theta_{ik}(x_{r0+a}, x_{r0+b})`, shape
    (r1 - r0, c, (n - r0) c).  The rest follows from
    :math:`\Theta_{ik}(x', x) = \Theta_{ki}(x, x')`: the square part ``b < r1 - r0`` appears once in
    the whole kernel, the part right of it twice.  ``norm2`` = :math:`\|\Theta\|_F^2` of the whole
    kernel, summed in float64.  About n (n + rows) c^2 / 2 numbers in all.
    """

    n: int
    c: int
    rows: int
    blocks: tuple
    norm2: float

    @property
    def dtype(self) -> np.dtype:
        return self.blocks[0].dtype

    def dense(self) -> np.ndarray:
        """The whole kernel, (n, n, c, c) float64 (small sets: n^2 c^2 numbers)."""
        n, c = self.n, self.c
        out = np.empty((n, n, c, c))
        for j, blk in enumerate(self.blocks):
            r0 = j * self.rows
            r1 = r0 + blk.shape[0]
            out[r0:r1, r0:] = np.transpose(blk.reshape(r1 - r0, c, n - r0, c), (0, 2, 1, 3))
            out[r1:, r0:r1] = np.transpose(out[r0:r1, r1:], (1, 0, 3, 2))
        return out


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype must be float64 or float32; got {dtype}")
    return dtype


def empirical_ntk_upper(config: _nw.MLP, params: _nw.Params, x: Array, *, block_rows: int | None = None,
                        dtype: Any = np.float64, n_threads: int | None = None) -> UpperBlocks:
    r"""The empirical metric-NTK :math:`\Theta(x, x)` (2.7) of a point set with itself, as upper row
    blocks (:class:`UpperBlocks`): half the GEMMs and half the memory of :func:`empirical_ntk`.

    Parameters
    ----------
    x : (n, d_in) NumPy array
    block_rows : rows per block (default :data:`ROWS`)
    dtype : float64 (default) or float32: the layer factors, their products and the blocks
        (float32: half the memory and twice the GEMM speed; entries to float32 rounding of each
        layer's sums); ``norm2`` is summed in float64 either way.
    n_threads : threads over the row blocks (default: the usable cores), one BLAS thread each.
    """
    dtype = _check_dtype(dtype)
    params, x = _probe_points(config, params, x)
    f = _Factors(config, params, x, dtype)
    n, c, L = x.shape[0], config.c_out, config.n_layers - 1
    rows = ROWS if block_rows is None else _positive_rows(block_rows)
    starts = list(range(0, n, rows))

    def block(j, tile):
        r0 = starts[j]
        r1 = min(n, r0 + rows)
        blk = np.empty((r1 - r0, c, (n - r0) * c), dtype=dtype)
        once, twice = np.zeros(3), np.zeros(3)
        for c0 in range(r0, n, COLS):
            c1 = min(n, c0 + COLS)
            bb, G, gr, _ = tile.grams(f, f, r0, r1, c0, c1)
            _tile_block(bb, G, c, gr, blk, (c0 - r0) * c, (r1 - r0) * c, once, twice)
        return blk, once[1] + 2.0 * twice[1]

    done = _blocks_in_threads(len(starts), block, lambda: _Tile(L, c, rows, COLS, dtype), n_threads)
    return UpperBlocks(n, c, rows, tuple(b for b, _ in done), float(sum(s for _, s in done)))


def empirical_ntk_products(config: _nw.MLP, params: _nw.Params, x: Array, reference: UpperBlocks, *,
                           n_threads: int | None = None) -> tuple[float, float, float]:
    r"""Frobenius products of :math:`\Theta = \Theta(x, x)` at ``params`` with a reference kernel
    :math:`\Theta_0` on the same points, without forming :math:`\Theta`:
    :math:`(\langle\Theta_0, \Theta\rangle_F,\ \|\Theta\|_F^2,\ \|\Theta - \Theta_0\|_F^2)`.

    :math:`\langle A, B\rangle_F = \sum_{a,b,i,k} A_{ik}(x_a, x_b) B_{ik}(x_a, x_b)` over the whole
    (n, n, c, c) kernels.  Each tile of :math:`\Theta`'s upper row blocks (the blocking and dtype
    of ``reference``, :func:`empirical_ntk_upper`) is combined row by row from its layer Grams
    and met with the reference's numbers at once, the square part of a block counted once, the
    rest twice; only the per-thread tile buffers are held.  The difference
    :math:`\Theta - \Theta_0` is taken entry by entry (no cancellation in the change), the sums
    in float64 (in block order: the same numbers for any thread count).
    """
    params, x = _probe_points(config, params, x)
    n, c, L = x.shape[0], config.c_out, config.n_layers - 1
    if (reference.n, reference.c) != (n, c):
        raise ValueError(f"reference is a kernel of {reference.n} points and c = {reference.c}; x has {n} "
                         f"points and the network c = {c}")
    f = _Factors(config, params, x, reference.dtype)
    rows = reference.rows

    def block(j, tile):
        r0 = j * rows
        r1 = min(n, r0 + rows)
        ref = reference.blocks[j]
        once, twice = np.zeros(3), np.zeros(3)
        for c0 in range(r0, n, COLS):
            c1 = min(n, c0 + COLS)
            bb, G, gr, row = tile.grams(f, f, r0, r1, c0, c1)
            _tile_products(bb, G, ref, (c0 - r0) * c, (r1 - r0) * c, c, gr, row, once, twice)
        return once + 2.0 * twice

    done = _blocks_in_threads(len(reference.blocks), block,
                              lambda: _Tile(L, c, rows, COLS, reference.dtype), n_threads)
    total = np.zeros(3)
    for s in done:
        total += s
    return float(total[0]), float(total[1]), float(total[2])


def _probe_points(config, params, x):
    """``(params, x)``: checked parameters and a non-empty float64 NumPy x, checked as in :func:`_prep`."""
    if numba is None:  # pragma: no cover - numba is a dependency
        raise ImportError("empirical_ntk_upper / empirical_ntk_products need numba (pip install numba)")
    params = _nw.as_params(config, params)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != config.d_in or x.shape[0] == 0:
        raise ValueError(f"x must have shape (n >= 1, {config.d_in}); got {x.shape}")
    _check_inputs(config, x, x, "the empirical_ntk of x with itself (x1 = x2 = x)")
    return params, np.asarray(x, dtype=np.float64)


def _positive_rows(block_rows):
    if isinstance(block_rows, bool) or int(block_rows) < 1:
        raise ValueError(f"block_rows must be a positive integer or None; got {block_rows!r}")
    return int(block_rows)


# The numba kernels.  A tile's layer Grams bb (L, r c, w c) and G (L + 1, r, w) are combined into
# rows of Theta, row (a, i) = Theta_i.(x_a, x_b) over (b, k) (w c numbers, L1/L2-resident),
# in the order of the array path (layer 0 first, the products rounded before each sum, the
# output layer's delta_ik last; no FMA contraction), then written or reduced.
def _jit(reassociate=False):
    def wrap(fn):
        if numba is None:  # pragma: no cover - numba is a dependency
            return fn
        return numba.njit(nogil=True, cache=True, error_model="numpy",
                          fastmath={"reassoc"} if reassociate else False)(fn)
    return wrap


@_jit()
def _expand(G, a, c, gr):  # pragma: no cover - compiled
    """gr[l, b c + k] = G[l, a, b] for l < L: row a of each activation Gram, repeated along k."""
    for l in range(gr.shape[0]):
        for b in range(G.shape[2]):
            g = G[l, a, b]
            for k in range(c):
                gr[l, b * c + k] = g


@_jit()
def _row(bb, G, gr, a, i, c, row):  # pragma: no cover - compiled
    """row[b c + k] = sum_l G[l, a, b] bb[l, a c + i, b c + k] + delta_ik G[L, a, b]."""
    L, m, ai = gr.shape[0], row.shape[0], a * c + i
    if L == 0:
        for bk in range(m):
            row[bk] = 0.0
    else:
        for bk in range(m):
            row[bk] = bb[0, ai, bk] * gr[0, bk]
        for l in range(1, L):
            for bk in range(m):
                row[bk] += bb[l, ai, bk] * gr[l, bk]
    for b in range(G.shape[2]):
        row[b * c + i] += G[L, a, b]


@_jit(reassociate=True)
def _sums(row, ref, lo, hi, acc):  # pragma: no cover - compiled
    """acc += (sum t u, sum t^2, sum (t - u)^2) over t = row[lo:hi], u = ref[lo:hi], in float64."""
    r = row[lo:hi]  # views indexed from 0: an index numba cannot prove non-negative (j in
    f = ref[lo:hi]  # range(lo, hi)) gets a sign test per element and the loop is not vectorised
    s0 = s1 = s2 = 0.0
    for j in range(hi - lo):
        t = np.float64(r[j])
        u = np.float64(f[j])
        d = t - u
        s0 += t * u
        s1 += t * t
        s2 += d * d
    acc[0] += s0
    acc[1] += s1
    acc[2] += s2


@_jit()
def _tile_dense(bb, G, c, gr, row, out):  # pragma: no cover - compiled
    """out[a, b, i, k] = Theta_ik(x_a, x_b) of the tile; out (r, w, c, c)."""
    for a in range(G.shape[1]):
        _expand(G, a, c, gr)
        for i in range(c):
            _row(bb, G, gr, a, i, c, row)
            for b in range(G.shape[2]):
                for k in range(c):
                    out[a, b, i, k] = row[b * c + k]


@_jit()
def _tile_block(bb, G, c, gr, blk, col, square, once, twice):  # pragma: no cover - compiled
    """blk[a, i, col:col + w c] = the tile's rows; (once, twice) += their sums (_sums with u = t),
    split at blk column ``square``."""
    m = G.shape[2] * c
    s = min(max(square - col, 0), m)
    for a in range(G.shape[1]):
        _expand(G, a, c, gr)
        for i in range(c):
            row = blk[a, i, col:col + m]
            _row(bb, G, gr, a, i, c, row)
            _sums(row, row, 0, s, once)
            _sums(row, row, s, m, twice)


@_jit()
def _tile_products(bb, G, ref, col, square, c, gr, row, once, twice):  # pragma: no cover - compiled
    """(once, twice) += _sums of the tile's rows against ref[a, i, col:col + w c], split at ref
    column ``square``."""
    m = row.shape[0]
    s = min(max(square - col, 0), m)
    for a in range(G.shape[1]):
        _expand(G, a, c, gr)
        for i in range(c):
            _row(bb, G, gr, a, i, c, row)
            u = ref[a, i, col:col + m]
            _sums(row, u, 0, s, once)
            _sums(row, u, s, m, twice)


def empirical_ntk_trace(config: _nw.MLP, params: _nw.Params, x1: Array, x2: Array | None = None, *,
                        normalize: bool = True) -> Array:
    r"""Scalar kernel :math:`\frac1c\sum_i \Theta_{ii}(x_1, x_2)` (or the trace), shape (n1, n2).

    For ``c = 1`` this is the scalar empirical NTK.  For independent, identically built
    component networks (§2.3.1, "no component mixing") the infinite-width metric-NTK is
    :math:`\delta_{ik}\bar\Theta`, and the normalised trace estimates :math:`\bar\Theta`.
    Costs :math:`O(n_1 n_2 c d)` per layer (one GEMM over ``c d``), a factor ``c`` less
    than :func:`empirical_ntk`.
    """
    xp, params, x1, x2, same = _prep(config, params, x1, x2)
    hs1, B1, hs2, B2 = _layer_data(config, params, x1, x2, same)
    n1, n2, c = x1.shape[0], x2.shape[0], config.c_out
    L = config.n_layers - 1
    scales = config.layer_scales
    sb2 = config.sigma_b ** 2
    out = None
    for l in range(L + 1):
        G = (scales[l] * hs1[l]) @ xp.matrix_transpose(scales[l] * hs2[l])
        if sb2 != 0.0:
            G += sb2
        if l < L:
            G *= xp.reshape(B1[l], (n1, -1)) @ xp.matrix_transpose(xp.reshape(B2[l], (n2, -1)))
        else:
            G *= c
        out = G if out is None else out + G
    return out / c if normalize else out


def ntk_matvec(config: _nw.MLP, params: _nw.Params, x_out: Array, x_in: Array, v: Array) -> Array:
    r"""Kernel action :math:`(\Theta v)(x) = \sum_{x'} \Theta(x, x') v(x')` without forming Theta.

    ``out[a, i] = sum_{b,k} Theta_ik(x_out[a], x_in[b]) v[b, k] = J_out (J_in^T v)``, computed by
    one reverse pass (:func:`mfarray.networks.vjp`) and one forward pass
    (:func:`mfarray.networks.jvp`): cost :math:`O((n_{in} + n_{out}) P)`, memory
    :math:`O(n\,\mathrm{width} + P)`.  With ``v = -delta l / delta g`` this is the right-hand
    side of the discrete flow (2.8).

    Parameters
    ----------
    x_out : (n_out, d_in) array
    x_in : (n_in, d_in) array
    v : (n_in, c) array

    Returns
    -------
    (n_out, c) array.
    """
    t = _nw.vjp(config, params, x_in, v)
    return _nw.jvp(config, params, x_out, t)


def empirical_ntk_operator(config: _nw.MLP, params: _nw.Params, x_train: Array) -> LinearOperator:
    r"""``scipy.sparse.linalg.LinearOperator`` of shape (n c, n c) for :math:`\Theta(X, X)`.

    Vectors are ``v.reshape(n, c)`` flattened row-major (point-major, component-minor), the
    layout of ``empirical_ntk(...).transpose(0, 2, 1, 3).reshape(n c, n c)``.  Symmetric
    positive semi-definite; usable with ``scipy.sparse.linalg.cg`` / ``eigsh`` (NumPy only).
    """
    from scipy.sparse.linalg import LinearOperator

    n, c = x_train.shape[0], config.c_out

    def matmat(V):
        V = np.asarray(V)
        cols = V.reshape(n * c, -1)
        res = [np.asarray(ntk_matvec(config, params, x_train, x_train,
                                     cols[:, j].reshape(n, c))).reshape(-1)
               for j in range(cols.shape[1])]
        return np.stack(res, axis=1)

    def matvec(v):
        return matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    return LinearOperator((n * c, n * c), matvec=matvec, rmatvec=matvec, matmat=matmat,
                          dtype=np.float64)
