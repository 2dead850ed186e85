r"""How far a metric-NTK has moved: statistics of empirical kernels on a fixed probe set (issue 13).

A metric-NTK on a probe of ``n`` points is an array :math:`\Theta` of shape (n, n, c, c)
(``Theta[a, b, i, j]``: component i at point a, component j at point b, eq. 2.7), symmetric in
the sense :math:`\Theta[a, b] = \Theta[b, a]^\top`.  With the Frobenius inner product
:math:`\langle A, B\rangle_F = \sum A[a, b, i, j] B[a, b, i, j]`:

* kernel distance  :math:`d(\Theta_0, \Theta_t) = 1 - \langle\Theta_0, \Theta_t\rangle_F /
  (\|\Theta_0\|_F\|\Theta_t\|_F)` -- 0 for the same kernel up to scale, 1 for orthogonal ones
  (the "kernel distance" of Fort et al. 2020);
* kernel change  :math:`\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F` (scale changes count too);
* kernel-target alignment  :math:`A(\Theta, y) = y^\top\Theta y / (\|\Theta\|_F\|y\|^2)` in
  [0, 1] (Cristianini et al. 2001), ``y^T Theta y = sum Theta[a, b, i, j] y[a, i] y[b, j]``, with
  y (n, c) the per-point loss gradients dl/dg (real coordinates) of the current metric.  A
  kernel flow moves g by :math:`-\Theta y` (2.12), so :math:`y^\top\Theta y` is the first-order
  loss decrease of a kernel step; A = 1 when :math:`\Theta \propto y y^\top`.

:func:`kernel_statistics` computes them from dense arrays; :class:`ProbeKernel` for the MLPs of
:mod:`mfarray.networks` without ever holding a second kernel: Theta_0 is kept as upper row blocks
(rows r0:r1, columns r0:n; :func:`~mfarray.kernels.empirical.empirical_ntk_upper`), a later
kernel is computed tile by tile and each tile met with Theta_0's numbers at once
(:func:`~mfarray.kernels.empirical.empirical_ntk_products`: :math:`\langle\Theta_0,
\Theta_t\rangle`, :math:`\|\Theta_t\|^2`, :math:`\|\Theta_t - \Theta_0\|^2`, the square part of
a block counted once, the rest twice, float64 sums), the distance by
:func:`distance_from_products` (no cancellation at small distances), and :math:`y^\top\Theta y =
\|J^\top y\|^2` from one reverse pass (:func:`mfarray.networks.vjp`).  Measured (shared 2-core
AMD EPYC, 3 x 64 ReLU MLP, c = 9, 1000-point probe): 0.56 s of one core per checkpoint in
float64 at load 3-4, 0.32 s in float32 (``dtype``); in 20-epoch training runs at load 4.5-5.8,
1.0-1.6 s (float32 0.6-0.95 s) on 2 threads, 1.8-2.3x (3.3-3.8x) less than the previous row
blocks; Theta_0's blocks take 330 MB (float32 165 MB).  float32 is measured, not proven: against
float64 it moved the kernel distance by at most 8e-9 relative in those runs (distances 0.04 to
0.13) and 3e-7 for 1 hidden layer of width 64-4096 (distances down to 2e-6), so float64 stays
the default.

:func:`analytic_distance` compares the empirical metric-NTK of a ReLU MLP with its
infinite-width limit :math:`\delta_{ij}\bar\Theta(x, x')` (2.9, §2.3.2;
:func:`mfarray.kernels.relu.relu_ntk`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from .. import networks as nw
from ..kernels.empirical import (
    empirical_ntk,
    empirical_ntk_products,
    empirical_ntk_upper,
)
from ..kernels.relu import relu_ntk

__all__ = [
    "KERNEL_DOCS",
    "ProbeKernel",
    "analytic_distance",
    "distance_from_products",
    "kernel_alignment",
    "kernel_distance",
    "kernel_statistics",
]

Array = Any

KERNEL_DOCS = {
    "kernel_distance": "1 - <Theta_0, Theta_t>_F / (|Theta_0|_F |Theta_t|_F): empirical metric-NTK (2.7) on "
                       "the probe at the checkpoint vs at initialisation",
    "kernel_change": "|Theta_t - Theta_0|_F / |Theta_0|_F on the probe",
    "kernel_norm": "|Theta_t|_F on the probe (n, n, c, c)",
    "alignment": "kernel-target alignment y^T Theta_t y / (|Theta_t|_F |y|^2), y = dl/dg at the probe "
                 "points at the checkpoint (real coordinates)",
    "alignment_initial_kernel": "y^T Theta_0 y / (|Theta_0|_F |y|^2) with the same y: the frozen initial "
                                "kernel's alignment with the current task",
    "kernel_time": "wall-clock seconds of the checkpoint's kernel statistics",
}


def _as_kernel(K, name):
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 4 or K.shape[0] != K.shape[1] or K.shape[2] != K.shape[3]:
        raise ValueError(f"{name} must be a metric-NTK of shape (n, n, c, c); got {K.shape}")
    return K


def kernel_distance(K0: Array, K1: Array) -> float:
    """``1 - <K0, K1>_F / (|K0|_F |K1|_F)`` of two kernels of the same shape (n, n, c, c)."""
    K0, K1 = _as_kernel(K0, "K0"), _as_kernel(K1, "K1")
    if K0.shape != K1.shape:
        raise ValueError(f"K0 and K1 must have the same shape; got {K0.shape} and {K1.shape}")
    return 1.0 - float(np.vdot(K0, K1)) / math.sqrt(float(np.vdot(K0, K0)) * float(np.vdot(K1, K1)))


def kernel_alignment(K: Array, y: Array) -> float:
    """Kernel-target alignment ``y^T K y / (|K|_F |y|^2)`` of a metric-NTK K (n, n, c, c) with
    per-point targets y (n, c); NaN for y = 0."""
    K, y = _as_kernel(K, "K"), np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or K.shape != (y.shape[0], y.shape[0], y.shape[1], y.shape[1]):
        raise ValueError(f"y must have shape (n, c) = {K.shape[0], K.shape[2]} for K of shape {K.shape}; "
                         f"got {y.shape}")
    yy = float(np.vdot(y, y))
    if yy == 0:
        return math.nan
    quad = float(np.einsum("abij,ai,bj->", K, y, y))
    return quad / (math.sqrt(float(np.vdot(K, K))) * yy)


def kernel_statistics(K0: Array, K: Array, y: Array) -> dict[str, float]:
    """``kernel_distance``, ``kernel_change``, ``kernel_norm``, ``alignment`` and
    ``alignment_initial_kernel`` (:data:`KERNEL_DOCS`) of a kernel K against the initial K0, both
    dense (n, n, c, c), with targets y (n, c)."""
    K0, K = _as_kernel(K0, "K0"), _as_kernel(K, "K")
    if K0.shape != K.shape:
        raise ValueError(f"K0 and K must have the same shape; got {K0.shape} and {K.shape}")
    n0 = math.sqrt(float(np.vdot(K0, K0)))
    return {"kernel_distance": kernel_distance(K0, K), "kernel_change": float(np.linalg.norm(K - K0)) / n0,
            "kernel_norm": math.sqrt(float(np.vdot(K, K))), "alignment": kernel_alignment(K, y),
            "alignment_initial_kernel": kernel_alignment(K0, y)}


def distance_from_products(norm0_sq: float, inner: float, norm_sq: float, change_sq: float) -> float:
    r"""The kernel distance :math:`1 - \cos(\Theta_0, \Theta)` from the Frobenius sums
    :math:`\|\Theta_0\|^2`, :math:`\langle\Theta_0, \Theta\rangle`, :math:`\|\Theta\|^2` and
    :math:`\|\Delta\|^2`, :math:`\Delta = \Theta - \Theta_0`, without the cancellation of
    ``1 - inner / (|Theta_0| |Theta|)``:

    .. math::

        1 - \cos = \frac{1 - \cos^2}{1 + \cos},\qquad
        1 - \cos^2 = \frac{\|\Theta_0\|^2\|\Delta\|^2 - \langle\Theta_0, \Delta\rangle^2}
                          {\|\Theta_0\|^2\|\Theta\|^2},\qquad
        \langle\Theta_0, \Delta\rangle = \langle\Theta_0, \Theta\rangle - \|\Theta_0\|^2

    (Lagrange's identity: the numerator is :math:`\|\Theta_0\|^2` times the squared part of
    :math:`\Delta` orthogonal to :math:`\Theta_0`).  For a change orthogonal to
    :math:`\Theta_0` the distance keeps the relative accuracy of :math:`\|\Delta\|^2` however small
    it is (the direct form loses digits as 1e-16 / distance); a change of scale by a factor
    :math:`1 + \alpha` still cancels, to about 1e-16 :math:`\alpha^2` / distance.  All arguments
    are sums over the whole (n, n, c, c) kernels; returns a float."""
    cos = inner / math.sqrt(norm0_sq * norm_sq)
    along = inner - norm0_sq
    sin2 = max(norm0_sq * change_sq - along * along, 0.0) / (norm0_sq * norm_sq)
    return sin2 / (1.0 + cos)


class ProbeKernel:
    """The empirical metric-NTK of an MLP on a probe set, at theta_0 and later parameters (module
    docstring).

    Parameters
    ----------
    config : mfarray.networks.MLP
    params0 : the initial parameters (tree)
    x : (n, d_in) network inputs of the probe points
    block_rows : rows per block (default :data:`mfarray.kernels.empirical.ROWS`)
    dtype : float64 (default) or float32 for Theta_0's blocks and the kernels' layer products (the
        Frobenius sums are float64 either way).  float32 halves the memory and the GEMM time;
        its measured effect on the statistics is in the module docstring.
    n_threads : threads over the row blocks (default: the usable cores; one BLAS thread each).

    Theta_0 is computed on construction and kept as upper row blocks
    (:func:`~mfarray.kernels.empirical.empirical_ntk_upper`); a later kernel is never formed:
    :meth:`statistics` streams its tiles against Theta_0's
    (:func:`~mfarray.kernels.empirical.empirical_ntk_products`).
    """

    def __init__(self, config: nw.MLP, params0: nw.Params, x: Array, block_rows: int | None = None, *,
                 dtype: Any = np.float64, n_threads: int | None = None) -> None:
        self.config, self.params0 = config, params0
        self.x = np.asarray(x, dtype=np.float64)
        if self.x.ndim != 2 or self.x.shape[1] != config.d_in or self.x.shape[0] == 0:
            raise ValueError(f"x must have shape (n >= 1, {config.d_in}); got {self.x.shape}")
        if block_rows is not None and (isinstance(block_rows, bool) or int(block_rows) < 1):
            raise ValueError(f"block_rows must be a positive integer or None; got {block_rows!r}")
        self.n_threads = n_threads
        self.upper0 = empirical_ntk_upper(config, params0, self.x, block_rows=block_rows, dtype=dtype,
                                          n_threads=n_threads)
        self.norm0 = math.sqrt(self.upper0.norm2)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.upper0.dtype

    def kernel(self, params: nw.Params | None = None) -> np.ndarray:
        """The whole (n, n, c, c) kernel at ``params`` (default theta_0), assembled from upper row
        blocks of this probe's dtype (small probes: n^2 c^2 floats)."""
        if params is None:
            return self.upper0.dense()
        return empirical_ntk_upper(self.config, params, self.x, block_rows=self.upper0.rows, dtype=self.dtype,
                                   n_threads=self.n_threads).dense()

    def statistics(self, params: nw.Params, y: Array) -> dict[str, float]:
        """The statistics of :func:`kernel_statistics` for the kernel at ``params``, targets y (n, c)."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.config.c_out):
            raise ValueError(f"y must have shape {(self.n, self.config.c_out)}; got {y.shape}")
        norm0_sq = self.upper0.norm2
        if params is self.params0:  # epoch 0: Theta_t is Theta_0, already at hand
            inner = norm2 = norm0_sq
            change2 = 0.0
        else:
            inner, norm2, change2 = empirical_ntk_products(self.config, params, self.x, self.upper0,
                                                           n_threads=self.n_threads)
        norm = math.sqrt(norm2)
        out = {"kernel_distance": distance_from_products(norm0_sq, inner, norm2, change2),
               "kernel_change": math.sqrt(change2) / self.norm0, "kernel_norm": norm}
        yy = float(np.vdot(y, y))
        with backend.one_blas_thread():
            for key, p, nrm in (("alignment", params, norm), ("alignment_initial_kernel", self.params0, self.norm0)):
                quad = float(np.sum(nw.flatten(nw.vjp(self.config, p, self.x, y)) ** 2))  # |J^T y|^2
                out[key] = quad / (nrm * yy) if yy > 0 else math.nan
        return out


def analytic_distance(config: nw.MLP, params: nw.Params, x: Array) -> float:
    r"""``|Theta - delta (x) Theta_bar|_F / |delta (x) Theta_bar|_F`` on inputs x (n, d_in): the
    empirical metric-NTK (n, n, c, c) of a ReLU MLP at ``params`` against its infinite-width limit
    :math:`\delta_{ij}\bar\Theta(x, x')` (:func:`mfarray.kernels.relu.relu_ntk` with the MLP's
    depth, sigma_w, sigma_b).  NaN for other activations (no closed form here)."""
    if config.activation != "relu":
        return math.nan
    x = np.asarray(x, dtype=np.float64)
    with backend.one_blas_thread():
        K = empirical_ntk(config, params, x)
    bar = np.asarray(relu_ntk(x, x, depth=config.depth, sigma_w=config.sigma_w, sigma_b=config.sigma_b))
    c = config.c_out
    bar2 = float(np.vdot(bar, bar))
    diff2 = float(np.vdot(K, K)) - 2.0 * float(np.vdot(np.einsum("abii->ab", K), bar)) + c * bar2
    return math.sqrt(max(diff2, 0.0) / (c * bar2))
