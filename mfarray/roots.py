"""Batched roots of many univariate polynomials of the same degree.

Shiffman-Zelditch sampling needs the d roots of p(a + t b) for millions of lines; a Python
loop over ``numpy.roots`` costs ~27 us per line.  Here all lines are solved at once by the
Aberth-Ehrlich iteration, vectorised over lines with the (degree, lines) layout so every
NumPy operation streams a long contiguous array; the rare lines that have not converged
after a fixed number of sweeps fall back to companion-matrix eigenvalues.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend

Array = Any  # a NumPy, CuPy or Dask array


def _horner(coeffs_desc, z, xp):
    """Monic polynomial value and derivative, coefficients (d, L) after the leading 1."""
    f = z + coeffs_desc[0]
    fp = xp.ones_like(z)
    for k in range(1, coeffs_desc.shape[0]):
        fp = fp * z + f
        f = f * z + coeffs_desc[k]
    return f, fp


def relative_residual(coeffs: Array, roots: Array) -> Array:
    """|q(t)| / sum_m |c_m| |t|^m for coefficients (L, d+1) (ascending) and roots (L, d)."""
    xp = backend.namespace(coeffs, roots)
    f = xp.zeros_like(roots)
    scale = xp.zeros(roots.shape, dtype=xp.float64)
    at = xp.abs(roots)
    for m in range(coeffs.shape[-1] - 1, -1, -1):
        f = f * roots + coeffs[:, m : m + 1]
        scale = scale * at + xp.abs(coeffs[:, m : m + 1])
    return xp.abs(f) / scale


def polyroots(coeffs: Array, *, sweeps: int = 10, tol: float = 1e-12) -> Array:
    """Roots (L, d) of polynomials with ascending coefficients (L, d+1), leading c_d != 0."""
    xp = backend.namespace(coeffs)
    L, d1 = coeffs.shape
    d = d1 - 1
    if d < 1:
        raise ValueError("polynomials must have degree >= 1")
    monic = xp.matrix_transpose(coeffs[:, d - 1 :: -1] / coeffs[:, d : d + 1])  # (d, L) descending
    # start on a circle whose radius is the geometric mean of the root moduli, rotated off the axes
    radius = xp.abs(monic[-1]) ** (1.0 / d)
    start = xp.asarray(np.exp(2j * np.pi * (np.arange(d) + 0.25) / d + 0.4j))
    z = start[:, None] * radius[None, :]
    for _ in range(sweeps):
        f, fp = _horner(monic, z, xp)
        w = f / fp
        s = xp.zeros_like(z)
        for i in range(d):
            for j in range(i + 1, d):
                q = 1.0 / (z[i] - z[j])
                s[i] += q
                s[j] -= q
        z = z - w / (1.0 - w * s)
    roots = xp.matrix_transpose(z)
    bad = ~xp.all(relative_residual(coeffs, roots) <= tol, axis=1)
    if bool(xp.any(bad)):
        idx = xp.nonzero(bad)[0]
        roots[idx] = _companion_roots(coeffs[idx], xp)
    return roots


def _companion_roots(coeffs, xp):
    L, d1 = coeffs.shape
    d = d1 - 1
    comp = xp.zeros((L, d, d), dtype=coeffs.dtype)
    if d > 1:
        comp[:, 1:, :-1] = xp.eye(d - 1, dtype=coeffs.dtype)
    comp[:, 0, :] = -coeffs[:, d - 1 :: -1] / coeffs[:, d : d + 1]
    # general (non-Hermitian) eigenvalues are a NumPy/LAPACK feature; these lines are rare
    return xp.asarray(np.linalg.eigvals(backend.to_numpy(comp)))
