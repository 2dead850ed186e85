r"""Hermitian metrics as arrays: determinant, LDL pivots, inverse, the one validity rule, and
the orthonormal real basis.

Metrics are complex arrays ``g`` of shape (N, k, k) with ``g[..., b, c] = g_{b cbar}``.  Every
layer above (losses, measures, flows, evaluation) asks this module what a valid metric is, so
there is exactly one answer:

**A metric is valid** when it is finite, Hermitian (max |g - g^dagger| <= ``HERMITIAN_RTOL``
max |g|, per point), positive definite (every LDL^H pivot > 0) and not numerically singular:

    rcond(g) = det g / (tr g * e_{k-1}(g)) >= MARGIN,

where e_{k-1} is the sum of the principal (k-1)-minors (= det g tr g^{-1}).  Since
tr g >= lambda_max and tr g^{-1} >= 1/lambda_min,

    lambda_min / (k^2 lambda_max) <= rcond(g) <= lambda_min / lambda_max,

so every valid metric has lambda_min >= MARGIN lambda_max (a metric is refused at worst when
lambda_min / lambda_max < k^2 MARGIN).  MARGIN = 1e-14 (about 45 eps) is above the rounding
error of the LDL pivots (about k eps lambda_max), so it refuses metrics within rounding of
singular, whose sign depends on the order of floating-point operations (a last pivot of
+4e-17 that a second evaluation called -4e-17); and it keeps the worst FS chart metric seen in
practice: 200 quintic points moved into chart (0, 1) by ``express_in_chart`` have
lambda_min / lambda_max down to 2.1e-14 (rcond 2.06e-14, lambda_max 6.8e10).

:func:`metrics` computes all of it in one pass and carries det and the inverse on, so a flow
step factorises each metric once.  Bare array code: NumPy or CuPy, namespace from the inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from . import backend

Array = Any  # a NumPy, CuPy or Dask array

__all__ = [
    "MARGIN", "HERMITIAN_RTOL", "CANCELLED", "Metrics", "metrics", "valid", "require_valid", "hermitian_det",
    "ldl_pivots", "positive_definite", "hermitian_part", "to_rows", "from_rows", "metrics_rows",
    "hermitian_to_real", "real_to_hermitian", "real_basis",
]

MARGIN = 1e-14
HERMITIAN_RTOL = 1e-10


# --------------------------------------------------------------------------- factorisation
# the closed form keeps its value where |det g| >= CANCELLED * prod |g_bb|: its rounding error is
# at most ~6 eps prod |g_bb| (the size of its terms), so ~1e-9 relative there at worst
CANCELLED = 2.0**-20


def hermitian_det(g: Array) -> Array:
    """Real determinant of Hermitian matrices g (..., k, k) -> (...).

    k <= 3 uses the explicit cofactor expansion with real diagonals (about 10x faster than a
    batched LU for the quintic's 3 x 3 metrics); its terms cancel where g is ill-conditioned
    (9 % of det g_FS lost at cond 5e9, in a far chart), so where |det| < ``CANCELLED`` times the
    product of the diagonal, a positive-definite g's determinant is the product of its LDL
    pivots instead (backward stable: error ~ k eps cond g).  Larger k uses ``linalg.det``.
    """
    xp = backend.namespace(g)
    if g.ndim < 2 or g.shape[-1] != g.shape[-2] or g.shape[-1] == 0:
        raise ValueError(f"hermitian_det takes square k x k matrices (..., k, k), k >= 1; got shape {tuple(g.shape)}")
    k = g.shape[-1]
    if k == 1:
        return xp.real(g[..., 0, 0])
    if k > 3:
        return xp.real(xp.linalg.det(g))
    if backend.is_dask(g):
        return g.map_blocks(hermitian_det, drop_axis=(g.ndim - 2, g.ndim - 1), dtype=np.float64)
    a, b = xp.real(g[..., 0, 0]), xp.real(g[..., 1, 1])
    if k == 2:
        det, top = a * b - xp.abs(g[..., 0, 1]) ** 2, a * b
    else:
        c = xp.real(g[..., 2, 2])
        x, y, w = g[..., 0, 1], g[..., 0, 2], g[..., 1, 2]
        top = a * b * c
        det = top + 2.0 * xp.real(x * w * xp.conj(y)) - a * xp.abs(w) ** 2 - b * xp.abs(y) ** 2 - c * xp.abs(x) ** 2
    cancelled = ~(xp.abs(det) >= CANCELLED * xp.abs(top))  # NaN included: it stays NaN below
    if not bool(xp.any(cancelled)):
        return det
    det = xp.reshape(det, (-1,))
    where = xp.nonzero(xp.reshape(cancelled, (-1,)))[0]
    pivots = ldl_pivots(xp.reshape(g, (-1, k, k))[where])
    positive = xp.all(pivots > 0, axis=-1)  # else (indefinite, NaN) the closed form's value stands
    det[where] = xp.where(positive, xp.prod(pivots, axis=-1), det[where])
    return xp.reshape(det, g.shape[:-2])


def ldl_pivots(g: Array) -> Array:
    """Pivots (N, k) of the LDL^H elimination of Hermitian g (N, k, k), without pivoting.

    All pivots are > 0 exactly when g is positive definite, and det g is their product.  For
    positive-definite g the elimination is backward stable, so metrics with condition numbers
    up to ~1e14 are recognised, where leading minors from cofactor determinants fail beyond
    ~1e8.  Each metric is scaled to max |entry| = 1 first, so no product overflows, and the
    pivots scaled back.  Finite input expected (NaN pivots compare False).
    """
    xp = backend.namespace(g)
    top = xp.max(xp.reshape(xp.abs(g), (g.shape[0], g.shape[-1] ** 2)), axis=-1)
    top = xp.where(top > 0, top, 1.0)
    a = g / top[:, None, None]
    pivots = []
    while a.shape[-1] > 0:
        pivot = xp.real(a[:, 0, 0])
        pivots.append(pivot)
        safe = xp.where(pivot > 0, pivot, 1.0)[:, None, None]
        a = a[:, 1:, 1:] - a[:, 1:, :1] * a[:, :1, 1:] / safe  # Schur complement
    return xp.stack(pivots, axis=-1) * top[:, None]


def positive_definite(g: Array) -> Array:
    """(N,) bool: g (N, k, k) Hermitian is finite and positive definite (:func:`ldl_pivots`).

    Positivity alone; the validity rule of this module (:func:`valid`) also asks for a
    margin from singularity."""
    xp = backend.namespace(g)
    finite = xp.all(xp.isfinite(xp.reshape(g, (g.shape[0], g.shape[-1] ** 2))), axis=-1)
    safe = xp.where(finite[:, None, None], g, xp.eye(g.shape[-1], dtype=g.dtype))
    return finite & xp.all(ldl_pivots(safe) > 0, axis=-1)


def hermitian_part(g: Array) -> Array:
    """(g + g^dagger) / 2."""
    xp = backend.namespace(g)
    return 0.5 * (g + xp.conj(xp.matrix_transpose(g)))


def _adjugate(g, xp):
    """Adjugate of Hermitian g (N, k, k) for k <= 2 (exactly Hermitian), or None (k = 3 has its
    own row arithmetic, :func:`_inverse_rows3`; larger k use an LU inverse)."""
    k = g.shape[-1]
    if k == 1:
        return xp.ones_like(g)
    if k == 2:
        a, b, x = g[:, 0, 0], g[:, 1, 1], g[:, 0, 1]
        return xp.stack([xp.stack([b, -x], axis=-1), xp.stack([-xp.conj(x), a], axis=-1)], axis=-2)
    return None


# --------------------------------------------------------------------------- the validity rule
@dataclasses.dataclass(frozen=True, eq=False)
class Metrics:
    """Hermitian metrics with their factorisation facts, computed once (:func:`metrics`).

    rows : (k*k, N) float64, the real coordinates (:func:`hermitian_to_real`) as contiguous
        rows -- what flows move; the metrics are exactly Hermitian by construction.
    det : (N,) float, product of the LDL^H pivots (meaningful where ``valid``).
    rcond : (N,) float, det / (tr g e_{k-1}) (0 where not positive definite or, from
        :func:`metrics`, not Hermitian; NaN where not finite).
    valid : (N,) bool, the module's validity rule.
    g : (N, k, k) complex128 (built on first use); inverse : (N, k, k) and inverse_rows
        (k*k, N): g^{-1}, exactly Hermitian (on first use).
    """

    rows: object
    k: int
    det: object
    rcond: object
    valid: object
    parts: object = None  # k = 3: the (7, N) facts of the row arithmetic (private)

    @property
    def n(self) -> int:
        return int(self.rows.shape[-1])

    @property
    def all_valid(self) -> bool:
        return bool(self.valid.all())  # NumPy and CuPy arrays; the method skips two wrapper layers

    def take(self, columns: slice) -> Metrics:
        """The metrics of a range of points (views, no copies)."""
        parts = None if self.parts is None else self.parts[:, columns]
        return Metrics(self.rows[:, columns], self.k, self.det[columns], self.rcond[columns],
                       self.valid[columns], parts)

    @functools.cached_property
    def g(self) -> Array:
        return from_rows(self.rows, self.k)

    @functools.cached_property
    def inverse_rows(self) -> Array:
        return self.inverse_rows_times(None)

    def inverse_rows_times(self, c: Array | None) -> Array:
        """c (N,) times the rows of g^{-1}, (k*k, N) (c None: g^{-1}); in one pass for k = 3."""
        if self.parts is not None:
            return _inverse_rows3(self.rows, self.parts, c, backend.namespace(self.rows))
        return to_rows(self.inverse) if c is None else c * self.inverse_rows

    @functools.cached_property
    def inverse(self) -> Array:
        if self.parts is not None:
            return from_rows(self.inverse_rows, self.k)
        xp = backend.namespace(self.rows)
        g = self.g
        adj = _adjugate(g, xp)
        if adj is None:
            return hermitian_part(xp.linalg.inv(g))
        det = xp.where(self.det != 0, self.det, 1.0)
        return adj / xp.astype(det, adj.dtype)[:, None, None]


def to_rows(g: Array) -> Array:
    """(N, k, k) Hermitian -> (k*k, N) contiguous real coordinate rows."""
    r = hermitian_to_real(g)
    xp = backend.namespace(r)
    n, kk = r.shape
    return xp.reshape(xp.reshape(r.T, (kk * n,)), (kk, n))


def from_rows(rows: Array, k: int) -> Array:
    """(k*k, N) real coordinate rows -> (N, k, k) exactly Hermitian complex metrics."""
    return real_to_hermitian(rows.T, k)


def metrics(g: Array, *, margin: float = MARGIN, hermitian_rtol: float = HERMITIAN_RTOL) -> Metrics:
    """Factorise Hermitian metrics g (N, k, k) once: det, rcond, validity (module rule).

    Non-finite or non-Hermitian input is marked invalid, never raised on: callers decide
    (:func:`require_valid` raises with a count and the reason).  The metric kept is the
    exact Hermitian part of g.
    """
    g = _as_complex(g)
    if g.ndim != 3 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"metrics must have shape (N, k, k); got {tuple(g.shape)}")
    xp = backend.namespace(g)
    n, k = g.shape[0], g.shape[-1]
    flat = xp.reshape(g, (n, k * k))
    finite = xp.all(xp.isfinite(flat), axis=-1)
    g = xp.where(finite[:, None, None], g, xp.eye(k, dtype=g.dtype))
    with np.errstate(all="ignore"):
        top = xp.max(xp.abs(xp.reshape(g, (n, k * k))), axis=-1)
        asym = xp.max(xp.abs(xp.reshape(g - xp.conj(xp.matrix_transpose(g)), (n, k * k))), axis=-1)
    m = metrics_rows(to_rows(hermitian_part(g)), k, margin=margin)
    hermitian = asym <= hermitian_rtol * top
    ok = m.valid & finite & hermitian
    # rcond of what was given: NaN where it is not finite, 0 where not Hermitian (describe_invalid)
    rcond = xp.where(finite, xp.where(hermitian, m.rcond, 0.0), xp.nan)
    return dataclasses.replace(m, valid=ok, rcond=rcond)


def metrics_rows(rows: Array, k: int, *, margin: float = MARGIN) -> Metrics:
    """:func:`metrics` of metrics given by their real coordinate rows (k*k, N) (exactly
    Hermitian by construction; what the flows move).  k = 3 runs in real row arithmetic."""
    with np.errstate(all="ignore"):  # overflow or NaN makes a metric invalid, not a warning
        if k == 3:
            return _metrics_rows3(rows, margin, backend.namespace(rows))
        return _metrics_generic(rows, k, margin)


_S2 = math.sqrt(2.0)


def _metrics_rows3(r, margin, xp):
    """The validity rule for k = 3 on the rows r = (a, b, c, X, Y, W) of g = [[a, x, y], [., b, w],
    [., ., c]], where X = sqrt2 (Re x, Im x) etc. (:func:`hermitian_to_real`).

    The principal 2-minors c00 = bc - |w|^2, c11 = ac - |y|^2, c22 = ab - |x|^2 and
    c12 = aw - conj(x) y give det g = (c11 c22 - |c12|^2) / a (Desnanot-Jacobi), and g is
    positive definite exactly when a, c22 and det are > 0 (Sylvester; they are the LDL^H
    pivots' partial products a, a d2, a d2 d3).  Written into one (7, N) array of facts
    (c00, c11, c22, det, rcond, sqrt2 (Re, Im) of conj(x) y - a w) by about 40 operations on
    single contiguous rows: a flow step's cost here is per-call overhead, and an operation on
    a strided block or a broadcast one costs 2-4 times a row operation (measured, NumPy 2.4).
    NaN or inf entries give NaN minors, hence invalid metrics."""
    n = r.shape[-1]
    a, b, c = r[0], r[1], r[2]
    Xr, Xi, Yr, Yi, Wr, Wi = r[3], r[4], r[5], r[6], r[7], r[8]
    h = r[3:9] * r[3:9]
    h *= 0.5  # |x|^2 = h[0] + h[1], |y|^2 = h[2] + h[3], |w|^2 = h[4] + h[5]
    f = xp.empty((7, n), dtype=r.dtype)
    c00, c11, c22, det, rcond, v0, v1 = f
    xp.multiply(b, c, out=c00)
    c00 -= h[4]
    c00 -= h[5]
    xp.multiply(a, c, out=c11)
    c11 -= h[2]
    c11 -= h[3]
    xp.multiply(a, b, out=c22)
    c22 -= h[0]
    c22 -= h[1]
    xp.multiply(Xr, Yr, out=v0)  # 2 conj(x) y = X . Y + i (Xr Yi - Xi Yr)
    v0 += Xi * Yi
    xp.multiply(Xr, Yi, out=v1)
    v1 -= Xi * Yr
    f[5:7] *= 1.0 / _S2
    v0 -= a * Wr
    v1 -= a * Wi
    xp.multiply(v0, v0, out=det)  # 2 |c12|^2
    det += v1 * v1
    det *= -0.5
    det += c11 * c22
    det /= a
    positive = xp.minimum(a, xp.minimum(c22, det)) > 0  # NaN compares False
    tr = a + b
    tr += c
    xp.add(c00, c11, out=rcond)
    rcond += c22
    rcond *= tr  # tr g e_2(g)
    xp.divide(det, rcond, out=rcond)
    ok = positive & (rcond >= margin)
    rcond[~positive] = 0.0
    return Metrics(rows=r, k=3, det=det, rcond=rcond, valid=ok, parts=f)


def _inverse_rows3(r, f, c, xp):
    """Rows of c g^{-1} = (c / det g) adj(g) for k = 3 (c (N,), or None for 1), from the rows r
    of g and the facts f of :func:`_metrics_rows3` (row arithmetic as there).  The off-diagonal
    entries of adj(g) are adj_01 = y conj(w) - x c, adj_02 = x w - y b, adj_12 = conj(x) y - a w."""
    Xr, Xi, Yr, Yi, Wr, Wi = r[3], r[4], r[5], r[6], r[7], r[8]
    out = xp.empty(r.shape, dtype=r.dtype)
    out[0:3] = f[0:3]
    o3, o4, o5, o6 = out[3], out[4], out[5], out[6]
    xp.multiply(Yr, Wr, out=o3)  # 2 Re(y conj(w))
    o3 += Yi * Wi
    xp.multiply(Yi, Wr, out=o4)  # 2 Im(y conj(w))
    o4 -= Yr * Wi
    xp.multiply(Xr, Wr, out=o5)  # 2 Re(x w)
    o5 -= Xi * Wi
    xp.multiply(Xr, Wi, out=o6)  # 2 Im(x w)
    o6 += Xi * Wr
    out[3:7] *= 1.0 / _S2
    o3 -= Xr * r[2]
    o4 -= Xi * r[2]
    o5 -= Yr * r[1]
    o6 -= Yi * r[1]
    out[7:9] = f[5:7]
    out *= 1.0 / f[3] if c is None else c / f[3]
    return out


def _metrics_generic(rows, k, margin):
    g = from_rows(rows, k)
    xp = backend.namespace(g)
    n = g.shape[0]
    finite = xp.all(xp.isfinite(xp.reshape(g, (n, k * k))), axis=-1)
    g = xp.where(finite[:, None, None], g, xp.eye(k, dtype=g.dtype))
    pivots = ldl_pivots(g)
    positive = xp.all(pivots > 0, axis=-1)
    det = xp.prod(pivots, axis=-1)
    trace = sum(xp.real(g[:, i, i]) for i in range(k))
    e_k1 = _principal_minor_sum(g, det, xp)
    rcond = xp.where(positive, det / (trace * e_k1), 0.0)
    ok = finite & positive & (rcond >= margin)
    return Metrics(rows=rows, k=k, det=det, rcond=rcond, valid=ok)


def _principal_minor_sum(g, det, xp):
    """e_{k-1}(g): the sum of the principal (k-1)-minors (= det g tr g^{-1})."""
    k = g.shape[-1]
    if k == 1:
        return xp.ones_like(det)
    if k == 2:
        return xp.real(g[:, 0, 0]) + xp.real(g[:, 1, 1])
    if k == 3:
        a, b, c = xp.real(g[:, 0, 0]), xp.real(g[:, 1, 1]), xp.real(g[:, 2, 2])
        return (b * c - xp.abs(g[:, 1, 2]) ** 2) + (a * c - xp.abs(g[:, 0, 2]) ** 2) + \
            (a * b - xp.abs(g[:, 0, 1]) ** 2)
    safe = xp.where((det > 0)[:, None, None], g, xp.eye(k, dtype=g.dtype))
    inv = xp.linalg.inv(safe)
    return det * xp.real(xp.trace(inv, axis1=-2, axis2=-1))


def valid(g: Array, **kw: float) -> Array:
    """(N,) bool: the validity rule of this module for metrics g (N, k, k)."""
    return metrics(g, **kw).valid


def require_valid(g: Array | Metrics, name: str = "g", **kw: float) -> Metrics:
    """:func:`metrics` of g, or ValueError naming ``name``, how many metrics fail and why."""
    m = g if isinstance(g, Metrics) else metrics(g, **kw)
    if m.n and not m.all_valid:
        raise ValueError(f"{name}: {describe_invalid(m)}")
    return m


def describe_invalid(m: Metrics) -> str:
    """Count and reason of the invalid metrics in ``m`` (for error messages)."""
    xp = backend.namespace(m.valid)
    bad = ~m.valid
    count = int(xp.sum(xp.astype(bad, xp.int64)))
    nonfinite = int(xp.sum(xp.astype(bad & xp.isnan(m.rcond), xp.int64)))
    singular = int(xp.sum(xp.astype(bad & (m.rcond > 0), xp.int64)))
    first = backend.to_numpy(xp.nonzero(bad)[0][:5]).tolist()
    why = f"{singular} of them are positive but numerically singular"
    if nonfinite:
        why = f"{nonfinite} of them have NaN or inf entries, {why}"
    return (f"{count} of {m.n} metrics are not valid (finite, Hermitian, positive definite with "
            f"lambda_min >= {MARGIN:g} lambda_max); {why}; e.g. points {first}")


def _as_complex(g):
    if backend.is_dask(g):
        g = g.compute()
    if not backend.is_cupy(g):
        g = np.asarray(g)
    xp = backend.namespace(g)
    if g.dtype != xp.complex128:
        g = xp.astype(g, xp.complex128)
    return g


# --------------------------------------------------------------------------- real basis
@functools.lru_cache(maxsize=None)
def real_basis(k: int) -> np.ndarray:
    """(k*k, k, k) orthonormal basis of Hermitian k x k matrices under Re tr(A^dagger B).

    Order: E_aa (a = 0..k-1), then for each a < b (row-major) (E_ab + E_ba)/sqrt 2 and
    i (E_ab - E_ba)/sqrt 2.  Read-only NumPy array.
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
    basis = np.stack(out)
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=None)
def _index(k: int):
    """Flat indices of the diagonal, the upper (a < b, row-major) and lower (b, a) entries."""
    diag = np.array([a * k + a for a in range(k)])
    upper = np.array([a * k + b for a in range(k) for b in range(a + 1, k)], dtype=np.int64)
    lower = np.array([b * k + a for a in range(k) for b in range(a + 1, k)], dtype=np.int64)
    return diag, upper, lower


_R2 = 1.0 / math.sqrt(2.0)


def hermitian_to_real(g: Array) -> Array:
    """(..., k, k) -> (..., k*k) float64 coordinates r_j = Re tr(B_j^dagger g) in :func:`real_basis`.

    For Hermitian g this is an isometry, <A, B> = Re tr(A^dagger B) = r_A . r_B, inverse to
    :func:`real_to_hermitian`: r = (g_aa; sqrt2 Re g_ab, sqrt2 Im g_ab for a < b).  For a general
    complex g it is the adjoint of :func:`real_to_hermitian` (orthogonal projection onto the
    Hermitian part): the pair entries are (g_ab + conj(g_ba)) / sqrt 2.
    """
    g = _as_array(g)
    xp = backend.namespace(g)
    if g.ndim < 2 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"g must have shape (..., k, k); got {tuple(g.shape)}")
    g = xp.astype(g, xp.complex128, copy=False)
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError("g has non-finite entries (NaN or inf)")
    k = g.shape[-1]
    lead = tuple(g.shape[:-2])
    flat = xp.reshape(g, lead + (k * k,))
    diag, upper, lower = _index(k)
    pairs = (flat[..., upper] + xp.conj(flat[..., lower])) * _R2
    reim = xp.stack([xp.real(pairs), xp.imag(pairs)], axis=-1)
    return xp.concat([xp.real(flat[..., diag]), xp.reshape(reim, lead + (k * k - k,))], axis=-1)


def real_to_hermitian(r: Array, k: int) -> Array:
    """(..., k*k) real coordinates -> (..., k, k) exactly Hermitian matrices sum_j r_j B_j.

    Inverse of :func:`hermitian_to_real` on Hermitian matrices (and its adjoint in general).
    """
    r = _as_array(r)
    xp = backend.namespace(r)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if r.ndim < 1 or r.shape[-1] != k * k:
        raise ValueError(f"r must have shape (..., {k * k}) for k = {k}; got {tuple(r.shape)}")
    if xp.isdtype(r.dtype, "complex floating"):
        raise ValueError(f"r must be real; got dtype {r.dtype}")
    r = xp.astype(r, xp.float64, copy=False)
    if not bool(xp.all(xp.isfinite(r))):
        raise ValueError("r has non-finite entries (NaN or inf)")
    lead = tuple(r.shape[:-1])
    diag, upper, lower = _index(k)
    pairs = (r[..., k::2] + 1j * r[..., k + 1::2]) * _R2
    flat = xp.zeros(lead + (k * k,), dtype=xp.complex128)
    flat[..., diag] = r[..., :k]
    flat[..., upper] = pairs
    flat[..., lower] = xp.conj(pairs)
    return xp.reshape(flat, lead + (k, k))


def _as_array(x):
    if backend.is_cupy(x):
        return x
    if backend.is_dask(x):
        x = x.compute()
    return np.asarray(x)
