r"""Float32 fused kernel tiles (numba): float64 where values cancel, float32 everywhere else.

A float32 tile has twice the vector width of a float64 one (8 lanes with AVX2) and half its
bytes, so both the kernel evaluation and the tile's BLAS products with v run faster (issue 10:
100 exact flow steps on 10^5 points).  What must not be rounded to float32 is what cancels:
the FS angle near d = 0 (and the ReLU angle theta near 0) comes from 1 - |<u, v>|^2
(sin^2 theta), a difference of nearly equal numbers, so a float32 inner product would put an
absolute error of sqrt(eps32) ~ 3e-4 on d.  The FS tile forms its inner products and 1 - c2 in
float64 and only then rounds; the ReLU tile computes its input layer in float32 and recomputes
in float64 the pairs where it would cancel.  Everything after (the angle, the kernel, the
ReLU layers) runs in float32.

Error (the tests check these bounds against the float64 tiles of :mod:`.fused`):

* FS distance: 1 - c2 (c2 = |<u, v>|^2) is formed in float64 (error 2 m eps64 ~ 2e-15 from
  the inner product), rounded once, and d = asin(sqrt(1 - c2)) (c2 > 3/4),
  pi/4 - asin(2 c2 - 1)/2 (1/4 <= c2 <= 3/4) or pi/2 - asin(sqrt c2) in float32: an absolute
  error below sqrt(2 m eps64) ~ 5e-8 at d = 0 and a few float32 ulps of d elsewhere.  No pair
  needs the sine form of the float64 tile.  1 - c2 below 4e-15 (the inner product's rounding;
  d < 6.3e-8) is taken as 0, so identical points give d = 0 and the kernel exactly 1.
* The kernel: |K32 - K64| <= 4 eps32 K + |dK/dd| |Delta d|, i.e. at most ~5e-7 + 5e-8 / w
  for the width w = sqrt(2) sigma or 2 sigma.
* The ReLU NNGP and NTK: the input layer (c = x.x', D = s^2 - c^2, R) in float32, except the
  pairs with sin^2 theta <= ``REFINE32`` (0.05), where D cancels: those are recomputed in
  float64 from x' - x without cancellation (the refinement of the float64 tile, with a wider
  threshold; without it pairs at sin^2 theta ~ 1e-4 - 1e-3 lose 8-16 ulps); the angle and the
  layers in float32 (one code with the float64 tile: fused._relu_input and _relu_layers, generic
  in their precision).  Within 2 (depth + 1) float32 ulps of sqrt(Theta(x, x) Theta(x', x')),
  and nearly parallel pairs within 3 (depth + 1) ulps of their own value (tests).  A float32
  input layer is ~1.4x faster than a float64 one (one thread: 3.2-3.5 against 4.5 ns an entry
  for the depth-1 tile, errors 2.6 and 1.4 ulps of the scale).

Transcendentals are float32 polynomials (Chebyshev fits of degree 4, below 0.5 ulp of float32
in their ranges; the float64 ones of :mod:`.fused` have degrees 9-12):

* ``_exp32`` for x <= 0: n = round(x / ln 2) by the 1.5 * 2^23 shift, r in two parts, exp(r) =
  1 + r + r^2 Q(r), times 2^n from the exponent bits; x < -87 gives 0 (results below 1.7e-38
  are flushed: an absolute error below 2e-38); within 1.5 ulps of exp elsewhere.
* asin on z = a^2 <= 1/4 (``_ASIN32``) and atan on t^2 <= tan^2(pi/8) (``_F32.atan``), by the
  float64 tiles' own evaluation (fused._asin_poly, _atan_poly: Estrin's scheme, fused._estrin).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .fused import (COLS, _asin_poly, _atan2_pos, _bitcast, _cnorm2, _cut, _dot, _elementwise, _estrin, _jit, _Real,
                    _relu_input, _relu_layers, _relu_prep, _require, _soa, _take, numba)

__all__ = ["gaussian_fs_tile32", "relu_tile32", "exp32", "acos_sqrt32", "atan2_pos32"]

_f = np.float32

# asin(a) = a + a z P(z), z = a^2 in [0, 1/4]: Chebyshev fit of degree 4 of (asin(sqrt z)/sqrt z - 1)/z,
# relative error 3.7e-7 of P, so below 1.6e-8 of asin
_A0, _A1, _A2, _A3, _A4 = map(_f, (0.16666672764698373, 0.07498809175769795, 0.045010700055692396,
                                   0.02649427678699259, 0.03820645206436527))
# exp(r) = 1 + r + r^2 Q(r), |r| <= ln2/2: Chebyshev fit of degree 4 of (e^r - 1 - r)/r^2, relative
# error 1.4e-7 of Q, so below 1e-8 of exp(r)
_E0, _E1, _E2, _E3, _E4 = map(_f, (0.5000000014281446, 0.166665734000566, 0.041666456872330435,
                                   0.008363769614345798, 0.0013934534245636707))
# atan(t) = t + t z P(z), z = t^2 in [0, tan^2(pi/8)]: Chebyshev fit of degree 4 of
# (atan(sqrt z)/sqrt z - 1)/z, relative error 4.7e-8 of P, so below 1e-8 of atan
_T0, _T1, _T2, _T3, _T4 = map(_f, (-0.3333333181341928, 0.19999550075913858, -0.1426423255302369,
                                   0.1074629843410631, -0.06459376277505373))
_ZERO, _HALF, _ONE, _TWO = _f(0), _f(0.5), _f(1), _f(2)
_Q1, _Q3 = _f(0.25), _f(0.75)
_PI, _PIO2, _PIO4 = _f(math.pi), _f(math.pi / 2), _f(math.pi / 4)
_INV_PI, _INV_2PI = _f(1 / math.pi), _f(1 / (2 * math.pi))
_TAN_PI8 = _f(0.41421356237309503)
_TINY = _f(1e-30)  # keeps (s + c) + TINY > 0 (float32's own, as fused._TINY for float64)
_LOG2E = _f(1.4426950408889634)
_SHIFT = _f(12582912.0)  # 1.5 * 2^23: x + SHIFT - SHIFT rounds x to an integer
_LN2_HI = _f(0.693145751953125)  # 12 significant bits: n * LN2_HI is exact for |n| < 2^12
_LN2_LO = _f(1.428606765330187e-06)
_X_LO = _f(-87.0)
_S2_FLOOR = 4e-15  # 1 - c2 below the float64 inner product's rounding (d < 6.3e-8) is taken as 0
_ASIN32 = (_A0, _A1, _A2, _A3, _A4)
_EXPQ32 = (_E0, _E1, _E2, _E3, _E4)
_F32 = _Real(_ZERO, _HALF, _PI, _PIO2, _PIO4, _INV_PI, _INV_2PI, _TINY, _TAN_PI8, (_T0, _T1, _T2, _T3, _T4))
#: the float32 ReLU tiles recompute in float64 every pair with sin^2 theta below this (or below
#: refine_tol if larger): there D = s^2 - c^2 from a float32 c has a relative error of order
#: eps32 / sin^2 theta (measured at depth 3, sin^2 theta = 1.2e-4 to 1e-3: 8-16 ulps of the kernel
#: value without, below 1 with); 0.07 % of the pairs of one-chart quintic points
REFINE32 = 0.05
_W_MIN = float(np.finfo(np.float32).tiny)  # widths below it are taken as it: d / w stays >= d


def _from_bits32(i):
    """The float32 with the bits of an int32 (jitted code only)."""
    raise NotImplementedError("jitted code only")


if numba is not None:
    import llvmlite.ir
    from numba.core import types as _types

    _bitcast(_from_bits32, _types.int32, _types.float32, llvmlite.ir.FloatType())


# ------------------------------------------------------------------ float32 building blocks


@_jit(inline=True)
def _exp32(x):
    """e^x for float32 x <= 0 (NaN stays NaN; x < -87 gives 0)."""
    under = x < _X_LO
    x = _X_LO if under else x
    n = (x * _LOG2E + _SHIFT) - _SHIFT
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    r2 = r * r
    p = _ONE + (r + r2 * _estrin(r, _EXPQ32))
    scale = _from_bits32((np.int32(n) + np.int32(127)) << np.int32(23))  # 2^n, n >= -126
    return _ZERO if under else p * scale


@_jit(inline=True)
def _acos_sqrt32(c2, s2):
    """arccos(sqrt(c2)) from float32 c2 in [0, 1] and s2 = 1 - c2 (formed in float64, then
    rounded: the cancellation happens before the rounding)."""
    hi = c2 > _Q3
    mid = (c2 >= _Q1) and not hi
    x = _TWO * c2 - _ONE  # exact for c2 in [1/4, 1]
    sarg = s2 if hi else c2
    s = math.sqrt(sarg)
    a = x if mid else s
    z = x * x if mid else sarg
    p = _asin_poly(a, z, _ASIN32)
    base = _PIO4 if mid else (_ZERO if hi else _PIO2)
    w = -_HALF if mid else (_ONE if hi else -_ONE)
    return base + w * p


# ------------------------------------------------------------------ array helpers (tests)


@_jit()
def _exp32_flat(x, out):
    for j in range(x.shape[0]):
        out[j] = _exp32(x[j])


@_jit()
def _acos_sqrt32_flat(c2, s2, out):
    for j in range(c2.shape[0]):
        out[j] = _acos_sqrt32(c2[j], s2[j])


@_jit()
def _atan2_pos32_flat(y, x, out):
    for j in range(x.shape[0]):
        out[j] = _atan2_pos(y[j], x[j], _F32)


def exp32(x: Any) -> np.ndarray:
    """e^x for x <= 0, elementwise, float32: the tiles' exp."""
    return _elementwise(_exp32_flat, x, dtype=np.float32)


def acos_sqrt32(c2: Any) -> np.ndarray:
    """arccos(sqrt(c2)) for float64 c2 in [0, 1] (above 1 taken as 1), float32: the tiles' FS angle
    (1 - c2 formed in float64, then both rounded)."""
    c2 = np.minimum(np.asarray(c2, dtype=np.float64), 1.0)
    return _elementwise(_acos_sqrt32_flat, c2, 1.0 - c2, dtype=np.float32)


def atan2_pos32(y: Any, x: Any) -> np.ndarray:
    """atan2(y, x) for y >= 0, elementwise, float32: the ReLU tiles' angle."""
    return _elementwise(_atan2_pos32_flat, y, x, dtype=np.float32)


# ------------------------------------------------------------------ gaussian_fs


@_jit()
def _gauss32_tile(ura, uia, vra, via, width, squared, out):
    """out (n1, n2) float32 <- exp(-(d/width)^2) (squared) or exp(-d/width): d from the float64
    c2 = |<u, v>|^2 and 1 - c2 of the unit vectors u, v (tuples of coordinate rows, float64)."""
    n1, n2 = out.shape
    c2b = np.empty((2, COLS), dtype=np.float32)
    s2b = np.empty((2, COLS), dtype=np.float32)
    w = np.float32(width)
    for j0 in range(0, n2, COLS):
        nb = min(COLS, n2 - j0)
        br = _cut(vra, j0, j0 + nb)
        bi = _cut(via, j0, j0 + nb)
        for i0 in range(0, n1, 2):
            i1 = min(i0 + 1, n1 - 1)  # an odd last row pairs with itself
            a0, b0, a1, b1 = _take(ura, i0), _take(uia, i0), _take(ura, i1), _take(uia, i1)
            c0, s0, c1, s1 = c2b[0], s2b[0], c2b[1], s2b[1]
            for j in range(nb):  # vectorised, float64, two rows per load of the columns
                _rounded_c2(a0, b0, br, bi, j, c0, s0)
                _rounded_c2(a1, b1, br, bi, j, c1, s1)
            for r in range(i1 - i0 + 1):
                row, cr, sr = out[i0 + r, j0:j0 + nb], c2b[r], s2b[r]
                for j in range(nb):  # vectorised, float32: d and the kernel
                    t = _acos_sqrt32(cr[j], sr[j]) / w
                    row[j] = _exp32(-(t * t) if squared else -t)


@_jit(inline=True)
def _rounded_c2(ar, ai, br, bi, j, c2b, s2b):
    """c2b[j], s2b[j] <- c2 = |<u, v_j>|^2 (at most 1) and 1 - c2 (0 below _S2_FLOOR), both formed
    in float64 and rounded once."""
    c2 = _cnorm2(ar, ai, br, bi, j)
    c2 = 1.0 if c2 > 1.0 else c2
    s2 = 1.0 - c2
    c2b[j] = np.float32(c2)
    s2b[j] = np.float32(0.0 if s2 < _S2_FLOOR else s2)


def gaussian_fs_tile32(u: Any, v: Any, *, sigma: float, squared: bool) -> np.ndarray:
    """gaussian_fs (eq. 3.5, or its heat-kernel form) between unit vectors u (n1, m) and v (n2, m)
    -> (n1, n2) float32: :func:`mfarray.kernels.fused.gaussian_fs_tile` with the inner products
    in float64 and the rest in float32 (error bound in the module docstring)."""
    _require()
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number; got {sigma!r}")
    width = max(math.sqrt(2.0) * sigma if squared else 2.0 * sigma, _W_MIN)
    ur, _, ura, uia = _soa(u)
    vr, _, vra, via = _soa(v)
    if ur.shape[0] != vr.shape[0]:
        raise ValueError(f"u and v must have the same number of coordinates; got {ur.shape[0]} and {vr.shape[0]}")
    out = np.empty((ur.shape[1], vr.shape[1]), dtype=np.float32)
    if out.size:
        _gauss32_tile(ura, uia, vra, via, width, bool(squared), out)
    return out


# ------------------------------------------------------------------ ReLU NNGP / NTK


@_jit()
def _relu_tile32(xa, xb, xa32, xb32, x1, x2, sa32, sb32, k1_32, k2_32, ad, b, ad32, a32, b32, tau32, depth, outk, outt,
                 want_k, want_t):
    """fused._relu_tile with float32 outputs: the input layer in float32 (xa32, xb32, sa32, sb32,
    k1_32, k2_32, ad32, b32: float32 copies) with the pairs with sin^2 theta <= tau32
    recomputed in float64 from x1, x2 (fused._relu_input), the layers in float32
    (fused._relu_layers with _F32); depth 0 (the linear kernel) from float64 products (xa, xb)."""
    n1 = x1.shape[0]
    n2 = x2.shape[0]
    Cb = np.empty(COLS, dtype=np.float32)
    Nb = np.empty(COLS, dtype=np.float32)
    D = np.empty(COLS, dtype=np.float32)
    R = np.empty(COLS, dtype=np.float32)
    Q = np.empty(COLS, dtype=np.float32)
    TH = np.empty(COLS, dtype=np.float32)
    for j0 in range(0, n2, COLS):
        nb = min(COLS, n2 - j0)
        xc = _cut(xb, j0, j0 + nb)
        xc32 = _cut(xb32, j0, j0 + nb)
        k2c = k2_32[j0:j0 + nb]
        s0c = sb32[0][j0:j0 + nb]
        for i in range(n1):
            C = outk[i, j0:j0 + nb] if want_k else Cb[:nb]
            N = outt[i, j0:j0 + nb] if want_t else Nb[:nb]
            if depth == 0:
                xi = _take(xa, i)
                for j in range(nb):
                    c = np.float32(ad * _dot(xi, xc, j) + b)
                    C[j] = c
                    N[j] = c
                continue
            _relu_input(_take(xa32, i), xc32, x1, x2, i, j0, nb, sa32[0, i], s0c, k1_32[i], k2c, ad32, b32, tau32,
                        depth > 1, C, D, R, N, ad, b)
            _relu_layers(_F32, C, D, R, N, Q, TH, sa32, sb32, i, j0, nb, depth, a32, b32)


def relu_tile32(x1: Any, x2: Any, *, depth: int, a: float, b: float, refine_tol: float, want_nngp: bool = True,
                want_ntk: bool = True, out: tuple | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """:func:`mfarray.kernels.fused.relu_tile` in float32: (NNGP, NTK), each (n1, n2) float32 (None
    where not wanted); the input layer in float32 with the pairs with sin^2 theta <=
    max(refine_tol, REFINE32) recomputed in float64, the layers in float32 (module docstring);
    ``out``: C-contiguous float32 arrays or None."""
    depth = int(depth)
    x1, x2, ad, k1, k2, sa, sb, out = _relu_prep(x1, x2, depth, a, b, out, want_nngp, want_ntk, np.float32)
    none = np.empty((0, 0), dtype=np.float32)
    if x1.shape[0] and x2.shape[0] and (out[0] is not None or out[1] is not None):
        f32 = np.float32
        with np.errstate(over="ignore"):  # an overflow to float32 is refused by the caller's checks
            sa32, sb32, k1_32, k2_32 = sa.astype(f32), sb.astype(f32), k1.astype(f32), k2.astype(f32)
            rows = [tuple(np.ascontiguousarray(x.T.astype(dt))) for x in (x1, x2) for dt in (np.float64, f32)]
            scalars = f32(ad), f32(a), f32(b)
        _relu_tile32(rows[0], rows[2], rows[1], rows[3], x1, x2, sa32, sb32, k1_32, k2_32, float(ad), float(b),
                     *scalars, f32(max(float(refine_tol), REFINE32)), depth,
                     none if out[0] is None else out[0], none if out[1] is None else out[1],
                     out[0] is not None, out[1] is not None)
    return out[0], out[1]
