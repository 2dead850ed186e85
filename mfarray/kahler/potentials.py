r"""Kähler potentials from sections and their metrics g_{a bbar} = d_a dbar_b K in each
point's own chart (Appendix B; no finite differences).

With the :class:`~mfarray.kahler.sections.SectionFrame` (s_hat (N, n_s), V = D s_hat (N, kd, n_s),
g_FS) of degree-k sections and a Hermitian matrix H (n_s, n_s):

* the linear phi-model (B.6 with phi a real function on X):

      phi_H = s^T H conj(s) / |z|^(2k) = s_hat^T H conj(s_hat)     (projectively invariant)
      g = g_FS + i dd-bar phi_H:   g_ab = g_FS,ab + (V H V^dagger)_ab - k phi_H g_FS,ab      (1)

  linear in H; its real coordinates c = hermitian_to_real(H) are the weights of the features
  Re/Im(s_hat_c conj(s_hat_d)) (:func:`phi_features`).

The algebraic metrics K = (1/k) log(s^T H conj(s)) are in :mod:`mfarray.kahler.algebraic`.

Shapes: H (n_s, n_s) or a batch (..., n_s, n_s) broadcasting against the points.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import backend, linalg
from . import network as _network
from .algebraic import _cholesky, algebraic_metric
from .sections import MAX_DEGREE, SectionFrame, section_count, section_exponents, section_frame

if TYPE_CHECKING:
    from ..geometry.hypersurface import Hypersurface

Array = Any

__all__ = ["SectionPotential", "TangentPotential", "orthonormal_basis", "phi_features", "phi_metric", "phi_metric_vjp", "phi_values"]


def phi_values(frame: SectionFrame, H: Array) -> Array:
    """phi_H = s_hat^T H conj(s_hat) at each point, (N,) real."""
    xp = backend.namespace(frame.s)
    return xp.real(xp.sum((frame.s @ H) * xp.conj(frame.s), axis=-1))


def phi_metric(frame: SectionFrame, H: Array, g0: Array | None = None) -> Array:
    """g = g0 + i dd-bar phi_H (eq. 1 above), (N, kd, kd); g0 defaults to g_FS."""
    xp = backend.namespace(frame.ds)
    V = frame.ds
    n, kd, ns = V.shape
    VH = xp.reshape(xp.reshape(V, (n * kd, ns)) @ H, (n, kd, ns))  # one GEMM
    ddbar = VH @ xp.conj(xp.matrix_transpose(V)) - frame.k * phi_values(frame, H)[:, None, None] * frame.g_fs
    return (frame.g_fs if g0 is None else g0) + ddbar


def phi_metric_vjp(frame: SectionFrame, G: Array) -> Array:
    """The adjoint of H -> i dd-bar phi_H under Re tr(A^dagger B): for per-point Hermitian
    cotangents G (N, kd, kd), sum_x [V^dagger G V - k tr(G g_FS) conj(s_hat) s_hat^T], (n_s, n_s)
    Hermitian (the gradient of sum_x Re tr(G_x^dagger g_x) with respect to H)."""
    xp = backend.namespace(frame.ds)
    V = frame.ds
    n, kd, ns = V.shape
    W = xp.reshape(G @ V, (n * kd, ns))  # sum_x V_x^dagger G_x V_x as one GEMM, never (N, n_s, n_s)
    first = xp.matrix_transpose(xp.conj(xp.reshape(V, (n * kd, ns)))) @ W
    t = xp.real(xp.sum(G * xp.conj(frame.g_fs), axis=(-2, -1)))  # tr(G g_FS) for Hermitian G, g_FS
    second = (xp.conj(frame.s) * t[:, None]).T @ frame.s
    return first - frame.k * second


def phi_features(frame: SectionFrame) -> Array:
    """The real features f_j = Re tr(B_j^dagger (s_hat s_hat^dagger)^T) of the linear model, (N, n_s^2):
    phi_H = sum_j c_j f_j with c = hermitian_to_real(H) (the basis of :func:`mfarray.linalg.real_basis`)."""
    xp = backend.namespace(frame.s)
    outer = xp.conj(frame.s)[:, :, None] * frame.s[:, None, :]  # (conj s_c s_d): phi = sum H_cd s_c conj(s_d)
    return linalg.hermitian_to_real(outer)


def orthonormal_basis(frame: SectionFrame, weight: Array, what: str = "points") -> Array:
    """B (n_s, n_s) with E_w[s'_c conj(s'_d)] = delta_cd for s' = s_hat B: the sections made
    orthonormal in L^2(h^k, weight) (Cholesky Q = L L^dagger of the Gram Q_cd = E_w[s_c conj(s_d)],
    B = L^{-T}).  With the MC weights of a sample this is the L^2 product of the CY measure.

    frame.s (N, n_s), weight (N,) >= 0.  Refused (ValueError, naming the point set ``what``) when
    the points of positive weight do not determine the sections: fewer of them than n_s, or a
    singular Gram matrix.
    """
    xp = backend.namespace(frame.s)
    n, n_s = frame.s.shape
    carried = int(xp.sum(xp.astype(weight > 0, xp.int64)))
    hint = (f"{what} has {n} point(s), {carried} of positive weight: they do not determine the n_s = {n_s} "
            f"sections (at least n_s points of positive weight are needed, on which the sections are "
            f"independent); pass more {what} points (N >> n_s^2 = {n_s * n_s}) or a lower degree")
    if carried < n_s:
        raise ValueError(hint)
    w = weight / xp.sum(weight)
    Q = xp.matrix_transpose(frame.s * w[:, None]) @ xp.conj(frame.s)
    L = _cholesky(Q, "the sections' Gram matrix E_w[s conj(s)^T]", hint)
    return xp.matrix_transpose(xp.linalg.inv(L))


@dataclasses.dataclass(frozen=True, eq=False)
class SectionPotential:
    """The linear phi-model over degree-k sections: phi = s'^T H conj(s') (eq. 1), s' = s_hat B,
    with parameters theta = hermitian_to_real(H), P = n_s^2 real numbers (the weights of
    :func:`phi_features`), theta = 0 at g_FS.

    ``basis`` B (n_s, n_s) complex, or None for the monomials themselves.  The function space is
    the same for every invertible B, but the phi-NTK Theta = J J^T (eq. 2.7) -- and so the
    flow -- is not: the monomials' norms spread over orders of magnitude at k >= 4 and
    gradient descent stalls, where the L^2-orthonormal sections (:meth:`orthonormal`) keep
    going (docs/paper-notes.md).

    ``reference`` (k_ref, H_ref): the reference metric g_0 of (B.6) is the algebraic metric
    (1/k_ref) dd-bar log(s^T H_ref conj s) (e.g. Donaldson's balanced metric,
    :func:`mfarray.kahler.balanced_metric`) instead of g_FS: g = g_0 + i dd-bar phi.  Same class,
    a better start: at k = 4 on 2 x 10^4 quintic points, 60 steps reach test sigma 0.022 from the
    balanced metric against 0.028 from g_FS.

    Global parameters: the metric at any point of X, in its own chart, follows from theta, so
    test prediction is exact and no point is rejected.  ``linear = True``: the model is linear in
    theta, so its tangent kernel is frozen.
    """

    k: int = 3
    basis: Any = None
    reference: Any = None
    linear = True

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= MAX_DEGREE:
            raise ValueError(f"k must be an integer in [1, {MAX_DEGREE}] (the degree of the sections); got {self.k!r}")

    @classmethod
    def orthonormal(cls, surface: Hypersurface, z: Array, patch: Array, elim: Array, weight: Array,
                    k: int = 3, what: str = "points") -> SectionPotential:
        """The model over sections orthonormal in L^2 of the measure sampled by (z, weight) (the
        point set ``what``, for messages: :func:`orthonormal_basis`)."""
        frame = section_frame(surface, z, section_exponents(surface, k), patch, elim)
        return cls(k, orthonormal_basis(frame, weight, what))

    def exponents(self, surface: Hypersurface) -> np.ndarray:
        return section_exponents(surface, self.k)

    def size(self, surface: Hypersurface) -> int:
        """P = n_s^2, the number of real parameters."""
        return section_count(surface, self.k) ** 2

    def init(self, surface: Hypersurface) -> np.ndarray:
        """theta = 0 (phi = 0: the flow starts at the reference metric), (P,) float64."""
        return np.zeros(self.size(surface))

    def prepare(self, surface: Hypersurface, z: Array, patch: Array, elim: Array) -> SectionFrame:
        """Per-point data: the :class:`SectionFrame` of the basis sections in the given charts."""
        frame = section_frame(surface, z, self.exponents(surface), patch, elim)
        if self.reference is not None:
            k_ref, H_ref = self.reference
            raw = frame if k_ref == self.k else section_frame(surface, z, section_exponents(surface, k_ref), patch, elim)
            frame = frame._replace(g_ref=algebraic_metric(raw, backend.namespace(raw.s).asarray(H_ref)))
        if self.basis is None:
            return frame
        B = backend.namespace(frame.s).asarray(self.basis)
        return frame._replace(s=frame.s @ B, ds=frame.ds @ B)

    def hermitian(self, theta: Array, frame: SectionFrame) -> Array:
        return linalg.real_to_hermitian(theta, frame.s.shape[-1])

    def ddbar(self, theta: Array, frame: SectionFrame) -> Array:
        """i dd-bar phi_theta at each point in its chart, (N, kd, kd)."""
        return phi_metric(frame, self.hermitian(theta, frame), g0=0.0)

    def metric(self, theta: Array, frame: SectionFrame) -> Array:
        """g = g_0 + i dd-bar phi_theta, (N, kd, kd) (g_0 = g_FS or the reference metric)."""
        return (frame.g_fs if frame.g_ref is None else frame.g_ref) + self.ddbar(theta, frame)

    def vjp(self, theta: Array, frame: SectionFrame, G: Array) -> Array:
        """d/dtheta of sum_x Re tr(G_x^dagger g_x) for Hermitian G (N, kd, kd): (P,) float64."""
        return linalg.hermitian_to_real(phi_metric_vjp(frame, G))

    def values(self, theta: Array, frame: SectionFrame) -> Array:
        """phi_theta at each point, (N,) real."""
        return phi_values(frame, self.hermitian(theta, frame))

    def values_vjp(self, theta: Array, frame: SectionFrame, c: Array) -> Array:
        """d/dtheta of sum_x c_x phi_theta(x) for real c (N,): phi_features^T c, (P,) float64."""
        xp = backend.namespace(frame.s)
        outer = xp.matrix_transpose(xp.conj(frame.s) * c[:, None]) @ frame.s  # sum_x c conj(s) s^T
        return linalg.hermitian_to_real(outer)

    def describe(self) -> dict:
        return {"name": "SectionPotential", "k": int(self.k),
                "basis": "monomial" if self.basis is None else "given (variable section_basis)",
                "reference": "fubini-study" if self.reference is None else
                {"k": int(self.reference[0]), "H": "variable reference_H"},
                "phi": "s'^T H conj(s'), s' = s_hat B over degree-k sections modulo p, theta = hermitian_to_real(H)"}


PART = 1024
"""Points per part of a phi-network's evaluation: :class:`NetworkPotential` and
:class:`TangentPotential` run their parts on the usable cores (:func:`mfarray.backend.thread_map`)
and combine them in order, so the numbers do not depend on the thread count."""


def _on_parts(fn, frame: SectionFrame, *per_point: Array, reduce: bool = False) -> Array:
    """``fn(part, *arrays of the part)`` over parts of :data:`PART` points, on threads (one for
    CuPy): concatenated along the points, or summed in part order with ``reduce``."""
    n = frame.s.shape[0]
    parts = [slice(i, min(i + PART, n)) for i in range(0, n, PART)] or [slice(0, 0)]
    xp = backend.namespace(frame.s)
    out = backend.thread_map(lambda sl: fn(frame.take(sl), *(a[sl] for a in per_point)), parts,
                             threads=1 if backend.is_cupy(frame.s) else None)
    if not reduce:
        return xp.concat(out)
    total = out[0]
    for r in out[1:]:
        total = total + r
    return total


@dataclasses.dataclass(frozen=True)
class NetworkPotential:
    """A phi-network (:class:`mfarray.kahler.network.PhiNetwork`) as a potential spec, so the one
    integrator moves it (full-batch gradient descent, the phi-flows B.20/B.21 through its
    evolving tangent kernel): phi = MLP(s_hat s_hat^dagger), g = g_FS + i dd-bar phi.  Not
    linear: every trial step re-evaluates the network.  Adam on mini-batches is
    :func:`mfarray.kahler.train_phi_network`."""

    config: _network.PhiNetwork = dataclasses.field(default_factory=_network.PhiNetwork)
    linear = False

    def size(self, surface: Hypersurface) -> int:
        return _network.num_params(self.config, surface)

    def init(self, surface: Hypersurface) -> Array:
        return _network.init(self.config, surface)

    def prepare(self, surface: Hypersurface, z: Array, patch: Array, elim: Array) -> SectionFrame:
        return section_frame(surface, z, section_exponents(surface, self.config.k), patch, elim)

    def metric(self, theta: Array, frame: SectionFrame) -> Array:
        return _on_parts(lambda f: _network.metric(self.config, theta, f), frame)

    def ddbar(self, theta: Array, frame: SectionFrame) -> Array:
        xp = backend.namespace(frame.g_fs)
        return self.metric(theta, frame) - 0.5 * (frame.g_fs + xp.conj(xp.matrix_transpose(frame.g_fs)))

    def vjp(self, theta: Array, frame: SectionFrame, G: Array) -> Array:
        return _on_parts(lambda f, g: _network.metric_vjp(self.config, theta, f, g), frame, G, reduce=True)

    def values(self, theta: Array, frame: SectionFrame) -> Array:
        return _on_parts(lambda f: _network.phi(self.config, theta, f), frame)

    def values_vjp(self, theta: Array, frame: SectionFrame, c: Array) -> Array:
        return _on_parts(lambda f, cc: _network.phi_vjp(self.config, theta, f, cc), frame, c, reduce=True)

    def describe(self) -> dict:
        return {"name": "NetworkPotential", **self.config.to_attrs()}


@dataclasses.dataclass(frozen=True, eq=False)
class TangentPotential:
    r"""A phi-network linearised at fixed parameters ``at`` (theta_*): the potential

    .. math::

        \phi_\delta = \frac{\partial\phi_\theta}{\partial\theta}\Big|_{\theta_*}\cdot\delta,
        \qquad g = g_{FS} + i\partial\bar\partial\phi_\delta\quad(B.6),

    with parameters delta (P,), zero at the start (g = g_FS).  Linear in delta, over the
    network's tangent features, so its tangent kernel J J^T is the phi-network's empirical
    metric-NTK at theta_*, frozen (2.7 with global parameters;
    :func:`mfarray.experiments.phi_kernel.phi_network_ntk`): :func:`mfarray.kahler_flow` with it
    is the frozen-kernel flow of that kernel from g_FS -- the phi-network's after-kernel
    (theta_* trained) or its initial NTK (theta_* = theta_0: the linearised network 2.11, started
    at g_FS).  Chart-free like the network.  A step costs a reverse pass over the train points
    (:func:`mfarray.kahler.network.metric_vjp`) and a forward-tangent pass over train and test
    points (:func:`~mfarray.kahler.network.metric_jvp`); nothing of size N x P is formed.
    """

    config: _network.PhiNetwork
    at: Any
    linear = True

    def __post_init__(self):
        if not isinstance(self.config, _network.PhiNetwork):
            raise TypeError(f"config must be a mfarray.kahler.PhiNetwork; got {type(self.config).__name__}")
        at = self.at if backend.is_cupy(self.at) else np.asarray(self.at)
        if at.ndim != 1 or not backend.namespace(at).isdtype(at.dtype, "real floating"):
            raise ValueError(f"at must be the phi-network's flat real parameters (P,), e.g. a trained result's "
                             f"'params'; got shape {tuple(at.shape)}, dtype {at.dtype}")
        if not bool(backend.namespace(at).all(backend.namespace(at).isfinite(at))):
            raise ValueError("at has non-finite entries (NaN or inf): pass finite parameters theta_*, e.g. a "
                             "trained result's 'params'")
        object.__setattr__(self, "at", at)

    def size(self, surface: Hypersurface) -> int:
        return _network.num_params(self.config, surface)

    def init(self, surface: Hypersurface) -> np.ndarray:
        """delta = 0 (the flow starts at g_FS), (P,) float64."""
        if self.at.shape[0] != self.size(surface):
            raise ValueError(f"at has {self.at.shape[0]} parameters; the network has {self.size(surface)} on this "
                             f"surface: pass parameters of this config")
        return np.zeros(self.size(surface))

    def prepare(self, surface: Hypersurface, z: Array, patch: Array, elim: Array) -> SectionFrame:
        return section_frame(surface, z, section_exponents(surface, self.config.k), patch, elim)

    def ddbar(self, theta: Array, frame: SectionFrame) -> Array:
        """i dd-bar phi_delta = J delta, (N, kd, kd)."""
        return _on_parts(lambda f: _network.metric_jvp(self.config, self.at, f, theta), frame)

    def metric(self, theta: Array, frame: SectionFrame) -> Array:
        xp = backend.namespace(frame.g_fs)
        return 0.5 * (frame.g_fs + xp.conj(xp.matrix_transpose(frame.g_fs))) + self.ddbar(theta, frame)

    def vjp(self, theta: Array, frame: SectionFrame, G: Array) -> Array:
        """J^T G: the phi-network's parameter gradient at theta_* (independent of delta), (P,)."""
        return _on_parts(lambda f, g: _network.metric_vjp(self.config, self.at, f, g), frame, G, reduce=True)

    def values(self, theta: Array, frame: SectionFrame) -> Array:
        return _on_parts(lambda f: _network.phi_jvp(self.config, self.at, f, theta), frame)

    def values_vjp(self, theta: Array, frame: SectionFrame, c: Array) -> Array:
        return _on_parts(lambda f, cc: _network.phi_vjp(self.config, self.at, f, cc), frame, c, reduce=True)

    def describe(self) -> dict:
        return {"name": "TangentPotential", **self.config.to_attrs(),
                "linearised_at": "variable linearised_at (the phi-network's parameters theta_*)"}


class CosineFrame(NamedTuple):
    """Per-point data of :class:`CosinePotential`: the features' values f (N, M), their
    i dd-bar (N, kd, kd, M) and g_FS (N, kd, kd)."""

    f: Array
    ddf: Array
    g_fs: Array


@dataclasses.dataclass(frozen=True)
class CosinePotential:
    """A linear phi-model over cosine-net features of the projective embedding:

        phi = sum_j c_j f_j,   f_j(z) = sqrt(2/M) cos(omega_j . u(z) + b_j),
        u = hermitian_to_real(s_hat s_hat^dagger)  (degree-k sections; k = 1: z zbar^T/|z|^2),

    omega_j ~ N(0, scale^2 I), b_j ~ U[0, 2 pi) (random Fourier features of a Gaussian kernel in
    u, i.e. the cosine-net of 2.32 with fixed first layer).  Projectively invariant; i dd-bar
    in closed form from the jets of u (:func:`mfarray.kahler.network.features`):

        d_a dbar_b f_j = -sqrt(2/M) [cos(.) (omega_j . d_a u) conj(omega_j . d_b u) + sin(.) omega_j . d_a dbar_b u].

    Linear in c, so its tangent kernel is frozen like :class:`SectionPotential`'s.
    """

    n_features: int = 1024
    scale: float = 1.0
    k: int = 1
    seed: int = 0
    linear = True

    def __post_init__(self):
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, (int, np.integer)) or self.n_features < 1:
            raise ValueError(f"n_features must be a positive integer; got {self.n_features!r}")
        if not (backend.is_real(self.scale) and np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number (the frequencies' standard deviation); got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))

    def _draw(self, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence(int(self.seed)))
        return self.scale * rng.standard_normal((n_in, self.n_features)), rng.uniform(0, 2 * np.pi, self.n_features)

    def size(self, surface: Hypersurface) -> int:
        return int(self.n_features)

    def init(self, surface: Hypersurface) -> np.ndarray:
        return np.zeros(self.n_features)

    def prepare(self, surface: Hypersurface, z: Array, patch: Array, elim: Array) -> CosineFrame:
        frame = section_frame(surface, z, section_exponents(surface, self.k), patch, elim)
        jets = _network.features(frame)
        xp = backend.namespace(jets.u)
        omega, b = (xp.asarray(a) for a in self._draw(jets.u.shape[1]))
        arg = jets.u @ omega + b
        amp = (2.0 / self.n_features) ** 0.5
        wd = jets.du @ omega  # (N, kd, M)
        wdd = jets.ddu @ omega  # (N, kd, kd, M)
        ddf = -amp * (xp.cos(arg)[:, None, None, :] * wd[:, :, None, :] * xp.conj(wd)[:, None, :, :]
                      + xp.sin(arg)[:, None, None, :] * wdd)
        return CosineFrame(f=amp * xp.cos(arg), ddf=ddf, g_fs=frame.g_fs)

    def ddbar(self, theta: Array, data: CosineFrame) -> Array:
        return data.ddf @ backend.namespace(data.f).asarray(theta, dtype=data.ddf.dtype)

    def metric(self, theta: Array, data: CosineFrame) -> Array:
        return data.g_fs + self.ddbar(theta, data)

    def vjp(self, theta: Array, data: CosineFrame, G: Array) -> Array:
        xp = backend.namespace(data.f)
        return xp.real(xp.sum(xp.conj(G)[..., None] * data.ddf, axis=(0, 1, 2)))

    def values(self, theta: Array, data: CosineFrame) -> Array:
        return data.f @ theta

    def values_vjp(self, theta: Array, data: CosineFrame, c: Array) -> Array:
        return c @ data.f

    def describe(self) -> dict:
        return {"name": "CosinePotential", "n_features": int(self.n_features), "scale": float(self.scale),
                "k": int(self.k), "seed": int(self.seed)}
