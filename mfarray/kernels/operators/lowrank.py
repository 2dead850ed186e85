"""Low-rank kernel operators from a pivoted (partial) Cholesky factorisation: ``K ~= L L^T``.

The flow's mat-vec (eq. 2.12) with the Kronecker kernel of eq. (2.23) needs ``K v`` for the
``(N, N)`` train kernel and ``K(test, train) v``.  For a kernel whose spectrum decays fast on
the points, the greedy pivoted Cholesky (Harbrecht, Peters & Schneider 2012; Nystrom with
adaptively chosen landmarks) gives ``K ~= L L^T`` with ``L (N, r)`` from ``r`` kernel columns:

* start from the diagonal ``d = diag K`` (diagonal tiles only, O(N * 256) kernel entries);
* pivot ``j``: ``p = argmax d`` (the largest residual diagonal), one kernel column
  ``k(x, x_p)`` (:func:`~.protocol.kernel_block` on ``(N, 1)``; never the ``(N, N)`` matrix),
  ``l_j = (k(x, x_p) - L_{:j} L_{p,:j}^T) / sqrt(d_p)``, ``d -= l_j^2``;
* stop at rank ``rank`` or when the residual trace ``sum(d)`` is at most ``tol * trace(K)``.

O(N r^2) work, O(N r) memory.  ``L L^T = K(:, P) K(P, P)^{-1} K(P, :)`` is the Nystrom
approximation on the pivots ``P``, and the residual ``R = K - L L^T`` is the Schur complement
of ``K(P, P)``: positive semi-definite when K is, so

    ||R||_2 <= ||R||_F <= trace(R) = residual_trace          (stated by the operator)

and ``|R_ab| <= sqrt(d_a d_b) <= max(d)``.  Test points use the SAME pivots:
``K(test, train) ~= K(test, P) K(P, P)^{-1} K(P, train) = L_test L^T`` with ``L_test =
K(test, P) C^{-T}`` (C = L[P], lower triangular, ``C C^T = K(P, P)``), which is the test-train
block of the Nystrom approximation of the joint kernel on [train; test]: test predictions are
the ones of the approximated kernel, consistent with the train flow.  Its error is the
off-diagonal block of the joint (PSD) residual, ``|R_ab|^2 <= R_aa R_bb``, so ``||R(test, train)||_F <= sqrt(trace
R(test, test) * trace R(train, train))`` (both traces are measured).

Mat-vecs are those of :class:`~.factored.FactoredOperator` (:class:`LowRankOperator` is one,
with its provenance), O((N + M) r) per column.  A kernel that is not low rank on the points (a
local kernel: gaussian_fs with small sigma) reaches ``rank`` with a large residual: a
:class:`LowRankWarning` (or ValueError with ``shortfall="raise"``) says so.  Measured at 2000
quintic points of one chart (tests/test_lowrank_operators.py): the ReLU NTK and gaussian_fs
sigma = 0.3 (both Laplace-like: a kink at zero distance) are NOT low rank to 1e-6 of the trace;
cosine_ntk (a Gaussian of the features) is.  At 10^4 points and rank 1000, 20 flow steps with the
low-rank operator are 1e-2 off the dense flow in sigma for those two kernels, 2e-7 for cosine_ntk
at tol 1e-6 (benchmarks/RESULTS.md).

NumPy inputs (Dask point sets are computed first; CuPy untested).  Kernels must be pairwise and
symmetric; PSD is assumed and checked on the way (a residual diagonal below ``-PSD_SLACK *
max diag K`` raises: the trace bound would not hold).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from ... import backend
from .factored import FactoredOperator
from .protocol import (
    bounds,
    check_pair,
    check_points,
    check_tileable,
    flatten,
    kernel_block,
    kernel_spec,
)

__all__ = [
    "DEFAULT_RANK",
    "DEFAULT_TOL",
    "SHORTFALL",
    "LowRankOperator",
    "LowRankWarning",
    "PivotedCholesky",
    "lowrank_operator",
    "lowrank_operators",
    "lowrank_test",
    "lowrank_train",
    "pivoted_cholesky",
]

Array = Any  # a NumPy array (Dask inputs are computed first)

#: the largest rank built by default (memory 8 N r bytes: 0.8 GB at N = 10^5)
DEFAULT_RANK = 1000
#: default stopping tolerance: residual trace <= tol * trace(K)
DEFAULT_TOL = 1e-6
#: what to do when ``rank`` is reached with the residual trace still above ``tol * trace``
SHORTFALL = ("warn", "raise", "ignore")
#: a residual diagonal below -PSD_SLACK * max(diag K) means the kernel is not PSD on the points
PSD_SLACK = 1e-8
#: rows of the diagonal tiles and of the test-pivot blocks
_BLOCK = 256


class LowRankWarning(RuntimeWarning):
    """The pivoted Cholesky reached its rank with the residual trace above ``tol * trace``."""


# ----------------------------------------------------------------------------- options


def check_rank(rank: Any) -> int:
    """``rank``: a positive integer (not a bool)."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer (the largest rank of the factorisation); got {rank!r}")
    return int(rank)


def check_tol(tol: Any) -> float:
    """``tol``: a finite real number in [0, 1) (TypeError for a bool or a non-number, ValueError else)."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"tol must be a real number in [0, 1) (residual trace / trace); got {tol!r}")
    tol = float(tol)
    if not (math.isfinite(tol) and 0.0 <= tol < 1.0):
        raise ValueError(f"tol must be a finite real number in [0, 1) (residual trace / trace); got {tol!r}")
    return tol


def check_shortfall(shortfall: Any) -> str:
    if not isinstance(shortfall, str) or shortfall not in SHORTFALL:
        raise ValueError(f"shortfall must be one of {SHORTFALL}; got {shortfall!r}")
    return shortfall


def _host(x: Any, name: str) -> np.ndarray:
    check_points(x, name)
    if backend.is_dask(x):
        x = x.compute()
    return backend.to_numpy(x)


def kernel_diagonal(kernel: Callable[..., Array], x: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """``k(x_a, x_a)`` (n,) from ``block x block`` diagonal tiles of ``x (n, d)`` (n * block entries)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for a, b in bounds(x.shape[0], block):
        out[a:b] = np.diagonal(kernel_block(kernel, x[a:b], x[a:b], f"on the diagonal tile {a}:{b}")).real
    return out


# ----------------------------------------------------------------------------- the factorisation


@dataclass(eq=False)
class PivotedCholesky:
    """``K(x, x) ~= L L^T`` on the train points, from :func:`pivoted_cholesky`.

    factor : L (N, r); pivots : (r,) int64, in pivot order (``L[pivots]`` is lower triangular);
    residual_diag : (N,) ``diag(K - L L^T)`` (>= 0 up to rounding); trace : trace(K);
    residual_trace : ``sum(residual_diag)`` (clipped at 0), a bound on ``||K - L L^T||_2`` and
    ``||K - L L^T||_F``; converged : whether ``residual_trace <= tol * trace`` (else ``rank``
    was reached, or the residual vanished); kernel, x : what was factorised (x (N, d));
    seconds : build time; history : (r,) the relative residual trace after each pivot (the
    rank any looser tol would have needed).
    """

    factor: np.ndarray
    pivots: np.ndarray
    residual_diag: np.ndarray
    trace: float
    residual_trace: float
    tol: float
    max_rank: int
    converged: bool
    kernel: Callable[..., Array]
    x: np.ndarray
    seconds: float = 0.0
    history: np.ndarray = field(default=None, repr=False)
    _probe: np.ndarray = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        """r, the number of pivots."""
        return int(self.factor.shape[1])

    @property
    def relative_residual(self) -> float:
        """``residual_trace / trace``."""
        return self.residual_trace / self.trace if self.trace > 0 else 0.0

    def factor_at(self, x_test: Array) -> tuple[np.ndarray, np.ndarray]:
        """``(L_test (M, r), residual_diag_test (M,))`` for test points ``x_test (M, d)``:
        ``L_test = K(test, P) C^{-T}`` (C = L[P]), so ``L_test L^T`` is the Nystrom
        approximation of ``K(test, train)`` on the same pivots, and ``diag K(test, test) -
        |L_test|^2`` the diagonal of the joint residual at the test points."""
        x_test = _host(x_test, "x_test")
        if x_test.shape[1] != self.x.shape[1]:
            raise ValueError(f"x_test has {x_test.shape[1]} features per point but the train points have "
                             f"{self.x.shape[1]}")
        C = self.factor[self.pivots]  # (r, r) lower triangular, C C^T = K(P, P)
        xp = self.x[self.pivots]
        M, r = x_test.shape[0], self.rank
        out = np.empty((M, r), dtype=np.float64)
        res = np.empty(M, dtype=np.float64)
        for a, b in bounds(M, 4 * _BLOCK) if r else []:
            Kb = kernel_block(self.kernel, x_test[a:b], xp, f"on rows {a}:{b} of the (test, pivots) block")
            out[a:b] = scipy.linalg.solve_triangular(C, np.asarray(Kb, dtype=np.float64).T, lower=True,
                                                     check_finite=False).T
        if r == 0:
            out = np.zeros((M, 0), dtype=np.float64)
        res[:] = kernel_diagonal(self.kernel, x_test) - np.einsum("ij,ij->i", out, out)
        return out, np.maximum(res, 0.0)


def pivoted_cholesky(kernel: Callable[..., Array], x: Array, *, rank: int = DEFAULT_RANK, tol: float = DEFAULT_TOL,
                     shortfall: str = "warn") -> PivotedCholesky:
    """Greedy pivoted (partial) Cholesky of ``K = kernel(x, x)`` for points ``x (N, d)``.

    One kernel column per pivot (largest residual diagonal first); stops at ``rank`` pivots
    (clipped to N) or when the residual trace is at most ``tol * trace(K)``.  O(N r^2) work,
    O(N r) memory.  Returns :class:`PivotedCholesky` (``factor`` L (N, r)).

    Reaching ``rank`` with the residual trace above ``tol * trace`` (the kernel is not low rank on
    these points to ``tol``) warns (:class:`LowRankWarning`), raises ValueError
    (``shortfall="raise"``) or passes (``"ignore"``).  A kernel that is not pairwise or not
    symmetric is refused (ValueError); so is one found not to be PSD on the points.
    """
    import time

    t0 = time.perf_counter()
    rank, tol, shortfall = check_rank(rank), check_tol(tol), check_shortfall(shortfall)
    check_tileable(kernel)
    spec = kernel_spec(kernel)
    if not spec.symmetric:
        raise ValueError(f"kernel {spec.name} is not symmetric; a pivoted Cholesky needs a symmetric positive "
                         "semi-definite kernel: use method='dense', 'blockwise' or 'local'")
    x = _host(x, "x")
    n = int(x.shape[0])
    d = kernel_diagonal(kernel, x)
    trace = float(d.sum())
    top = float(d.max()) if n else 0.0
    r_max = min(rank, n)
    cap = min(r_max, 64)
    Lt = np.empty((cap, n), dtype=np.float64)  # row j = column j of L
    pivots: list[int] = []
    history: list[float] = []
    res_trace = trace
    j = 0
    while j < r_max and res_trace > tol * trace:
        p = int(np.argmax(d))
        dp = float(d[p])
        if not dp > 0.0:  # the residual vanished (rank of K reached, up to rounding)
            break
        col = kernel_block(kernel, x, x[p:p + 1], f"on the pivot column {p}")
        col = np.array(col[:, 0], dtype=np.float64)
        if j:
            col -= Lt[:j].T @ Lt[:j, p]
        col /= math.sqrt(dp)
        if j == cap:
            cap = min(2 * cap, r_max)
            Lt = np.concatenate([Lt, np.empty((cap - j, n), dtype=np.float64)], axis=0)
        Lt[j] = col
        d -= col * col
        d[p] = 0.0
        pivots.append(p)
        j += 1
        low = float(d.min())
        if low < -PSD_SLACK * top:
            raise ValueError(
                f"kernel {spec.name} is not positive semi-definite on these points: after {j} pivots a residual "
                f"diagonal is {low:.3g} (max diag K = {top:.3g}); a pivoted Cholesky and its error bound need a PSD "
                "kernel (gaussian_fs with squared=True need not be PSD on a curved space): use method='dense', "
                "'blockwise' or 'local'")
        np.maximum(d, 0.0, out=d)
        res_trace = float(d.sum())
        history.append(res_trace / trace if trace > 0 else 0.0)
    L = np.ascontiguousarray(Lt[:j].T)
    piv = np.asarray(pivots, dtype=np.int64)
    converged = res_trace <= tol * trace
    pc = PivotedCholesky(factor=L, pivots=piv, residual_diag=d, trace=trace, residual_trace=res_trace, tol=tol,
                         max_rank=rank, converged=converged, kernel=kernel, x=x,
                         seconds=time.perf_counter() - t0, history=np.asarray(history), _probe=L[piv[:16]] if j else None)
    if not converged and j == r_max and j < n and shortfall != "ignore":
        msg = (f"pivoted Cholesky of kernel {spec.name} reached rank {j} (the limit, N = {n}) with the residual "
               f"trace at {pc.relative_residual:.3g} of the trace, above tol = {tol:g}: the kernel is not low rank on "
               "these points to this tolerance (a local kernel, or one with a kink at zero distance).  Raise rank, "
               "loosen tol, or use method='local' (local kernels) or 'blockwise' (exact)")
        if shortfall == "raise":
            raise ValueError(msg)
        warnings.warn(msg, LowRankWarning, stacklevel=3)
    return pc


# ----------------------------------------------------------------------------- operators


@dataclass(frozen=True, eq=False)
class LowRankOperator(FactoredOperator):
    """``K ~= phi_out phi_in^T`` from a :class:`PivotedCholesky`: the train operator
    ``L L^T`` (N, N) or the test operator ``L_test L^T`` (M, N) on the same pivots.  Mat-vecs
    of :class:`FactoredOperator` (O((n_out + n_in) r) per column); :meth:`describe` states the
    rank and the error bound, :meth:`error_bound` applies it to a ``v``.

    cholesky : the factorisation; residual_trace_out : trace of the joint residual at the
    output points (the train residual trace for the train operator, the measured test one for
    the test operator).
    """

    cholesky: PivotedCholesky = None
    residual_trace_out: float = 0.0

    @property
    def norm_bound(self) -> float:
        """A bound on ``||K - phi_out phi_in^T||_F`` (so on the 2-norm): the train residual
        trace, or for the test operator ``sqrt(trace R(test, test) * trace R(train, train))`` (an
        off-diagonal block of the PSD joint residual, ``|R_ab|^2 <= R_aa R_bb``)."""
        return math.sqrt(max(self.residual_trace_out, 0.0) * max(self.cholesky.residual_trace, 0.0))

    def error_bound(self, v: Array) -> float:
        """A bound on ``||(K - K_lowrank) v||_F`` for ``v (n_in, ...)``: ``norm_bound * ||v||_F``
        (rounding of the factors, ~1e-16 relative, comes on top)."""
        v2, _ = flatten(v, self.shape[1])
        return self.norm_bound * float(np.linalg.norm(backend.to_numpy(v2)))

    def describe(self) -> dict:
        """JSON-safe record: method, kernel, shape, rank reached, the rank limit and tol, the
        traces and the error bound ``||K - K_lowrank||_2 <= norm_bound``."""
        pc = self.cholesky
        square = self.phi_out is self.phi_in
        return {
            "operator": "LowRankOperator", "method": "lowrank", "kernel": kernel_spec(pc.kernel).describe(),
            "shape": list(self.shape), "role": "train x train" if square else "test x train",
            "rank": pc.rank, "max_rank": pc.max_rank, "tol": pc.tol, "converged": bool(pc.converged),
            "trace": pc.trace, "residual_trace": pc.residual_trace, "relative_residual": pc.relative_residual,
            "residual_trace_out": self.residual_trace_out, "norm_bound": self.norm_bound,
            "max_residual_diag": float(pc.residual_diag.max()) if pc.residual_diag.size else 0.0,
            "build_seconds": pc.seconds,
            "error_bound": ("||K - L L^T||_2 <= ||K - L L^T||_F <= residual_trace (train); ||K(test, train) - "
                            "L_test L^T||_F <= sqrt(residual_trace_out * residual_trace) (test); PSD kernel"),
        }


def lowrank_train(pc: PivotedCholesky) -> LowRankOperator:
    """The train x train operator ``L L^T`` (N, N) of a factorisation."""
    return LowRankOperator(pc.factor, pc.factor, cholesky=pc, residual_trace_out=pc.residual_trace)


def lowrank_test(pc: PivotedCholesky, x_test: Array) -> LowRankOperator:
    """The test x train operator ``L_test L^T`` (M, N) on the factorisation's pivots."""
    L_test, res = pc.factor_at(x_test)
    return LowRankOperator(L_test, pc.factor, cholesky=pc, residual_trace_out=float(res.sum()))


def lowrank_operators(kernel: Callable[..., Array], x_train: Array, x_test: Array | None = None, *,
                      rank: int = DEFAULT_RANK, tol: float = DEFAULT_TOL,
                      shortfall: str = "warn") -> tuple[LowRankOperator, LowRankOperator | None]:
    """The train x train ``(N, N)`` and test x train ``(M, N)`` low-rank operators of one
    pivoted Cholesky of ``kernel(x_train, x_train)`` (x_train (N, d), x_test (M, d) or None ->
    None).  ``rank``, ``tol``, ``shortfall``: :func:`pivoted_cholesky`."""
    if x_test is not None:
        check_pair(x_test, x_train)
    pc = _factorise(kernel, x_train, rank, tol, shortfall)
    return lowrank_train(pc), None if x_test is None else lowrank_test(pc, x_test)


# the factorisations alive (held by some operator), so that the test operator of a flow, built by a
# separate as_operator call on freshly computed train features, reuses the train factorisation
_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _key(kernel, x, rank, tol):
    h = hashlib.blake2b(np.ascontiguousarray(x).view(np.uint8).ravel(), digest_size=16)
    h.update(json.dumps([kernel_spec(kernel).describe(), list(x.shape), str(x.dtype), rank, tol],
                        sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _factorise(kernel, x, rank, tol, shortfall):
    rank, tol, shortfall = check_rank(rank), check_tol(tol), check_shortfall(shortfall)
    x = _host(x, "x_train")
    key = _key(kernel, x, rank, tol)
    pc = _LIVE.get(key)
    if pc is not None and pc.rank and pc.x.shape == x.shape:
        # a kernel's description may not tell closures apart: check its values on the pivots
        p = pc.pivots[:16]
        probe = np.asarray(kernel_block(kernel, x[p], x[p]), dtype=np.float64)
        if np.allclose(probe, pc._probe @ pc._probe.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(probe).max()))):
            return pc
    pc = pivoted_cholesky(kernel, x, rank=rank, tol=tol, shortfall=shortfall)
    _LIVE[key] = pc
    return pc


def lowrank_operator(kernel: Callable[..., Array], x_out: Array, x_in: Array | None = None, *,
                     rank: int = DEFAULT_RANK, tol: float = DEFAULT_TOL, shortfall: str = "warn") -> LowRankOperator:
    """``as_operator(kernel, x_out, x_in, method="lowrank")``: the pivoted Cholesky of
    ``kernel(x_in, x_in)`` (x_in (N, d), default x_out) and its operator on ``x_out (n_out,
    d)``: ``L L^T`` when ``x_out`` is ``x_in`` (or equal to it), else the test operator on the
    same pivots (shape (n_out, N)).  A factorisation still held by an operator is reused when
    the kernel, the train points (by value), ``rank`` and ``tol`` match, so the train and test
    operators of one flow share it."""
    x_in = x_out if x_in is None else x_in
    check_pair(x_out, x_in)
    pc = _factorise(kernel, x_in, rank, tol, shortfall)
    if x_out is x_in or (x_out.shape == x_in.shape and np.array_equal(_host(x_out, "x_out"), pc.x)):
        return lowrank_train(pc)
    return lowrank_test(pc, x_out)
