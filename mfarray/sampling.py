"""Shiffman-Zelditch points on X: the roots of p along random lines in P^n.

A line z(t) = a + t b with a, b standard complex Gaussian vectors in C^{n+1} meets X in
``degree`` points; for Gaussian (unitarily invariant) lines these points are distributed by the
restricted Fubini-Study volume of X (Shiffman-Zelditch), which the MC weights
|Omega|^2 / det g_FS turn into the Calabi-Yau volume.

Reproducibility: lines are drawn in fixed blocks of :data:`LINES_PER_BLOCK`, block j from
``numpy.random.SeedSequence(seed, spawn_key=(j,))``; point i is root i mod d of line i // d.
The points therefore depend only on (surface, seed, index), never on the chunking or the
scheduler.  :func:`sample_z` is the bare chunk function; :func:`sample_points` in
``mfarray.pointset`` lifts it over Dask chunks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import roots as _roots

if TYPE_CHECKING:
    from .geometry.hypersurface import Hypersurface

LINES_PER_BLOCK = 4096
POLISH_STEPS = 2
MAX_POLISH_STEPS = 8
RESIDUAL_TOL = 1e-10  # every sampled point satisfies surface.relative_residual(z) <= this


def random_lines(n_ambient: int, seed: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The a, b (LINES_PER_BLOCK, n+1) complex Gaussian vectors of line block ``block``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    x = rng.standard_normal((2, LINES_PER_BLOCK, n_ambient, 2))
    ab = x[..., 0] + 1j * x[..., 1]
    return ab[0], ab[1]


def line_coefficients(surface: Hypersurface, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ascending coefficients (L, d+1) of q(t) = p(a + t b), by evaluation at roots of unity."""
    d = surface.degree
    omega = np.exp(2j * np.pi * np.arange(d + 1) / (d + 1))
    pts = a[:, None, :] + omega[None, :, None] * b[:, None, :]  # (L, d+1, n+1)
    values = surface(pts)  # (L, d+1)
    return np.fft.fft(values, axis=1) / (d + 1)


def _polish(surface: Hypersurface, z: np.ndarray, direction: np.ndarray, steps: int) -> np.ndarray:
    """Newton steps for p along the line direction: z <- z - p(z) / (dp(z) . w) w."""
    for _ in range(steps):
        p, dp = surface.value_and_gradient(z)
        slope = np.sum(dp * direction, axis=-1)
        step = np.divide(p, slope, out=np.zeros_like(p), where=slope != 0)
        z = z - step[:, None] * direction
    return z


def intersect_lines(surface: Hypersurface, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All ``degree`` intersections of the lines a + t b with X: (L * d, n+1), line-major."""
    # parametrise each line from its better-conditioned end: the leading coefficient is p(b),
    # so put the vector with the larger |p|/|.|^d in b (a, b are exchangeable in distribution)
    d = surface.degree

    def rel(v):
        return np.abs(surface(v)) / np.sum(np.abs(v) ** 2, axis=-1) ** (d / 2)

    swap = rel(a) > rel(b)
    a, b = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
    t = _roots.polyroots(line_coefficients(surface, a, b))  # (L, d)
    # a root with |t| > 1 is written as a/t + b (same projective point) and polished along a
    big = np.abs(t) > 1
    tt = np.where(big, 1 / np.where(big, t, 1), t)
    z = np.where(big[..., None], tt[..., None] * a[:, None] + b[:, None], a[:, None] + tt[..., None] * b[:, None])
    direction = np.where(big[..., None], a[:, None], b[:, None])
    shape = (-1, surface.n_ambient)
    z = z.reshape(shape)
    direction = np.broadcast_to(direction, z.reshape(t.shape + (-1,)).shape).reshape(shape)
    z = _polish(surface, z, direction, POLISH_STEPS)
    res = surface.relative_residual(z)
    bad = res > 1e-12
    if np.any(bad):
        z[bad] = _polish(surface, z[bad], direction[bad], MAX_POLISH_STEPS)
        worst = float(np.max(surface.relative_residual(z[bad])))
        if not worst <= RESIDUAL_TOL:  # also catches NaN
            raise ValueError(
                f"{surface.label}: Newton polishing left a point at relative residual {worst:.3g} "
                f"> {RESIDUAL_TOL:g}; the line met X where dp vanishes: X is (numerically) singular there. "
                "Sample a smooth hypersurface (e.g. dwork_quintic(psi) with psi**5 != 1)"
            )
    return z


def sample_z(surface: Hypersurface, seed: int, start: int, stop: int) -> np.ndarray:
    """Homogeneous coordinates (stop - start, n+1) of sample points start..stop-1."""
    if stop <= start:
        return np.zeros((0, surface.n_ambient), dtype=np.complex128)
    d = surface.degree
    first_line, last_line = start // d, (stop - 1) // d
    chunks = []
    for block in range(first_line // LINES_PER_BLOCK, last_line // LINES_PER_BLOCK + 1):
        a, b = random_lines(surface.n_ambient, seed, block)
        lo = max(first_line - block * LINES_PER_BLOCK, 0)
        hi = min(last_line - block * LINES_PER_BLOCK + 1, LINES_PER_BLOCK)
        chunks.append(intersect_lines(surface, a[lo:hi], b[lo:hi]))
    z = np.concatenate(chunks, axis=0)
    offset = start - first_line * d
    return z[offset : offset + (stop - start)]
