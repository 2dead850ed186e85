"""Hypersurfaces X = {p(z) = 0} in P^n given by monomials and coefficients (paper §3, eq. 3.1).

A :class:`Hypersurface` is a frozen, hashable description of a homogeneous polynomial

    p(z) = sum_k c_k prod_i z_i^{m_ki},     z in C^{n+1},  sum_i m_ki = degree for every k,

with vectorised evaluation of p and of its gradient dp/dz_j on arrays of shape
(..., n+1).  X is Calabi-Yau when degree = n + 1; its complex dimension is n - 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .. import backend


@dataclasses.dataclass(frozen=True)
class Hypersurface:
    """A homogeneous polynomial in P^n.

    Parameters
    ----------
    monomials : (K, n+1) non-negative integer exponents, one row per monomial.
    coefficients : (K,) complex coefficients.
    name : a label used in reports and Dataset attributes.
    """

    monomials: tuple
    coefficients: tuple
    name: str = ""

    def __init__(self, monomials, coefficients, name: str = ""):
        m = np.asarray(monomials)
        c = np.asarray(coefficients, dtype=complex)
        if m.ndim != 2:
            raise ValueError(
                f"monomials must be a 2-D array (n_monomials, n+1) of exponents; got shape {m.shape}"
            )
        if m.shape[1] < 2:
            raise ValueError(
                f"a hypersurface needs projective space P^n with n >= 1, i.e. monomials with at least "
                f"2 columns; got {m.shape[1]} column(s) (n = {m.shape[1] - 1})"
            )
        if m.shape[0] == 0:
            raise ValueError("monomials is empty: give at least one monomial")
        if not np.issubdtype(m.dtype, np.integer):
            if not np.all(np.isfinite(m)) or not np.all(m == np.round(m)):
                raise ValueError("monomials must be integer exponents")
            m = m.astype(int)
        if np.any(m < 0):
            raise ValueError("monomials must be non-negative exponents (a polynomial, not a Laurent polynomial)")
        if c.shape != (m.shape[0],):
            raise ValueError(
                f"coefficients must have shape ({m.shape[0]},), one per monomial; got {c.shape}"
            )
        if not np.all(np.isfinite(c)):
            raise ValueError("coefficients must be finite (no NaN or inf)")
        degrees = m.sum(axis=1)
        if np.any(degrees != degrees[0]):
            bad = sorted(set(degrees.tolist()))
            raise ValueError(
                f"the polynomial is not homogeneous: its monomials have degrees {bad}; "
                "every monomial must have the same total degree to define a hypersurface in P^n"
            )
        if degrees[0] == 0:
            raise ValueError("the polynomial is constant (degree 0): it defines no hypersurface")
        rows = [tuple(int(e) for e in row) for row in m]
        if len(set(rows)) != len(rows):
            raise ValueError("monomials contain duplicate rows: combine their coefficients into one")
        if np.all(c == 0):
            raise ValueError("all coefficients are zero: the polynomial vanishes identically")
        object.__setattr__(self, "monomials", tuple(rows))
        object.__setattr__(self, "coefficients", tuple(complex(v) for v in c))
        object.__setattr__(self, "name", str(name))

    # ----------------------------------------------------------------- properties
    @property
    def n(self) -> int:
        """Dimension of the ambient projective space P^n."""
        return len(self.monomials[0]) - 1

    @property
    def n_ambient(self) -> int:
        """Number of homogeneous coordinates, n + 1."""
        return self.n + 1

    @property
    def degree(self) -> int:
        return sum(self.monomials[0])

    @property
    def dim(self) -> int:
        """Complex dimension of X, n - 1 (the size of its Hermitian metric)."""
        return self.n - 1

    @property
    def is_calabi_yau(self) -> bool:
        return self.degree == self.n + 1

    def require_calabi_yau(self, what: str) -> None:
        """Raise a clear error when a Calabi-Yau quantity is asked of a non-CY hypersurface."""
        if not self.is_calabi_yau:
            raise ValueError(
                f"{what} needs a Calabi-Yau hypersurface (degree n+1 = {self.n + 1} in P^{self.n}); "
                f"{self.label} has degree {self.degree}"
            )

    def require_dimension(self, what: str) -> None:
        if self.dim < 1:
            raise ValueError(
                f"{what} needs a hypersurface of complex dimension >= 1 (n >= 2); "
                f"{self.label} lives in P^{self.n} and is a set of points"
            )

    @property
    def label(self) -> str:
        return self.name or f"degree-{self.degree} hypersurface in P^{self.n}"

    @functools.cached_property
    def _program(self):
        """Sparse evaluation program: per monomial, its coefficient and (variable, exponent) factors."""
        terms = []
        for row, c in zip(self.monomials, self.coefficients):
            terms.append((c, tuple((i, e) for i, e in enumerate(row) if e > 0)))
        max_exp = [max(row[i] for row in self.monomials) for i in range(self.n_ambient)]
        scale = max(abs(c) for c in self.coefficients)
        return tuple(terms), tuple(max_exp), scale

    # --------------------------------------------------------------- evaluation
    def _check_shape(self, z):
        if z.ndim < 1 or z.shape[-1] != self.n_ambient:
            raise ValueError(
                f"z must have shape (..., {self.n_ambient}) (homogeneous coordinates of P^{self.n}); "
                f"got shape {tuple(z.shape)}"
            )

    def _powers(self, z):
        """powers[i][e] = z_i^e for the exponents the polynomial uses (index 0 unused)."""
        _, max_exp, _ = self._program
        powers = []
        for i, top in enumerate(max_exp):
            zi = z[..., i]
            row = [None, zi]
            for _ in range(2, top + 1):
                row.append(row[-1] * zi)
            powers.append(row)
        return powers

    @staticmethod
    def _product(factors):
        out = factors[0]
        for f in factors[1:]:
            out = out * f
        return out

    def __call__(self, z):
        """p(z), shape (...): one product per monomial factor, no temporaries beyond (...)."""
        xp = backend.namespace(z)
        self._check_shape(z)
        terms, _, _ = self._program
        pw = self._powers(z)
        p = xp.zeros(z.shape[:-1], dtype=xp.result_type(z.dtype, xp.complex128))
        for c, factors in terms:
            p = p + c * self._product([pw[i][e] for i, e in factors])
        return p

    def value_and_gradient(self, z):
        """p(z) with shape (...) and dp/dz_j with shape (..., n+1), division free."""
        xp = backend.namespace(z)
        self._check_shape(z)
        terms, _, _ = self._program
        pw = self._powers(z)
        dtype = xp.result_type(z.dtype, xp.complex128)
        p = xp.zeros(z.shape[:-1], dtype=dtype)
        grad = [xp.zeros(z.shape[:-1], dtype=dtype) for _ in range(self.n_ambient)]
        for c, factors in terms:
            values = [pw[i][e] for i, e in factors]
            p = p + c * self._product(values)
            for j, (i, e) in enumerate(factors):
                # d/dz_i of z_i^e times the product of the other factors
                others = values[:j] + values[j + 1 :]
                deriv = c * e if e == 1 else (c * e) * pw[i][e - 1]
                grad[i] = grad[i] + (deriv * self._product(others) if others else deriv)
        grad = [g if g.shape == z.shape[:-1] else xp.broadcast_to(g, z.shape[:-1]) for g in grad]
        return p, xp.stack(grad, axis=-1)

    def gradient(self, z):
        """dp/dz_j, shape (..., n+1)."""
        return self.value_and_gradient(z)[1]

    def relative_residual(self, z):
        """|p(z)| / (|z|^degree max_k |c_k|): scale-invariant distance from X (0 on X)."""
        xp = backend.namespace(z)
        norm = xp.sqrt(xp.sum(xp.abs(z) ** 2, axis=-1))
        return xp.abs(self(z)) / (norm**self.degree * self._program[2])

    def relative_gradient(self, z, dp=None):
        """|dp(z)| / (|z|^(degree-1) max_k |c_k|): vanishes at singular points of X."""
        xp = backend.namespace(z)
        if dp is None:
            dp = self.gradient(z)
        norm = xp.sqrt(xp.sum(xp.abs(z) ** 2, axis=-1))
        return xp.sqrt(xp.sum(xp.abs(dp) ** 2, axis=-1)) / (
            norm ** (self.degree - 1) * self._program[2]
        )

    # ------------------------------------------------------------ serialisation
    def to_attrs(self) -> dict:
        """JSON-friendly description (complex numbers split; they cannot go into Zarr attrs)."""
        return {
            "surface_name": self.name,
            "surface_monomials": [list(r) for r in self.monomials],
            "surface_coefficients_real": [v.real for v in self.coefficients],
            "surface_coefficients_imag": [v.imag for v in self.coefficients],
        }

    @classmethod
    def from_attrs(cls, attrs) -> "Hypersurface":
        try:
            coeffs = np.asarray(attrs["surface_coefficients_real"]) + 1j * np.asarray(
                attrs["surface_coefficients_imag"]
            )
            return cls(attrs["surface_monomials"], coeffs, name=attrs.get("surface_name", ""))
        except KeyError as exc:
            raise ValueError(
                f"these attributes do not describe a hypersurface (missing {exc}); "
                "was the Dataset made by mfarray.sample_points or points_from_z?"
            ) from None

    def __repr__(self) -> str:
        return f"Hypersurface({self.label!r}, n={self.n}, degree={self.degree}, monomials={len(self.monomials)})"


# ---------------------------------------------------------------- constructors
def fermat(n: int) -> Hypersurface:
    """The Fermat Calabi-Yau sum_i z_i^(n+1) = 0 in P^n (n=2 cubic curve, 3 quartic K3, 4 quintic)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (the dimension of P^n); got {n!r}")
    names = {2: "Fermat cubic curve", 3: "Fermat quartic K3", 4: "Fermat quintic"}
    return Hypersurface((n + 1) * np.eye(n + 1, dtype=int), np.ones(n + 1), name=names.get(n, f"Fermat CY in P^{n}"))


def fermat_quintic() -> Hypersurface:
    """z_0^5 + ... + z_4^5 = 0 in P^4 (paper eq. 3.1): the default everywhere."""
    return fermat(4)


def cubic_curve() -> Hypersurface:
    """The Fermat cubic z_0^3 + z_1^3 + z_2^3 = 0 in P^2, an elliptic curve (complex dimension 1)."""
    return fermat(2)


def quartic_k3() -> Hypersurface:
    """The Fermat quartic K3 surface sum z_i^4 = 0 in P^3."""
    return fermat(3)


def dwork_quintic(psi: complex) -> Hypersurface:
    """The Dwork family sum z_i^5 - 5 psi prod z_i = 0 in P^4 (conifold at psi^5 = 1)."""
    psi = complex(psi)
    if not math.isfinite(psi.real) or not math.isfinite(psi.imag):
        raise ValueError(f"psi must be finite; got {psi}")
    m = np.vstack([5 * np.eye(5, dtype=int), np.ones((1, 5), dtype=int)])
    c = np.concatenate([np.ones(5), [-5 * psi]])
    if psi == 0:
        m, c = m[:5], c[:5]
    return Hypersurface(m, c, name=f"Dwork quintic psi={psi:g}")
