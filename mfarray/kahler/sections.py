r"""Sections of O(k) on a hypersurface X = {p = 0} in P^n, and their derivatives in each
point's own chart.

Sections.  H^0(X, O(k)) is spanned by the monomials of degree k modulo p * (degree k - d).
For one polynomial p, the monomials NOT divisible by its leading monomial LT(p) (the
lexicographically largest exponent row with a non-zero coefficient, a Groebner basis of the
principal ideal (p)) are a basis: for the quintic C(k+4, 4) - C(k-1, 4) of them, 5, 15, 35,
70, 125, 205, 315, 460 for k = 1 ... 8.

Normalised sections and the covariant derivative.  With the FS potential K = log |z|^2 and
w = |z|^(-2k) = e^{-k K} (the hermitian metric h^k on O(k)),

    s_hat_c   = s_c(z) |z|^(-k)                                  (N, n_s)
    D_a s_hat_c = |z|^(-k) (d_a s_c - k d_a K s_c)               (N, kd, n_s)

with d_a the holomorphic derivative along the chart coordinate x_a (the chain rule through
the embedding Jacobian dz_i/dx_a of :func:`mfarray.geometry.charts.embedding_jacobian`).  Both
change only by the phase (lambda/|lambda|)^k under z -> lambda z, so every bilinear
s_hat s_hat^dagger, D s_hat s_hat^dagger, D s_hat (D s_hat)^dagger is projectively invariant,
and the identity

    d_a dbar_b (s_c conj(s_d) w) = D_a s_hat_c conj(D_b s_hat_d) - k g_FS,ab s_hat_c conj(s_hat_d)

(a two-line computation from d_a dbar_b w = w (k^2 K_a K_b - k K_ab), K_ab = g_FS) gives i dd-bar
of every Kähler potential of :mod:`mfarray.kahler.potentials` without finite differences and
in any chart.  Bare array code: NumPy or CuPy.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import backend
from ..geometry import charts, local

if TYPE_CHECKING:
    from ..geometry.hypersurface import Hypersurface

Array = Any

__all__ = [
    "MAX_DEGREE",
    "SectionFrame",
    "leading_monomial",
    "monomials",
    "section_count",
    "section_exponents",
    "section_frame",
    "section_gradient",
    "sections",
]


# the largest degree k of sections a model takes: the quintic has n_s = 1490 sections at k = 12, so a
# phi-kernel's n_s^2 features or a phi-network's first layer are already ~2 x 10^6 wide per point
MAX_DEGREE = 12


def leading_monomial(surface: Hypersurface) -> tuple[int, ...]:
    """LT(p): the lexicographically largest exponent row of p with a non-zero coefficient."""
    rows = [m for m, c in zip(surface.monomials, surface.coefficients) if c != 0]
    return max(rows)


@functools.cache
def monomials(n_ambient: int, k: int) -> np.ndarray:
    """All exponent rows of degree k in n_ambient variables, (C(k+n, n), n_ambient) int,
    lexicographically decreasing (z_0^k first)."""
    rows = [tuple(c.count(i) for i in range(n_ambient))
            for c in itertools.combinations_with_replacement(range(n_ambient), k)]
    out = np.array(sorted(rows, reverse=True), dtype=np.int64).reshape(-1, n_ambient)
    out.setflags(write=False)
    return out


def section_exponents(surface: Hypersurface, k: int) -> np.ndarray:
    """Exponents (n_s, n+1) of a monomial basis of H^0(X, O(k)): the degree-k monomials not
    divisible by :func:`leading_monomial` (p).  k >= 1 an integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (the degree of the sections); got {k!r}")
    m = monomials(surface.n_ambient, int(k))
    lt = np.asarray(leading_monomial(surface))
    return m[~np.all(m >= lt, axis=1)]


def section_count(surface: Hypersurface, k: int) -> int:
    """n_s = dim H^0(X, O(k)), the number of basis sections of degree k."""
    return int(section_exponents(surface, k).shape[0])


def _powers(z, kmax, xp):
    """z_i^p for p = 0 ... kmax: (N, n+1, kmax+1)."""
    out = [xp.ones_like(z)]
    for _ in range(kmax):
        out.append(out[-1] * z)
    return xp.stack(out, axis=-1)


def _gather(pw, exponents, xp):
    """pw[:, i, e_ci] as (N, n_s, n+1)."""
    n1 = exponents.shape[1]
    idx = xp.asarray(np.arange(n1)[None, :] * pw.shape[-1] + exponents)  # (n_s, n+1)
    flat = backend.per_row(pw)
    return xp.take(flat, xp.reshape(idx, (-1,)), axis=1).reshape((pw.shape[0],) + tuple(exponents.shape))


def sections(z: Array, exponents: np.ndarray) -> Array:
    """s_c(z) = prod_i z_i^(e_ci): (N, n+1) -> (N, n_s)."""
    xp = backend.namespace(z)
    e = np.asarray(exponents)
    factors = _gather(_powers(z, int(e.max(initial=0)), xp), e, xp)
    return xp.prod(factors, axis=-1)


def section_gradient(z: Array, exponents: np.ndarray) -> tuple[Array, Array]:
    """(s, ds/dz): (N, n_s) and (N, n_s, n+1), ds_c/dz_i = e_ci z^(e_c - 1_i) (no division by z_i)."""
    xp = backend.namespace(z)
    e = np.asarray(exponents)
    pw = _powers(z, int(e.max(initial=0)), xp)
    factors = _gather(pw, e, xp)  # (N, n_s, n+1)
    lowered = _gather(pw, np.maximum(e - 1, 0), xp) * xp.asarray(e.astype(np.float64))
    n1 = e.shape[1]
    grads = []
    for i in range(n1):  # the product of the other factors, times the lowered factor i
        others = [factors[..., j] for j in range(n1) if j != i]
        grads.append(lowered[..., i] * functools.reduce(lambda a, b: a * b, others))
    return xp.prod(factors, axis=-1), xp.stack(grads, axis=-1)


class SectionFrame(NamedTuple):
    """Sections of degree k at N points, each in its own chart (kd = complex dimension of X).

    s : (N, n_s) normalised sections s(z)/|z|^k; ds : (N, kd, n_s) covariant chart derivatives
    D_a s_hat; g_fs : (N, kd, kd) pulled-back FS metric (g_{a bbar} = d_a dbar_b log|z|^2);
    k : the degree.  z is the affine representative (z_patch = 1) of each point.
    """

    s: Array
    ds: Array
    g_fs: Array
    k: int
    g_ref: Array = None  # the reference metric g_0 of (B.6) where a potential sets one; None: g_FS

    def take(self, index: Any) -> SectionFrame:
        """The frame at the points ``index`` (a slice or an index array)."""
        return self._replace(s=self.s[index], ds=self.ds[index], g_fs=self.g_fs[index],
                             g_ref=None if self.g_ref is None else self.g_ref[index])


def section_frame(surface: Hypersurface, z: Array, exponents: np.ndarray, patch: Array | None = None,
                  elim: Array | None = None) -> SectionFrame:
    """The :class:`SectionFrame` of basis sections (``exponents``, from :func:`section_exponents`)
    at points z (N, n+1) on X, in the charts (patch, elim) (default: the paper's chart of each
    point; give (N,) arrays to use the charts of a point set)."""
    geo = local.chart_geometry(surface, z, patch, elim)
    xp = backend.namespace(geo.z)
    e = np.asarray(exponents)
    k = int(e[0].sum())
    za = geo.z
    jac = charts.embedding_jacobian(surface.n_ambient, geo.elim, geo.local, geo.slopes)  # (N, n+1, kd)
    norm2 = xp.sum(xp.real(za) ** 2 + xp.imag(za) ** 2, axis=-1)
    s, dsdz = section_gradient(za, e)
    ds = xp.matrix_transpose(dsdz @ jac)  # d_a s_c: (N, kd, n_s)
    dK = xp.sum(xp.conj(za)[..., :, None] * jac, axis=-2) / norm2[:, None]  # d_a log|z|^2: (N, kd)
    scale = norm2 ** (-k / 2)
    s_hat = s * scale[:, None]
    D = (ds - k * dK[..., :, None] * s[:, None, :]) * scale[:, None, None]
    return SectionFrame(s=s_hat, ds=D, g_fs=geo.g_fs, k=k)
