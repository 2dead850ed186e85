"""Cosine network of Halverson & Ruehle §2.3.2 and its last-layer NTK, eqs. (2.32)-(2.37).

Three architectures are provided (keyword ``variant``); all have last-layer-only training
(only ``a`` is trained, eq. 2.33) and parameters drawn as in (2.32)::

    w ~ N(0, sigma_w^2 / d)  (every entry),  b ~ U(-pi, pi),  a ~ N(0, sigma_a^2).

``variant="rff"`` (default; the paper's *intended* network, the random Fourier features of
Rahimi & Recht, the paper's ref. [21])::

    phi(x) = A / sqrt(N) sum_i a_i cos(w_i . x + b_i),           w_i in R^d
    Theta(x, x')    = A^2 / N sum_i cos(w_i.x + b_i) cos(w_i.x' + b_i)          (2.33)
    Theta_bar(x, x') = A^2 / 2 exp(-sigma_w^2 |x - x'|^2 / (2 d))               (2.35)

  Derivation: cos(u + b) cos(v + b) = [cos(u - v) + cos(u + v + 2b)] / 2; the second term
  averages to zero over b ~ U(-pi, pi) (2b covers two full periods), and
  E_w cos(w.(x - x')) = exp(-sigma_w^2 |x - x'|^2 / (2d)) (characteristic function of
  N(0, sigma_w^2/d I)).  This is the Gaussian the paper claims in (2.35).

``variant="coordinatewise"`` (eq. 2.32 *literally*: the cosine is summed over coordinates
inside, with one a_i per neuron)::

    phi(x) = A / sqrt(N) sum_i a_i sum_j cos(w_ij x_j + b_i)
    Theta(x, x') = A^2/N sum_i [sum_j cos(w_ij x_j + b_i)] [sum_l cos(w_il x'_l + b_i)]
    Theta_bar(x, x') = A^2/2 [ sum_j exp(-s (x_j - x'_j)^2)
                               + sum_{j != l} exp(-s x_j^2) exp(-s x'_l^2) ],  s = sigma_w^2/(2d)

  The cross terms j != l (which (2.33) drops) do not vanish: for independent w_ij, w_il,
  E cos(w_ij x_j - w_il x'_l) = exp(-s (x_j^2 + x'_l^2)).  The kernel is not translation
  invariant and not a Gaussian in R^d; for d > 1 it is not integrable over R^d.

``variant="additive"`` (the network whose NTK is (2.33) literally: one a_ij per neuron and
coordinate)::

    phi(x) = A / sqrt(N) sum_i sum_j a_ij cos(w_ij x_j + b_i)
    Theta_bar(x, x') = A^2/2 sum_j exp(-sigma_w^2 (x_j - x'_j)^2 / (2d))

  a *sum* (not a product) of one-dimensional Gaussians: again not integrable over R^d, d > 1.

For d = 1 the three variants coincide.

Normalisation (2.36), corrected: the RFF kernel integrates over x - x' in R^d to
A^2/2 (2 pi d / sigma_w^2)^(d/2), so it is the normalised Gaussian of (2.27) with
sigma^2 = d / sigma_w^2 (2.37, correct) iff

    A = sqrt(2) (sigma_w / sqrt(2 pi d))^(d/2)          (the paper's 2.36 has A^2 here).

All functions are pure array code: the namespace comes from the inputs
(``array_api_compat.array_namespace``), so NumPy and CuPy inputs both work; parameters are
drawn with NumPy (``numpy.random.default_rng``) and moved to the inputs' namespace.  Integer
inputs are promoted to float64; floating inputs keep their dtype.  :func:`cosine_ntk` is a
:class:`~mfarray.kernels.spec.Kernel` spec on real features (``inputs="features"``);
:func:`cosine_ntk_empirical` depends on a draw of the network (width, seed) and stays a function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from .checks import SQUARED_MAX, Choice, Flag, Integer, Real, check_hyper, require_real
from .spec import kernel

Array = Any  # a NumPy, CuPy or Dask array

__all__ = [
    "VARIANTS",
    "sq_distances",
    "cosine_normalized_amplitude",
    "cosine_ntk_width",
    "cosine_ntk",
    "cosine_net_init",
    "cosine_features",
    "cosine_net_apply",
    "cosine_ntk_empirical",
]

VARIANTS = ("rff", "coordinatewise", "additive")

# Above this input dimension sq_distances(method="auto") switches to the GEMM formula.
_DIRECT_MAX_DIM = 32

#: the allowed values of the cosine kernels' keywords (:mod:`mfarray.kernels.checks`)
DOMAINS = {
    "sigma_w": Real(0, SQUARED_MAX, doc="the weight scale, w ~ N(0, sigma_w^2 / d)"),
    "amplitude": Real(-SQUARED_MAX, SQUARED_MAX, doc="the amplitude A"),
    "normalized": Flag(),
    "variant": Choice(VARIANTS),
    "width": Integer(1, doc="the number of neurons N"),
}


# ----------------------------------------------------------------------------- helpers
def _as_float_pair(x1, x2, kernel_name="kernel"):
    """Namespace of (x1, x2) and both as 2-D floating arrays of one dtype (float64 default);
    complex inputs are refused (TypeError), not cast."""
    require_real(x1, "x1", kernel_name)
    require_real(x2, "x2", kernel_name)
    if not array_api_compat.is_array_api_obj(x1):
        x1 = np.asarray(x1, dtype=np.float64)
    if not array_api_compat.is_array_api_obj(x2):
        x2 = np.asarray(x2, dtype=np.float64)
    xp = array_api_compat.array_namespace(x1, x2)
    dtype = xp.result_type(x1.dtype, x2.dtype)
    if not xp.isdtype(dtype, "real floating"):
        dtype = xp.float64
    x1 = xp.astype(x1, dtype, copy=False)
    x2 = xp.astype(x2, dtype, copy=False)
    for name, x in (("x1", x1), ("x2", x2)):
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (n_points, d); got {tuple(x.shape)}")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 have different dimensions d: {x1.shape[1]} != {x2.shape[1]}")
    return xp, x1, x2


def _as_float(x):
    xp, x, _ = _as_float_pair(x, x)
    return xp, x


def _features_dim(x1, name) -> int:
    """The feature dimension d of x1 (n, d), refused (ValueError) when 0."""
    d = int(x1.shape[1])
    if d < 1:
        raise ValueError(f"{name} needs at least one feature per point: x1 has shape {tuple(x1.shape)}")
    return d


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")


def _param(xp, p, like):
    """A NumPy parameter array moved to the namespace/dtype of ``like``."""
    return xp.astype(xp.asarray(p), like.dtype)


def sq_distances(x1: Array, x2: Array, *, method: str = "auto") -> Array:
    """Squared Euclidean distances |x1_i - x2_j|^2.

    Parameters
    ----------
    x1 : (n1, d) array
    x2 : (n2, d) array
    method : {"auto", "direct", "gemm"}
        ``"direct"`` accumulates (x1_ik - x2_jk)^2 coordinate by coordinate (a loop over the
        d coordinates, never over points; memory O(n1 n2)).  The difference of two nearly
        equal floats is exact (Sterbenz), so nearly equal points keep full *relative*
        accuracy.  ``"gemm"`` uses |x|^2 + |x'|^2 - 2 x.x' (one matrix product, fast for
        large d) after centring both sets at a common mean; its *absolute* error is about
        eps (|x - c|^2 + |x' - c|^2), so distances of nearly equal points are inaccurate
        (catastrophic cancellation); results are clamped at 0.  ``"auto"`` uses "direct"
        for d <= 32 and "gemm" above.

    Returns
    -------
    (n1, n2) array, >= 0.
    """
    xp, x1, x2 = _as_float_pair(x1, x2)
    d = x1.shape[1]
    if method == "auto":
        method = "direct" if d <= _DIRECT_MAX_DIM else "gemm"
    if method == "direct":
        acc = xp.zeros((x1.shape[0], x2.shape[0]), dtype=x1.dtype)
        for k in range(d):  # loop over coordinates only
            diff = x1[:, k, None] - x2[None, :, k]
            acc = acc + diff * diff
        return acc
    if method == "gemm":
        n1, n2 = x1.shape[0], x2.shape[0]
        c = (xp.sum(x1, axis=0) + xp.sum(x2, axis=0)) / max(n1 + n2, 1)
        y1 = x1 - c
        y2 = x2 - c
        s1 = xp.sum(y1 * y1, axis=1)
        s2 = xp.sum(y2 * y2, axis=1)
        d2 = s1[:, None] + s2[None, :] - 2.0 * (y1 @ xp.matrix_transpose(y2))
        return xp.where(d2 > 0, d2, xp.zeros_like(d2))
    raise ValueError(f"method must be 'auto', 'direct' or 'gemm'; got {method!r}")


# ----------------------------------------------------------------- normalisation (2.36)
def cosine_normalized_amplitude(d: int, sigma_w: float) -> float:
    """Amplitude A for which the RFF NTK (2.35) is a normalised Gaussian on R^d.

    A^2 / 2 = (2 pi sigma^2)^(-d/2) with sigma^2 = d / sigma_w^2, i.e.

        A = sqrt(2) (sigma_w / sqrt(2 pi d))^(d/2).

    This corrects the paper's (2.36), A = 2^(1/4) (sigma_w / sqrt(2 pi d))^(d/4), which is the
    square root of this value (it normalises A instead of A^2).
    """
    d = int(d)
    if d < 1 or not sigma_w > 0:
        raise ValueError("need d >= 1 and sigma_w > 0")
    try:
        return math.sqrt(2.0) * (sigma_w / math.sqrt(2.0 * math.pi * d)) ** (d / 2.0)
    except OverflowError:
        raise ValueError(f"normalized=True: the amplitude sqrt(2) (sigma_w / sqrt(2 pi d))^(d/2) overflows float64 "
                         f"for sigma_w={sigma_w!r}, d={d}; use a smaller sigma_w") from None


def cosine_ntk_width(d: int, sigma_w: float) -> float:
    """Standard deviation sigma = sqrt(d) / sigma_w of the Gaussian NTK (2.37), per coordinate."""
    return math.sqrt(d) / sigma_w


def _amplitude(amplitude, normalized, d, sigma_w, variant):
    if not normalized:
        return float(amplitude)
    if amplitude != 1.0:
        raise ValueError("pass either amplitude or normalized=True, not both")
    if variant != "rff" and d > 1:
        raise ValueError(
            f"variant {variant!r} has a kernel that is not integrable over R^d for d > 1; "
            "normalized=True only exists for variant='rff' (or d == 1)"
        )
    return cosine_normalized_amplitude(d, sigma_w)


# ------------------------------------------------------------------- analytic NTK (2.35)
@kernel("features", domains={k: DOMAINS[k] for k in ("sigma_w", "amplitude", "normalized", "variant")})
def cosine_ntk(x1: Array, x2: Array, *, sigma_w: float, amplitude: float = 1.0, normalized: bool = False,
               variant: str = "rff") -> Array:
    """Infinite-width last-layer NTK of the cosine network, eqs. (2.34)-(2.35).

    Parameters
    ----------
    x1 : (n1, d) array
    x2 : (n2, d) array
    sigma_w : float
        Weight scale, w ~ N(0, sigma_w^2 / d).
    amplitude : float
        A in (2.32).  Ignored (must be left at 1.0) when ``normalized=True``.
    normalized : bool
        Use A = :func:`cosine_normalized_amplitude` (corrected 2.36), so the kernel is the
        normalised Gaussian (2.27) of width sigma = sqrt(d)/sigma_w (2.37).  Only for
        ``variant="rff"`` (or d = 1).
    variant : {"rff", "coordinatewise", "additive"}
        See the module docstring.  "rff" gives the paper's (2.35):
        A^2/2 exp(-sigma_w^2 |x - x'|^2 / (2d)).

    Returns
    -------
    (n1, n2) array.  Independent of sigma_a (only ``a`` is trained).
    """
    _check_variant(variant)
    xp, x1, x2 = _as_float_pair(x1, x2, "cosine_ntk")
    d = _features_dim(x1, "cosine_ntk")
    amp = _amplitude(amplitude, normalized, d, sigma_w, variant)
    pref = 0.5 * amp * amp
    s = sigma_w * sigma_w / (2.0 * d)
    if variant == "rff":
        return pref * xp.exp(-s * sq_distances(x1, x2))
    # sum_j exp(-s (x_j - x'_j)^2), accumulated over coordinates (memory O(n1 n2))
    diag = xp.zeros((x1.shape[0], x2.shape[0]), dtype=x1.dtype)
    for k in range(d):
        diff = x1[:, k, None] - x2[None, :, k]
        diag = diag + xp.exp(-s * diff * diff)
    if variant == "additive":
        return pref * diag
    # coordinatewise: + sum_{j != l} u_j(x) u_l(x') = U(x) U(x') - sum_j u_j(x) u_j(x')
    u1 = xp.exp(-s * x1 * x1)
    u2 = xp.exp(-s * x2 * x2)
    cross = xp.sum(u1, axis=1)[:, None] * xp.sum(u2, axis=1)[None, :] - u1 @ xp.matrix_transpose(u2)
    return pref * (diag + cross)


# ------------------------------------------------------------------ the network (2.32)
def cosine_net_init(d: int, width: int, *, sigma_w: float, sigma_a: float = 1.0, seed: int | np.random.SeedSequence = 0,
                    variant: str = "rff") -> dict[str, np.ndarray]:
    """Draw the parameters of the cosine network (2.32).

    Parameters
    ----------
    d, width : int
        Input dimension d and width N.
    sigma_w, sigma_a : float
        w ~ N(0, sigma_w^2 / d) entrywise, a ~ N(0, sigma_a^2); b ~ U(-pi, pi).
    seed : int or numpy.random.SeedSequence
        Passed to ``numpy.random.default_rng``.  w and b are drawn first, so they do not
        depend on ``variant``.
    variant : str
        Only affects the shape of ``a``: (N, d) for "additive", (N,) otherwise.

    Returns
    -------
    dict of NumPy float64 arrays: "w" (N, d), "b" (N,), "a" (N,) or (N, d).
    """
    _check_variant(variant)
    d, width = int(d), int(width)
    if d < 1 or width < 1:
        raise ValueError("need d >= 1 and width >= 1")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, sigma_w / math.sqrt(d), size=(width, d))
    b = rng.uniform(-math.pi, math.pi, size=width)
    a = rng.normal(0.0, sigma_a, size=(width, d) if variant == "additive" else width)
    return {"w": w, "b": b, "a": a}


def cosine_features(params: Mapping[str, Array], x: Array, *, variant: str = "rff") -> Array:
    """Features F with phi(x) = A/sqrt(N) F(x) @ a.ravel(), i.e. d phi / d a = A/sqrt(N) F.

    Returns (n, N) for "rff" (cos(w_i.x + b_i)) and "coordinatewise"
    (sum_j cos(w_ij x_j + b_i)); (n, N*d) for "additive" (cos(w_ij x_j + b_i), index i*d + j).
    """
    _check_variant(variant)
    xp, x = _as_float(x)
    w = _param(xp, params["w"], x)
    b = _param(xp, params["b"], x)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"x has d={x.shape[1]} but the network has d={w.shape[1]}")
    if variant == "rff":
        return xp.cos(x @ xp.matrix_transpose(w) + b[None, :])
    z = xp.cos(x[:, None, :] * w[None, :, :] + b[None, :, None])  # (n, N, d)
    if variant == "coordinatewise":
        return xp.sum(z, axis=2)
    return xp.reshape(z, (x.shape[0], w.shape[0] * w.shape[1]))


def cosine_net_apply(params: Mapping[str, Array], x: Array, amplitude: float = 1.0, *, variant: str = "rff") -> Array:
    """The network function phi(x) of (2.32) -> (n,).  See module docstring for variants."""
    xp, x = _as_float(x)
    feats = cosine_features(params, x, variant=variant)
    a = xp.reshape(_param(xp, params["a"], x), (-1,))
    n_width = params["b"].shape[0]
    return (amplitude / math.sqrt(n_width)) * (feats @ a)


def cosine_ntk_empirical(x1: Array, x2: Array, *, sigma_w: float, width: int, amplitude: float = 1.0,
                         normalized: bool = False, seed: int | np.random.SeedSequence = 0,
                         variant: str = "rff") -> Array:
    """Finite-width last-layer NTK (2.33) of one random draw of the network (2.32).

    Theta(x, x') = sum_k d phi(x)/d a_k  d phi(x')/d a_k = A^2/N F(x) F(x')^T with F from
    :func:`cosine_features` and parameters from :func:`cosine_net_init` (same ``seed``).
    Converges to :func:`cosine_ntk` with error O(1/sqrt(N)).

    Returns (n1, n2) array.
    """
    check_hyper(DOMAINS, {"sigma_w": sigma_w, "width": width, "amplitude": amplitude,
                          "normalized": normalized, "variant": variant}, "cosine_ntk_empirical")
    xp, x1, x2 = _as_float_pair(x1, x2, "cosine_ntk_empirical")
    d = _features_dim(x1, "cosine_ntk_empirical")
    amp = _amplitude(amplitude, normalized, d, sigma_w, variant)
    params = cosine_net_init(d, width, sigma_w=sigma_w, seed=seed, variant=variant)
    f1 = cosine_features(params, x1, variant=variant)
    f2 = cosine_features(params, x2, variant=variant)
    return (amp * amp / int(width)) * (f1 @ xp.matrix_transpose(f2))
