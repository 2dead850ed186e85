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
gradient returns NaN.  Metrics that are Hermitian only up to round-off (relative 1e-6) are
replaced by their exact Hermitian part (g + g^dagger)/2, so every gradient is exactly Hermitian.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from . import backend
from .geometry.fubini_study import ldl_pivots

__all__ = [
    "LossData", "Loss", "PointwiseLoss", "sigma_loss", "sigma_loss_dynamic", "sigma_squared_loss",
    "mse_loss", "total", "make_loss_data", "current_kappa", "det_gradient",
    "hermitian_to_real", "real_to_hermitian",
]

_HERMITIAN_RTOL = 1e-6


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


def _as_metrics(g, name="g", n=None, k=None, hermitian=True):
    """(N, k, k) complex128 array, finite and Hermitian up to round-off (relative 1e-6), else
    ValueError; returned as its exact Hermitian part (g + g^dagger)/2."""
    g = _as_array(g, name)
    xp = backend.namespace(g)
    if g.ndim != 3 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"{name} must have shape (N, k, k) (Hermitian metrics); got {tuple(g.shape)}")
    if n is not None and g.shape[0] != n:
        raise ValueError(f"{name} has {g.shape[0]} points but the loss data has {n}")
    if k is not None and g.shape[-1] != k:
        raise ValueError(f"{name} has k = {g.shape[-1]}; expected {k}")
    if g.dtype != xp.complex128:
        g = xp.astype(g, xp.complex128)
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    if hermitian and g.shape[0] > 0:
        asym = float(xp.max(xp.abs(g - xp.conj(xp.matrix_transpose(g)))))
        scale = float(xp.max(xp.abs(g)))
        if asym > _HERMITIAN_RTOL * scale:
            raise ValueError(f"{name} must be Hermitian, {name}[..., b, c] = conj({name}[..., c, b]); "
                             f"max |{name} - {name}^dagger| = {asym:.3g} (max |{name}| = {scale:.3g})")
        g = 0.5 * (g + xp.conj(xp.matrix_transpose(g)))  # round-off: use the exact Hermitian part
    return g, xp


def _require_positive_definite(g, xp, name="g"):
    """det g (N,) as the product of the LDL^H pivots, which must all be > 0 (the flows' own
    positivity test, stable for ill-conditioned chart metrics), else ValueError."""
    pivots = ldl_pivots(g)
    bad = ~xp.all(pivots > 0, axis=-1)
    if bool(xp.any(bad)):
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        raise ValueError(f"{name} must be positive definite at every point ({count} points are not)")
    det = xp.prod(pivots, axis=-1)
    if not bool(xp.all(xp.isfinite(det))):
        raise ValueError(f"det {name} is not finite (overflow: entries of {name} too large)")
    return det


def _finite_out(x, xp, what):
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{what} is not finite (overflow: g or |Omega|^2 out of range)")
    return x


def _hermitian_inverse(g, xp):
    inv = xp.linalg.inv(g)
    return 0.5 * (inv + xp.conj(xp.matrix_transpose(inv)))  # exactly Hermitian


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
            object.__setattr__(self, "target", _as_metrics(self.target, "target", n)[0])

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])


@runtime_checkable
class Loss(Protocol):
    """What a flow needs from a loss: a name, per-point values and per-point Hermitian gradients."""

    name: str

    def value(self, g, data: LossData): ...  # (N,)

    def gradient(self, g, data: LossData): ...  # (N, k, k), convention of the module docstring


@dataclasses.dataclass(frozen=True)
class PointwiseLoss:
    """A loss from two functions: ``value(g, data) -> (N,)`` and ``gradient(g, data) -> (N, k, k)``.

    ``gradient`` must return G(x) = N dL/dg(x) for L = mean_x value(x), in the trace-inner-product
    convention dl = Re tr(G^dagger dg) (module docstring); for a pointwise loss, dl(x)/dg(x).
    """

    name: str
    value: Callable
    gradient: Callable


def _prepare(g, data, *, positive=True):
    if not isinstance(data, LossData):
        raise ValueError(f"data must be a LossData (see make_loss_data); got {type(data).__name__}")
    g, xp = _as_metrics(g, "g", data.n)
    det = _require_positive_definite(g, xp) if positive else None
    return g, xp, det


# --------------------------------------------------------------------------- geometry helpers
def det_gradient(g):
    """d det g / dg = det g g^{-1} for Hermitian positive-definite g (N, k, k) -> (N, k, k).

    In the module's convention: d det g = Re tr((det g g^{-1})^dagger dg) = det g tr(g^{-1} dg).
    """
    g, xp = _as_metrics(g)
    det = _require_positive_definite(g, xp)
    return _finite_out(det[:, None, None] * _hermitian_inverse(g, xp), xp, "det g g^{-1}")


def current_kappa(g, data: LossData):
    """kappa = E_w[det g/|Omega|^2] of the metric g itself (B.10), a 0-d array."""
    g, xp, det = _prepare(g, data)
    return xp.sum(data.weight * det / data.omega2) / xp.sum(data.weight)


# --------------------------------------------------------------------------- sigma losses (B.11)
def _sigma_value(g, data):
    g, xp, det = _prepare(g, data)
    eta = det / (data.kappa * data.omega2)
    return _finite_out(data.weight * xp.abs(1.0 - eta), xp, "sigma loss")


def _sigma_gradient(g, data):
    g, xp, det = _prepare(g, data)
    eta = det / (data.kappa * data.omega2)
    # d|1 - eta| = -sign(1 - eta) d eta,  d eta = eta tr(g^-1 dg)
    coeff = -data.weight * xp.sign(1.0 - eta) * eta
    return _finite_out(coeff[:, None, None] * _hermitian_inverse(g, xp), xp, "sigma loss gradient")


def sigma_loss() -> PointwiseLoss:
    """l(x) = w(x) |1 - eta(x)|, eta = det g/(kappa |Omega|^2) with kappa FIXED (B.10-B.11).

    kappa is ``data.kappa``, held at its value for the initial metric (:func:`make_loss_data`):
    the Kähler class, hence the volume, is fixed along the flow, which makes the loss pointwise
    as in (2.3).  The total (mean over points) is the sigma measure E_w|1 - eta| whenever kappa
    is the current metric's kappa and the weights have mean 1 (else mean(w) times it).

    dl/dg = -w sign(1 - eta) eta g^{-1}   (sign(0) = 0: the kink at eta = 1 gets gradient 0).

    Shapes: g (N, k, k) -> value (N,), gradient (N, k, k).
    """
    return PointwiseLoss("sigma", _sigma_value, _sigma_gradient)


def _dynamic_parts(g, data):
    g, xp, det = _prepare(g, data)
    wsum = xp.sum(data.weight)
    kappa = xp.sum(data.weight * det / data.omega2) / wsum
    eta = det / (kappa * data.omega2)
    return g, xp, eta, wsum


def _dynamic_value(g, data):
    g, xp, eta, _ = _dynamic_parts(g, data)
    return _finite_out(data.weight * xp.abs(1.0 - eta), xp, "sigma loss")


def _dynamic_gradient(g, data):
    r"""G(x) = N dL/dg(x) for L = mean_y w_y |1 - eta_y|, eta_y = det_y/(kappa(g) omega2_y).

    With s = sign(1 - eta), d eta_y = eta_y [tr(g_y^-1 dg_y) - d kappa/kappa] and
    d kappa/kappa = sum_x w_x eta_x tr(g_x^-1 dg_x)/W (W = sum w), so

        G(x) = w_x eta_x (E_w[s eta] - s_x) g_x^{-1}.

    The E_w[s eta] term is the global (rank one in points) coupling through kappa.
    """
    g, xp, eta, wsum = _dynamic_parts(g, data)
    s = xp.sign(1.0 - eta)
    mean_s_eta = xp.sum(data.weight * s * eta) / wsum
    coeff = data.weight * eta * (mean_s_eta - s)
    return _finite_out(coeff[:, None, None] * _hermitian_inverse(g, xp), xp, "sigma loss gradient")


def sigma_loss_dynamic() -> PointwiseLoss:
    """sigma (B.11) with kappa = E_w[det g/|Omega|^2] (B.10) recomputed from g itself.

    l(x) = w(x) |1 - det g(x)/(kappa(g) |Omega|^2(x))|; with mean-1 weights the total is exactly
    the sigma measure sigma(g) = E_w|1 - eta| (else mean(w) sigma(g)), which is invariant under g -> c g.  ``data.kappa`` is ignored.
    The gradient is the per-point gradient of the TOTAL loss (G(x) = N dL/dg(x)), including the
    global term from d kappa/d g(x):

        G(x) = w(x) eta(x) (E_w[sign(1 - eta) eta] - sign(1 - eta(x))) g(x)^{-1},

    which satisfies sum_x Re tr(G(x) g(x)) = 0 (scale invariance).
    """
    return PointwiseLoss("sigma_dynamic", _dynamic_value, _dynamic_gradient)


def _squared_value(g, data):
    g, xp, det = _prepare(g, data)
    eta = det / (data.kappa * data.omega2)
    return _finite_out(data.weight * (1.0 - eta) ** 2, xp, "sigma_squared loss")


def _squared_gradient(g, data):
    g, xp, det = _prepare(g, data)
    eta = det / (data.kappa * data.omega2)
    coeff = -2.0 * data.weight * (1.0 - eta) * eta
    return _finite_out(coeff[:, None, None] * _hermitian_inverse(g, xp), xp, "sigma_squared gradient")


def sigma_squared_loss() -> PointwiseLoss:
    """l(x) = w(x) (1 - eta(x))^2, the ultra-local F(eta) = (eta - 1)^2 of Headrick-Nassar (B.12, B.14).

    Same minimiser as the sigma loss (eta = 1) but smooth: its gradient -2 w (1 - eta) eta g^{-1}
    vanishes at the optimum, so fixed or backtracking steps converge instead of chattering around
    eta = 1 as the |1 - eta| loss does with one global step size.  kappa is fixed (``data.kappa``).
    """
    return PointwiseLoss("sigma_squared", _squared_value, _squared_gradient)


# --------------------------------------------------------------------------- mse
def mse_loss(target=None) -> PointwiseLoss:
    """l(x) = w(x) ||g(x) - g_target(x)||_F^2 (trace inner product); dl/dg = 2 w (g - g_target).
    ``target`` (N, k, k) Hermitian; default ``data.target``.  g need not be positive definite.
    """
    fixed = None if target is None else _as_metrics(target, "target")[0]

    def _target(g, data):
        g, xp, _ = _prepare(g, data, positive=False)
        t = fixed if fixed is not None else data.target
        if t is None:
            raise ValueError("mse_loss needs a target: pass mse_loss(target) or LossData(..., target=...)")
        if tuple(t.shape) != tuple(g.shape):
            raise ValueError(f"target has shape {tuple(t.shape)}; g has {tuple(g.shape)}")
        return g, xp, t

    def value(g, data):
        g, xp, t = _target(g, data)
        d = g - t
        return _finite_out(data.weight * xp.sum(xp.real(d) ** 2 + xp.imag(d) ** 2, axis=(-2, -1)), xp, "mse loss")

    def gradient(g, data):
        g, xp, t = _target(g, data)
        return _finite_out(2.0 * data.weight[:, None, None] * (g - t), xp, "mse gradient")

    return PointwiseLoss("mse", value, gradient)


# --------------------------------------------------------------------------- totals and data
def total(loss: Loss, g, data: LossData) -> float:
    """The total loss L = sum_x l(x)/N, the mean of ``loss.value(g, data)`` (eq. 2.3 divided by N)."""
    values = backend.to_numpy(loss.value(g, data))
    if values.shape != (data.n,):
        raise ValueError(f"loss {getattr(loss, 'name', loss)!r} returned shape {values.shape}; expected ({data.n},)")
    return float(values.mean())


def make_loss_data(ds, g0=None, *, target=None) -> LossData:
    """LossData from a point-set Dataset (``mfarray.sample_points``), as NumPy arrays.

    omega2 and weight come from ``ds`` as they are (mean 1 for ``sample_points`` output; not
    renormalised on subsets, so zero-weight passive points stay passive); kappa = E_w[det g0/|Omega|^2]
    (B.10) with g0 (N, k, k) defaulting to ``ds.g_fs``.  A surface without a Calabi-Yau form
    (no ``omega2``) gets omega2 = 1 and kappa = 1.  ``target`` is passed on for :func:`mse_loss`.
    """
    if "weight" not in ds or "g_fs" not in ds:
        raise ValueError("ds must be a point set with variables 'weight' and 'g_fs' (mfarray.sample_points)")
    weight = _as_1d(backend.to_numpy(ds["weight"].data), "ds.weight")
    n = weight.shape[0]
    g0, xp = _as_metrics(backend.to_numpy(ds["g_fs"].data if g0 is None else g0), "g0", n)
    if "omega2" not in ds:
        return LossData(omega2=np.ones_like(weight), weight=weight, kappa=1.0, target=target)
    omega2 = _as_1d(backend.to_numpy(ds["omega2"].data), "ds.omega2", n)
    det = _require_positive_definite(g0, xp, "g0")
    kappa = float(np.sum(weight * det / omega2) / np.sum(weight))
    return LossData(omega2=omega2, weight=weight, kappa=kappa, target=target)


# --------------------------------------------------------------------------- real flattening
def _basis(k):
    """(k*k, k, k) orthonormal basis of Hermitian k x k matrices under Re tr(A^dagger B).

    Order: E_aa (a = 0..k-1), then for each a < b (row-major) (E_ab + E_ba)/sqrt 2 and
    i (E_ab - E_ba)/sqrt 2.
    """
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
            e[a, b], e[b, a] = 1j / np.sqrt(2), -1j / np.sqrt(2)
            out.append(e)
    return np.stack(out)


def hermitian_to_real(g):
    """(..., k, k) -> (..., k*k) float64 coordinates r_j = Re tr(B_j^dagger g) in :func:`_basis`.

    For Hermitian g this is an isometry, <A, B> = Re tr(A^dagger B) = r_A . r_B, inverse to
    :func:`real_to_hermitian`: r = (g_aa; sqrt2 Re g_ab, sqrt2 Im g_ab for a < b).  For a general
    complex g it is the adjoint of :func:`real_to_hermitian` (orthogonal projection onto the
    Hermitian part).  A gradient G in the module convention flattens to the Euclidean gradient
    in r.
    """
    g = _as_array(g, "g")
    xp = backend.namespace(g)
    if g.ndim < 2 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"g must have shape (..., k, k); got {tuple(g.shape)}")
    g = xp.astype(g, xp.complex128)
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError("g has non-finite entries (NaN or inf)")
    k = g.shape[-1]
    r2 = 1.0 / math.sqrt(2.0)
    cols = [xp.real(g[..., a, a]) for a in range(k)]
    for a in range(k):
        for b in range(a + 1, k):
            cols.append(r2 * (xp.real(g[..., a, b]) + xp.real(g[..., b, a])))
            cols.append(r2 * (xp.imag(g[..., a, b]) - xp.imag(g[..., b, a])))
    return xp.stack(cols, axis=-1)


def real_to_hermitian(r, k: int):
    """(..., k*k) real coordinates -> (..., k, k) exactly Hermitian matrices sum_j r_j B_j.

    Inverse of :func:`hermitian_to_real` on Hermitian matrices (and its adjoint in general).
    """
    r = _as_array(r, "r")
    xp = backend.namespace(r)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if r.ndim < 1 or r.shape[-1] != k * k:
        raise ValueError(f"r must have shape (..., {k * k}) for k = {k}; got {tuple(r.shape)}")
    if xp.isdtype(r.dtype, "complex floating"):
        raise ValueError(f"r must be real; got dtype {r.dtype}")
    r = xp.astype(r, xp.float64)
    if not bool(xp.all(xp.isfinite(r))):
        raise ValueError("r has non-finite entries (NaN or inf)")
    B = xp.asarray(np.reshape(_basis(k), (k * k, k * k)))
    out = xp.astype(r, xp.complex128) @ B
    return xp.reshape(out, tuple(r.shape[:-1]) + (k, k))
