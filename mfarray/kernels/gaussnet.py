"""Gauss-net (Halverson, Maiti & Stoner, arXiv:2008.08601; ref. [22] of Halverson & Ruehle).

Architecture
------------
Gauss-net is a one-hidden-layer network with exponential activation, each hidden unit
divided by the deterministic factor that makes its second moment 1.  In the original
(standard-parameterised) form::

    f(x) = b1 + sum_i W1_i h_i(x),
    h_i(x) = exp(W0_i . x + b0_i) / sqrt(exp[2 (sigma_b0^2 + sigma_w^2 |x|^2 / d)])
           = exp(W0_i . x + b0_i - sigma_b0^2 - sigma_w^2 |x|^2 / d),
    W0 ~ N(0, sigma_w^2 / d),  b0 ~ N(0, sigma_b0^2),  W1 ~ N(0, sigma_W1^2 / N),  b1 ~ N(0, sigma_b^2),

with NNGP G(x, x') = sigma_b^2 + sigma_W1^2 exp(-sigma_w^2 |x - x'|^2 / (2 d)).  (We write
down the definition as we recall it from HMS; the search corpus did not contain the paper
text.  The formula is re-derived below and verified by Monte Carlo in the tests.)

Here, as for the cosine network of Halverson & Ruehle (2.32), we use the NTK
parameterisation with an amplitude A::

    f(x) = A / sqrt(N) sum_i a_i h_i(x) + sigma_b beta,     a_i ~ N(0, sigma_a^2), beta ~ N(0, 1),

which has the same NNGP as HMS's Gauss-net with sigma_W1 = A sigma_a.

Derivation
----------
Let s(x) = sigma_b0^2 + sigma_w^2 |x|^2 / d.  Since W0_i . x + b0_i ~ N(0, s(x)) jointly
Gaussian in x, E exp(W0.u + 2 b0) = exp(sigma_w^2 |u|^2 / (2d) + 2 sigma_b0^2), and with
u = x + x'::

    E[h(x) h(x')] = exp(sigma_w^2 |x + x'|^2 / (2d) + 2 sigma_b0^2 - s(x) - s(x'))
                  = exp(-sigma_w^2 |x - x'|^2 / (2d)).

The hidden bias sigma_b0 cancels.  Hence (a, beta independent of h, zero mean)

    NNGP      E[f(x) f(x')]  = sigma_b^2 + A^2 sigma_a^2 exp(-sigma_w^2 |x - x'|^2 / (2d)),
    last-layer NTK (a, beta trained):
              Theta(x, x')   = sigma_b^2 + A^2 / N sum_i h_i(x) h_i(x')
              Theta_bar      = sigma_b^2 + A^2 exp(-sigma_w^2 |x - x'|^2 / (2d)).

Unlike the cosine net there is no factor 1/2: with sigma_b = 0 the NTK is the normalised
Gaussian of (2.27), width sigma = sqrt(d)/sigma_w, for A = (sigma_w / sqrt(2 pi d))^(d/2).

Finite width: the per-neuron fourth moment is E[h(x)^2 h(x')^2] = exp(4 sigma_b0^2 +
4 sigma_w^2 x.x' / d) (log-normal, heavy-tailed), so the empirical NTK's O(1/sqrt(N))
error grows like exp(2 sigma_w^2 |x|^2 / d) for large |x| and with sigma_b0; sigma_b0 = 0
minimises it without changing the kernel.

:func:`gaussnet_nngp` and :func:`gaussnet_ntk` are :class:`~mfarray.kernels.spec.Kernel` specs on
real features (``inputs="features"``); :func:`gaussnet_ntk_empirical` depends on a draw of the
network (width, seed) and stays a function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .checks import SQUARED_MAX, Flag, Integer, Real, check_hyper
from .cosine import _as_float, _as_float_pair, _features_dim, _param, sq_distances
from .spec import kernel

Array = Any  # a NumPy, CuPy or Dask array

__all__ = [
    "gaussnet_normalized_amplitude",
    "gaussnet_nngp",
    "gaussnet_ntk",
    "gaussnet_init",
    "gaussnet_hidden",
    "gaussnet_apply",
    "gaussnet_ntk_empirical",
]


#: the allowed values of the Gauss-net kernels' keywords (:mod:`mfarray.kernels.checks`)
DOMAINS = {
    "sigma_w": Real(0, SQUARED_MAX, doc="the hidden weights' scale, W0 ~ N(0, sigma_w^2 / d)"),
    "sigma_b": Real(0, SQUARED_MAX, doc="the output bias' standard deviation"),
    "sigma_b0": Real(0, SQUARED_MAX, doc="the hidden biases' standard deviation"),
    "sigma_a": Real(0, SQUARED_MAX, doc="the last-layer weights' standard deviation"),
    "amplitude": Real(-SQUARED_MAX, SQUARED_MAX, doc="the amplitude A"),
    "normalized": Flag(),
    "width": Integer(1, doc="the number of neurons N"),
}


def _domains(*names):
    return {k: DOMAINS[k] for k in names}


def gaussnet_normalized_amplitude(d: int, sigma_w: float) -> float:
    """A = (sigma_w / sqrt(2 pi d))^(d/2): the Gauss-net NTK (sigma_b = 0) integrates to 1."""
    d = int(d)
    if d < 1 or not sigma_w > 0:
        raise ValueError("need d >= 1 and sigma_w > 0")
    try:
        return (sigma_w / math.sqrt(2.0 * math.pi * d)) ** (d / 2.0)
    except OverflowError:
        raise ValueError(f"normalized=True: the amplitude (sigma_w / sqrt(2 pi d))^(d/2) overflows float64 for "
                         f"sigma_w={sigma_w!r}, d={d}; use a smaller sigma_w") from None


def _amplitude(amplitude, normalized, d, sigma_w, sigma_b):
    if not normalized:
        return float(amplitude)
    if amplitude != 1.0:
        raise ValueError("pass either amplitude or normalized=True, not both")
    if sigma_b != 0.0:
        raise ValueError("normalized=True needs sigma_b == 0 (a constant is not integrable)")
    return gaussnet_normalized_amplitude(d, sigma_w)


@kernel("features", domains=_domains("sigma_w", "sigma_b", "sigma_a", "amplitude"))
def gaussnet_nngp(x1: Array, x2: Array, *, sigma_w: float, sigma_b: float = 0.0, sigma_a: float = 1.0,
                  amplitude: float = 1.0) -> Array:
    """NNGP kernel E[f(x) f(x')] of Gauss-net (module docstring).

    sigma_b^2 + A^2 sigma_a^2 exp(-sigma_w^2 |x - x'|^2 / (2d)).

    Parameters
    ----------
    x1 : (n1, d) array
    x2 : (n2, d) array
    sigma_w : float     hidden weights W0 ~ N(0, sigma_w^2 / d)
    sigma_b : float     output bias std (the hidden-bias std sigma_b0 cancels exactly)
    sigma_a : float     last-layer weight std
    amplitude : float   A

    Returns
    -------
    (n1, n2) array.
    """
    xp, x1, x2 = _as_float_pair(x1, x2, "gaussnet_nngp")
    d = _features_dim(x1, "gaussnet_nngp")
    g = xp.exp(-(sigma_w * sigma_w / (2.0 * d)) * sq_distances(x1, x2))
    scale = amplitude * sigma_a  # squared by multiplying: inf on overflow (refused), not OverflowError
    return (scale * scale) * g + sigma_b * sigma_b


@kernel("features", domains=_domains("sigma_w", "sigma_b", "amplitude", "normalized"))
def gaussnet_ntk(x1: Array, x2: Array, *, sigma_w: float, sigma_b: float = 0.0, amplitude: float = 1.0,
                 normalized: bool = False) -> Array:
    """Infinite-width last-layer NTK of Gauss-net (a and the output bias beta trained).

    sigma_b^2 + A^2 exp(-sigma_w^2 |x - x'|^2 / (2d)); with ``normalized=True`` (needs
    sigma_b = 0) A = (sigma_w/sqrt(2 pi d))^(d/2), a normalised Gaussian of width
    sqrt(d)/sigma_w, i.e. (2.27) with alpha = 1.

    Returns (n1, n2) array.
    """
    xp, x1, x2 = _as_float_pair(x1, x2, "gaussnet_ntk")
    d = _features_dim(x1, "gaussnet_ntk")
    amp = _amplitude(amplitude, normalized, d, sigma_w, sigma_b)
    return gaussnet_nngp.fn(x1, x2, sigma_w=sigma_w, sigma_b=sigma_b, sigma_a=1.0, amplitude=amp)


def gaussnet_init(d: int, width: int, *, sigma_w: float, sigma_b0: float = 0.0, sigma_a: float = 1.0,
                  sigma_b: float = 0.0, seed: int | np.random.SeedSequence = 0) -> dict[str, Any]:
    """Draw Gauss-net parameters.

    Returns dict: "w" (N, d) ~ N(0, sigma_w^2/d), "b0" (N,) ~ N(0, sigma_b0^2),
    "a" (N,) ~ N(0, sigma_a^2), "beta" () ~ N(0, 1), and the (fixed, untrained)
    hyperparameters "sigma_w", "sigma_b0", "sigma_b" as floats, which enter the
    deterministic normaliser of the hidden units and the output-bias scale.
    """
    d, width = int(d), int(width)
    if d < 1 or width < 1:
        raise ValueError("need d >= 1 and width >= 1")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, sigma_w / math.sqrt(d), size=(width, d))
    b0 = rng.normal(0.0, 1.0, size=width) * sigma_b0
    a = rng.normal(0.0, sigma_a, size=width)
    beta = np.asarray(rng.normal(0.0, 1.0))
    return {
        "w": w,
        "b0": b0,
        "a": a,
        "beta": beta,
        "sigma_w": float(sigma_w),
        "sigma_b0": float(sigma_b0),
        "sigma_b": float(sigma_b),
    }


def gaussnet_hidden(params: Mapping[str, Any], x: Array) -> Array:
    """Hidden units h_i(x) = exp(w_i.x + b0_i - sigma_b0^2 - sigma_w^2 |x|^2 / d) -> (n, N).

    Evaluated as one exponential of the combined exponent (no overflow of the numerator).
    """
    xp, x = _as_float(x)
    w = _param(xp, params["w"], x)
    b0 = _param(xp, params["b0"], x)
    d = x.shape[1]
    if w.shape[1] != d:
        raise ValueError(f"x has d={d} but the network has d={w.shape[1]}")
    sw, sb0 = params["sigma_w"], params["sigma_b0"]
    norm = sb0 * sb0 + (sw * sw / d) * xp.sum(x * x, axis=1)
    return xp.exp(x @ xp.matrix_transpose(w) + b0[None, :] - norm[:, None])


def gaussnet_apply(params: Mapping[str, Any], x: Array, amplitude: float = 1.0) -> Array:
    """f(x) = A/sqrt(N) sum_i a_i h_i(x) + sigma_b beta -> (n,)."""
    xp, x = _as_float(x)
    h = gaussnet_hidden(params, x)
    a = _param(xp, params["a"], x)
    beta = _param(xp, params["beta"], x)
    n_width = params["a"].shape[0]
    return (amplitude / math.sqrt(n_width)) * (h @ a) + params["sigma_b"] * beta


def gaussnet_ntk_empirical(
    x1: Array,
    x2: Array,
    *,
    sigma_w: float,
    width: int,
    sigma_b0: float = 0.0,
    sigma_b: float = 0.0,
    amplitude: float = 1.0,
    normalized: bool = False,
    seed: int | np.random.SeedSequence = 0,
) -> Array:
    """Finite-width last-layer NTK of one draw: sigma_b^2 + A^2/N sum_i h_i(x) h_i(x').

    (Gradients w.r.t. a_i and the output bias beta; parameters from :func:`gaussnet_init`
    with the same ``seed``.)  Returns (n1, n2) array.
    """
    check_hyper(DOMAINS, {"sigma_w": sigma_w, "width": width, "sigma_b0": sigma_b0, "sigma_b": sigma_b,
                          "amplitude": amplitude, "normalized": normalized}, "gaussnet_ntk_empirical")
    xp, x1, x2 = _as_float_pair(x1, x2, "gaussnet_ntk_empirical")
    d = _features_dim(x1, "gaussnet_ntk_empirical")
    amp = _amplitude(amplitude, normalized, d, sigma_w, sigma_b)
    params = gaussnet_init(d, width, sigma_w=sigma_w, sigma_b0=sigma_b0, sigma_b=sigma_b, seed=seed)
    h1 = gaussnet_hidden(params, x1)
    h2 = gaussnet_hidden(params, x2)
    return (amp * amp / int(width)) * (h1 @ xp.matrix_transpose(h2)) + sigma_b * sigma_b
