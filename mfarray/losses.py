r"""Pointwise losses on Hermitian metrics and their functional derivatives dl/dg (paper 2.3-2.8, B.10-B.11).

Metrics are complex Hermitian arrays ``g`` of shape (N, k, k), ``g[..., b, c] = g_{b cbar}``
(k = 3 for the quintic, 1 for the cubic curve), one per point of a point set.

Derivative convention (decided once, used by every flow)
--------------------------------------------------------
The gradient of a real loss l with respect to a Hermitian metric g is the Hermitian matrix
G = dl/dg defined by

    dl = Re tr(G^dagger dg) = Re sum_ab conj(G_ab) dg_ab          for every Hermitian dg,

i.e. the gradient for the trace inner product <A, B> = Re tr(A^dagger B).  Equivalently, G is
the Euclidean gradient in the orthonormal real basis of Hermitian k x k matrices

    { E_aa },  { (E_ab + E_ba)/sqrt 2 },  { i (E_ab - E_ba)/sqrt 2 }      (a < b),

whose coordinates are :func:`hermitian_to_real` (k*k reals per point; the paper's "one network
per real component", 2.19-2.23).  With it

    d det g / dg = det g (g^{-1})^dagger = det g g^{-1}     (g Hermitian; :func:`det_gradient`),

and gradient descent g <- g - lr G keeps g Hermitian.  The metric flows (2.5)-(2.8) use these
per-point G(x) as delta l(x')/delta g(x').

Losses
------
A loss is a :class:`PointwiseLoss` (``name``, ``value``, ``gradient``; see the :class:`Loss`
protocol) with

    value(g, data)    -> (N,)       per-point losses l(x)
    gradient(g, data) -> (N, k, k)  per-point Hermitian gradients G(x)

where ``data`` is a :class:`LossData` (|Omega|^2, MC weights, kappa, optional target).  The
TOTAL loss is the mean over points, L = sum_x l(x)/N (:func:`total`); the per-point gradient is
normalised so that

    dL = (1/N) sum_x Re tr(G(x)^dagger dg(x)),     i.e.  G(x) = N dL/dg(x),

which for a genuinely pointwise loss is dl(x)/dg(x) (eq. 2.3 up to the 1/N; the flows descend
N L, see :mod:`mfarray.flows`).  For :func:`sigma_loss_dynamic` G(x) also carries the global
term through kappa.  To add a loss, give l and dl/dg in this convention:
``PointwiseLoss("name", value, gradient)``.

All functions take their array namespace from their inputs (NumPy or CuPy via
array_api_compat) and compute in float64/complex128; ``data`` must live on the same device as
``g``.  Bad input (wrong shapes, non-finite entries, non-Hermitian or non-positive-definite
metrics, non-positive |Omega|^2 or kappa) raises ``ValueError`` naming the argument; no loss or
gradient returns NaN.  Metrics that are Hermitian only up to round-off (relative
``linalg.HERMITIAN_RTOL`` = 1e-10, the one validity rule) are replaced by their exact Hermitian
part (g + g^dagger)/2, so every gradient is exactly Hermitian.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

from . import backend, linalg
from .linalg import Metrics, hermitian_to_real, real_to_hermitian

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "LossData", "Loss", "PointwiseLoss", "sigma_loss", "sigma_loss_dynamic", "sigma_squared_loss",
    "mse_loss", "total", "make_loss_data", "current_kappa", "det_gradient",
    "hermitian_to_real", "real_to_hermitian", "Metrics",
]


Array = Any  # a NumPy, CuPy or Dask array


# --------------------------------------------------------------------------- validation
def _as_array(x, name):
    if x is None:
        raise ValueError(f"{name} is required")
    if backend.is_cupy(x):
        return x
    if backend.is_dask(x):
        x = x.compute()
    return np.asarray(x)


def _as_1d(x, name, n=None):
    x = _as_array(x, name)
    xp = backend.namespace(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape (N,); got {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} points; expected {n}")
    if xp.isdtype(x.dtype, "complex floating"):
        raise ValueError(f"{name} must be real; got dtype {x.dtype}")
    x = xp.astype(x, xp.float64)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    return x


def _as_metrics(g, name="g", n=None, k=None, positive=True) -> Metrics:
    """The :class:`~mfarray.linalg.Metrics` of g (N, k, k): shape checked, then the one validity
    rule of :mod:`mfarray.linalg` (finite, Hermitian, positive definite with a margin from
    singularity), else ValueError naming ``name``.  ``positive=False`` asks only for finite,
    Hermitian metrics (the MSE loss).  The metric used is the exact Hermitian part."""
    if isinstance(g, Metrics):
        m = g
    else:
        g = _as_array(g, name)
        if g.ndim != 3 or g.shape[-1] != g.shape[-2]:
            raise ValueError(f"{name} must have shape (N, k, k) (Hermitian metrics); got {tuple(g.shape)}")
        m = None
    shape = (m.n, m.k, m.k) if m is not None else tuple(g.shape)
    if n is not None and shape[0] != n:
        raise ValueError(f"{name} has {shape[0]} points but the loss data has {n}")
    if k is not None and shape[-1] != k:
        raise ValueError(f"{name} has k = {shape[-1]}; expected {k}")
    if m is not None:
        return m  # already factorised (and checked) by the caller, e.g. a flow
    xp = backend.namespace(g)
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    m = linalg.metrics(g)
    if shape[0] == 0 or m.all_valid:
        return m
    gh = xp.conj(xp.matrix_transpose(g))
    asym = xp.max(xp.abs(backend.per_row(g - gh)), axis=-1)
    top = xp.max(xp.abs(backend.per_row(g)), axis=-1)
    if bool(xp.any(asym > linalg.HERMITIAN_RTOL * top)):
        raise ValueError(f"{name} must be Hermitian, {name}[..., b, c] = conj({name}[..., c, b]); "
                         f"max |{name} - {name}^dagger| = {float(xp.max(asym)):.3g} (max |{name}| = {float(xp.max(top)):.3g})")
    if positive:
        count = int(xp.sum(xp.astype(~m.valid, xp.int64)))
        raise ValueError(f"{name} must be positive definite at every point ({count} points are not, or are "
                         f"numerically singular: {linalg.describe_invalid(m)})")
    return m


def _finite_out(x, xp, what):
    if not bool(xp.isfinite(x).all()):
        raise ValueError(f"{what} is not finite (overflow: g or |Omega|^2 out of range)")
    return x


# --------------------------------------------------------------------------- data and interface
@dataclasses.dataclass(frozen=True)
class LossData:
    """Per-point data a loss needs (validated on construction).

    omega2 : (N,) float, |Omega|^2 in each point's chart, > 0.
    weight : (N,) float, Monte-Carlo weights w = |Omega|^2/det g_FS, >= 0, not all 0, used as
        given.  They have mean 1 for ``sample_points``/``select_chart`` output, so that
        mean_x w(x) f(x) = E_w[f]; on a subset of points (``isel``) mean_x w f = mean(w) E_w[f].
        Zero weights make passive points: they neither contribute to the loss nor to kappa.
    kappa : float > 0, the FIXED kappa of B.10 used by :func:`sigma_loss`.
    target : optional (N, k, k) complex Hermitian target metrics (:func:`mse_loss`).
    """

    omega2: Any
    weight: Any
    kappa: float = 1.0
    target: Any = None

    def __post_init__(self):
        weight = _as_1d(self.weight, "weight")
        n = weight.shape[0]
        xp = backend.namespace(weight)
        if not bool(xp.all(weight >= 0)) or not float(xp.sum(weight)) > 0:
            raise ValueError("weight must be >= 0 at every point with a positive sum")
        omega2 = _as_1d(self.omega2, "omega2", n)
        if not bool(xp.all(omega2 > 0)):
            raise ValueError("omega2 (|Omega|^2) must be > 0 at every point")
        try:
            kappa = float(backend.to_numpy(self.kappa))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"kappa must be a positive real number; got {self.kappa!r}") from exc
        if not (math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be a finite positive number; got {kappa!r}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "omega2", omega2)
        object.__setattr__(self, "kappa", kappa)
        if self.target is not None:
            object.__setattr__(self, "target", _as_metrics(self.target, "target", n, positive=False).g)

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])

    @functools.cached_property
    def eta_scale(self) -> Array:
        """kappa |Omega|^2 (N,): eta = det g / eta_scale (B.11), computed once."""
        return self.kappa * self.omega2


@runtime_checkable
class Loss(Protocol):
    """What a flow needs from a loss: a name, per-point values and per-point Hermitian gradients."""

    name: str

    def value(self, g: Array, data: LossData) -> Array: ...  # (N,)

    def gradient(self, g: Array, data: LossData) -> Array: ...  # (N, k, k), convention of the module docstring


@dataclasses.dataclass(frozen=True)
class PointwiseLoss:
    """A loss from two functions: ``value(g, data) -> (N,)`` and ``gradient(g, data) -> (N, k, k)``.

    ``gradient`` must return G(x) = N dL/dg(x) for L = mean_x value(x), in the trace-inner-product
    convention dl = Re tr(G^dagger dg) (module docstring); for a pointwise loss, dl(x)/dg(x).

    ``value`` and ``gradient`` take raw metrics (validated here).  The flows call
    :meth:`values_at` / :meth:`gradient_at` with a :class:`~mfarray.linalg.Metrics` they have
    already factorised, so each metric is factorised once per step; a user loss gets ``m.g``.
    """

    name: str
    value: Callable
    gradient: Callable
    on_metrics: tuple | None = None  # (value(m, data), gradient(m, data), rows(m, data)), built-ins; values unchecked

    def values_at(self, m: Metrics, data: LossData) -> Array:
        if not self.on_metrics:
            return self.value(m.g, data)
        return _finite_out(self.on_metrics[0](m, data), backend.namespace(m.det), f"{self.name} loss")

    def total_at(self, m: Metrics, data: LossData) -> float:
        """The mean of the per-point values (what a flow minimises); finite or a ValueError.
        A sum of numbers is finite exactly when every term is, so one check of the sum suffices."""
        if not self.on_metrics:
            return total(self, m, data)
        value = float(self.on_metrics[0](m, data).sum()) / data.n  # NumPy or CuPy: one scalar leaves the device
        if not math.isfinite(value):
            raise ValueError(f"{self.name} loss is not finite (overflow: g or |Omega|^2 out of range)")
        return value

    def gradient_at(self, m: Metrics, data: LossData) -> Array:
        return self.on_metrics[1](m, data) if self.on_metrics else self.gradient(m.g, data)

    def gradient_rows_at(self, m: Metrics, data: LossData) -> Array:
        """The gradient as real coordinate rows (k*k, N) (:func:`mfarray.linalg.to_rows`)."""
        if self.on_metrics and self.on_metrics[2] is not None:
            return self.on_metrics[2](m, data)
        return linalg.to_rows(self.gradient_at(m, data))


def _checked(data, g, positive=True):
    if not isinstance(data, LossData):
        raise ValueError(f"data must be a LossData (see make_loss_data); got {type(data).__name__}")
    return _as_metrics(g, "g", data.n, positive=positive)


def _on_metrics(name, value_at, gradient_at=None, positive=True, coeff_at=None) -> PointwiseLoss:
    """A built-in loss: formulas on Metrics, with raw-metric entry points that validate first.
    A loss whose gradient is coeff(x) g(x)^{-1} gives ``coeff_at`` instead of ``gradient_at``."""
    rows_at = None
    if coeff_at is not None:
        def coeff(m, data):  # g^{-1} of a valid metric is finite: checking the (N,) factor suffices
            return _finite_out(coeff_at(m, data), backend.namespace(m.det), f"{name} gradient")

        def gradient_at(m, data):
            return coeff(m, data)[:, None, None] * m.inverse

        def rows_at(m, data):
            return m.inverse_rows_times(coeff(m, data))

    def checked_value(m, data):
        return _finite_out(value_at(m, data), backend.namespace(m.det), f"{name} loss")

    return PointwiseLoss(
        name,
        lambda g, data: checked_value(_checked(data, g, positive), data),
        lambda g, data: gradient_at(_checked(data, g, positive), data),
        on_metrics=(value_at, gradient_at, rows_at),
    )


# --------------------------------------------------------------------------- geometry helpers
def det_gradient(g: Array) -> Array:
    """d det g / dg = det g g^{-1} for Hermitian positive-definite g (N, k, k) -> (N, k, k).

    In the module's convention: d det g = Re tr((det g g^{-1})^dagger dg) = det g tr(g^{-1} dg).
    """
    m = _as_metrics(g)
    xp = backend.namespace(m.det)
    _finite_out(m.det, xp, "det g")
    return _finite_out(m.det[:, None, None] * m.inverse, xp, "det g g^{-1}")


def current_kappa(g: Array, data: LossData) -> Array:
    """kappa = E_w[det g/|Omega|^2] of the metric g itself (B.10), a 0-d array."""
    m = _checked(data, g)
    xp = backend.namespace(m.det)
    return xp.sum(data.weight * m.det / data.omega2) / xp.sum(data.weight)


# --------------------------------------------------------------------------- sigma losses (B.11)
def _eta(m, data):
    """eta = det g / (kappa |Omega|^2) with the fixed kappa (m is a valid metric: det finite)."""
    return m.det / data.eta_scale, backend.namespace(m.det)


def _eta_loss(name, F, dF) -> PointwiseLoss:
    """l = w F(eta) with kappa fixed (``data.kappa``); dl/dg = w F'(eta) eta g^{-1}."""

    def value_at(m, data):
        eta, xp = _eta(m, data)
        return data.weight * F(eta, xp)

    def coeff_at(m, data):
        eta, xp = _eta(m, data)
        return data.weight * dF(eta, xp) * eta

    return _on_metrics(name, value_at, coeff_at=coeff_at)


def sigma_loss() -> PointwiseLoss:
    """l(x) = w(x) |1 - eta(x)|, eta = det g/(kappa |Omega|^2) with kappa FIXED (B.10-B.11).

    kappa is ``data.kappa``, held at its value for the initial metric (:func:`make_loss_data`):
    the Kähler class, hence the volume, is fixed along the flow, which makes the loss pointwise
    as in (2.3).  The total (mean over points) is the sigma measure E_w|1 - eta| whenever kappa
    is the current metric's kappa and the weights have mean 1 (else mean(w) times it).

    dl/dg = -w sign(1 - eta) eta g^{-1}   (sign(0) = 0: the kink at eta = 1 gets gradient 0).

    Shapes: g (N, k, k) -> value (N,), gradient (N, k, k).
    """
    return _eta_loss("sigma", lambda e, xp: xp.abs(1.0 - e), lambda e, xp: -xp.sign(1.0 - e))


def _dynamic_parts(m, data):
    xp = backend.namespace(m.det)
    _finite_out(m.det, xp, "det g")
    wsum = xp.sum(data.weight)
    kappa = xp.sum(data.weight * m.det / data.omega2) / wsum
    return m.det / (kappa * data.omega2), xp, wsum


def _dynamic_value(m, data):
    eta, xp, _ = _dynamic_parts(m, data)
    return data.weight * xp.abs(1.0 - eta)


def _dynamic_gradient(m, data):
    r"""The coefficient of g^{-1} in G(x) = N dL/dg(x) for L = mean_y w_y |1 - eta_y|, eta_y = det_y/(kappa(g) omega2_y).

    With s = sign(1 - eta), d eta_y = eta_y [tr(g_y^-1 dg_y) - d kappa/kappa] and
    d kappa/kappa = sum_x w_x eta_x tr(g_x^-1 dg_x)/W (W = sum w), so

        G(x) = w_x eta_x (E_w[s eta] - s_x) g_x^{-1}.

    The E_w[s eta] term is the global (rank one in points) coupling through kappa.
    """
    eta, xp, wsum = _dynamic_parts(m, data)
    s = xp.sign(1.0 - eta)
    mean_s_eta = xp.sum(data.weight * s * eta) / wsum
    return data.weight * eta * (mean_s_eta - s)


def sigma_loss_dynamic() -> PointwiseLoss:
    """sigma (B.11) with kappa = E_w[det g/|Omega|^2] (B.10) recomputed from g itself.

    l(x) = w(x) |1 - det g(x)/(kappa(g) |Omega|^2(x))|; with mean-1 weights the total is exactly
    the sigma measure sigma(g) = E_w|1 - eta| (else mean(w) sigma(g)), which is invariant under g -> c g.  ``data.kappa`` is ignored.
    The gradient is the per-point gradient of the TOTAL loss (G(x) = N dL/dg(x)), including the
    global term from d kappa/d g(x):

        G(x) = w(x) eta(x) (E_w[sign(1 - eta) eta] - sign(1 - eta(x))) g(x)^{-1},

    which satisfies sum_x Re tr(G(x) g(x)) = 0 (scale invariance).
    """
    return _on_metrics("sigma_dynamic", _dynamic_value, coeff_at=_dynamic_gradient)


def sigma_squared_loss() -> PointwiseLoss:
    """l(x) = w(x) (1 - eta(x))^2, the ultra-local F(eta) = (eta - 1)^2 of Headrick-Nassar (B.12, B.14).

    Same minimiser as the sigma loss (eta = 1) but smooth: its gradient -2 w (1 - eta) eta g^{-1}
    vanishes at the optimum, so fixed or backtracking steps converge instead of chattering around
    eta = 1 as the |1 - eta| loss does with one global step size.  kappa is fixed (``data.kappa``).
    """
    return _eta_loss("sigma_squared", lambda e, xp: (1.0 - e) ** 2, lambda e, xp: -2.0 * (1.0 - e))


# --------------------------------------------------------------------------- mse
def mse_loss(target: Array | None = None) -> PointwiseLoss:
    """l(x) = w(x) ||g(x) - g_target(x)||_F^2 (trace inner product); dl/dg = 2 w (g - g_target).
    ``target`` (N, k, k) Hermitian; default ``data.target``.  g need not be positive definite.
    """
    fixed = None if target is None else _as_metrics(target, "target", positive=False).g

    def _target(m, data):
        t = fixed if fixed is not None else data.target
        if t is None:
            raise ValueError("mse_loss needs a target: pass mse_loss(target) or LossData(..., target=...)")
        if tuple(t.shape) != tuple(m.g.shape):
            raise ValueError(f"target has shape {tuple(t.shape)}; g has {tuple(m.g.shape)}")
        return m.g - t, backend.namespace(m.g)

    def value_at(m, data):
        d, xp = _target(m, data)
        return data.weight * xp.sum(xp.real(d) ** 2 + xp.imag(d) ** 2, axis=(-2, -1))

    def gradient_at(m, data):
        d, xp = _target(m, data)
        return _finite_out(2.0 * data.weight[:, None, None] * d, xp, "mse gradient")

    return _on_metrics("mse", value_at, gradient_at, positive=False)


# --------------------------------------------------------------------------- totals and data
def total(loss: Loss, g: Array | Metrics, data: LossData) -> float:
    """The total loss L = sum_x l(x)/N, the mean of ``loss.value(g, data)`` (eq. 2.3 divided by N).
    ``g`` may be raw metrics or a :class:`~mfarray.linalg.Metrics` already factorised.  A loss
    that is not finite is a ValueError (naming the loss), never a number passed on."""
    if isinstance(g, Metrics) and getattr(loss, "on_metrics", None):
        return loss.total_at(g, data)
    if isinstance(g, Metrics):
        values = loss.values_at(g, data) if hasattr(loss, "values_at") else loss.value(g.g, data)
    else:
        values = loss.value(g, data)
    n = data.n
    if not hasattr(values, "shape"):  # a user loss returning a list
        values = np.asarray(values)
    if tuple(values.shape) != (n,):
        raise ValueError(f"loss {getattr(loss, 'name', loss)!r} returned shape {tuple(values.shape)}; expected ({n},)")
    if getattr(values.dtype, "kind", "f") == "c":  # float() would keep the real part, silently
        raise TypeError(f"loss {getattr(loss, 'name', loss)!r} returned complex values ({values.dtype}): a loss is "
                        "real, l(x) >= 0 per point")
    value = float(values.sum()) / n  # NumPy or CuPy: one scalar leaves the device
    if not math.isfinite(value):
        raise ValueError(f"loss {getattr(loss, 'name', loss)!r} is not finite ({value}): its values have NaN or inf")
    return value


def gradient(loss: Loss, m: Metrics, data: LossData) -> Array:
    """Per-point gradients (N, k, k) of ``loss`` at factorised metrics ``m``."""
    G = loss.gradient_at(m, data) if hasattr(loss, "gradient_at") else loss.gradient(m.g, data)
    if tuple(G.shape) != (m.n, m.k, m.k):
        raise ValueError(f"loss {getattr(loss, 'name', loss)!r} returned a gradient of shape {tuple(G.shape)}; "
                         f"expected {(m.n, m.k, m.k)}")
    return _finite_out(G, backend.namespace(G), f"the gradient of loss {getattr(loss, 'name', loss)!r}")


def gradient_rows(loss: Loss, m: Metrics, data: LossData) -> Array:
    """Per-point gradients of ``loss`` at ``m`` as real coordinate rows (k*k, N): what flows
    apply kernels to (built-in losses never form the (N, k, k) matrices)."""
    if hasattr(loss, "gradient_rows_at"):
        return loss.gradient_rows_at(m, data) if loss.on_metrics else linalg.to_rows(gradient(loss, m, data))
    return linalg.to_rows(gradient(loss, m, data))


def make_loss_data(ds: xr.Dataset, g0: Array | None = None, *, target: Array | None = None) -> LossData:
    """LossData from a point-set Dataset (``mfarray.sample_points``), as NumPy arrays.

    omega2 and weight come from ``ds`` as they are (mean 1 for ``sample_points`` output; not
    renormalised on subsets, so zero-weight passive points stay passive); kappa = E_w[det g0/|Omega|^2]
    (B.10) with g0 (N, k, k) defaulting to ``ds.g_fs``.  A surface without a Calabi-Yau form
    (no ``omega2``) gets omega2 = 1 and kappa = 1.  ``target`` is passed on for :func:`mse_loss`.
    """
    if "weight" not in ds or "g_fs" not in ds:
        raise ValueError("ds must be a point set with variables 'weight' and 'g_fs' (mfarray.sample_points)")
    weight = _as_1d(backend.to_numpy(ds["weight"].data), "ds.weight")
    omega2 = _as_1d(backend.to_numpy(ds["omega2"].data), "ds.omega2", weight.shape[0]) if "omega2" in ds else None
    g0 = backend.to_numpy(ds["g_fs"].data if g0 is None else g0)
    return loss_data(omega2, weight, g0, target=target)


def loss_data(omega2: Array | None, weight: Array, g0: Array, *, target: Array | None = None) -> LossData:
    """LossData from arrays: kappa = E_w[det g0/|Omega|^2] (B.10); omega2 None means no
    Calabi-Yau form (omega2 = 1, kappa = 1)."""
    weight = _as_1d(weight, "weight")
    m = _as_metrics(g0, "g0", weight.shape[0])
    if omega2 is None:
        xp = backend.namespace(weight)
        return LossData(omega2=xp.ones_like(weight), weight=weight, kappa=1.0, target=target)
    omega2 = _as_1d(omega2, "omega2", weight.shape[0])
    xp = backend.namespace(weight)
    kappa = float(xp.sum(weight * m.det / omega2) / xp.sum(weight))
    return LossData(omega2=omega2, weight=weight, kappa=kappa, target=target)
