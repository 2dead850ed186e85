r"""Fused kernel tiles on the CPU (numba): distance, kernel value and recursion in one pass.

A frozen-kernel flow on N points recomputes every kernel tile at every step (issue 10, the
general unclustered case); in NumPy a tile is a chain of whole-tile passes -- a complex GEMM with
a short inner dimension, ``abs``, ``arccos``, ``exp``; for the ReLU NTK a GEMM and, per layer,
``sqrt``, ``arctan2`` and a dozen multiply-adds -- each reading and writing (n1, n2)
temporaries, and ``arccos`` / ``arctan2`` are not vectorised by NumPy on AVX2.  Here each tile
is computed row by row: for a row i of ``x1`` and a block of ``COLS`` columns of ``x2`` (kept in
L2 cache, coordinate-major: structure of arrays), the dot product (unrolled for the number of
coordinates, in registers), the transcendental functions and the kernel are computed in a few
short branch-free loops over the columns that LLVM vectorises (4 doubles a lane with AVX2 +
FMA; short loop bodies keep more iterations in flight than one long one), in the output row
and row buffers that stay in L1.  There are no (n1, n2) temporaries: the output is written once.
The FS tiles form |<u, v>|^2 for two rows per load of the columns (the loop is bound by its
loads and multiply-adds: one thread, 7-10 % faster, the same bits).
Measured on AMD EPYC (Zen 3, AVX2) cores, one 1024 x 1024 tile on one thread: gaussian_fs
2.2-2.5x, the ReLU NTK 3.3-3.8x (depth 1) and ~5x (depth 3) faster than the NumPy paths; in a
BlockwiseOperator mat-vec, whose BLAS products with v are the same for both, 1.8-2.6x and
3.2-4.9x (benchmarks/bench_fused.py, on a shared, loaded machine).

Transcendentals (``exp``, ``acos``, ``atan2``) are our own branch-free polynomials, because
numba has no vectorised math library (without SVML ``math.exp`` and ``math.acos`` are scalar
calls that stop vectorisation):

* :func:`exp`: n = round(x / ln 2) (by an FMA with 1.5 * 2^52), r = x - n ln 2 in two parts
  (Cody-Waite), exp(r) = 1 + r + r^2 Q(r) with Q of degree 9 (|r| <= ln2 / 2), then the
  product with 2^(n1) 2^(n2) (n1 = round(n / 2), n2 = n - n1, both normal powers made from
  their exponent bits by a bit cast), so subnormal results are rounded once and
  exp(x < -745.2) = 0, exp(x > 709.8) = inf, exp(-inf) = 0, NaN stays NaN.
* asin(a) = a + a z P(z), z = a^2 <= 1/4, P of degree 12; :func:`acos` (|x| <= 1/2:
  pi/2 - asin x, else 2 asin sqrt((1 - |x|)/2), reflected for x < 0) and the FS angle
  :func:`acos_sqrt` = arccos(sqrt(c2)) for c2 = |<u, v>|^2 in three branches that all keep
  z <= 1/4 with one square root and no cancellation (c2 < 1/4: pi/2 - asin sqrt c2;
  1/4 <= c2 <= 3/4: pi/4 - asin(2 c2 - 1)/2; c2 > 3/4: asin sqrt(1 - c2)).
* :func:`atan2`: reduced to t in [-tan(pi/8), tan(pi/8)] with one division (t = s/b, or
  (s - b)/(s + b) and pi/4 added, for s = min(|x|, |y|), b = max), atan(t) = t + t z P(z) with P
  of degree 10, then the octant, the sign of x (pi - theta, also for x = -0) and of y; huge and
  subnormal arguments are rescaled, both infinite give pi/4 (3 pi/4), both zero 0 (pi).

The coefficients are Chebyshev interpolants of asin(sqrt z)/sqrt z, atan(sqrt z)/sqrt z and
(e^r - 1 - r)/r^2, computed in 60-digit mpmath and rounded to float64; their approximation
error is below 0.3 ulp of the result, and the helpers agree with NumPy to 1-2 ulps over their
whole domain (tests/test_fused_kernels.py).

Tiles (shapes and semantics exactly those of the NumPy paths they replace):

* :func:`fs_distance_tile` (n1, n2): d = arccos |<u, v>| (paper eq. 3.2) for unit vectors, the
  angle from :func:`acos_sqrt`; entries with d < ``NEAR_RADIUS`` are recomputed by the
  cancellation-free sine form d = 2 asin(|u - lam v| / 2) of
  :func:`mfarray.geometry.distance.fs_distance_block` (the same operations in the same order,
  without FMA contraction; asin by the polynomial), so identical points give exactly d = 0
  (0.4% of the pairs of random quintic points are near).  Error: as
  ``fs_distance_block_gemm`` (the dot product's rounding, <= 2 m eps, amplified by
  1 / sin d <= 2.1, plus ~1 ulp of the angle; a few ulps for the near pairs).
* :func:`gaussian_fs_tile`: exp(-(d / w)^2) or exp(-d / w) of those distances, with
  w = sqrt(2) sigma or 2 sigma divided (never inverted) as in :func:`mfarray.kernels.gaussian_fs`:
  identical points give exactly 1, tiny widths underflow to 0 without warnings.
* :func:`relu_tile`: the ReLU NNGP and NTK of any depth with the numerically stable recursion of
  :mod:`mfarray.kernels.relu` (D, R, theta = atan2(sqrt D, c)) and its order of operations (up
  to FMA contraction: ~1e-15 relative to the NumPy path); the pairs refined at the input layer
  (sin^2 theta <= refine_tol) are recomputed from x' - x in scalar code per row.

Every tile loops over rows itself, holds the GIL nowhere (``nogil``) and starts no threads:
parallelism is the caller's (a thread per tile in
:class:`~mfarray.kernels.operators.BlockwiseOperator`).  Compiled functions are cached on disk
(``cache=True``); the first call of a process compiles them (seconds) or loads the cache.
Without numba :func:`available` is False and the kernels keep their NumPy paths.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..geometry.distance import NEAR_RADIUS

try:  # numba is a dependency; the kernels fall back to their NumPy paths without it
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

__all__ = ["available", "exp", "acos", "acos_sqrt", "atan2", "fs_distance_tile", "gaussian_fs_tile",
           "relu_tile", "COLS"]

#: columns of x2 per block: the block's coordinates (2 m or d doubles a column) stay in L2 while
#: every row of x1 streams past them, the row buffers (a few x COLS doubles) in L1
COLS = 1024


def available() -> bool:
    """Whether numba is importable (the fused tiles can run)."""
    return numba is not None


def _jit(contract: bool = True, inline: bool = False):
    """numba.njit with nogil, an on-disk cache, NumPy's error model (x / 0 is inf, not an
    exception: a raise would stop vectorisation) and, with ``contract``, FMA contraction only:
    no reassociation (the range reductions depend on the order of operations) and no
    assumptions of finite values (NaN and inf must propagate to the finiteness checks)."""
    def wrap(fn):
        if numba is None:  # pragma: no cover - never called: available() is False
            return fn
        return numba.njit(nogil=True, cache=True, error_model="numpy",
                          fastmath={"contract"} if contract else False,
                          inline="always" if inline else "never")(fn)
    return wrap


# ------------------------------------------------------------------ constants and coefficients

_PI = math.pi
_PIO2 = math.pi / 2
_PIO4 = math.pi / 4
_INV_PI = 1.0 / math.pi
_INV_2PI = 1.0 / (2.0 * math.pi)
_TAN_PI8 = 0.41421356237309503  # tan(pi/8)
_TINY = 1e-300  # as mfarray.kernels.relu: keeps s + c + TINY > 0

# exp: round-to-integer shift 1.5 * 2^52; ln 2 split with 32 trailing zero bits in the high part
# (fdlibm), so n * _LN2_HI is exact for |n| < 2^20
_LOG2E = 1.4426950408889634
_SHIFT = 6755399441055744.0
_BIAS = _SHIFT + 1023.0  # bits(_BIAS + k) << 52 are the bits of 2^k for -1022 <= k <= 1023
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_X_LO = -746.0  # exp(x) rounds to 0 below -745.14
_X_HI = 710.0  # and overflows above 709.79

# asin(a) = a + a z P(z), z = a^2 in [0, 1/4]: Chebyshev interpolant of degree 12 of
# (asin(sqrt z)/sqrt z - 1)/z (60-digit mpmath), error < 6e-18 * z
_A0, _A1, _A2, _A3, _A4, _A5, _A6, _A7, _A8, _A9, _A10, _A11, _A12 = (
    0.16666666666666669, 0.07499999999998433, 0.04464285714635543, 0.030381944138531247,
    0.02237217294214989, 0.017352392720869973, 0.013971212973552933, 0.011479177415184906,
    0.01032281435018578, 0.005457506718640358, 0.01740087944269402, -0.014851887071247204,
    0.028757851367421566)
# exp(r) = 1 + r + r^2 Q(r), |r| <= ln2/2: Chebyshev interpolant of degree 9 of (e^r - 1 - r)/r^2,
# error < 1.3e-17 * r^2
_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9 = (
    0.5000000000000001, 0.16666666666666669, 0.041666666666624164, 0.008333333333330065,
    0.0013888888917196719, 0.00019841269863040545, 2.4801521322368692e-05, 2.7557268480310024e-06,
    2.7620075879983367e-07, 2.5100375832561234e-08)
# atan(t) = t + t z P(z), z = t^2 in [0, tan^2(pi/8)]: Chebyshev interpolant of degree 10 of
# (atan(sqrt z)/sqrt z - 1)/z, error < 7e-18 * z
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10 = (
    -0.3333333333333333, 0.1999999999999552, -0.14285714284666542, 0.11111111015256361,
    -0.09090904578123903, 0.07692183190826087, -0.06664511447381948, 0.0585814891280221,
    -0.0508544973794026, 0.03923165829558719, -0.01917688711906226)

_ASIN = (_A0, _A1, _A2, _A3, _A4, _A5, _A6, _A7, _A8, _A9, _A10, _A11, _A12)
_EXPQ = (_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9)
_ATAN = (_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10)

# relative to a distance: the near pairs of fs_distance_block_gemm
_NEAR = float(NEAR_RADIUS)


# ------------------------------------------------------------------ dot products, unrolled
# The coordinates of a block of points travel as tuples of rows (m or d arrays); a tuple's
# length is part of its numba type, so these stubs are compiled (numba.extending.overload) into
# straight-line code for that length: the dot product stays in registers and the loop over the
# columns around it is vectorised (a loop over k inside it would not be, and LLVM only unrolls
# short ones).


def _take(xs, i):
    """(xs[0][i], ..., xs[n-1][i]): row i of a block as a tuple of floats (jitted code only)."""
    raise NotImplementedError("jitted code only")


def _cut(xs, a, b):
    """(xs[0][a:b], ..., xs[n-1][a:b]): columns a:b of a block as a tuple of views (jitted code
    only).  The column loops index these views by their own counter j (never j0 + j): numba
    wraps negative indices, and for an index it cannot prove non-negative it emits a sign
    test and a scalar load per element, which stops the loads being vectorised (measured:
    the |<u, v>|^2 loop 2.1x slower)."""
    raise NotImplementedError("jitted code only")


def _dot(a, xs, j):
    """sum_k a[k] xs[k][j], in two interleaved chains (jitted code only)."""
    raise NotImplementedError("jitted code only")


def _cnorm2(ar, ai, br, bi, j):
    """|sum_k conj(ar[k] + i ai[k]) (br[k][j] + i bi[k][j])|^2 (jitted code only)."""
    raise NotImplementedError("jitted code only")


def _generated(name, args, *lines):
    """A function from its argument list and body lines (the last one returned)."""
    body = "".join(f"    {line}\n" for line in lines[:-1]) + f"    return {lines[-1]}\n"
    ns = {}
    exec(f"def {name}({args}):\n{body}", ns)  # noqa: S102 - source text of our own
    return ns[name]


def _chains(terms):
    """a sum of terms as two interleaved chains (half the latency of one)."""
    return " + ".join(f"({' + '.join(terms[c::2])})" for c in range(2) if terms[c::2])


def _estrin(z, cs):
    """sum_k cs[k] z^k by Estrin's scheme (jitted code only): pairs c_2k + c_2k+1 z, then pairs of
    those with z^2, z^4, ...; the dependency chains stay short, so that several vectors are in
    flight at once.  Every polynomial of the tiles (float64 and float32) is evaluated by it."""
    raise NotImplementedError("jitted code only")


def _bits(x):
    """The bits of a float64 as an int64 (jitted code only)."""
    raise NotImplementedError("jitted code only")


def _from_bits(i):
    """The float64 with the bits of an int64 (jitted code only)."""
    raise NotImplementedError("jitted code only")


def _bitcast(stub, src, dst, llvm_type):
    """Compile ``stub(x)`` (numba must be installed): the bits of x (numba type ``src``) read as
    a ``dst`` (llvm_type)."""
    from numba.extending import intrinsic, overload

    @intrinsic
    def cast(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], llvm_type)
        return dst(src), codegen

    @overload(stub, inline="always")
    def impl(x):
        return lambda x: cast(x)


if numba is not None:
    import llvmlite.ir
    from numba.core import types as _types
    from numba.extending import overload

    _bitcast(_bits, _types.float64, _types.int64, llvmlite.ir.IntType(64))
    _bitcast(_from_bits, _types.int64, _types.float64, llvmlite.ir.DoubleType())

    @overload(_take, inline="always")
    def _take_impl(xs, i):
        return _generated("take", "xs, i", "(" + "".join(f"xs[{k}][i], " for k in range(len(xs))) + ")")

    @overload(_cut, inline="always")
    def _cut_impl(xs, a, b):
        return _generated("cut", "xs, a, b", "(" + "".join(f"xs[{k}][a:b], " for k in range(len(xs))) + ")")

    @overload(_dot, inline="always")
    def _dot_impl(a, xs, j):
        return _generated("dot", "a, xs, j", _chains([f"a[{k}] * xs[{k}][j]" for k in range(len(xs))]))

    @overload(_cnorm2, inline="always")
    def _cnorm2_impl(ar, ai, br, bi, j):
        m = len(br)
        re = _chains([f"ar[{k}] * br[{k}][j] + ai[{k}] * bi[{k}][j]" for k in range(m)])
        im = _chains([f"ar[{k}] * bi[{k}][j] - ai[{k}] * br[{k}][j]" for k in range(m)])
        return _generated("cnorm2", "ar, ai, br, bi, j", f"re = {re}", f"im = {im}", "re * re + im * im")

    def _estrin_source(n):
        terms = [f"(cs[{k}] + cs[{k + 1}] * z)" if k + 1 < n else f"cs[{k}]" for k in range(0, n, 2)]
        lines, power = [], "z"
        while len(terms) > 1:
            lines.append(f"{power}2 = {power} * {power}" if power == "z" else f"{power}x = {power} * {power}")
            power = f"{power}2" if power == "z" else f"{power}x"
            terms = [f"({terms[k]} + {terms[k + 1]} * {power})" if k + 1 < len(terms) else terms[k]
                     for k in range(0, len(terms), 2)]
        return lines + [terms[0]]

    @overload(_estrin, inline="always")
    def _estrin_impl(z, cs):
        return _generated("estrin", "z, cs", *_estrin_source(len(cs)))


# ------------------------------------------------------------------ scalar building blocks
# (inlined into the column loops; polynomials by _estrin)


@_jit(inline=True)
def _asin_poly(a, z, cs):
    """asin(a) = a + a z P(z) for |a| <= 1/2, given z = a*a and P's coefficients cs (_ASIN, or
    fused32's float32 ones)."""
    return a + a * (z * _estrin(z, cs))


@_jit(inline=True)
def _atan_poly(t, z, cs):
    """atan(t) = t + t z P(z) for |t| <= tan(pi/8), given z = t*t and P's coefficients cs."""
    return t + t * (z * _estrin(z, cs))


@_jit(inline=True)
def _exp(x):
    """e^x = p 2^n1 2^n2 (see the module docstring); NaN stays NaN."""
    x = _X_LO if x < _X_LO else (_X_HI if x > _X_HI else x)  # NaN passes unchanged
    n = (x * _LOG2E + _SHIFT) - _SHIFT  # round(x / ln 2): one FMA, then exact
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    r2 = r * r
    p = 1.0 + (r + r2 * _estrin(r, _EXPQ))
    f1 = n * 0.5 + _BIAS  # _BIAS + round(n / 2): bits(f1) << 52 are those of 2^round(n/2)
    f2 = (n - (f1 - _BIAS)) + _BIAS
    return (p * _from_bits(_bits(f1) << 52)) * _from_bits(_bits(f2) << 52)


@_jit(inline=True)
def _acos_sqrt(c2):
    """arccos(sqrt(c2)) for c2 in [0, 1] (values above 1 are taken as 1)."""
    c2 = 1.0 if c2 > 1.0 else c2
    hi = c2 > 0.75
    mid = (c2 >= 0.25) and not hi
    x = 2.0 * c2 - 1.0  # exact for c2 in [1/4, 1]
    sarg = 1.0 - c2 if hi else c2  # exact
    s = math.sqrt(sarg)
    a = x if mid else s
    z = x * x if mid else sarg
    p = _asin_poly(a, z, _ASIN)
    base = _PIO4 if mid else (0.0 if hi else _PIO2)
    w = -0.5 if mid else (1.0 if hi else -1.0)
    return base + w * p


@_jit(inline=True)
def _acos(x):
    """arccos(x) for x in [-1, 1]; NaN outside."""
    ax = abs(x)
    big = ax > 0.5
    zb = (1.0 - ax) * 0.5  # exact for ax >= 1/2
    z = zb if big else x * x
    s = math.sqrt(zb)
    p = _asin_poly(s if big else ax, z, _ASIN)
    r = 2.0 * p if big else _PIO2 - p
    neg = x < 0.0
    return (_PI - r if big else _PIO2 + p) if neg else r


@_jit(inline=True)
def _atan2(y, x):
    """atan2(y, x) with IEEE special values (signed zeros, infinities, NaN)."""
    ax = abs(x)
    ay = abs(y)
    b = ax if ax > ay else ay
    s = ay if ax > ay else ax
    inf = b == math.inf
    s = (1.0 if s == math.inf else 0.0) if inf else s
    b = 1.0 if inf else b
    # rescale huge and subnormal pairs, so that s + b and s / b neither overflow nor lose bits
    f = 2.0 ** -600 if b > 2.0 ** 900 else (2.0 ** 600 if b < 2.0 ** -900 else 1.0)
    s = s * f
    b = b * f
    b = 1.0 if b == 0.0 else b  # both zero: t = 0
    octant = s > _TAN_PI8 * b
    t = (s - b if octant else s) / (s + b if octant else b)
    th = _atan_poly(t, t * t, _ATAN) + (_PIO4 if octant else 0.0)
    th = _PIO2 - th if ay > ax else th
    th = _PI - th if math.copysign(1.0, x) < 0.0 else th
    th = math.copysign(th, y)
    return x + y if (x != x or y != y) else th


class _Real(NamedTuple):
    """The constants of the ReLU recursion in one precision (float64 or float32), so that one
    compiled-per-type code runs the layers in either: a float64 literal in float32 code would
    promote the arithmetic to float64."""

    zero: Any
    half: Any
    pi: Any
    pio2: Any
    pio4: Any
    inv_pi: Any
    inv_2pi: Any
    tiny: Any
    tan_pi8: Any
    atan: tuple  # atan(t) = t + t z P(z): P's coefficients


_F64 = _Real(0.0, 0.5, _PI, _PIO2, _PIO4, _INV_PI, _INV_2PI, _TINY, _TAN_PI8, _ATAN)


@_jit(inline=True)
def _atan2_pos(y, x, k):
    """atan2(y, x) for y >= 0 and finite or NaN arguments not both huge (> 1e307): _atan2 without
    the infinities and the rescaling, for the ReLU recursion (y = sqrt(D), x = c), in the
    precision of the constants ``k`` (a _Real)."""
    ax = abs(x)
    b = ax if ax > y else y
    s = y if ax > y else ax
    b = (k.half + k.half) if b == k.zero else b  # both zero: t = 0
    octant = s > k.tan_pi8 * b
    t = (s - b if octant else s) / (s + b if octant else b)
    th = _atan_poly(t, t * t, k.atan) + (k.pio4 if octant else k.zero)
    th = k.pio2 - th if y > ax else th
    return k.pi - th if math.copysign(k.half, x) < k.zero else th


# ------------------------------------------------------------------ array helpers (tests, users)


@_jit()
def _exp_flat(x, out):
    for j in range(x.shape[0]):
        out[j] = _exp(x[j])


@_jit()
def _acos_flat(x, out):
    for j in range(x.shape[0]):
        out[j] = _acos(x[j])


@_jit()
def _acos_sqrt_flat(x, out):
    for j in range(x.shape[0]):
        out[j] = _acos_sqrt(x[j])


@_jit()
def _atan2_flat(y, x, out):
    for j in range(x.shape[0]):
        out[j] = _atan2(y[j], x[j])


def _require():
    if numba is None:
        raise ImportError("the fused kernel tiles need numba: pip install numba (or use the kernels' "
                          "NumPy methods, method='gemm' for gaussian_fs and method='numpy' for the ReLU kernels)")


def _elementwise(loop, *xs, dtype=np.float64):
    """``loop(*flat inputs, out)`` (a compiled loop over 1-d arrays) on the inputs broadcast
    together and converted to ``dtype`` -> an array of their shape."""
    _require()
    shape = np.broadcast_shapes(*(np.shape(x) for x in xs))
    flat = [np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=dtype), shape)).reshape(-1) for x in xs]
    out = np.empty_like(flat[0])
    loop(*flat, out)
    return out.reshape(shape)


def exp(x: Any) -> np.ndarray:
    """e^x, elementwise, float64 (any shape): the vectorisable exp of the fused tiles."""
    return _elementwise(_exp_flat, x)


def acos(x: Any) -> np.ndarray:
    """arccos(x), elementwise, float64 (NaN outside [-1, 1]): the fused tiles' arccos."""
    return _elementwise(_acos_flat, x)


def acos_sqrt(c2: Any) -> np.ndarray:
    """arccos(sqrt(c2)) for c2 in [0, 1] (above 1 taken as 1), elementwise: the FS angle from
    c2 = |<u, v>|^2 of unit vectors, as :func:`fs_distance_tile` computes it."""
    return _elementwise(_acos_sqrt_flat, c2)


def atan2(y: Any, x: Any) -> np.ndarray:
    """atan2(y, x), elementwise, float64, broadcast: the fused tiles' atan2."""
    return _elementwise(_atan2_flat, y, x)


# ------------------------------------------------------------------ FS distance and gaussian_fs


@_jit(contract=False)
def _sine_form(ar, ai, br, bi):
    """d = 2 asin(|u - lam v| / 2) for u = ar + i ai, v = br + i bi (tuples of the m real and
    imaginary coordinates, passed by value: a call costs no reference counting), the operations
    of mfarray.geometry.distance._sine_form in its order and without FMA contraction
    (Im <u, u> = 0 exactly, so d(u, u) = 0), asin by the polynomial."""
    m = len(ar)
    cr = 0.0
    ci = 0.0
    for k in range(m):
        cr += ar[k] * br[k]
        cr += ai[k] * bi[k]
        ci += ar[k] * bi[k]
        ci -= ai[k] * br[k]
    s = cr * cr
    s += ci * ci
    if s >= 2.0 ** -1000:
        a = math.sqrt(s)
        lr = cr / a
        li = -ci / a
    else:
        lr = 1.0
        li = 0.0
    acc = 0.0
    for k in range(m):
        dr = lr * br[k]
        dr -= li * bi[k]
        dr -= ar[k]
        di = lr * bi[k]
        di += li * br[k]
        di -= ai[k]
        acc += dr * dr
        acc += di * di
    h = math.sqrt(acc) * 0.5  # sin(d / 2) <= sin(NEAR_RADIUS / 2) < 1/2 where it is called
    d = 2.0 * (_asin_poly(h, h * h, _ASIN) if h <= 0.5 else math.asin(min(h, 1.0)))
    return min(d, _PIO2)


@_jit()
def _fs_tile(ura, uia, vra, via, width, mode, out):
    """out (n1, n2) <- d (mode 0), exp(-(d/width)^2) (mode 1) or exp(-d/width) (mode 2) for the
    unit vectors u (n1 points) and v (n2 points) given as tuples of their m coordinate rows,
    real (ura, vra) and imaginary (uia, via) parts (a tuple's length, a compile-time constant,
    unrolls the dot product)."""
    n1, n2 = out.shape
    idx = np.empty(COLS + 1, dtype=np.int64)
    for j0 in range(0, n2, COLS):
        nb = min(COLS, n2 - j0)
        br = _cut(vra, j0, j0 + nb)
        bi = _cut(via, j0, j0 + nb)
        for i0 in range(0, n1, 2):
            i1 = min(i0 + 1, n1 - 1)  # an odd last row pairs with itself (same values written twice)
            r0, r1 = out[i0, j0:j0 + nb], out[i1, j0:j0 + nb]
            a0, b0, a1, b1 = _take(ura, i0), _take(uia, i0), _take(ura, i1), _take(uia, i1)
            for j in range(nb):  # vectorised: |<u, v>|^2 of two rows per load of the columns
                r0[j] = _cnorm2(a0, b0, br, bi, j)
                r1[j] = _cnorm2(a1, b1, br, bi, j)
            for i in range(i0, i1 + 1):
                _fs_row(out[i, j0:j0 + nb], _take(ura, i), _take(uia, i), br, bi, width, mode, idx)


@_jit()
def _fs_row(row, ar, ai, br, bi, width, mode, idx):
    """One row of :func:`_fs_tile` from its |<u, v>|^2: the FS distance (cancellation-free near
    u), then the kernel of ``mode``, in place."""
    nb = row.shape[0]
    near = 0
    for j in range(nb):  # vectorised: -> d (two short loops run faster than one long)
        d = _acos_sqrt(row[j])
        row[j] = d
        near += 1 if d < _NEAR else 0
    count = 0
    for c0 in range(0, nb, 32):  # the few near pairs: their columns
        if count == near:
            break
        c1 = min(nb, c0 + 32)
        found = 0
        for j in range(c0, c1):  # vectorised count: most chunks have none
            found += 1 if row[j] < _NEAR else 0
        if found:
            for j in range(c0, c1):
                idx[count] = j
                count += 1 if row[j] < _NEAR else 0
    for t in range(count):  # and the cancellation-free sine form
        row[idx[t]] = _sine_form(ar, ai, _take(br, idx[t]), _take(bi, idx[t]))
    if mode == 0:
        return
    for j in range(nb):  # vectorised: the kernel
        t = row[j] / width
        row[j] = _exp(-(t * t) if mode == 1 else -t)


_LINES = 17  # row stride past a multiple of 4096 bytes, in 64-byte lines: see _soa


def _soa(u):
    """Coordinate-major real and imaginary parts (m, n) and their rows as tuples.

    The 2m rows are the 2m streams a tile's column loop reads at once.  They lie in one buffer
    whose row stride is ``_LINES`` cache lines past a multiple of 4096 bytes, so that a block of
    columns of every row falls in other L1 sets (in two separate (m, n) arrays of n = 1024 the
    m rows of each array share their sets, and the tile's speed then depends on where the
    allocator placed the two).  Measured (one thread, 1024^2 float32 Gaussian tile, 14 random
    placements each): 3.4-4.2 ns an entry (median 3.66) for separate arrays, 3.4-3.7 (median
    3.50) for this layout; the values are the same."""
    u = np.asarray(u)
    if u.ndim != 2:
        raise ValueError(f"unit vectors must have shape (n, m); got shape {u.shape}")
    n, m = u.shape
    stride = n + (_LINES * 8 - n) % 512  # doubles: stride = n (mod 512), stride * 8 = 17 lines (mod 4096)
    buf = np.zeros((2 * m, stride))
    buf[:m, :n] = u.real.T
    if np.iscomplexobj(u):
        buf[m:, :n] = u.imag.T
    r, i = buf[:m, :n], buf[m:, :n]
    return r, i, tuple(r), tuple(i)


def _fs(u, v, width, mode):
    _require()
    ur, ui, ura, uia = _soa(u)
    vr, vi, vra, via = _soa(v)
    if ur.shape[0] != vr.shape[0]:
        raise ValueError(f"u and v must have the same number of coordinates; got {ur.shape[0]} and {vr.shape[0]}")
    out = np.empty((ur.shape[1], vr.shape[1]))
    if out.size:
        _fs_tile(ura, uia, vra, via, float(width), mode, out)
    return out


def fs_distance_tile(u: Any, v: Any) -> np.ndarray:
    """FS distances (eq. 3.2) between unit vectors u (n1, m) and v (n2, m) -> (n1, n2) float64 in
    [0, pi/2], fused: d = arccos |<u, v>| with the near pairs (d < NEAR_RADIUS) by the sine form.
    The error bound of :func:`~mfarray.geometry.distance.fs_distance_block_gemm`; identical
    points give exactly 0."""
    return _fs(u, v, 1.0, 0)


def gaussian_fs_tile(u: Any, v: Any, *, sigma: float, squared: bool) -> np.ndarray:
    """gaussian_fs (eq. 3.5, or its heat-kernel form) between unit vectors u (n1, m) and v (n2, m)
    -> (n1, n2) float64, fused with the distances of :func:`fs_distance_tile`:
    exp(-(d / (sqrt(2) sigma))^2) if ``squared`` else exp(-d / (2 sigma)), the exponent formed by
    dividing d by the width as :func:`mfarray.kernels.gaussian_fs` does (identical points give
    exactly 1, a tiny sigma gives 0 off the diagonal, a huge one 1)."""
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number; got {sigma!r}")
    width = math.sqrt(2.0) * sigma if squared else 2.0 * sigma
    return _fs(u, v, width, 1 if squared else 2)


# ------------------------------------------------------------------ ReLU NNGP / NTK


@_jit()
def _refine(x1, x2, i, j, ad, b):
    """(c, R, D) of the input layer for the pair (x1[i], x2[j]) from u = x' - x, m = (x + x')/2
    (mfarray.kernels.relu._refine_layer0): D by the Lagrange identity, R = a |u|^2 / d."""
    dim = x1.shape[1]
    uu = 0.0
    mm = 0.0
    mu = 0.0
    gg = 0.0
    for k in range(dim):
        xi = x1[i, k]
        xj = x2[j, k]
        u = xj - xi
        m = 0.5 * (xi + xj)
        uu += u * u
        mm += m * m
        mu += m * u
        gg += xi * xj
    coef = mu / mm if mm > 0 else 0.0
    lag = 0.0
    for k in range(dim):
        xi = x1[i, k]
        xj = x2[j, k]
        up = (xj - xi) - coef * (0.5 * (xi + xj))
        lag += up * up
    lag = mm * lag
    r0 = ad * uu
    return ad * gg + b, r0, ad * ad * lag + b * r0


@_jit(inline=True)
def _relu_input(xi, xc, x1, x2, i, j0, nb, si, s0c, k1i, k2c, ad, b, refine_tol, want_r, C, D, R, N, ad64, b64):
    """The input layer of row i against the columns j0:j0+nb: C[j] = N[j] = c = ad x_i.x_j + b,
    D[j] = (s - c)(s + c), R[j] = k1_i + k2_j - 2 c (only ``want_r``: the hidden layers read
    it), in the precision of xi, xc, si, s0c, k1i, k2c, ad, b (float64, or float32 for
    fused32); then the pairs with D <= s^2 refine_tol (where D cancels: nearly parallel
    pairs) recomputed in float64 from x' - x without cancellation (_refine, with the float64
    ad64, b64)."""
    refine = 0
    for j in range(nb):  # vectorised (two versions: LLVM unswitches want_r)
        c = ad * _dot(xi, xc, j) + b
        s = si * s0c[j]
        C[j] = c
        N[j] = c
        dv = (s - c) * (s + c)
        D[j] = dv
        if want_r:
            R[j] = (k1i + k2c[j]) - (c + c)
        refine += 1 if D[j] <= (s * s) * refine_tol else 0  # the stored D: the test of the loop below
    for c0 in range(0, nb, 32):  # the nearly parallel pairs, cancellation-free
        if refine == 0:
            break
        c1 = min(nb, c0 + 32)
        found = 0
        for j in range(c0, c1):  # vectorised count: most chunks have none
            s = si * s0c[j]
            found += 1 if D[j] <= (s * s) * refine_tol else 0
        if found:
            for j in range(c0, c1):
                s = si * s0c[j]
                if D[j] <= (s * s) * refine_tol:
                    C[j], R[j], D[j] = _refine(x1, x2, i, j0 + j, ad64, b64)
                    N[j] = C[j]
            refine -= found


@_jit(inline=True)
def _relu_layers(k, C, D, R, N, Q, TH, sa, sb, i, j0, nb, depth, a, b):
    """The layers 1 .. depth of row i (columns j0:j0+nb) from the input layer's C, D, R, with
    N = C on entry: C <- the NNGP, N <- the NTK.  Generic in the precision: the arrays, a, b and
    the constants ``k`` (a _Real) are all float64 or all float32, so the recursion runs in one
    precision (mfarray.kernels.relu._block's order of operations)."""
    aa = a * a
    a2pi = a * k.inv_2pi
    for layer in range(1, depth + 1):
        last = layer == depth
        first = layer == 1
        sl = sa[layer - 1, i]
        slc = sb[layer - 1][j0:j0 + nb]
        if last:
            for j in range(nb):  # vectorised: the last layer, its angle inline (nothing carried on)
                dv = D[j]
                dv = k.zero if dv < k.zero else dv
                q = math.sqrt(dv)
                c = C[j]
                pt = k.pi - _atan2_pos(q, c, k)
                kt = (pt * c + q) * k.inv_2pi
                cn = kt * a + b
                N[j] = N[j] * (pt * a2pi) + cn
                C[j] = cn
            continue
        for j in range(nb):  # vectorised: sqrt(D) = s sin(theta), theta
            dv = D[j]
            dv = k.zero if dv < k.zero else dv
            q = math.sqrt(dv)
            D[j] = dv
            Q[j] = q
            TH[j] = _atan2_pos(q, C[j], k)
        for j in range(nb):  # vectorised: a hidden layer, D and R carried on
            c = C[j]
            q = Q[j]
            th = TH[j]
            dv = D[j]
            sg = q - th * c  # s (sin - theta cos)
            pt = k.pi - th
            kt = (pt * c + q) * k.inv_2pi
            s = sl * slc[j]
            smc = (s - c) if (first and c <= k.zero) else dv / ((s + c) + k.tiny)
            qq = (smc * k.pi - sg) * k.inv_2pi
            qq = k.zero if qq < k.zero else qq  # s/2 - tilde K >= 0
            qq = qq * (s * k.half + kt)  # tilde D
            r = R[j] * k.half - sg * k.inv_pi
            r = (k.zero if r < k.zero else r) * a
            D[j] = qq * aa + r * b
            R[j] = r
            cn = kt * a + b
            N[j] = N[j] * (pt * a2pi) + cn
            C[j] = cn


@_jit()
def _relu_tile(xa, xb, x1, x2, sa, sb, k1, k2, ad, a, b, refine_tol, depth, outk, outt, want_k, want_t):
    """The ReLU NNGP (outk) and NTK (outt), (n1, n2), of depth ``depth``: x1 (n1, d), x2 (n2, d)
    and their coordinates as tuples of d rows (xa, xb); sa (max(depth, 1), n1), sb: sqrt of the
    diagonal K^{l}(x, x) for l = 0 .. depth-1; k1, k2: K^0(x, x).  The recursion and the order
    of operations of mfarray.kernels.relu._block; a hidden layer in two short vectorised loops
    (sqrt and atan2, then the rest), which run faster than one long one, the last layer in one
    (nothing to carry on; measured in L1: float32 1.13 vs 1.18 ns an entry, float64 2.94 vs
    2.85, within the noise)."""
    n1 = x1.shape[0]
    n2 = x2.shape[0]
    Cb = np.empty(COLS)
    Nb = np.empty(COLS)
    D = np.empty(COLS)
    R = np.empty(COLS)
    Q = np.empty(COLS)
    TH = np.empty(COLS)
    for j0 in range(0, n2, COLS):
        nb = min(COLS, n2 - j0)
        xc = _cut(xb, j0, j0 + nb)  # columns j0:j0+nb, indexed by j (see _cut)
        k2c = k2[j0:j0 + nb]
        s0c = sb[0][j0:j0 + nb]
        for i in range(n1):
            C = outk[i, j0:j0 + nb] if want_k else Cb[:nb]  # the rows themselves: no copies
            N = outt[i, j0:j0 + nb] if want_t else Nb[:nb]
            xi = _take(xa, i)
            if depth == 0:
                for j in range(nb):
                    c = ad * _dot(xi, xc, j) + b
                    C[j] = c
                    N[j] = c
                continue
            _relu_input(xi, xc, x1, x2, i, j0, nb, sa[0, i], s0c, k1[i], k2c, ad, b, refine_tol, depth > 1, C, D, R, N,
                        ad, b)
            _relu_layers(_F64, C, D, R, N, Q, TH, sa, sb, i, j0, nb, depth, a, b)


def _relu_prep(x1, x2, depth, a, b, out, want_nngp, want_ntk, dtype):
    """The float64 inputs of the ReLU tiles: (x1, x2, ad, k1, k2, sa, sb, out) with K^0(x, x) =
    k1, k2 and the square roots of the diagonals K^l(x, x) (l < depth) sa, sb; ``out`` made
    (``dtype``) or checked."""
    _require()
    x1 = np.ascontiguousarray(x1, dtype=np.float64)
    x2 = np.ascontiguousarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or x1.shape[1] == 0:
        raise ValueError(f"x1 and x2 must be (n, d) with the same d >= 1; got shapes {x1.shape}, {x2.shape}")
    n1, dim = x1.shape
    n2 = x2.shape[0]
    if out is None:
        out = tuple(np.empty((n1, n2), dtype=dtype) if want else None for want in (want_nngp, want_ntk))
    for o in out:
        if o is not None and (o.shape != (n1, n2) or o.dtype != dtype or not o.flags.c_contiguous):
            raise ValueError(f"out must hold C-contiguous {np.dtype(dtype).name} arrays of shape {(n1, n2)}")
    ad = a / dim
    with np.errstate(over="ignore", invalid="ignore"):  # overflows are refused by the caller's checks
        k1 = ad * np.sum(x1 * x1, axis=-1) + b
        k2 = ad * np.sum(x2 * x2, axis=-1) + b
        sa, sb = np.empty((max(depth, 1), n1)), np.empty((max(depth, 1), n2))
        d1, d2 = k1, k2
        for layer in range(depth):
            sa[layer], sb[layer] = np.sqrt(d1), np.sqrt(d2)
            d1, d2 = (0.5 * a) * d1 + b, (0.5 * a) * d2 + b
    return x1, x2, ad, k1, k2, sa, sb, out


def relu_tile(x1: Any, x2: Any, *, depth: int, a: float, b: float, refine_tol: float, want_nngp: bool = True,
              want_ntk: bool = True, out: tuple | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(NNGP, NTK) of a depth-``depth`` ReLU MLP, each (n1, n2) float64 (None where not wanted),
    for features x1 (n1, d), x2 (n2, d), a = sigma_w^2, b = sigma_b^2: the convention and the
    recursion of :mod:`mfarray.kernels.relu` (its hyper-parameter checks are the caller's).
    ``out``: (nngp, ntk) C-contiguous float64 arrays (n1, n2) to write into, or None for a
    kernel not wanted (then ``want_nngp``, ``want_ntk`` are ignored)."""
    depth = int(depth)
    x1, x2, ad, k1, k2, sa, sb, out = _relu_prep(x1, x2, depth, a, b, out, want_nngp, want_ntk, np.float64)
    none = np.empty((0, 0))
    if x1.shape[0] and x2.shape[0] and (out[0] is not None or out[1] is not None):
        _relu_tile(tuple(np.ascontiguousarray(x1.T)), tuple(np.ascontiguousarray(x2.T)), x1, x2, sa, sb, k1, k2,
                   float(ad), float(a), float(b), float(refine_tol), depth,
                   none if out[0] is None else out[0], none if out[1] is None else out[1],
                   out[0] is not None, out[1] is not None)
    return out[0], out[1]
