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

import numpy as np

from . import backend

__all__ = [
    "MARGIN", "HERMITIAN_RTOL", "Metrics", "metrics", "valid", "require_valid", "hermitian_det",
    "ldl_pivots", "positive_definite", "hermitian_part", "to_rows", "from_rows", "metrics_rows",
    "hermitian_to_real", "real_to_hermitian", "real_basis",
]

MARGIN = 1e-14
HERMITIAN_RTOL = 1e-10


# --------------------------------------------------------------------------- factorisation
def hermitian_det(g):
    """Real determinant of Hermitian matrices g (..., k, k) -> (...).

    k <= 3 uses the explicit cofactor expansion with real diagonals (about 3x faster than a
    batched LU for the quintic's 3 x 3 metrics); larger k uses ``linalg.det``.  For
    ill-conditioned metrics prefer ``metrics(g).det`` (product of LDL pivots).
    """
    xp = backend.namespace(g)
    k = g.shape[-1]
    if k == 1:
        return xp.real(g[..., 0, 0])
    if k == 2:
        return xp.real(g[..., 0, 0]) * xp.real(g[..., 1, 1]) - xp.abs(g[..., 0, 1]) ** 2
    if k == 3:
        a, b, c = xp.real(g[..., 0, 0]), xp.real(g[..., 1, 1]), xp.real(g[..., 2, 2])
        x, y, w = g[..., 0, 1], g[..., 0, 2], g[..., 1, 2]
        return (a * b * c + 2.0 * xp.real(x * w * xp.conj(y))
                - a * xp.abs(w) ** 2 - b * xp.abs(y) ** 2 - c * xp.abs(x) ** 2)
    return xp.real(xp.linalg.det(g))


def ldl_pivots(g):
    """Pivots (N, k) of the LDL^H elimination of Hermitian g (N, k, k), without pivoting.

    All pivots are > 0 exactly when g is positive definite, and det g is their product.  For
    positive-definite g the elimination is backward stable, so metrics with condition numbers
    up to ~1e14 are recognised, where leading minors from cofactor determinants fail beyond
    ~1e8.  Each metric is scaled to max |entry| = 1 first, so no product overflows, and the
    pivots scaled back.  Finite input expected (NaN pivots compare False).
    """
    xp = backend.namespace(g)
    top = xp.max(xp.reshape(xp.abs(g), (g.shape[0], -1)), axis=-1)
    top = xp.where(top > 0, top, 1.0)
    a = g / top[:, None, None]
    pivots = []
    while a.shape[-1] > 0:
        pivot = xp.real(a[:, 0, 0])
        pivots.append(pivot)
        safe = xp.where(pivot > 0, pivot, 1.0)[:, None, None]
        a = a[:, 1:, 1:] - a[:, 1:, :1] * a[:, :1, 1:] / safe  # Schur complement
    return xp.stack(pivots, axis=-1) * top[:, None]


def positive_definite(g):
    """(N,) bool: g (N, k, k) Hermitian is finite and positive definite (:func:`ldl_pivots`).

    Positivity alone; the validity rule of this module (:func:`valid`) also asks for a
    margin from singularity."""
    xp = backend.namespace(g)
    finite = xp.all(xp.isfinite(xp.reshape(g, (g.shape[0], -1))), axis=-1)
    safe = xp.where(finite[:, None, None], g, xp.eye(g.shape[-1], dtype=g.dtype))
    return finite & xp.all(ldl_pivots(safe) > 0, axis=-1)


def hermitian_part(g):
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
    rcond : (N,) float, det / (tr g e_{k-1}) (0 where not positive definite).
    valid : (N,) bool, the module's validity rule.
    g : (N, k, k) complex128 (built on first use); inverse : (N, k, k) and inverse_rows
        (k*k, N): g^{-1}, exactly Hermitian (on first use).
    """

    rows: object
    k: int
    det: object
    rcond: object
    valid: object
    parts: tuple | None = None  # k = 3: the row arithmetic's intermediates (private)

    @property
    def n(self) -> int:
        return int(self.rows.shape[-1])

    @property
    def all_valid(self) -> bool:
        return bool(self.valid.all())  # NumPy and CuPy arrays; the method skips two wrapper layers

    def take(self, columns: slice) -> Metrics:
        """The metrics of a range of points (views, no copies)."""
        parts = None if self.parts is None else tuple([p[..., columns] for p in self.parts])
        return Metrics(self.rows[:, columns], self.k, self.det[columns], self.rcond[columns],
                       self.valid[columns], parts)

    @functools.cached_property
    def g(self):
        return from_rows(self.rows, self.k)

    @functools.cached_property
    def inverse_rows(self):
        xp = backend.namespace(self.rows)
        if self.parts is not None:
            return _inverse_rows3(self.rows, self.parts, xp)
        return to_rows(self.inverse)

    @functools.cached_property
    def inverse(self):
        if self.parts is not None:
            return from_rows(self.inverse_rows, self.k)
        xp = backend.namespace(self.rows)
        g = self.g
        adj = _adjugate(g, xp)
        if adj is None:
            return hermitian_part(xp.linalg.inv(g))
        det = xp.where(self.det != 0, self.det, 1.0)
        return adj / xp.astype(det, adj.dtype)[:, None, None]


def to_rows(g):
    """(N, k, k) Hermitian -> (k*k, N) contiguous real coordinate rows."""
    r = hermitian_to_real(g)
    xp = backend.namespace(r)
    n, kk = r.shape
    return xp.reshape(xp.reshape(r.T, (kk * n,)), (kk, n))


def from_rows(rows, k: int):
    """(k*k, N) real coordinate rows -> (N, k, k) exactly Hermitian complex metrics."""
    return real_to_hermitian(rows.T, k)


def metrics(g, *, margin: float = MARGIN, hermitian_rtol: float = HERMITIAN_RTOL) -> Metrics:
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
    flat = xp.reshape(g, (n, -1))
    finite = xp.all(xp.isfinite(flat), axis=-1)
    g = xp.where(finite[:, None, None], g, xp.eye(k, dtype=g.dtype))
    with np.errstate(all="ignore"):
        top = xp.max(xp.abs(xp.reshape(g, (n, -1))), axis=-1)
        asym = xp.max(xp.abs(xp.reshape(g - xp.conj(xp.matrix_transpose(g)), (n, -1))), axis=-1)
    m = metrics_rows(to_rows(hermitian_part(g)), k, margin=margin)
    ok = m.valid & finite & (asym <= hermitian_rtol * top)
    return dataclasses.replace(m, valid=ok)


def metrics_rows(rows, k: int, *, margin: float = MARGIN) -> Metrics:
    """:func:`metrics` of metrics given by their real coordinate rows (k*k, N) (exactly
    Hermitian by construction; what the flows move).  k = 3 runs in real row arithmetic."""
    with np.errstate(all="ignore"):  # overflow or NaN makes a metric invalid, not a warning
        if k == 3:
            return _metrics_rows3(rows, margin, backend.namespace(rows))
        return _metrics_generic(rows, k, margin)


_S2 = math.sqrt(2.0)


def _metrics_rows3(r, margin, xp):
    """The validity rule for k = 3 on the rows r = (a, b, c, sqrt2 Re x, sqrt2 Im x, sqrt2 Re y,
    sqrt2 Im y, sqrt2 Re w, sqrt2 Im w) of g = [[a, x, y], [., b, w], [., ., c]]: the LDL^H
    pivots a, d2, d3, det, the principal 2-minors and rcond in about 40 real operations, most of
    them on row blocks (views), so the cost is per-call overhead rather than arithmetic.  NaN or
    inf entries give NaN pivots, hence invalid metrics."""
    a, b, c = r[0], r[1], r[2]
    sq = r[3:9] * r[3:9]
    xx2, yy2, ww2 = sq[0::2] + sq[1::2]  # 2|x|^2, 2|y|^2, 2|w|^2
    half_ia = 0.5 / a
    d2 = b - xx2 * half_ia
    # 2 conj(x) y = (r3 r5 + r4 r6) + i (r3 r6 - r4 r5); w' = w - conj(x) y / a (Schur complement)
    p, q = r[3:5] * r[5:7], r[3:5] * r[6:4:-1]
    xy = xp.stack([p[0] + p[1], q[0] - q[1]])
    wp = r[7:9] - xy * (_S2 * half_ia)
    wp2 = wp * wp
    d3 = (c - yy2 * half_ia) - 0.5 * (wp2[0] + wp2[1]) / d2
    det = a * d2 * d3
    c00, c11, c22 = b * c - 0.5 * ww2, a * c - 0.5 * yy2, a * b - 0.5 * xx2  # adjugate diagonal
    rcond = det / ((a + b + c) * (c00 + c11 + c22))
    positive = xp.minimum(a, xp.minimum(d2, d3)) > 0  # NaN compares False
    ok = positive & (rcond >= margin)
    rcond = xp.where(positive, rcond, 0.0)
    return Metrics(rows=r, k=3, det=det, rcond=rcond, valid=ok, parts=(c00, c11, c22, det, xy))


def _inverse_rows3(r, parts, xp):
    """Rows of g^{-1} = adj(g) / det g for k = 3, from the rows of g (real arithmetic)."""
    c00, c11, c22, det, xy = parts
    a, b, c = r[0], r[1], r[2]
    out = xp.empty(r.shape, dtype=r.dtype)
    out[0], out[1], out[2] = c00, c11, c22
    # sqrt2 (Re, Im) of adj_01 = y conj(w) - x c, adj_02 = x w - y b, adj_12 = conj(x) y - a w
    yw, ywx = r[5:7] * r[7:9], r[5:7] * r[8:6:-1]
    xw, xwx = r[3:5] * r[7:9], r[3:5] * r[8:6:-1]
    s = 1.0 / _S2
    out[3], out[4] = (yw[0] + yw[1]) * s, (ywx[1] - ywx[0]) * s
    out[5], out[6] = (xw[0] - xw[1]) * s, (xwx[0] + xwx[1]) * s
    out[7:9] = xy * s
    out[3:5] -= r[3:5] * c
    out[5:7] -= r[5:7] * b
    out[7:9] -= r[7:9] * a
    out *= 1.0 / det
    return out


def _metrics_generic(rows, k, margin):
    g = from_rows(rows, k)
    xp = backend.namespace(g)
    n = g.shape[0]
    finite = xp.all(xp.isfinite(xp.reshape(g, (n, -1))), axis=-1)
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


def valid(g, **kw):
    """(N,) bool: the validity rule of this module for metrics g (N, k, k)."""
    return metrics(g, **kw).valid


def require_valid(g, name: str = "g", **kw) -> Metrics:
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
    positive = m.rcond > 0
    singular = int(xp.sum(xp.astype(bad & positive, xp.int64)))
    first = backend.to_numpy(xp.nonzero(bad)[0][:5]).tolist()
    return (f"{count} of {m.n} metrics are not valid (finite, Hermitian, positive definite with "
            f"lambda_min >= {MARGIN:g} lambda_max); {singular} of them are positive but numerically "
            f"singular; e.g. points {first}")


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
def real_basis(k: int):
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


def hermitian_to_real(g):
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


def real_to_hermitian(r, k: int):
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
