r"""Metric models: what a flow moves.

A metric model maps parameters theta to metrics at the train (and test) points and says how
they move in the descent direction of a loss gradient G = dl/dg (N, k, k):

    model.init()                -> theta0
    model.metrics(theta)        -> g: the train metrics, then the test metrics (columns)
    model.line(theta, g, G)     -> (metrics_at, theta_at)      G: the train gradient
                                   metrics_at(s) -> g_s;  theta_at(s) -> theta_s

Metrics and gradients travel as real coordinate rows (k*k, N) (:func:`mfarray.linalg.to_rows`:
the orthonormal Hermitian basis, an isometry), converted once at the flow's boundary: a
scalar kernel acts on each row alike, a network outputs them, and the validity rule reads
them directly.

``metrics_at(s)`` are the metrics after a step of length s along the gradient-descent
direction and ``theta_at(s)`` its parameters (asked only for the accepted s); the integrator
(:mod:`mfarray.flows.integrate`) chooses s.  Computing the direction once per step and
evaluating ``metrics_at`` for several s is what makes backtracking cheap.

* :class:`KernelModel` -- the frozen-kernel flow (2.12).  theta is the dual coefficient array
  A (N, k, k), g = g0 - Theta(x, train) A, and a step is A <- A + s G, so the metric moves by
  -s Theta . G (one kernel mat-vec per step for train and test together).  Linear in theta:
  ``at`` costs two axpys.
* :class:`NetworkModel` -- a finite network g_theta = g_ref + R(f_theta(phi(x))) (2.8), or its
  linearisation (2.10).  theta is the flat parameter vector and a step is
  theta <- theta - s J(theta)^T r(G) (the vector-Jacobian product).
* :class:`PotentialModel` -- a Kähler potential g = g_FS + i dd-bar phi_theta (B.6) with global
  parameters (:mod:`mfarray.kahler`): every point's metric in its own chart, a step is
  theta <- theta - s J^T G (the vjp through i dd-bar); for a linear potential the metrics move
  along the fixed direction J J^T G (the frozen phi-NTK), so ``metrics_at`` costs an axpy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .. import backend, linalg
from .. import networks as nw
from ..kernels.operators import acts_componentwise

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..kernels.operators import KernelOperator

Array = Any  # a NumPy, CuPy or Dask array

__all__ = ["KernelModel", "MetricModel", "NetworkModel", "PotentialModel", "VelocityModel", "metric_matvec"]


@runtime_checkable
class MetricModel(Protocol):
    def init(self) -> Array: ...

    def metrics(self, theta: Array) -> Array: ...

    def line(self, theta: Array, g: Array, G: Array) -> tuple[Callable[[float], Array], Callable[[float], Array]]: ...


def metric_matvec(K: KernelOperator, G: Array) -> Array:
    """``Theta . G`` for Hermitian metrics G (N, k, k) -> (N_out, k, k)."""
    k = G.shape[-1]
    return linalg.from_rows(rows_matvec(K, linalg.to_rows(G), k), k)


def rows_matvec(K: KernelOperator, rows: Array, k: int, componentwise: bool | None = None) -> Array:
    """``Theta . G`` on real coordinate rows (k*k, N_in) -> (k*k, N_out).

    A scalar (Kronecker, eq. 2.23) real kernel acts on each component alike, so it is applied
    to the k^2 real coordinates (an isometry) rather than to 2 k^2 real and imaginary parts:
    half the mat-vec columns, and an exactly Hermitian result; with rows, ``K @ rows.T`` is
    one GEMM without copies.  Other (component-mixing) operators get the (N, k, k) matrices.
    ``componentwise`` caches :func:`acts_componentwise` (K) for callers in a loop."""
    if acts_componentwise(K) if componentwise is None else componentwise:
        r = K.matvec(rows.T)
        if r.dtype.kind == "c":
            raise TypeError(f"the kernel operator {type(K).__name__} has complex values: a metric flow's scalar "
                            "kernel is real (eq. 2.23; a complex one maps Hermitian metrics to non-Hermitian "
                            "ones), so pass its real kernel matrix")
        return r.T
    out = K.matvec(linalg.from_rows(rows, k))
    if not backend.is_dask(out):  # to_rows would keep only the Hermitian part of a step off the metrics
        xp = backend.namespace(out)
        skew = float(xp.max(xp.abs(out - xp.conj(xp.matrix_transpose(out))))) if out.size else 0.0
        if not skew <= linalg.HERMITIAN_RTOL * float(xp.max(xp.abs(out)) if out.size else 0.0):
            raise TypeError(f"the kernel operator {type(K).__name__} maps Hermitian metrics to non-Hermitian "
                            f"ones (max |Theta.G - (Theta.G)^dagger| = {skew:.3g}): a metric-NTK must preserve "
                            "Hermiticity (a scalar kernel must be real, eq. 2.23)")
    return linalg.to_rows(out)


@dataclasses.dataclass(frozen=True, eq=False)
class KernelModel:
    """The frozen-kernel metric flow (2.12) in its dual form.

    K : train-train operator (N, N); K_test : test-train operator (M, N) or None;
    g0, g0_test : initial metrics as rows.  theta = A, the dual coefficients sum_n s_n G_n
    (rows (k*k, N)).
    """

    K: object
    K_test: object
    g0: object  # rows (k*k, N)
    g0_test: object = None  # rows (k*k, M)
    k: int = 3

    def init(self) -> Array:
        return backend.namespace(self.g0).zeros_like(self.g0)

    def __post_init__(self):
        object.__setattr__(self, "_componentwise", tuple(
            None if K is None else acts_componentwise(K) for K in (self.K, self.K_test)))

    @property
    def _g0(self):
        xp = backend.namespace(self.g0)
        return self.g0 if self.K_test is None else xp.concat([self.g0, self.g0_test], axis=1)

    def _apply(self, rows):
        """Theta . rows at the train and the test points, (k*k, N + M), C-contiguous (an
        operator returns (N, k*k), whose transpose is Fortran-ordered: the metrics that are
        built from this array are then row-contiguous, which halves the cost of every
        elementwise operation on them)."""
        cw, cw_test = self._componentwise
        U = rows_matvec(self.K, rows, self.k, cw)
        xp = backend.namespace(U)
        n = U.shape[-1]
        m = 0 if self.K_test is None else self.K_test.shape[0]
        out = xp.empty((U.shape[0], n + m), dtype=U.dtype)
        out[:, :n] = U
        if m:
            out[:, n:] = rows_matvec(self.K_test, rows, self.k, cw_test)
        return out

    def metrics(self, A: Array) -> Array:
        return self._g0 - self._apply(A)

    def predict(self, A: Array, K_new: KernelOperator, g0_new: Array) -> Array:
        """Metrics (rows) at new points: g0_new - Theta(new, train) A (exact: the flow is linear in A)."""
        return g0_new - rows_matvec(K_new, A, self.k)

    def line(self, A: Array, g: Array, G: Array) -> tuple[Callable[[float], Array], Callable[[float], Array]]:
        U = self._apply(G)
        return (lambda s: g - s * U), (lambda s: A + s * G)


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkModel:
    """A network metric g_theta(x) = g_ref(x) + R(f_theta(x)) on fixed inputs (2.8, 2.10).

    config : mfarray.networks.MLP with c_out = k*k; params0 : initial parameter tree;
    x, x_test : (N, d_in), (M, d_in) network inputs; g_ref, g_ref_test : reference metrics
    as rows (k*k, N);
    linearized : the linear model (2.10) around params0; center : subtract f_theta0 so the flow
    starts at g_ref.  R = :func:`mfarray.linalg.real_to_hermitian` (an isometry), so the
    parameter gradient of sum_x l(x) is vjp(theta, x, hermitian_to_real(G)).
    """

    config: nw.MLP
    params0: tuple
    x: object
    g_ref: object
    x_test: object = None
    g_ref_test: object = None
    linearized: bool = False
    center: bool = False

    def init(self) -> Array:
        return nw.flatten(self.params0)

    def __post_init__(self):
        object.__setattr__(self, "_f0", {})  # f_theta0 per input array, computed once

    def _initial_output(self, x):
        key = id(x)
        if key not in self._f0:
            self._f0[key] = (x, nw.apply(self.config, self.params0, x))
        return self._f0[key][1]

    def metric_at(self, theta: Array, x: Array, g_ref: Array) -> Array:
        """The model's metric rows (k*k, n) at inputs x (n, d_in) with reference rows g_ref."""

        def R(f):  # network outputs (n, k*k) are the real coordinates: rows are their transpose
            return f.T

        f0 = self._initial_output(x)
        if self.linearized:
            d = nw.jvp(self.config, self.params0, x, nw.unflatten(self.config, theta - self.init()))
            base = g_ref if self.center else g_ref + R(f0)
            return base + R(d)
        f = nw.apply(self.config, nw.unflatten(self.config, theta), x)
        return g_ref + R(f - f0 if self.center else f)

    def metrics(self, theta: Array) -> Array:
        g = self.metric_at(theta, self.x, self.g_ref)
        if self.x_test is None:
            return g
        gt = self.metric_at(theta, self.x_test, self.g_ref_test)
        return backend.namespace(g).concat([g, gt], axis=1)

    def pullback(self, theta: Array, G: Array) -> Array:
        """J(theta)^T r(G) (J at theta0 for the linearised model), flat (P,); G as rows."""
        params = self.params0 if self.linearized else nw.unflatten(self.config, theta)
        return nw.flatten(nw.vjp(self.config, params, self.x, G.T))

    def line(self, theta: Array, g: Array, G: Array) -> tuple[Callable[[float], Array], Callable[[float], Array]]:
        D = self.pullback(theta, G)
        return (lambda s: self.metrics(theta - s * D)), (lambda s: theta - s * D)


@dataclasses.dataclass(frozen=True, eq=False)
class PotentialModel:
    """g_theta = g_FS + i dd-bar phi_theta (B.6) at train (and test) points, each in its own chart.

    potential : a potential spec of :mod:`mfarray.kahler` (``prepare``, ``metric``, ``ddbar``,
    ``vjp``, ``linear``); theta0 : initial parameters (P,); data, data_test : what
    ``potential.prepare`` made of the train / test points.  theta is the flat parameter vector,
    shared by all points (global): test metrics follow exactly, from any chart.
    """

    potential: object
    theta0: object
    data: object
    data_test: object = None

    def init(self) -> Array:
        return self.theta0

    def _rows(self, fn):
        rows = linalg.to_rows(fn(self.data))
        if self.data_test is None:
            return rows
        return backend.namespace(rows).concat([rows, linalg.to_rows(fn(self.data_test))], axis=1)

    def metrics(self, theta: Array) -> Array:
        return self._rows(lambda d: self.potential.metric(theta, d))

    def line(self, theta: Array, g: Array, G: Array) -> tuple[Callable[[float], Array], Callable[[float], Array]]:
        k = math.isqrt(G.shape[0])
        return self._line(theta, g, self.potential.vjp(theta, self.data, linalg.from_rows(G, k)))

    def _line(self, theta, g, D):
        """metrics_at(s), theta_at(s) along theta - s D."""
        if self.potential.linear:  # g(theta - s D) = g(theta) - s i dd-bar phi_D
            U = self._rows(lambda d: self.potential.ddbar(D, d))
            return (lambda s: g - s * U), (lambda s: theta - s * D)
        return (lambda s: self.metrics(theta - s * D)), (lambda s: theta - s * D)


@dataclasses.dataclass(frozen=True, eq=False)
class VelocityModel(PotentialModel):
    """A phi-flow d phi/dt = v(eta) (B.20, B.21) realised through the model's tangent kernel:

        theta <- theta + s mean_x w(x) v(eta(x)) d phi(x)/d theta,

    so phi moves by s Theta_phi (w v) / N, with v centred (v - E_w[v]): a constant in d phi/dt
    moves no metric in the exact flow, but a kernel maps a constant to a non-constant function,
    and B.20's v = -eta^(-1/2) is mostly the constant -1 (uncentred, it raised sigma from 0.37 to
    0.88 in 30 steps; docs/paper-notes.md).  The loss gradient the integrator passes is ignored
    (the loss only judges steps and is recorded); eta = det g / (kappa |Omega|^2) at the train
    points, kappa fixed.  velocity : eta -> v; weight, omega2 : (N,); kappa : float.
    """

    velocity: object = None
    weight: object = None
    omega2: object = None
    kappa: float = 1.0

    def line(self, theta: Array, g: Array, G: Array) -> tuple[Callable[[float], Array], Callable[[float], Array]]:
        k = math.isqrt(G.shape[0])
        n = self.weight.shape[0]
        eta = linalg.metrics_rows(g[:, :n], k).det / (self.kappa * self.omega2)
        v = self.velocity(eta)
        xp = backend.namespace(v)
        v = v - xp.sum(self.weight * v) / xp.sum(self.weight)  # a constant moves no metric (see docstring)
        D = -self.potential.values_vjp(theta, self.data, self.weight * v / n)
        return super()._line(theta, g, D)


def as_float_params(params: nw.Params) -> nw.Params:
    """A parameter tree as float64 NumPy copies."""
    return tuple((np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)) for W, b in params)
