r"""Metric models: what a flow moves.

A metric model maps parameters theta to metrics at the train (and test) points and says how
they move in the descent direction of a loss gradient G = dl/dg (N, k, k):

    model.init()                       -> theta0
    model.metrics(theta)               -> (g_train (N, k, k), g_test (M, k, k) or None)
    model.line(theta, g, g_test, G)    -> at(s) -> (theta_s, g_train_s, g_test_s)

``at(s)`` is the step of length s along the gradient-descent direction; the integrator
(:mod:`mfarray.flows.integrate`) chooses s.  Computing the direction once per step and
evaluating ``at`` for several s is what makes backtracking cheap.

* :class:`KernelModel` -- the frozen-kernel flow (2.12).  theta is the dual coefficient array
  A (N, k, k), g = g0 - Theta(x, train) A, and a step is A <- A + s G, so the metric moves by
  -s Theta . G (one kernel mat-vec per step for train and test together).  Linear in theta:
  ``at`` costs two axpys.
* :class:`NetworkModel` -- a finite network g_theta = g_ref + R(f_theta(phi(x))) (2.8), or its
  linearisation (2.10).  theta is the flat parameter vector and a step is
  theta <- theta - s J(theta)^T r(G) (the vector-Jacobian product).
* A Kähler-potential model g = g_FS + i dd-bar phi_theta with global parameters fits the same
  protocol (issue 12): its ``line`` is a vjp through i dd-bar.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

from .. import backend, linalg
from .. import networks as nw
from ..kernels.operators import acts_componentwise

__all__ = ["MetricModel", "KernelModel", "NetworkModel", "metric_matvec"]


@runtime_checkable
class MetricModel(Protocol):
    def init(self): ...

    def metrics(self, theta): ...

    def line(self, theta, g, g_test, G): ...


def metric_matvec(K, G):
    """``Theta . G`` for Hermitian metrics G (N, k, k) -> (N_out, k, k).

    A scalar (Kronecker, eq. 2.23) real kernel acts on each component alike, so it is applied
    to the k^2 real coordinates of G (:func:`mfarray.linalg.hermitian_to_real`, an isometry)
    rather than to its 2 k^2 real and imaginary parts: half the mat-vec columns, and an exactly
    Hermitian result.  Other operators get G itself."""
    if acts_componentwise(K):
        r = K.matvec(linalg.hermitian_to_real(G))
        if not backend.namespace(r).isdtype(r.dtype, "complex floating"):
            return linalg.real_to_hermitian(r, G.shape[-1])
    return K.matvec(G)


@dataclasses.dataclass(frozen=True, eq=False)
class KernelModel:
    """The frozen-kernel metric flow (2.12) in its dual form.

    K : train-train operator (N, N); K_test : test-train operator (M, N) or None;
    g0, g0_test : initial metrics.  theta = A, the dual coefficients sum_n s_n G_n (N, k, k).
    """

    K: object
    K_test: object
    g0: object
    g0_test: object = None

    def init(self):
        return backend.namespace(self.g0).zeros_like(self.g0)

    def metrics(self, A):
        g = self.g0 - metric_matvec(self.K, A)
        gt = None if self.K_test is None else self.g0_test - metric_matvec(self.K_test, A)
        return g, gt

    def predict(self, A, K_new, g0_new):
        """Metrics at new points: g0_new - Theta(new, train) A (exact: the flow is linear in A)."""
        return g0_new - metric_matvec(K_new, A)

    def line(self, A, g, gt, G):
        U = metric_matvec(self.K, G)
        Ut = None if self.K_test is None else metric_matvec(self.K_test, G)

        def at(s):
            return A + s * G, g - s * U, None if Ut is None else gt - s * Ut

        return at


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkModel:
    """A network metric g_theta(x) = g_ref(x) + R(f_theta(x)) on fixed inputs (2.8, 2.10).

    config : mfarray.networks.MLP with c_out = k*k; params0 : initial parameter tree;
    x, x_test : (N, d_in), (M, d_in) network inputs; g_ref, g_ref_test : reference metrics;
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

    def init(self):
        return nw.flatten(self.params0)

    def __post_init__(self):
        object.__setattr__(self, "_f0", {})  # f_theta0 per input array, computed once

    def _initial_output(self, x):
        key = id(x)
        if key not in self._f0:
            self._f0[key] = (x, nw.apply(self.config, self.params0, x))
        return self._f0[key][1]

    def metric_at(self, theta, x, g_ref):
        """The model's metric at inputs x (n, d_in) with reference g_ref (n, k, k)."""
        R, k = linalg.real_to_hermitian, int(g_ref.shape[-1])
        f0 = self._initial_output(x)
        if self.linearized:
            d = nw.jvp(self.config, self.params0, x, nw.unflatten(self.config, theta - self.init()))
            base = g_ref if self.center else g_ref + R(f0, k)
            return base + R(d, k)
        f = nw.apply(self.config, nw.unflatten(self.config, theta), x)
        return g_ref + R(f - f0 if self.center else f, k)

    def metrics(self, theta):
        gt = None if self.x_test is None else self.metric_at(theta, self.x_test, self.g_ref_test)
        return self.metric_at(theta, self.x, self.g_ref), gt

    def pullback(self, theta, G):
        """J(theta)^T r(G) (J at theta0 for the linearised model), flat (P,)."""
        params = self.params0 if self.linearized else nw.unflatten(self.config, theta)
        return nw.flatten(nw.vjp(self.config, params, self.x, linalg.hermitian_to_real(G)))

    def line(self, theta, g, gt, G):
        D = self.pullback(theta, G)

        def at(s):
            th = theta - s * D
            g_s, gt_s = self.metrics(th)
            return th, g_s, gt_s

        return at


def as_float_params(params):
    """A parameter tree as float64 NumPy copies."""
    return tuple((np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)) for W, b in params)
