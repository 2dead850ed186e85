"""Pointwise losses on Hermitian metrics and their functional derivatives dl/dg (paper 2.3, B.11).

Convention for derivatives (decided once): the gradient of a real loss l with respect to a
Hermitian metric g is the Hermitian matrix G = dl/dg with

    dl = Re tr(G^dagger dg) = Re sum_ab conj(G_ab) dg_ab        for Hermitian dg,

i.e. the Euclidean gradient in the orthonormal real basis {E_aa, (E_ab + E_ba)/sqrt 2,
i(E_ab - E_ba)/sqrt 2} (:func:`hermitian_to_real`).  With it d det g/dg = det g g^{-1}, and
gradient descent g <- g - lr G keeps g Hermitian.  The paper's "one network per real
component" (2.19-2.23) is this orthonormal real basis, k*k components per point.

A loss is a :class:`PointwiseLoss` with ``value(g, data) -> (N,)`` and
``gradient(g, data) -> (N, k, k)``; the total loss is the mean over points.  ``data`` is a
:class:`LossData` of arrays (|Omega|^2, MC weights, kappa, optional target metric).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from . import backend
from .geometry.fubini_study import hermitian_det


@dataclasses.dataclass(frozen=True)
class LossData:
    """Per-point data a loss needs: omega2 (N,), weight (N,), kappa (scalar), target (N,k,k)."""

    omega2: object
    weight: object
    kappa: float = 1.0
    target: object = None


@dataclasses.dataclass(frozen=True)
class PointwiseLoss:
    """l(x) per point, shape (N,), and its Hermitian gradient dl/dg, shape (N, k, k)."""

    name: str
    value: Callable
    gradient: Callable


def _check_metric(g, data=None):
    g = np.asarray(g) if not backend.is_cupy(g) else g
    xp = backend.namespace(g)
    if g.ndim != 3 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"g must have shape (N, k, k) (Hermitian metrics); got {tuple(g.shape)}")
    if data is not None and g.shape[0] != data.weight.shape[0]:
        raise ValueError(f"g has {g.shape[0]} points but the loss data has {data.weight.shape[0]}")
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError("g has non-finite entries (NaN or inf)")
    return g, xp


def _det_inv(g, xp):
    det = hermitian_det(g)
    if not bool(xp.all(det > 0)):
        raise ValueError("g must be positive definite at every point (det g <= 0 found)")
    inv = xp.linalg.inv(g)
    return det, 0.5 * (inv + xp.conj(xp.matrix_transpose(inv)))  # exactly Hermitian


def _sigma_value(g, data):
    g, xp = _check_metric(g, data)
    eta = hermitian_det(g) / (data.kappa * data.omega2)
    return data.weight * xp.abs(1.0 - eta)


def _sigma_gradient(g, data):
    g, xp = _check_metric(g, data)
    det, inv = _det_inv(g, xp)
    eta = det / (data.kappa * data.omega2)
    # d|1 - eta| = -sign(1 - eta) d eta,  d eta = eta tr(g^-1 dg)
    coeff = -data.weight * xp.sign(1.0 - eta) * eta
    return coeff[:, None, None] * inv


def sigma_loss() -> PointwiseLoss:
    """l(x) = w(x) |1 - eta(x)|, eta = det g/(kappa |Omega|^2) with kappa FIXED (B.11).

    kappa is held at its value for the initial metric (``make_loss_data``): the Kähler class,
    hence the volume, is fixed along the flow, which makes the loss pointwise as in (2.3).
    The mean over points is sigma whenever kappa is the current metric's kappa.
    dl/dg = -w sign(1 - eta) eta g^{-1}  (sign(0) = 0).
    """
    return PointwiseLoss("sigma", _sigma_value, _sigma_gradient)


def _squared_value(g, data):
    g, xp = _check_metric(g, data)
    eta = hermitian_det(g) / (data.kappa * data.omega2)
    return data.weight * (1.0 - eta) ** 2


def _squared_gradient(g, data):
    g, xp = _check_metric(g, data)
    det, inv = _det_inv(g, xp)
    eta = det / (data.kappa * data.omega2)
    return (-2.0 * data.weight * (1.0 - eta) * eta)[:, None, None] * inv


def sigma_squared_loss() -> PointwiseLoss:
    """l(x) = w(x) (1 - eta(x))^2, Headrick-Nassar's ultra-local F(eta) = (eta - 1)^2 (B.12, B.14).

    Same minimiser as the sigma loss (eta = 1) but smooth: its gradient -2 w (1 - eta) eta g^{-1}
    vanishes at the optimum, so fixed or backtracking steps converge instead of chattering
    around eta = 1 as the |1 - eta| loss does with one global step size.  kappa is fixed.
    """
    return PointwiseLoss("sigma_squared", _squared_value, _squared_gradient)


def current_kappa(g, data):
    """kappa = E_w[det g/|Omega|^2] of the metric g itself (B.10)."""
    g, xp = _check_metric(g, data)
    det = hermitian_det(g)
    return xp.sum(data.weight * det / data.omega2) / xp.sum(data.weight)


def _dynamic_value(g, data):
    return _sigma_value(g, dataclasses.replace(data, kappa=current_kappa(g, data)))


def _dynamic_gradient(g, data):
    """Per-point dL/dg(x) of L = mean_x w|1 - det g/(kappa(g) |Omega|^2)|, kappa(g) included."""
    g, xp = _check_metric(g, data)
    det, inv = _det_inv(g, xp)
    kappa = current_kappa(g, data)
    eta = det / (kappa * data.omega2)
    s = xp.sign(1.0 - eta)
    # direct term (per point, averaged over N points in L) ...
    direct = -data.weight * s * eta
    # ... and through kappa: d eta_y/d kappa = -eta_y/kappa, d kappa/d g(x) = w_x det_x/(W omega2_x) g^-1
    through = xp.sum(data.weight * s * eta) / kappa * data.weight * det / (data.omega2 * xp.sum(data.weight))
    return (direct + through)[:, None, None] * inv


def sigma_loss_dynamic() -> PointwiseLoss:
    """sigma (B.11) with kappa recomputed from g: the total (mean) loss is exactly sigma(g).

    The gradient carries the global term from d kappa/d g(x) (every point couples to all
    others through kappa); it is the gradient of N * L so that it has the same scale as the
    pointwise :func:`sigma_loss`.
    """
    return PointwiseLoss("sigma_dynamic", _dynamic_value, _dynamic_gradient)


def mse_loss() -> PointwiseLoss:
    """l(x) = w(x) ||g(x) - g_target(x)||_F^2 (trace inner product); dl/dg = 2 w (g - g_target)."""

    def value(g, data):
        g, xp = _check_metric(g, data)
        d = g - data.target
        return data.weight * xp.sum(xp.real(d) ** 2 + xp.imag(d) ** 2, axis=(-2, -1))

    def gradient(g, data):
        g, xp = _check_metric(g, data)
        return 2.0 * data.weight[:, None, None] * (g - data.target)

    return PointwiseLoss("mse", value, gradient)


def total(loss: PointwiseLoss, g, data: LossData) -> float:
    """The total loss: mean of the pointwise losses."""
    return float(backend.to_numpy(loss.value(g, data)).mean())


def make_loss_data(ds, g0=None, *, target=None) -> LossData:
    """LossData from a point-set Dataset; kappa from g0 (default the Dataset's g_FS)."""
    omega2 = np.asarray(backend.to_numpy(ds["omega2"].data)) if "omega2" in ds else None
    weight = np.asarray(backend.to_numpy(ds["weight"].data))
    g0 = np.asarray(backend.to_numpy(ds["g_fs"].data if g0 is None else g0))
    if omega2 is None:
        return LossData(omega2=np.ones_like(weight), weight=weight, kappa=1.0,
                        target=None if target is None else np.asarray(target))
    kappa = float(np.sum(weight * hermitian_det(g0) / omega2) / np.sum(weight))
    return LossData(omega2=omega2, weight=weight, kappa=kappa,
                    target=None if target is None else np.asarray(target))


# ------------------------------------------------------------ real flattening
def _basis(k):
    """(k*k, k, k) orthonormal basis of Hermitian k x k matrices under Re tr(A^dagger B)."""
    out = []
    for a in range(k):
        e = np.zeros((k, k), complex)
        e[a, a] = 1
        out.append(e)
    for a in range(k):
        for b in range(a + 1, k):
            e = np.zeros((k, k), complex)
            e[a, b] = e[b, a] = 1 / np.sqrt(2)
            out.append(e)
            e = np.zeros((k, k), complex)
            e[a, b], e[b, a] = -1j / np.sqrt(2), 1j / np.sqrt(2)
            out.append(e)
    return np.stack(out)


def hermitian_to_real(g):
    """(N, k, k) Hermitian -> (N, k*k) real coordinates in the orthonormal basis (isometric)."""
    g, xp = _check_metric(g)
    B = xp.asarray(_basis(g.shape[-1]))
    return xp.real(xp.reshape(xp.conj(B)[None] * g[:, None], (g.shape[0], B.shape[0], -1)).sum(-1))


def real_to_hermitian(r, k: int):
    """(N, k*k) real coordinates -> (N, k, k) Hermitian matrices (inverse of hermitian_to_real)."""
    xp = backend.namespace(r)
    if r.ndim != 2 or r.shape[-1] != k * k:
        raise ValueError(f"r must have shape (N, {k * k}); got {tuple(r.shape)}")
    B = xp.asarray(_basis(k))
    return xp.sum(xp.astype(r, xp.complex128)[:, :, None, None] * B[None], axis=1)
