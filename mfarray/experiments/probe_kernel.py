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
:mod:`mfarray.networks` without ever holding a whole kernel: it computes row blocks of the upper
part (rows r0:r1, columns r0:n) with :func:`~mfarray.kernels.empirical.empirical_ntk`, keeps
those of Theta_0, counts each strictly upper block twice, and gets :math:`y^\top\Theta y =
\|J^\top y\|^2` from one reverse pass (:func:`mfarray.networks.vjp`).  Measured (2-core machine
at load 5, 3 x 64 ReLU MLP, c = 9, one BLAS thread): 1.5 s per kernel of a 1000-point probe;
Theta_0's blocks take 330 MB.

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
from ..kernels.empirical import empirical_ntk
from ..kernels.relu import relu_ntk

__all__ = [
    "KERNEL_DOCS",
    "ProbeKernel",
    "analytic_distance",
    "kernel_alignment",
    "kernel_distance",
    "kernel_statistics",
]

Array = Any

#: Bytes of one row block (rows, n, c, c) of a probe kernel while it is computed.
BLOCK_BYTES = 64 * 2**20

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


class ProbeKernel:
    """The empirical metric-NTK of an MLP on a probe set, at theta_0 and later parameters (module
    docstring).

    Parameters
    ----------
    config : mfarray.networks.MLP
    params0 : the initial parameters (tree)
    x : (n, d_in) network inputs of the probe points
    block_rows : rows per block (default: about :data:`BLOCK_BYTES` per block)

    Theta_0 is computed on construction and kept as upper row blocks.
    """

    def __init__(self, config: nw.MLP, params0: nw.Params, x: Array, block_rows: int | None = None) -> None:
        self.config, self.params0 = config, params0
        self.x = np.asarray(x, dtype=np.float64)
        if self.x.ndim != 2 or self.x.shape[1] != config.d_in or self.x.shape[0] == 0:
            raise ValueError(f"x must have shape (n >= 1, {config.d_in}); got {self.x.shape}")
        n, c = self.x.shape[0], config.c_out
        if block_rows is not None and (isinstance(block_rows, bool) or int(block_rows) < 1):
            raise ValueError(f"block_rows must be a positive integer or None; got {block_rows!r}")
        self.rows = int(block_rows) if block_rows else max(8, min(n, BLOCK_BYTES // (n * c * c * 8)))
        with backend.one_blas_thread():
            self.blocks0 = list(self._blocks(params0))
        self.norm0 = math.sqrt(sum(self._inner_block(b, b, r1 - r0) for r0, r1, b in self.blocks0))

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def _blocks(self, params):
        for r0 in range(0, self.n, self.rows):
            r1 = min(self.n, r0 + self.rows)
            yield r0, r1, empirical_ntk(self.config, params, self.x[r0:r1], self.x[r0:])

    @staticmethod
    def _inner_block(a, b, r):
        """The full matrix's sum of products restricted to one upper row block: the square
        diagonal part once, the strictly upper part twice (Theta[b, a] = Theta[a, b]^T)."""
        whole = float(np.vdot(a, b))
        diag = float(np.vdot(np.ascontiguousarray(a[:, :r]), np.ascontiguousarray(b[:, :r])))
        return 2.0 * whole - diag

    def kernel(self, params: nw.Params | None = None) -> np.ndarray:
        """The whole (n, n, c, c) kernel at ``params`` (default theta_0), assembled from the upper
        row blocks (small probes: n^2 c^2 floats)."""
        n, c = self.n, self.config.c_out
        out = np.empty((n, n, c, c))
        with backend.one_blas_thread():
            blocks = self.blocks0 if params is None else self._blocks(params)
            for r0, r1, blk in blocks:
                out[r0:r1, r0:] = blk
                out[r1:, r0:r1] = np.transpose(blk[:, r1 - r0:], (1, 0, 3, 2))
        return out

    def statistics(self, params: nw.Params, y: Array) -> dict[str, float]:
        """The statistics of :func:`kernel_statistics` for the kernel at ``params``, targets y (n, c)."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.config.c_out):
            raise ValueError(f"y must have shape {(self.n, self.config.c_out)}; got {y.shape}")
        inner = norm2 = change2 = 0.0
        same = params is self.params0  # epoch 0: Theta_t is Theta_0, already at hand
        with backend.one_blas_thread():
            for (r0, r1, b0), (_, _, bt) in zip(self.blocks0, self.blocks0 if same else self._blocks(params)):
                if same:
                    inner = norm2 = self.norm0**2
                    break
                inner += self._inner_block(b0, bt, r1 - r0)
                norm2 += self._inner_block(bt, bt, r1 - r0)
                bt -= b0  # the difference directly: no cancellation in |Theta_t - Theta_0|
                change2 += self._inner_block(bt, bt, r1 - r0)
            norm = math.sqrt(norm2)
            yy = float(np.vdot(y, y))
            out = {"kernel_distance": 1.0 - inner / (self.norm0 * norm),
                   "kernel_change": math.sqrt(change2) / self.norm0, "kernel_norm": norm}
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
