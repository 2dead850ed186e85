"""Monte-Carlo weights and the Calabi-Yau measures kappa, eta, sigma (paper eq. B.10-B.11).

Points sampled by intersecting random lines with X follow the restricted Fubini-Study volume
det(g_FS) d^{2k}x (Shiffman-Zelditch).  Integrals against the Calabi-Yau volume |Omega|^2 d^{2k}x
are therefore Monte-Carlo averages with weights

    w = |Omega|^2 / det g_FS          (chart independent: both sides pick up |det Jac|^2),

which mfarray normalises to mean 1 over a point set.  With E_w the w-weighted mean
(sum w f / sum w, an estimate of  int f |Omega|^2 / int |Omega|^2):

    kappa = E_w[det g / |Omega|^2]          (J^n = kappa |Omega|^2 on average, B.10)
    eta   = det g / (kappa |Omega|^2)
    sigma = E_w[|1 - eta|]                  (B.11; 0 for the Calabi-Yau metric)

These are bare formulas on arrays of shape (N,); reductions run over the last axis.  The
arrays of one call must be of one kind (all NumPy, all CuPy or all Dask): mixed kinds are
refused with a TypeError rather than converted here, so a caller converts once, at its boundary
(``mfarray.pointset`` does for point sets).

:func:`sum_partials` and :func:`exact_sum` give correctly rounded sums from per-chunk partials,
so a mean over chunks (the weights' normalisation) does not depend on the chunking.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

from .. import backend

Array = Any  # a NumPy, CuPy or Dask array


def _namespace(*arrays):
    """The one array namespace of ``arrays``; a TypeError naming the kinds where they are mixed."""
    try:
        return backend.namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] for a in arrays})
        raise TypeError(
            "the measures take arrays of one kind (all NumPy, all CuPy or all Dask); got a mix of "
            f"{', '.join(kinds)}: convert them once, where they enter (mfarray.pointset does for "
            "point sets)"
        ) from exc


def mc_weight_raw(omega2: Array, det_g_fs: Array) -> Array:
    """|Omega|^2 / det g_FS, unnormalised, shape (...)."""
    return omega2 / det_g_fs


def sum_partials(x: Array) -> list[float]:
    """Floats whose exact (unrounded) sum is the exact sum of the entries of ``x`` (any shape).

    NumPy or CuPy (copied to the host).  The exact sum is peeled off one correctly rounded
    term at a time (``math.fsum``), largest first, until nothing is left, so the list is short
    (two or three terms for data spanning a few decades).  Combining the partials of several
    chunks with :func:`exact_sum` gives the correctly rounded sum of all entries: a total that
    does not depend on how the entries were split into chunks.  Non-finite entries give one
    term, their (inf or NaN) sum; entries near the float64 limit, whose partial sums overflow,
    are summed scaled by 2**-128 (exact unless some entries are below 2**-894).
    """
    host = backend.to_numpy(x).astype(float, copy=False).ravel()
    values = host.tolist()
    if not all(map(math.isfinite, values)):
        return [float(sum(v for v in values if not math.isfinite(v)))]
    try:
        return _peel(values)
    except OverflowError:
        return [p * _UP for p in _peel([v * _DOWN for v in values])]


_UP, _DOWN = 2.0**128, 2.0**-128  # exact rescaling of sums whose partial sums overflow (inf if the sum does)


def _peel(values: list[float]) -> list[float]:
    out: list[float] = []
    while True:
        term = math.fsum(itertools.chain(values, (-p for p in out)))
        if term == 0:
            return out
        out.append(term)


def exact_sum(partials: Iterable[Iterable[float]]) -> float:
    """The correctly rounded sum of the partials of several chunks (:func:`sum_partials`):
    inf where the sum overflows float64, NaN where a chunk held NaN (or inf - inf)."""
    terms = list(itertools.chain.from_iterable(partials))
    if not all(map(math.isfinite, terms)):
        return float(sum(terms))
    try:
        return math.fsum(terms)
    except OverflowError:
        return math.fsum(t * _DOWN for t in terms) * _UP


def weighted_mean(f: Array, weight: Array) -> Array:
    """E_w[f] = sum w f / sum w over the last axis."""
    xp = _namespace(f, weight)
    return xp.sum(weight * f, axis=-1) / xp.sum(weight, axis=-1)


def kappa(det_g: Array, omega2: Array, weight: Array) -> Array:
    """kappa = E_w[det g / |Omega|^2] (B.10)."""
    _namespace(det_g, omega2, weight)
    return weighted_mean(det_g / omega2, weight)


def eta(det_g: Array, omega2: Array, kappa_value: Array | float) -> Array:
    """eta = det g / (kappa |Omega|^2) per point (B.11)."""
    _namespace(det_g, omega2)
    return det_g / (kappa_value * omega2)


def sigma(det_g: Array, omega2: Array, weight: Array) -> Array:
    """sigma = E_w[|1 - eta|] with kappa from the same points (B.11)."""
    _namespace(det_g, omega2, weight)
    return sigma_of(omega2, weight)(det_g)


def sigma_of(omega2: Array, weight: Array) -> Callable[[Array], Array]:
    """The function det g -> sigma (B.11) at fixed points, for repeated use (a flow records it
    every step).  Written with q = w det g / |Omega|^2 (w >= 0): kappa = sum q / sum w and
    w |1 - eta| = |w - q / kappa|, so sigma = sum |w - q / kappa| / sum w."""
    xp = _namespace(omega2, weight)
    w_over_o = weight / omega2
    wsum = xp.sum(weight, axis=-1)

    def sigma_at(det_g: Array) -> Array:
        q = w_over_o * det_g
        k = (q.sum(axis=-1) / wsum)[..., None]
        return xp.abs(weight - q / k).sum(axis=-1) / wsum

    return sigma_at
