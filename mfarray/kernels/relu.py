r"""Closed-form infinite-width kernels (NNGP and NTK) of fully connected ReLU networks.

Context
-------
In "Metric Flows with Neural Networks" (Halverson & Ruehle) the metric-NTK of a
metric whose components are independent, identically built networks is
:math:`\bar\Theta_{ijkl}(x, x') = \delta_{ik}\delta_{jl}\,\bar\Theta(x, x')`
(section 2.3.2), so in the frozen-NTK (lazy, infinite-width) regime the metric
flow is governed by the scalar NTK :math:`\bar\Theta(x, x')` of a single
component network.  Section 3.2 ("Metrics from a ReLU NTK", Table 1) uses the
infinite-width NTK of a one-hidden-layer ReLU network computed with
``neural-tangents`` with :math:`\sigma_b = 80.52`, :math:`\sigma_w = 5.716`.
This module provides that kernel (and its deeper versions) in closed form as
pure array functions, without JAX; ``relu_ntk`` and ``relu_nngp`` are
:class:`~mfarray.kernels.spec.Kernel` specs on real features (``inputs="features"``).

Convention (exactly neural-tangents' ``stax`` in NTK parameterisation)
--------------------------------------------------------------------
``depth = L`` hidden ReLU layers; the network is ::

    stax.serial(stax.Dense(1, W_std=sigma_w, b_std=sigma_b), stax.Relu(),
                ...  (L times Dense+Relu) ...,
                stax.Dense(1, W_std=sigma_w, b_std=sigma_b))

with pre-activations :math:`z^{l+1} = \frac{\sigma_w}{\sqrt{n_l}} W^{l+1} h^l +
\sigma_b b^{l+1}`, :math:`W, b \sim \mathcal N(0, 1)`, :math:`h^0 = x \in
\mathbb R^d`, :math:`h^l = \mathrm{relu}(z^l)` and a scalar output
:math:`f = z^{L+1}`.  Write :math:`a = \sigma_w^2`, :math:`b = \sigma_b^2`.

* Input layer:  :math:`K^0(x, x') = a\, x\cdot x'/d + b`,
  :math:`\Theta^0 = K^0`.
* For :math:`l = 1..L`, with :math:`K_{11} = K^{l-1}(x,x)`,
  :math:`K_{22} = K^{l-1}(x',x')`, :math:`K_{12} = K^{l-1}(x,x')` and the
  arc-cosine angle :math:`\theta = \arccos(K_{12}/\sqrt{K_{11}K_{22}})`,
  the arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009) are

  .. math::

     \tilde K = E[\mathrm{relu}(u)\mathrm{relu}(v)]
              = \frac{\sqrt{K_{11}K_{22}}}{2\pi}\,(\sin\theta + (\pi-\theta)\cos\theta),
     \qquad
     \dot K = E[\mathrm{relu}'(u)\mathrm{relu}'(v)] = \frac{\pi-\theta}{2\pi},

  for :math:`(u, v) \sim \mathcal N(0, K^{l-1})`, and (Jacot et al. 2018;
  Arora et al. 2019; Lee et al. / neural-tangents 2020)

  .. math::

     K^l = a\,\tilde K + b, \qquad \Theta^l = K^l + a\,\dot K\,\Theta^{l-1}.

* Outputs: ``relu_nngp = K^L`` and ``relu_ntk = Theta^L``.  ``depth=0`` gives
  the linear kernel :math:`K^0`.  On the diagonal :math:`\theta = 0`,
  :math:`\tilde K = K/2`, :math:`\dot K = 1/2`.

Numerics
--------
``arccos`` near 1 loses half of the digits, which matters for the NTK because
:math:`\dot K` is *linear* in :math:`\theta`; with large :math:`\sigma_b`
(Table 1) every angle is small.  We therefore never form the cosine.  With
:math:`c = K_{12}`, :math:`s = \sqrt{K_{11}K_{22}}`, we propagate through the
layers the two non-negative quantities

.. math::

   D = K_{11}K_{22} - K_{12}^2 \;(= s^2\sin^2\theta), \qquad
   R = K_{11} + K_{22} - 2K_{12} \;(= E[(z - z')^2]),

and take :math:`\theta = \operatorname{atan2}(\sqrt D, c)`,
:math:`\tilde K = (\sqrt D + (\pi - \theta)c)/(2\pi)`.  With
:math:`sG = \sqrt D - \theta c = s(\sin\theta - \theta\cos\theta)` and
:math:`s - c = D/(s + c)` (for :math:`c > 0`) the next layer's values are the
sums of non-negative terms

.. math::

   \tfrac s2 - \tilde K = \frac{\pi(s - c) - sG}{2\pi},\quad
   \tilde D = (\tfrac s2 - \tilde K)(\tfrac s2 + \tilde K),\quad
   R^{+} = a\,(R/2 - sG/\pi),\quad
   D^{+} = a^2\tilde D + b\,R^{+}.

At the input layer, pairs whose naive :math:`D` indicates
:math:`\sin^2\theta \le` ``refine_tol`` are recomputed from the differences
:math:`u = x' - x`, :math:`m = (x + x')/2`:
:math:`R^0 = a|u|^2/d`, :math:`D^0 = (a/d)^2 |m|^2 |u_\perp|^2 + b R^0`
(:math:`u_\perp` = component of :math:`u` orthogonal to :math:`m`; this is the
Lagrange/Gram identity :math:`|x|^2|x'|^2 - (x\cdot x')^2 = |m|^2|u|^2 - (m\cdot
u)^2`), so identical inputs give exactly :math:`\theta = 0` in every layer and
near-coincident inputs keep full relative accuracy.  The remaining error in
:math:`\theta` is absolute, :math:`O(\epsilon/\sqrt{\text{refine\_tol}})`
(~1e-14) for unrefined pairs and :math:`O(\epsilon)` otherwise; measured
against a 50-digit mpmath evaluation the kernels agree to ~1e-15..1e-14
relative, including Table-1 hyper-parameters (see ``tests/test_relu_kernels.py``).

All functions take the array namespace from their inputs
(``array_api_compat.array_namespace``); NumPy and CuPy work unchanged.  The
computation runs over blocks of rows of ``x1`` (cache-sized temporaries); with
NumPy the blocks can be processed by a small thread pool (``n_threads``).

``method="fused"`` computes the same recursion, in the same order of operations (up to FMA
contraction), in one compiled pass per row (:func:`mfarray.kernels.fused.relu_tile`, numba: no (n1, n2)
temporaries, a vectorised atan2), in float64 on NumPy inputs; it agrees with
``method="numpy"`` to the rounding of the recursion (~1e-15 relative measured, Table-1
hyper-parameters and depth 3 included, tests/test_fused_kernels.py).  With ``dtype=float32``
it runs in float32 except where D = s^2 - c^2 cancels: pairs with sin^2 theta <= 0.05 are
recomputed in float64 from x' - x (:func:`mfarray.kernels.fused32.relu_tile32`: within
2 (depth + 1) float32 ulps of the float64 kernel, relative to sqrt(Theta(x, x) Theta(x', x'))).
``"auto"`` (the default) is ``"fused"`` for NumPy inputs where numba is installed, else
``"numpy"``.  Dask inputs give a lazy result: the in-memory kernels mapped over pairs of chunks.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from .. import backend
from . import fused, fused32
from .checks import (SQUARED_MAX, Choice, FloatDType, Integer, Optional, Real, check_finite_values, check_hyper,
                     require_real)
from .spec import kernel

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

Array = Any  # a NumPy, CuPy or Dask array

__all__ = ["relu_kernels", "relu_ntk", "relu_nngp", "relu_ntk_diag", "relu_nngp_diag",
           "relu_kernels_diag"]

_PI = math.pi
_INV_2PI = 1.0 / (2.0 * math.pi)
_INV_PI = 1.0 / math.pi

#: default threshold on sin^2(theta) at the input layer below which a pair is
#: recomputed from x' - x (cancellation-free).
DEFAULT_REFINE_TOL = 1e-4

#: the deepest network accepted (the recursion costs one pass per layer)
MAX_DEPTH = 1000

#: the allowed values of every keyword of the ReLU kernels (checked by the specs and by
#: :func:`relu_kernels` and the diagonals alike)
DOMAINS = {
    "depth": Integer(0, MAX_DEPTH, doc="the number of hidden ReLU layers"),
    "sigma_w": Real(0, SQUARED_MAX, doc="the weights' standard deviation W_std"),
    "sigma_b": Real(0, SQUARED_MAX, doc="the biases' standard deviation b_std"),
    "dtype": FloatDType(doc="the computation dtype"),
    "refine_tol": Real(0, 1, doc="a threshold on sin^2(theta)"),
    "block_rows": Optional(Integer(1, doc="rows of x1 per block")),
    "n_threads": Optional(Integer(1, doc="threads over blocks")),
    "method": Choice(("auto", "numpy", "fused"), doc="'numpy' (array namespace, blocks of rows), 'fused' (numba, "
                     "NumPy inputs; for dtype float32 nearly parallel pairs in float64) or 'auto': 'fused' "
                     "where it applies, else 'numpy'"),
}

#: a fused computation of at most this many entries runs on the caller's thread (a tile of an
#: operator is one: the operator's threads are the parallelism)
FUSED_SERIAL_ENTRIES = 1 << 21


def _prepare(x1, x2, dtype, name="relu kernel"):
    if x2 is None:
        x2 = x1
    require_real(x1, "x1", name)
    require_real(x2, "x2", name)
    xp = array_api_compat.array_namespace(x1, x2)
    if dtype is None:
        dtype = xp.float64
    x1 = xp.asarray(x1, dtype=dtype)
    x2 = xp.asarray(x2, dtype=dtype)
    if x1.ndim != 2 or x2.ndim != 2:
        raise ValueError(f"x1 and x2 must be 2-d (n, d); got shapes {x1.shape}, {x2.shape}")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"feature dimensions differ: {x1.shape[1]} vs {x2.shape[1]}")
    return xp, x1, x2


def _check_hyper(name, **values):
    """The keywords checked against :data:`DOMAINS` (TypeError/ValueError naming them)."""
    return check_hyper(DOMAINS, values, name)


def _diag_recursion(sq, d, depth, a, b, want_nngp, want_ntk):
    """Diagonal recursion on squared norms ``sq`` (shape (n,)). O(n) after sq."""
    k = (a / d) * sq + b
    t = k
    for _ in range(depth):
        k = (0.5 * a) * k + b
        t = k + (0.5 * a) * t
    return k, t


def _refine_layer0(xp, x1b, x2, mask, g, R, D, a, b, d):
    """Recompute x.x', R0, D0 cancellation-free for the masked pairs (in place)."""
    idx = xp.nonzero(mask)
    i, j = idx
    if i.shape[0] == 0:
        return
    xi = xp.take(x1b, i, axis=0)
    xj = xp.take(x2, j, axis=0)
    u = xj - xi
    m = 0.5 * (xi + xj)
    uu = xp.sum(u * u, axis=-1)
    mm = xp.sum(m * m, axis=-1)
    mu = xp.sum(m * u, axis=-1)
    coef = xp.where(mm > 0, mu / xp.where(mm > 0, mm, 1.0), 0.0)
    up = u - coef[:, None] * m
    lag = mm * xp.sum(up * up, axis=-1)          # |x|^2|x'|^2 - (x.x')^2 >= 0
    gg = xp.sum(xi * xj, axis=-1)
    R0 = (a / d) * uu
    D0 = (a / d) * (a / d) * lag + b * R0  # (a/d)**2 would raise OverflowError, not give inf
    g[i, j] = (a / d) * gg + b
    R[i, j] = R0
    D[i, j] = D0


class _Ops:
    """Element-wise operations writing into preallocated buffers.

    With NumPy or CuPy the ufuncs' ``out=`` is used (no temporaries: each block
    of rows reuses a fixed cache-sized workspace); for any other array-API
    namespace the operations fall back to plain expressions.
    """

    def __init__(self, xp):
        self.xp = xp
        if array_api_compat.is_numpy_namespace(xp):
            import numpy as m
        elif array_api_compat.is_cupy_namespace(xp):
            import cupy as m  # only imported when the inputs are CuPy arrays
        else:
            m = None
        self.m = m

    def buffers(self, shape, dtype, n):
        if self.m is None:
            return [None] * n
        return [self.xp.empty(shape, dtype=dtype) for _ in range(n)]

    def mul(self, a, b, out):
        return a * b if self.m is None else self.m.multiply(a, b, out=out)

    def add(self, a, b, out):
        return a + b if self.m is None else self.m.add(a, b, out=out)

    def sub(self, a, b, out):
        return a - b if self.m is None else self.m.subtract(a, b, out=out)

    def div(self, a, b, out):
        return a / b if self.m is None else self.m.divide(a, b, out=out)

    def sqrt(self, a, out):
        return self.xp.sqrt(a) if self.m is None else self.m.sqrt(a, out=out)

    def atan2(self, a, b, out):
        return self.xp.atan2(a, b) if self.m is None else self.m.arctan2(a, b, out=out)

    def clip0(self, a, out):
        return self.xp.maximum(a, 0.0) if self.m is None else self.m.maximum(a, 0.0, out=out)

    def matmul(self, a, b, out):
        return a @ b if self.m is None else self.m.matmul(a, b, out=out)

    def outer(self, u, v, out):
        return self.mul(u[:, None], v[None, :], out)


_TINY = 1e-300


def _block(ops, x1b, x2T, x2, sq1b, sq2, d, depth, a, b, refine_tol, ws):
    """Kernels for one block of rows of x1 (shape (m, d)) against all of x2.

    ``ws`` is a list of 9 workspace buffers of shape (m, n2) (or ``None`` in
    the generic path).  Returns ``(nngp_block, ntk_block)``, views of ``ws``.
    """
    xp = ops.xp
    C, S, D, R, N, Q, TH, T1, KT = ws
    ad = a / d
    # ---- input layer: K^0 = a x.x'/d + b ----------------------------------
    C = ops.matmul(x1b, x2T, C)
    C = ops.mul(C, ad, C)
    C = ops.add(C, b, C)
    k1 = ad * sq1b + b                               # K^0(x, x),   (m,)
    k2 = ad * sq2 + b                                # K^0(x', x'), (n,)
    if depth == 0:
        return C, C
    S = ops.outer(xp.sqrt(k1), xp.sqrt(k2), S)      # s = sqrt(K11 K22)
    # naive D = (s - c)(s + c), R = K11 + K22 - 2c; exact for the refined pairs
    D = ops.sub(S, C, D)
    T1 = ops.add(S, C, T1)
    D = ops.mul(D, T1, D)
    R = ops.add(k1[:, None], k2[None, :], R)
    T1 = ops.add(C, C, T1)
    R = ops.sub(R, T1, R)
    T1 = ops.mul(S, S, T1)
    T1 = ops.mul(T1, refine_tol, T1)
    _refine_layer0(xp, x1b, x2, D <= T1, C, R, D, a, b, d)
    # Theta^0 = K^0
    N = C + 0.0 if ops.m is None else ops.m.copyto(N, C) or N
    for layer in range(1, depth + 1):
        last = layer == depth
        D = ops.clip0(D, D)
        Q = ops.sqrt(D, Q)                           # sqrt(D) = s sin(theta)
        TH = ops.atan2(Q, C, TH)                     # theta
        if not last:
            T1 = ops.mul(TH, C, T1)
            T1 = ops.sub(Q, T1, T1)                  # sG = s (sin - theta cos)
        TH = ops.sub(_PI, TH, TH)                    # pi - theta
        KT = ops.mul(TH, C, KT)
        KT = ops.add(KT, Q, KT)
        KT = ops.mul(KT, _INV_2PI, KT)               # tilde K
        if not last:
            # s - c  (= D / (s + c) for c > 0; c <= 0 only possible at layer 1)
            Q = ops.add(S, C, Q)
            Q = ops.add(Q, _TINY, Q)
            if layer == 1:
                neg = C <= 0
                Q = xp.where(neg, 1.0, Q) if ops.m is None else Q
                Q = ops.div(D, Q, Q)
                D = ops.sub(S, C, D)
                if ops.m is None:
                    Q = xp.where(neg, D, Q)
                else:
                    ops.m.copyto(Q, D, where=neg)
                del neg
            else:
                Q = ops.div(D, Q, Q)
            Q = ops.mul(Q, _PI, Q)
            Q = ops.sub(Q, T1, Q)
            Q = ops.mul(Q, _INV_2PI, Q)
            Q = ops.clip0(Q, Q)                      # s/2 - tilde K >= 0
            D = ops.mul(S, 0.5, D)
            D = ops.add(D, KT, D)                    # s/2 + tilde K
            Q = ops.mul(Q, D, Q)                     # tilde D = s^2/4 - tilde K^2
            T1 = ops.mul(T1, _INV_PI, T1)
            R = ops.mul(R, 0.5, R)
            R = ops.sub(R, T1, R)
            R = ops.clip0(R, R)
            R = ops.mul(R, a, R)                     # R^l = a (R/2 - sG/pi)
            D = ops.mul(Q, a * a, D)
            T1 = ops.mul(R, b, T1)
            D = ops.add(D, T1, D)                    # D^l = a^2 tilde D + b R^l
        TH = ops.mul(TH, a * _INV_2PI, TH)           # a * dot K
        N = ops.mul(N, TH, N)
        C = ops.mul(KT, a, C)
        C = ops.add(C, b, C)                         # K^l = a tilde K + b
        N = ops.add(N, C, N)                         # Theta^l = K^l + a dot K Theta^{l-1}
        if not last:
            k1 = (0.5 * a) * k1 + b
            k2 = (0.5 * a) * k2 + b
            S = ops.outer(xp.sqrt(k1), xp.sqrt(k2), S)
    return C, N


def _default_block_rows(n2):
    # ~32k elements (256 KiB in float64) per buffer keeps the 9-buffer
    # workspace in cache.
    return max(1, min(4096, 32768 // max(1, n2)))


def _compute(x1, x2, depth, sigma_w, sigma_b, dtype, refine_tol, block_rows, n_threads,
             want_nngp, want_ntk, name, method="auto", check=True):
    """The kernels wanted; ``check``: refuse non-finite values here (False where the caller is a
    kernel spec, whose call checks its result: one pass over each tile, not two)."""
    h = _check_hyper(name, depth=depth, sigma_w=sigma_w, sigma_b=sigma_b, dtype=dtype,
                     refine_tol=refine_tol, block_rows=block_rows, n_threads=n_threads, method=method)
    depth, a, b = h["depth"], h["sigma_w"] ** 2, h["sigma_b"] ** 2
    dtype, refine_tol, block_rows, n_threads = h["dtype"], h["refine_tol"], h["block_rows"], h["n_threads"]
    if backend.is_dask(x1) or backend.is_dask(x2):
        return _lazy(x1, x1 if x2 is None else x2, h, want_nngp, want_ntk, name)
    xp = array_api_compat.array_namespace(x1, x1 if x2 is None else x2)
    fused_path = _resolve_method(h["method"], xp, name) == "fused"
    # the fused tiles take float64 features whatever dtype says (their inner products are float64)
    xp, x1, x2 = _prepare(x1, x2, None if fused_path else dtype, name)
    n1, d = x1.shape
    n2 = x2.shape[0]
    if d == 0:
        raise ValueError("feature dimension d must be >= 1")
    label = f"{name}(depth={depth}, sigma_w={h['sigma_w']!r}, sigma_b={h['sigma_b']!r})"
    if fused_path:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, by name
            nngp, ntk = _compute_fused(x1, x2, depth, a, b, refine_tol, n_threads, want_nngp, want_ntk,
                                       np.dtype(np.float64 if dtype is None else dtype))
        for K in (nngp, ntk):
            if K is not None and check:
                check_finite_values(K, label, (x1, x2))
        return nngp, ntk
    ops = _Ops(xp)
    sq1 = xp.sum(x1 * x1, axis=-1)
    sq2 = xp.sum(x2 * x2, axis=-1)
    x2T = xp.asarray(x2.T, copy=True) if ops.m is not None else x2.T
    if block_rows is None:
        block_rows = _default_block_rows(n2) if ops.m is not None and \
            array_api_compat.is_numpy_namespace(xp) else n1
    block_rows = max(1, min(int(block_rows), max(n1, 1)))
    nngp = xp.empty((n1, n2), dtype=x1.dtype) if want_nngp else None
    ntk = xp.empty((n1, n2), dtype=x1.dtype) if want_ntk else None
    starts = list(range(0, n1, block_rows))
    if n_threads is None:
        n_threads = min(backend.cores(), 8)
    is_np = array_api_compat.is_numpy_namespace(xp)
    n_threads = max(1, min(int(n_threads), len(starts))) if is_np else 1

    def work(chunk):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, by name
            _work(chunk)

    def _work(chunk):
        ws_full = ops.buffers((block_rows, n2), x1.dtype, 9)
        for i0 in chunk:
            i1 = min(n1, i0 + block_rows)
            ws = [w if w is None else w[: i1 - i0] for w in ws_full]
            kb, tb = _block(ops, x1[i0:i1, :], x2T, x2, sq1[i0:i1], sq2, d, depth, a, b,
                            refine_tol, ws)
            if want_nngp:
                nngp[i0:i1, :] = kb
            if want_ntk:
                ntk[i0:i1, :] = tb

    if n_threads > 1:
        backend.thread_map(work, [starts[t::n_threads] for t in range(n_threads)], threads=n_threads)
    else:
        work(starts)
    for K in (nngp, ntk):
        if K is not None and check:
            check_finite_values(K, label, (x1, x2))
    return nngp, ntk


def _resolve_method(method, xp, name):
    """``"auto"`` -> ``"fused"`` or ``"numpy"``; ``"fused"`` refused (ValueError naming method
    and the fix) where it does not apply.  The fused tiles compute in float64, or in float32
    after a float64 input layer (:mod:`mfarray.kernels.fused32`), so every dtype has them."""
    numpy_in = array_api_compat.is_numpy_namespace(xp)
    if method == "auto":
        return "fused" if numpy_in and fused.available() else "numpy"
    if method == "fused":
        if not numpy_in:
            raise ValueError(f"{name}: method='fused' is a CPU (numba) kernel, but the inputs are "
                             f"{xp.__name__} arrays: use method='numpy' (or 'auto', which picks it for them), "
                             "or pass NumPy arrays")
        if not fused.available():
            raise ValueError(f"{name}: method='fused' needs numba, which is not installed: pip install numba, "
                             "or use method='numpy'")
    return method


def _compute_fused(x1, x2, depth, a, b, refine_tol, n_threads, want_nngp, want_ntk, dtype):
    """Both kernels by :func:`mfarray.kernels.fused.relu_tile` (float64) or
    :func:`mfarray.kernels.fused32.relu_tile32` (float32) on blocks of rows of float64 x1 on
    ``n_threads`` threads (default: one up to FUSED_SERIAL_ENTRIES entries, else as _compute)."""
    n1, n2 = x1.shape[0], x2.shape[0]
    if n_threads is None:
        n_threads = 1 if n1 * n2 <= FUSED_SERIAL_ENTRIES else min(backend.cores(), 8)
    n_threads = max(1, min(int(n_threads), n1))
    nngp = np.empty((n1, n2), dtype=dtype) if want_nngp else None
    ntk = np.empty((n1, n2), dtype=dtype) if want_ntk else None
    tile = fused32.relu_tile32 if dtype == np.float32 else fused.relu_tile
    kw = dict(depth=depth, a=a, b=b, refine_tol=refine_tol)
    if n_threads == 1:
        tile(x1, x2, out=(nngp, ntk), **kw)
        return nngp, ntk
    step = -(-n1 // (4 * n_threads))  # a few blocks a thread, so that they finish together

    def work(i0):
        rows = slice(i0, min(n1, i0 + step))
        tile(x1[rows], x2, out=(None if nngp is None else nngp[rows],
                                           None if ntk is None else ntk[rows]), **kw)

    backend.thread_map(work, range(0, n1, step), threads=n_threads)
    return nngp, ntk


def _lazy(x1, x2, h, want_nngp, want_ntk, name):
    """Dask inputs: the in-memory kernels (with the checked keywords ``h``) over pairs of chunks."""
    import dask.array as da

    x1 = da.asarray(x1).rechunk({1: -1})
    x2 = da.asarray(x2).rechunk({1: -1})
    require_real(x1, "x1", name)
    require_real(x2, "x2", name)
    if h["method"] == "fused" and (backend.is_cupy(x1._meta) or backend.is_cupy(x2._meta)):
        raise ValueError(f"{name}: method='fused' is a CPU (numba) kernel, but the inputs have CuPy chunks: use "
                         "method='numpy' (or 'auto', which picks it for them)")
    dtype = np.float64 if h["dtype"] is None else np.dtype(h["dtype"])
    fn = functools.partial(_chunk_kernels, name=name, **{k: h[k] for k in _KEYWORDS})
    meta = backend.namespace(x1._meta).empty((0, 0, 0), dtype=dtype)
    both = da.blockwise(fn, "sij", x1, "ik", x2, "jk", new_axes={"s": 2}, dtype=dtype, concatenate=True, meta=meta)
    return (both[0] if want_nngp else None), (both[1] if want_ntk else None)


_KEYWORDS = ("depth", "sigma_w", "sigma_b", "dtype", "refine_tol", "block_rows", "n_threads", "method")


def _chunk_kernels(x1, x2, *, name, **kw):
    """(2, n1, n2): the NNGP and NTK of one pair of chunks."""
    nngp, ntk = _compute(x1, x2, want_nngp=True, want_ntk=True, name=name, **kw)
    return backend.namespace(nngp).stack([nngp, ntk])


def relu_kernels(x1: Array, x2: Array | None = None, *, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.0,
                 dtype: DTypeLike | None = None, refine_tol: float = DEFAULT_REFINE_TOL, block_rows: int | None = None,
                 n_threads: int | None = None, method: str = "auto") -> tuple[Array, Array]:
    """Infinite-width NNGP and NTK of a ReLU MLP in one pass.

    Parameters
    ----------
    x1 : array, shape (n1, d)
    x2 : array, shape (n2, d), optional (defaults to ``x1``)
    depth : int
        Number of hidden ReLU layers ``L`` (``depth=0``: linear kernel).
    sigma_w, sigma_b : float
        neural-tangents ``W_std`` and ``b_std`` of every Dense layer (NTK
        parameterisation, see module docstring for the exact recursion).
        Table 1 of the paper: ``depth=1, sigma_w=5.716, sigma_b=80.52``.
    dtype : dtype, optional
        Computation dtype (default float64 of the input namespace).
    refine_tol : float
        Pairs with ``sin^2(theta) <= refine_tol`` at the input layer are
        recomputed from ``x' - x`` (cancellation-free).  ``0`` disables all but
        the ``D <= 0`` pairs.
    block_rows : int, optional
        Rows of ``x1`` per block (default: ~64k elements per block).
    n_threads : int, optional
        Threads over blocks (NumPy only; default: available cores, <= 8; with
        ``method="fused"`` one thread up to ``FUSED_SERIAL_ENTRIES`` entries).
    method : ``"auto"``, ``"numpy"`` or ``"fused"``
        ``"fused"``: the compiled one-pass tile (numba; NumPy inputs, ValueError otherwise; in
        float32, nearly parallel pairs in float64, for ``dtype=float32``); ``"numpy"``: array-namespace
        code in blocks of rows (any namespace and dtype); ``"auto"`` (default): ``"fused"``
        where it applies, else ``"numpy"``.

    Returns
    -------
    nngp, ntk : arrays, shape (n1, n2)
        :math:`K^L(x_1, x_2)` and :math:`\\Theta^L(x_1, x_2)`.
    """
    return _compute(x1, x2, depth, sigma_w, sigma_b, dtype, refine_tol, block_rows,
                    n_threads, True, True, "relu_kernels", method)


@kernel("features", domains=DOMAINS)
def relu_ntk(x1: Array, x2: Array | None = None, *, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.0,
             dtype: DTypeLike | None = None, refine_tol: float = DEFAULT_REFINE_TOL, block_rows: int | None = None,
             n_threads: int | None = None, method: str = "auto") -> Array:
    """Infinite-width NTK :math:`\\Theta^L(x_1, x_2)` of a ReLU MLP, shape (n1, n2).

    ``x1``: (n1, d), ``x2``: (n2, d) (default ``x1``).  Convention, recursion,
    numerics and keywords: see the module docstring and :func:`relu_kernels`.
    """
    return _compute(x1, x2, depth, sigma_w, sigma_b, dtype, refine_tol, block_rows,
                    n_threads, False, True, "relu_ntk", method, check=False)[1]  # the spec checks


@kernel("features", domains=DOMAINS)
def relu_nngp(x1: Array, x2: Array | None = None, *, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.0,
              dtype: DTypeLike | None = None, refine_tol: float = DEFAULT_REFINE_TOL, block_rows: int | None = None,
              n_threads: int | None = None, method: str = "auto") -> Array:
    """Infinite-width NNGP kernel :math:`K^L(x_1, x_2) = E[f(x_1) f(x_2)]`, shape (n1, n2).

    ``x1``: (n1, d), ``x2``: (n2, d) (default ``x1``).  See the module
    docstring and :func:`relu_kernels`.
    """
    return _compute(x1, x2, depth, sigma_w, sigma_b, dtype, refine_tol, block_rows,
                    n_threads, True, False, "relu_nngp", method, check=False)[0]  # the spec checks


def relu_kernels_diag(x: Array, *, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.0,
                      dtype: DTypeLike | None = None) -> tuple[Array, Array]:
    """Diagonals ``(K^L(x_i, x_i), Theta^L(x_i, x_i))``, each shape (n,), in O(n d).

    On the diagonal theta = 0, so each layer is the affine map
    ``K <- a K/2 + b``, ``Theta <- K + a Theta / 2``.
    """
    h = _check_hyper("relu_kernels_diag", depth=depth, sigma_w=sigma_w, sigma_b=sigma_b, dtype=dtype)
    xp, x, _ = _prepare(x, x, h["dtype"], "relu_kernels_diag")
    if x.shape[1] == 0:
        raise ValueError("feature dimension d must be >= 1")
    sq = xp.sum(x * x, axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, by name
        k, t = _diag_recursion(sq, x.shape[1], h["depth"], h["sigma_w"] ** 2, h["sigma_b"] ** 2, True, True)
    label = f"relu_kernels_diag(depth={h['depth']}, sigma_w={h['sigma_w']!r}, sigma_b={h['sigma_b']!r})"
    return check_finite_values(k, label, (x,)), check_finite_values(t, label, (x,))


def relu_ntk_diag(x: Array, *, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.0,
                  dtype: DTypeLike | None = None) -> Array:
    """Diagonal of :func:`relu_ntk` (x, x), shape (n,), in O(n d)."""
    return relu_kernels_diag(x, depth=depth, sigma_w=sigma_w, sigma_b=sigma_b, dtype=dtype)[1]


def relu_nngp_diag(x: Array, *, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.0,
                   dtype: DTypeLike | None = None) -> Array:
    """Diagonal of :func:`relu_nngp` (x, x), shape (n,), in O(n d)."""
    return relu_kernels_diag(x, depth=depth, sigma_w=sigma_w, sigma_b=sigma_b, dtype=dtype)[0]
