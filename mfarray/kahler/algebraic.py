r"""Algebraic metrics, Donaldson's balanced metrics and sigma-optimised algebraic metrics
(Appendix B; Donaldson math/0512625, Douglas-Karp-Lukic-Reinbacher hep-th/0612075,
Headrick-Nassar 0908.2635).

Algebraic metric.  For the degree-k sections s (N, n_s) of :mod:`mfarray.kahler.sections` and a
Hermitian positive-definite H (n_s, n_s) the Kähler potential and metric in each point's chart are

    K_H = (1/k) log q(z),          q = s(z)^T H conj(s(z)) = sum_cd s_c H_cd conj(s_d)
    g_ab = d_a dbar_b K_H = (1/k) [ (V H V^dagger)_ab / q - u_a conj(u_b) / q^2 ]          (1)

with, in the normalised frame of :func:`~mfarray.kahler.sections.section_frame`,
s -> s_hat = s/|z|^k, V = D s_hat (N, kd, n_s) (covariant chart derivatives), q -> q_hat =
s_hat^T H conj(s_hat) and u = V H conj(s_hat) (N, kd).  (1) is exact: the |z|^(-2k) factors and
the connection terms -k d_a log|z|^2 of D cancel between the two terms, so g is the pull-back of
the Fubini-Study metric of P^(n_s - 1) under z -> [L^T s(z)] (H = L L^dagger), divided by k; H = I
at k = 1 (s = z) gives g_FS exactly.  The Kähler class is c_1(O(1)) for every H: the volume
int det g is independent of H.

Donaldson's T-operator and balanced metrics.  With the Calabi-Yau measure |Omega|^2 (Monte Carlo:
the point set's weights w, integrals = means of w f),

    T(H) = (n_s / Vol) int_X conj(s) s^T / q  dvol_CY,   T(H)_cd = (n_s / sum w) sum_x w conj(s_c) s_d / q   (2)

so that tr(H T(H)) = n_s identically.  H is *balanced* when H^{-1} = T(H) (then the sections
are orthonormal for the L^2 product of h^k = 1/q, up to the factor n_s/Vol), and Donaldson's
iteration H <- T(H)^{-1} converges to it from any start (here H_0 = I); the fixed points form a
ray (T(cH) = T(H)/c), and each iterate is normalised to tr H = n_s.  Convergence is measured by
the scale-invariant residual ||T(H) - H^{-1}||_F / ||H^{-1}||_F (:func:`balance_residual`).  The
balanced metrics g_k of (1) converge to the Ricci-flat metric as k -> infinity (Donaldson), with
sigma_k falling like 1/k^2 in the published fits below.

Monte-Carlo bias.  T is an n_s x n_s matrix estimated from N points; with N not >> n_s^2 the
balanced H fits the points it was computed on (sigma on those points is too small, on fresh
points too large).  Ashmore-He-Ovrut integrate T on N = 10 n_s^2 + 50000 points; CYJAX's
example uses (10 n_s^2 + 50000)/5.  Always evaluate sigma on an INDEPENDENT point set (another seed of
``mfarray.sample_points``): :func:`balanced_metric` takes the integration points,
:func:`algebraic_sigma` the test points.

Published values (sigma of the balanced metrics; the papers' own text could not be opened from
this repository's tools: the numbers below are as transcribed in a third-party reference
catalogue found by code search, and are figure fits or read-offs except where noted):

* Ashmore-He-Ovrut, "Machine learning Calabi-Yau metrics", arXiv:1910.08605, sec. 2.2, Fermat
  quintic, sigma on N_t = 500,000 points: sigma_1 = 0.375301, sigma_2 = 0.273948 (quoted in the
  text); Fig. 1 labels sigma_3..8 ~ 0.190, 0.130, 0.091, 0.066, 0.051, 0.040.  (sigma_1 is the
  Fubini-Study value: H = I is balanced at k = 1 by symmetry.)
* Douglas-Karp-Lukic-Reinbacher, hep-th/0612075, Fig. 1 (quintic near the Fermat point,
  psi = 0.1): fit sigma_k ~ 3.1/k^2 - 4.2/k^3 (k >= 3).
* Anderson-Braun-Karp-Ovrut, arXiv:1004.4399, Fig. 4 (Dwork psi = 0.5, same convention as
  :func:`mfarray.dwork_quintic`): fit sigma_k ~ 3.51/k^2 - 5.19/k^3.

Measured here (tests and ``benchmarks/bench_donaldson.py``; T on N = max(20000, 10 n_s^2) points
up to 10^5, sigma on 20000 independent points, +- one MC standard error): Fermat sigma_2..5 =
0.2736(15), 0.1976(11), 0.1327(8), 0.0944(6); Dwork psi = 0.5 sigma_2..5 = 0.2696(17), 0.2015(14),
0.1408(11), 0.1025(9); with 10^5/5*10^4 points sigma_1 = 0.3734 on the Fermat quintic.

Sigma optimisation.  :func:`optimise_sigma` descends a pointwise loss of :mod:`mfarray.losses`
(default the smooth (1 - eta)^2 loss, B.12/B.14) with respect to H, starting from the balanced
H (Headrick-Nassar's "optimal" algebraic metrics), parametrised as H = L0 M M^dagger L0^dagger with
L0 = chol(H0) so that H stays positive definite and M ~ I is well scaled, using Adam
(:mod:`mfarray.optim`) and a fixed number of steps.  The gradient is the chain rule through :func:`algebraic_metric_vjp`.

Bare array code: NumPy or CuPy (point sets are read with their own array kind; dask is computed).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import backend, linalg, optim
from .. import losses as _losses
from ..geometry import measures
from ..geometry.hypersurface import Hypersurface
from ..pointset.charts import require_same_surface
from ..pointset.checks import require_point_values
from .sections import SectionFrame, section_exponents, section_frame, sections

if TYPE_CHECKING:
    import xarray as xr

Array = Any

__all__ = [
    "BalancedMetric",
    "OptimisedMetric",
    "algebraic_det",
    "algebraic_metric",
    "algebraic_metric_vjp",
    "algebraic_sigma",
    "balance_residual",
    "balanced_metric",
    "normalised_sections",
    "optimise_sigma",
    "point_arrays",
    "t_operator",
]

_HERMITIAN_RTOL = 1e-8
_CHUNK_ELEMENTS = 4_000_000  # complex entries of V (chunk, kd, n_s) per chunk: 64 MB


# --------------------------------------------------------------------------- validation
def _check_H(H: Array, n_s: int, name: str = "H") -> Array:
    """H as an exactly Hermitian complex array (n_s, n_s), or a ValueError naming ``name``."""
    if H is None or not hasattr(H, "shape"):
        raise ValueError(f"{name} must be an (n_s, n_s) Hermitian array; got {type(H).__name__}")
    xp = backend.namespace(H)
    if tuple(H.shape) != (n_s, n_s):
        raise ValueError(f"{name} must have shape ({n_s}, {n_s}) (n_s = number of sections); got {tuple(H.shape)}")
    H = xp.astype(H, xp.complex128)
    if not bool(xp.all(xp.isfinite(H))):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    Hh = xp.conj(H.T)
    top = float(xp.max(xp.abs(H)))
    asym = float(xp.max(xp.abs(H - Hh)))
    if not top > 0:
        raise ValueError(f"{name} is zero; it must be Hermitian positive definite")
    if asym > _HERMITIAN_RTOL * top:
        raise ValueError(f"{name} must be Hermitian, {name} = {name}^dagger; max |{name} - {name}^dagger| = {asym:.3g} "
                         f"(max |{name}| = {top:.3g}); pass ({name} + {name}^dagger)/2")
    return (H + Hh) / 2


def _q_values(s: Array, H: Array, name: str = "H") -> Array:
    """q = s^T H conj(s) (N,) real, required > 0 (H positive definite on the sections)."""
    xp = backend.namespace(s)
    q = xp.real(xp.sum((s @ H) * xp.conj(s), axis=-1))
    bad = ~(q > 0)
    if bool(xp.any(bad)):
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        raise ValueError(f"{name} must be positive definite: s^T {name} conj(s) <= 0 (or NaN) at {count} of "
                         f"{q.shape[0]} points; use H = L L^dagger or the balanced H")
    return q


def _cholesky(T: Array, what: str, hint: str) -> Array:
    xp = backend.namespace(T)
    try:
        L = xp.linalg.cholesky(T)
    except Exception as exc:  # numpy.linalg.LinAlgError or CuPy's error
        raise ValueError(f"{what} is not positive definite: {hint}") from exc
    if not bool(xp.all(xp.isfinite(L))):  # CuPy returns NaN instead of raising
        raise ValueError(f"{what} is not positive definite: {hint}")
    return L


def _inverse_pd(T: Array, what: str, hint: str) -> Array:
    """T^{-1} of a Hermitian positive-definite T, exactly Hermitian (via its Cholesky factor)."""
    xp = backend.namespace(T)
    L = _cholesky(T, what, hint)
    Linv = xp.linalg.inv(L)
    out = xp.conj(Linv.T) @ Linv
    return (out + xp.conj(out.T)) / 2


# --------------------------------------------------------------------------- the metric
def _times(V: Array, H: Array) -> Array:
    """V @ H for V (N, kd, n_s) as one (N kd, n_s) @ (n_s, n_s) product (one BLAS call)."""
    xp = backend.namespace(V)
    return xp.reshape(xp.reshape(V, (-1, V.shape[-1])) @ H, V.shape)


def algebraic_metric(frame: SectionFrame, H: Array) -> Array:
    """g = (1/k) d dbar log(s^T H conj(s)) at the frame's points, in their charts, (N, kd, kd).

    Eq. (1) of the module docstring: g = (1/k)[V H V^dagger/q - u u^dagger/q^2] with V = frame.ds,
    q = s_hat^T H conj(s_hat), u = V H conj(s_hat).  H (n_s, n_s) Hermitian positive definite
    (ValueError otherwise).  The result is exactly Hermitian.
    """
    xp = backend.namespace(frame.s)
    H = _check_H(H, frame.s.shape[-1])
    s, V = frame.s, frame.ds
    q = _q_values(s, H)
    VH = _times(V, H)  # (N, kd, n_s)
    M = VH @ xp.conj(xp.matrix_transpose(V))  # V H V^dagger
    u = xp.sum(VH * xp.conj(s)[:, None, :], axis=-1)  # (N, kd)
    g = M / q[:, None, None] - (u[:, :, None] * xp.conj(u)[:, None, :]) / (q**2)[:, None, None]
    return linalg.hermitian_part(g / frame.k)


def algebraic_metric_vjp(frame: SectionFrame, H: Array, G: Array) -> Array:
    """The gradient of sum_x Re tr(G_x^dagger g_x) with respect to Hermitian H, (n_s, n_s) Hermitian.

    G (N, kd, kd) are per-point Hermitian cotangents (e.g. ``loss.gradient(g, data)``); the
    convention is that of :mod:`mfarray.losses`: the result A satisfies dL = Re tr(A^dagger dH) for
    every Hermitian dH.  From (1), with P = conj(s_hat) s_hat^T, M = V H V^dagger and
    B = conj(s_hat) (u^dagger G V) (all per point),

        A = (1/k) sum_x [ V^dagger G V / q - (tr(G M)/q^2 - 2 u^dagger G u/q^3) P - (B + B^dagger)/q^2 ].
    """
    xp = backend.namespace(frame.s)
    s, V = frame.s, frame.ds
    H = _check_H(H, s.shape[-1])
    n, kd = V.shape[0], V.shape[1]
    if not hasattr(G, "shape") or tuple(G.shape) != (n, kd, kd):
        raise ValueError(f"G must have shape ({n}, {kd}, {kd}) (one Hermitian cotangent per point); "
                         f"got {tuple(getattr(G, 'shape', ()))}")
    G = xp.astype(G, xp.complex128)
    if not bool(xp.all(xp.isfinite(G))):
        raise ValueError("G has non-finite entries (NaN or inf)")
    G = linalg.hermitian_part(G)
    q = _q_values(s, H)
    VH = _times(V, H)
    u = xp.sum(VH * xp.conj(s)[:, None, :], axis=-1)  # (N, kd)
    GV = G @ V  # (N, kd, n_s)
    # sum_x V^dagger (G/q) V as one (n_s, N kd) @ (N kd, n_s) product
    first = xp.conj(xp.reshape(V, (n * kd, -1))).T @ xp.reshape(GV / q[:, None, None], (n * kd, -1))
    trGM = xp.real(xp.sum(xp.conj(GV) * VH, axis=(-2, -1)))  # tr(G V H V^dagger) = sum conj(G V) . (V H), G Hermitian
    uGu = xp.real(xp.sum(xp.conj(u) * xp.sum(G * u[:, None, :], axis=-1), axis=-1))  # u^dagger G u
    c = trGM / q**2 - 2.0 * uGu / q**3
    second = (xp.conj(s) * c[:, None]).T @ s  # sum c conj(s) s^T
    r = xp.sum(xp.conj(u)[:, :, None] * GV, axis=-2) / (q**2)[:, None]  # (u^dagger G V)/q^2: (N, n_s)
    B = xp.conj(s).T @ r
    A = (first - second - B - xp.conj(B.T)) / frame.k
    return (A + xp.conj(A.T)) / 2


# --------------------------------------------------------------------------- T-operator
def normalised_sections(z: Array, exponents: np.ndarray) -> Array:
    """s_hat = s(z)/|z|^k (N, n_s) for points z (N, n+1) (any representative: z -> lambda z
    multiplies s_hat by the phase (lambda/|lambda|)^k, which cancels in T and in q-ratios)."""
    xp = backend.namespace(z)
    e = np.asarray(exponents)
    norm2 = xp.sum(xp.real(z) ** 2 + xp.imag(z) ** 2, axis=-1)
    zn = z / xp.sqrt(norm2)[:, None]  # unit representative first: s(z) never overflows
    return sections(zn, e)


def t_operator(s: Array, weight: Array, H: Array) -> Array:
    """Donaldson's T(H) (n_s, n_s) from normalised sections s (N, n_s) and MC weights w (N,):
    T_cd = (n_s / sum w) sum_x w conj(s_c) s_d / q,  q = s^T H conj(s)  (eq. 2).  tr(H T(H)) = n_s."""
    xp = backend.namespace(s)
    n_s = s.shape[-1]
    H = _check_H(H, n_s)
    q = _q_values(s, H)
    c = weight / q
    T = (xp.conj(s) * c[:, None]).T @ s * (n_s / xp.sum(weight))
    return (T + xp.conj(T.T)) / 2


def balance_residual(H: Array, T: Array) -> float:
    """||T - H^{-1}||_F / ||H^{-1}||_F: 0 exactly for a balanced H (scale invariant)."""
    xp = backend.namespace(H)
    Hinv = _inverse_pd(H, "H", "the balance residual needs a positive-definite H")
    return float(xp.linalg.matrix_norm(T - Hinv) / xp.linalg.matrix_norm(Hinv))


# --------------------------------------------------------------------------- point sets
def _require_surface(surface: Any) -> None:
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be a mfarray Hypersurface (e.g. mfarray.fermat_quintic(), or "
                        f"mfarray.surface_of(points)); got {type(surface).__name__}")


def point_arrays(points: xr.Dataset, names: tuple[str, ...], surface: Hypersurface | None = None, *,
                 what: str = "points", against: str = "`surface`") -> list:
    """The arrays ``names`` of a point set, computed once (dask) or kept (NumPy, CuPy), checked.

    Refuses (TypeError/ValueError naming ``what``, the argument): anything but an xarray.Dataset
    holding ``names``, a set without points, points on another hypersurface than ``surface``
    (when given; the polynomial recorded in the set's attributes,
    :func:`mfarray.pointset.charts.surface_of`, named ``against`` in the message), and among
    ``names`` non-finite z (N, n+1), weights (N,) that are not finite, >= 0 with a positive sum,
    and |Omega|^2 omega2 (N,) that is not finite and > 0.
    """
    if not hasattr(points, "data_vars"):
        raise TypeError(f"{what} must be a point set (an xarray.Dataset from mfarray.sample_points); "
                        f"got {type(points).__name__}")
    missing = [v for v in names if v not in points.variables]
    if missing:
        raise ValueError(f"{what} has no {', '.join(missing)}: make it with mfarray.sample_points")
    if points.sizes.get("point", 0) == 0:
        raise ValueError(f"{what} holds no points: pass a point set with at least one point")
    if surface is not None:
        _require_surface(surface)
        require_same_surface(points, surface, what, against)
    sub = points[list(names)]
    if any(backend.is_dask(sub[v].data) for v in names):
        sub = sub.compute()  # one pass: a lazy point set is sampled once for all its variables
    arrays = [x if backend.is_cupy(x := sub[v].data) else np.asarray(x) for v in names]
    require_point_values(what, **{v: a for v, a in zip(names, arrays) if v in ("z", "weight", "omega2")})
    return arrays


def _exponents(surface: Hypersurface, k: int | np.ndarray) -> np.ndarray:
    _require_surface(surface)
    if isinstance(k, np.ndarray):
        return k
    return section_exponents(surface, k)


class BalancedMetric(NamedTuple):
    """The result of :func:`balanced_metric`.

    H : (n_s, n_s) balanced Hermitian matrix (tr H = n_s); k : degree; exponents : (n_s, n+1)
    section exponents; iterations : T-updates applied; residuals : ||T(H) - H^{-1}||/||H^{-1}||
    of each iterate (the last one is that of ``H``, on the integration points); converged :
    residuals[-1] < tol; n_points : integration points; seconds : wall time of the iteration.
    """

    H: Array
    k: int
    exponents: np.ndarray
    iterations: int
    residuals: list
    converged: bool
    n_points: int
    seconds: float

    @property
    def n_sections(self) -> int:
        return int(self.exponents.shape[0])


def balanced_metric(surface: Hypersurface, points: xr.Dataset, k: int, *, iterations: int = 30,
                    tol: float = 1e-10, H0: Array | None = None) -> BalancedMetric:
    """Donaldson's balanced H for O(k) on ``surface``, by H <- T(H)^{-1} (trace-normalised) from
    H0 (default I) on the integration points ``points`` (a point set: z and weight).

    Stops when the balance residual ||T(H) - H^{-1}||/||H^{-1}|| drops below ``tol`` or after
    ``iterations`` updates (``converged`` says which).  ``points`` should hold N >> n_s^2 points
    (module docstring: Monte-Carlo bias); evaluate the result on an independent point set with
    :func:`algebraic_sigma`.  N < n_s is refused (T would be singular), as are points of another
    surface than ``surface`` and non-finite points or weights (:func:`point_arrays`).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer; got {iterations!r}")
    if not (backend.is_real(tol) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0; got {tol!r}")
    tol = float(tol)
    e = _exponents(surface, k)
    n_s = int(e.shape[0])
    z, weight = point_arrays(points, ("z", "weight"), surface)
    xp = backend.namespace(z)
    n = int(z.shape[0])
    if n < n_s:
        raise ValueError(f"points has {n} points but O({int(e[0].sum())}) has n_s = {n_s} sections: T(H) would be "
                         f"singular; use N >> n_s^2 = {n_s * n_s} points")
    start = time.perf_counter()
    s = normalised_sections(z, e)
    H = xp.eye(n_s, dtype=xp.complex128) if H0 is None else _check_H(xp.asarray(H0), n_s, "H0")
    H = H * (n_s / float(xp.real(xp.linalg.trace(H))))
    hint = (f"the {n} points do not determine the {n_s} sections (too few points, or points on a "
            f"hypersurface where the sections are dependent); use more points")
    T = t_operator(s, weight, H)
    residuals = [balance_residual(H, T)]
    done = 0
    while residuals[-1] >= tol and done < iterations:
        H = _inverse_pd(T, "T(H)", hint)
        H = H * (n_s / float(xp.real(xp.linalg.trace(H))))
        T = t_operator(s, weight, H)
        residuals.append(balance_residual(H, T))
        done += 1
    return BalancedMetric(H=H, k=int(e[0].sum()), exponents=e, iterations=done, residuals=residuals,
                          converged=residuals[-1] < tol, n_points=n, seconds=time.perf_counter() - start)


def _chunks(n: int, kd: int, n_s: int, chunk: int | None):
    size = chunk if chunk is not None else max(256, _CHUNK_ELEMENTS // max(1, kd * n_s))
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def algebraic_det(surface: Hypersurface, points: xr.Dataset, H: Array, k: int | np.ndarray, *,
                  chunk: int | None = None) -> Array:
    """det g_H (N,) of the algebraic metric (1) at a point set's points on ``surface``
    (:func:`point_arrays`), in their charts (computed in chunks of points so that V never
    exceeds ~64 MB)."""
    e = _exponents(surface, k)
    z, patch, elim = point_arrays(points, ("z", "patch", "elim"), surface)
    return _det(surface, z, patch, elim, H, e, chunk)


def _det(surface: Hypersurface, z: Array, patch: Array, elim: Array, H: Array, e: np.ndarray,
         chunk: int | None) -> Array:
    """det g_H (N,) at points z (N, n+1) in their charts (patch, elim (N,)), in chunks."""
    xp = backend.namespace(z)
    H = _check_H(xp.asarray(H), int(e.shape[0]))
    out = []
    for sl in _chunks(int(z.shape[0]), surface.dim, int(e.shape[0]), chunk):
        frame = section_frame(surface, z[sl], e, patch[sl], elim[sl])
        out.append(linalg.hermitian_det(algebraic_metric(frame, H)))
    return xp.concat(out)


def algebraic_sigma(surface: Hypersurface, points: xr.Dataset, H: Array, k: int | np.ndarray, *,
                    chunk: int | None = None) -> float:
    """sigma (B.11) of the algebraic metric g_H of degree k (or section ``exponents``) on a point
    set (z, patch, elim, omega2, weight) on ``surface`` (checked by :func:`point_arrays`).  Use points
    INDEPENDENT of those H was fitted on."""
    e = _exponents(surface, k)
    z, patch, elim, omega2, weight = point_arrays(points, ("z", "patch", "elim", "omega2", "weight"), surface)
    det = _det(surface, z, patch, elim, H, e, chunk)
    xp = backend.namespace(det)
    if not bool(xp.all(xp.isfinite(det) & (det > 0))):
        raise ValueError("the algebraic metric is degenerate (det g <= 0 or not finite) at some points; "
                         "H must be positive definite and well conditioned")
    return float(measures.sigma(det, omega2, weight))


# --------------------------------------------------------------------------- sigma optimisation
class OptimisedMetric(NamedTuple):
    """The result of :func:`optimise_sigma`: H (n_s, n_s) after ``steps`` Adam steps; losses :
    the training loss before each step and after the last (steps + 1 values); seconds."""

    H: Array
    losses: list
    steps: int
    seconds: float


def optimise_sigma(surface: Hypersurface, points: xr.Dataset, H0: Array, k: int | np.ndarray, *,
                   steps: int = 50, lr: float = 1e-2, loss: _losses.PointwiseLoss | None = None,
                   betas: tuple[float, float] = (0.9, 0.999)) -> OptimisedMetric:
    """Minimise a pointwise loss of the algebraic metric g_H on the training ``points`` over H.

    H = L0 M M^dagger L0^dagger, L0 = chol(H0), M (n_s, n_s) complex from I: positive definite at
    every step and well scaled (in the basis orthonormal for H0 the parameters are O(1)).  ``loss``
    defaults to :func:`mfarray.losses.sigma_squared_loss` (smooth, kappa fixed at H0's value: the
    Kähler class, hence the volume, does not depend on H); any :class:`~mfarray.losses.PointwiseLoss`
    works, e.g. ``sigma_loss_dynamic()`` (the sigma measure itself).  The step is Adam
    (:func:`mfarray.optim.adam` on the real and imaginary parts of M, learning rate ``lr``),
    ``steps`` of them, on the full training set.

    Gradient: L = mean_x l(x) and G(x) = N dL/dg(x) (``loss.gradient``), so
    dL/dH = algebraic_metric_vjp(frame, H, G)/N and dL/dM = 2 L0^dagger (dL/dH) L0 M.
    Report sigma before and after on independent points (:func:`algebraic_sigma`).  ``points`` are
    checked by :func:`point_arrays` (on ``surface``, non-empty, finite).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    if not (backend.is_real(lr) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number; got {lr!r}")
    lr = float(lr)
    loss = _losses.sigma_squared_loss() if loss is None else loss
    e = _exponents(surface, k)
    n_s = int(e.shape[0])
    z, patch, elim, omega2, weight = point_arrays(points, ("z", "patch", "elim", "omega2", "weight"), surface)
    xp = backend.namespace(z)
    H0 = _check_H(xp.asarray(H0), n_s, "H0")
    start = time.perf_counter()
    frame = section_frame(surface, z, e, patch, elim)
    n = int(z.shape[0])
    L0 = _cholesky(H0, "H0", "pass a Hermitian positive-definite H0 (e.g. the balanced H)")
    data = _losses.loss_data(omega2, weight, algebraic_metric(frame, H0))
    init, update = optim.adam(lr, *betas, eps=1e-12)
    M = xp.eye(n_s, dtype=xp.complex128)
    theta = xp.concat([xp.reshape(xp.real(M), (-1,)), xp.reshape(xp.imag(M), (-1,))])  # [Re M, Im M]
    state = init(theta)
    history = []
    H = H0
    for step in range(steps + 1):
        M = xp.reshape(theta[: n_s * n_s] + 1j * theta[n_s * n_s:], (n_s, n_s))
        L = L0 @ M
        H = L @ xp.conj(L.T)
        g = algebraic_metric(frame, H)
        history.append(_losses.total(loss, g, data))
        if step == steps:
            break
        A = algebraic_metric_vjp(frame, H, loss.gradient(g, data)) / n
        grad = xp.reshape(2.0 * (xp.conj(L0.T) @ A @ L), (-1,))  # dL/dRe M + i dL/dIm M
        delta, state = update(xp.concat([xp.real(grad), xp.imag(grad)]), state)
        theta = theta + delta
    H = (H + xp.conj(H.T)) / 2
    return OptimisedMetric(H=H, losses=history, steps=steps, seconds=time.perf_counter() - start)
