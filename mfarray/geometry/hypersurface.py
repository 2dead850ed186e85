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
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backend

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

Array = Any  # a NumPy, CuPy or Dask array


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

    def __init__(self, monomials: ArrayLike, coefficients: ArrayLike, name: str = "") -> None:
        m = _exponent_array(monomials)
        c = _coefficient_array(coefficients)
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
                raise ValueError(f"monomials must be integer exponents; got {m.tolist()!r}")
            m = m.astype(int)
        if np.any(m < 0):
            raise ValueError("monomials must be non-negative exponents (a polynomial, not a Laurent polynomial)")
        if c.shape != (m.shape[0],):
            raise ValueError(
                f"coefficients must have shape ({m.shape[0]},), one per monomial; got {c.shape}"
            )
        if not np.all(np.isfinite(c)):
            bad = np.flatnonzero(~np.isfinite(c)).tolist()
            raise ValueError(
                f"coefficients must be finite (no NaN or inf); got {c[bad].tolist()} at positions {bad}"
            )
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

    def same_polynomial(self, other: Hypersurface) -> bool:
        """Whether ``other`` has this polynomial: the same monomials with the same coefficients,
        whatever their order and the names (``dwork_quintic(0)`` is the Fermat quintic)."""
        def terms(h: Hypersurface) -> dict:
            return {tuple(int(e) for e in m): complex(c) for m, c in zip(h.monomials, h.coefficients) if c != 0}

        return terms(self) == terms(other)

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
        # the same monomials with coefficients |c_k|: evaluated at |z| they give the sizes
        # of the terms of p and of dp (the scales of relative_residual / relative_gradient)
        abs_terms = tuple((abs(c), factors) for c, factors in terms)
        return tuple(terms), tuple(max_exp), abs_terms

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

    def __call__(self, z: Array) -> Array:
        """p(z), shape (...): one product per monomial factor, no temporaries beyond (...)."""
        xp = backend.namespace(z)
        self._check_shape(z)
        terms, _, _ = self._program
        pw = self._powers(z)
        p = xp.zeros(z.shape[:-1], dtype=xp.result_type(z.dtype, xp.complex128))
        for c, factors in terms:
            p = p + c * self._product([pw[i][e] for i, e in factors])
        return p

    def value_and_gradient(self, z: Array) -> tuple[Array, Array]:
        """p(z) with shape (...) and dp/dz_j with shape (..., n+1), division free."""
        xp = backend.namespace(z)
        self._check_shape(z)
        terms, _, _ = self._program
        return self._evaluate(xp, z, terms, xp.result_type(z.dtype, xp.complex128))

    def _evaluate(self, xp, z, terms, dtype):
        """sum_k c_k z^m_k and its gradient for the given (c_k, factors) terms."""
        pw = self._powers(z)
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

    def gradient(self, z: Array) -> Array:
        """dp/dz_j, shape (..., n+1)."""
        return self.value_and_gradient(z)[1]

    def _normalised(self, z):
        """(z / max_i |z_i|, max_i |z_i|): p is homogeneous, so the relative measures are too."""
        xp = backend.namespace(z)
        self._check_shape(z)
        top = xp.max(xp.abs(z), axis=-1)
        safe = xp.where(top > 0, top, 1.0)
        return z / safe[..., None], top

    def term_scales(self, z: Array) -> tuple[Array, Array]:
        """(S(z), dS(z)): the natural sizes of p(z) and of dp/dz_j(z), shapes (...) and (..., n+1).

        S(z) = sum_k |c_k| |z^m_k| is the sum of the sizes of the terms of p, which cancel
        exactly where z is on X; dS_j(z) = sum_k |c_k| m_kj |z^(m_k - e_j)| is the same for
        dp/dz_j.  Rounding in evaluating p (or dp/dz_j) is a few ulps of these, at any degree.
        """
        xp = backend.namespace(z)
        _, _, abs_terms = self._program
        a = xp.abs(z)
        return self._evaluate(xp, a, abs_terms, a.dtype)

    @staticmethod
    def _ratio(xp, num, den):
        """num / den with 0 where den = 0 (then num = 0 exactly: every term vanishes)."""
        pos = den > 0
        return xp.where(pos, num / xp.where(pos, den, 1.0), 0.0)

    def relative_residual(self, z: Array) -> Array:
        """|p(z)| / sum_k |c_k z^m_k|: scale-invariant backward error of z as a point of X.

        0 on X; a value r means p(z) = 0 after changing each coefficient c_k by at most a
        relative r, so rounding gives r of a few 1e-16 for points computed on X at any degree
        and n, while points off X have r of order 1 (it is <= 1 for any z).  Points whose
        every monomial vanishes are exactly on X (0).  NaN for the zero vector.
        """
        xp = backend.namespace(z)
        w, top = self._normalised(z)
        s, _ = self.term_scales(w)
        out = self._ratio(xp, xp.abs(self(w)), s)
        return xp.where(top > 0, out, xp.nan)

    def relative_gradient(self, z: Array, dp: Array | None = None) -> Array:
        """|dp(z)| / |dS(z)| (see :meth:`term_scales`): vanishes at singular points of X.

        Scale invariant, in [0, 1] up to rounding for every z, 1 everywhere on the Fermat
        surfaces (which are smooth) and about 1e-16 at a singular point, where the terms of
        each dp/dz_j cancel.  ``dp``: the gradient of p at this z, if already computed.
        0 where every term of dp vanishes (then dp = 0); NaN for the zero vector.
        """
        xp = backend.namespace(z)
        w, top = self._normalised(z)
        if dp is None:
            dp = self.gradient(w)
        else:  # dp is homogeneous of degree d-1: bring it to w = z / top step by step (no overflow)
            inv = xp.where(top > 0, 1.0 / xp.where(top > 0, top, 1.0), 1.0)[..., None]
            for _ in range(self.degree - 1):
                dp = dp * inv
        _, ds = self.term_scales(w)
        num = xp.sqrt(xp.sum(xp.abs(dp) ** 2, axis=-1))
        den = xp.sqrt(xp.sum(ds**2, axis=-1))
        out = self._ratio(xp, num, den)
        return xp.where(top > 0, out, xp.nan)

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
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Hypersurface:
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


def _exponent_array(monomials):
    """monomials as a NumPy array of numbers (TypeError for strings, booleans, objects)."""
    m = np.asarray(monomials)
    if m.dtype.kind not in "iuf":
        raise TypeError(
            "monomials must be integer exponents (a 2-D array of ints, one row per monomial); "
            f"got an array of dtype {m.dtype} ({'booleans' if m.dtype.kind == 'b' else 'not numbers'})"
        )
    return m


def _coefficient_array(coefficients):
    """coefficients as complex128 (TypeError naming the argument for strings, booleans, None...)."""
    c = np.asarray(coefficients)
    if c.dtype.kind == "O":  # Python objects: accept numbers (Fraction, Decimal, ...), nothing else
        flat = c.ravel().tolist()
        bad = [v for v in flat if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Number)]
        if not bad:
            try:
                return np.array([complex(v) for v in flat], dtype=complex).reshape(c.shape)
            except (TypeError, ValueError, OverflowError):
                bad = flat
    elif c.dtype.kind in "iufc":
        # a Python sequence mixing True/False with numbers becomes an int array: look inside
        mixed = [] if isinstance(coefficients, np.ndarray) else [
            v for v in np.asarray(coefficients, dtype=object).ravel().tolist()
            if isinstance(v, (bool, np.bool_))
        ]
        if not mixed:
            return c.astype(complex)
        bad = mixed
    else:
        bad = c.ravel().tolist()
    raise TypeError(
        "coefficients must be real or complex numbers, one per monomial (not strings, booleans "
        f"or None); got {bad[:3]!r} (dtype {c.dtype}). Convert them first, e.g. complex('1+2j')"
    )


# ---------------------------------------------------------------- constructors
def fermat(n: int) -> Hypersurface:
    """The Fermat Calabi-Yau sum_i z_i^(n+1) = 0 in P^n (n=2 cubic curve, 3 quartic K3, 4 quintic)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer >= 1 (the dimension of P^n), not a bool or float; got {n!r}")
    if n < 1:
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
    if isinstance(psi, (bool, np.bool_)) or not isinstance(psi, (int, float, complex, np.number)):
        raise TypeError(f"psi must be a (complex) number; got {psi!r}")
    psi = complex(psi)
    if not math.isfinite(psi.real) or not math.isfinite(psi.imag):
        raise ValueError(f"psi must be finite; got {psi}")
    m = np.vstack([5 * np.eye(5, dtype=int), np.ones((1, 5), dtype=int)])
    c = np.concatenate([np.ones(5), [-5 * psi]])
    if psi == 0:
        m, c = m[:5], c[:5]
    return Hypersurface(m, c, name=f"Dwork quintic psi={psi:g}")


SURFACE_NAMES = "quintic, cubic, k3, fermat:N or dwork:PSI (e.g. dwork:0.5)"


def surface_named(spec: str) -> Hypersurface:
    """A surface by name, as in config files and on the command line: ``'quintic'``
    (Fermat), ``'cubic'``, ``'k3'`` (Fermat quartic), ``'fermat:N'`` (degree N+1 in P^N),
    ``'dwork:PSI'`` (the Dwork quintic at psi, complex allowed, e.g. ``'dwork:0.5+0.1j'``)."""
    if not isinstance(spec, str):
        raise TypeError(f"a surface name must be a string ({SURFACE_NAMES}); got {spec!r}")
    name, _, arg = spec.partition(":")
    name = name.strip().lower().replace("-", "_")
    if arg and name not in ("fermat", "dwork"):
        raise ValueError(f"surface {spec!r}: {name} takes no argument after ':'; use {SURFACE_NAMES}")
    try:
        if name in ("quintic", "fermat_quintic"):
            return fermat_quintic()
        if name in ("cubic", "cubic_curve"):
            return cubic_curve()
        if name in ("k3", "quartic", "quartic_k3"):
            return quartic_k3()
        if name == "fermat":
            return fermat(int(arg))
        if name == "dwork":
            return dwork_quintic(complex(arg.replace(" ", "")))
    except ValueError as exc:
        raise ValueError(f"surface {spec!r}: {exc}") from None
    raise ValueError(f"unknown surface {spec!r}; use {SURFACE_NAMES}")
