"""Points of P^n moved onto X = {p = 0} along the normal (Newton), and paired FS distances.

The noise study of the paper (§3.2, Figure 3 left) noises train points off X; its "projected"
variant (mfarray.experiments.noise) moves them back with :func:`project_to_hypersurface`.

Newton step.  At a point z of P^n (unit representative, |z| = 1) the tangent space of P^n is
the horizontal space z^perp, where the Fubini-Study metric is the Euclidean one.  The step is
the minimum-norm solution dz in z^perp of the linearised equation p(z) + dp(z) . dz = 0:

    u  = conj(dp) - <z, conj(dp)> z              (conj(dp) made horizontal; <a, b> = a^H b)
    dz = -p(z) u / |u|^2,        z <- (z + dz) / |z + dz|

On X, z . dp = degree * p(z) = 0 (Euler), so u = conj(dp): the step is the brief's
minimum-norm Newton step -p conj(dp) / |dp|^2 along the normal, orthogonal to the tangent
space {v in z^perp : dp . v = 0} of X.  Off X the horizontal projection only removes the part
of the step along z, which would rescale z without moving the point of P^n.  Every quantity is
homogeneous (p of degree d, dp of degree d - 1), so the iteration is projectively
equivariant: z -> lambda z gives the same points of P^n, lambda times.  Steps are capped at
``max_move`` (an FS length, radians) so a far start does not jump across P^n.

Bare formulas on NumPy/CuPy arrays (no Dask, no xarray), float64 / complex128.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import backend
from .distance import _sine_form, unit_vectors

if TYPE_CHECKING:
    from .hypersurface import Hypersurface

__all__ = ["Projection", "project_to_hypersurface", "fs_distance_rows", "DEFAULT_STEPS", "DEFAULT_TOL"]

Array = Any  # a NumPy or CuPy array

DEFAULT_STEPS = 50
"""Newton steps at most (converging points take ~5 from noise 1e-2, ~10-20 from noise 1)."""

DEFAULT_TOL = 1e-13
"""Relative residual |p(z)| / sum_k |c_k z^m_k| accepted as on X (Newton then ends at ~1e-16)."""


class Projection(NamedTuple):
    """The result of :func:`project_to_hypersurface` for N points.

    z : (N, n+1) complex, the final iterate in the scale of the input (|z| as given, phase kept);
        the input itself, bit for bit, where it was already within ``tol`` of X.
    residual : (N,) float, the relative residual |p(z)| / sum_k |c_k z^m_k| of the z returned.
    converged : (N,) bool, residual <= tol; False rows of z are NOT points of X.
    steps : (N,) int, Newton steps taken at each point (0 for points already on X).
    """

    z: Array
    residual: Array
    converged: Array
    steps: Array


def _check(surface: Any, z: Any, steps: Any, tol: Any, max_move: Any) -> None:
    from .hypersurface import Hypersurface

    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be an mfarray.Hypersurface; got {type(surface).__name__}")
    if not hasattr(z, "shape") or not hasattr(z, "dtype"):
        raise TypeError(f"z must be a NumPy or CuPy array of shape (N, {surface.n_ambient}); got {type(z).__name__}")
    if backend.is_dask(z):
        raise TypeError("z must be an in-memory (NumPy or CuPy) array: project chunk by chunk with map_blocks")
    if z.dtype.kind not in "fciu":
        raise ValueError(f"z must be a numeric array (real or complex); got dtype {z.dtype}")
    if z.ndim != 2 or z.shape[1] != surface.n_ambient:
        raise ValueError(f"z must have shape (N, {surface.n_ambient}) (homogeneous coordinates of P^{surface.n}); "
                         f"got shape {tuple(z.shape)}")
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0 (Newton steps at most); got {steps!r}")
    for name, value in (("tol", tol), ("max_move", max_move)):
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
                or not np.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a finite real number > 0; got {value!r}")


def project_to_hypersurface(surface: Hypersurface, z: Array, *, steps: int = DEFAULT_STEPS,
                            tol: float = DEFAULT_TOL, polish: int = 1, max_move: float = 0.25,
                            strict: bool = True) -> Projection:
    """Move points z (N, n+1) of P^n onto X by Newton steps along the normal (see the module).

    Each point iterates until its relative residual |p(z)| / sum_k |c_k z^m_k|
    (:meth:`Hypersurface.relative_residual`, scale invariant, ~1e-16 on X) is <= ``tol``, then
    takes ``polish`` more steps (convergence is quadratic: one step from tol = 1e-13 ends at the
    rounding level, ~1e-16), for at most ``steps`` steps in all, each at most ``max_move`` long
    in FS distance (radians); then it stops moving.  Points already within ``tol`` are returned
    unchanged (bit for bit).

    Returns a :class:`Projection` (z in the input's scale, residual, converged, steps).  Points
    that do not converge (a start near a critical point of |p|^2 / |z|^(2d), where the
    horizontal gradient vanishes, or too few steps) are never returned as if on X: with
    ``strict=True`` (default) a ValueError says how many and how far off they are; with
    ``strict=False`` they come back flagged ``converged = False`` for the caller to drop or count.

    ValueError for non-finite coordinates or zero vectors (not points of P^n), a wrong shape, or
    steps / polish / tol / max_move out of range (steps, polish >= 0; tol, max_move finite, > 0).
    """
    _check(surface, z, steps, tol, max_move)
    if isinstance(polish, (bool, np.bool_)) or not isinstance(polish, (int, np.integer)) or polish < 0:
        raise ValueError(f"polish must be an integer >= 0 (Newton steps after reaching tol); got {polish!r}")
    xp = backend.namespace(z)
    z = xp.astype(z, xp.complex128)
    if not bool(xp.all(xp.isfinite(z))):
        raise ValueError("z contains NaN or inf coordinates: not points of P^n")
    top = xp.max(xp.abs(z), axis=-1)
    if not bool(xp.all(top > 0)):
        raise ValueError("z contains zero vectors: not points of P^n")
    scale = xp.sqrt(xp.sum(xp.abs(z / top[:, None]) ** 2, axis=-1)) * top  # |z| without overflow
    w = unit_vectors(z)
    residual = surface.relative_residual(w)
    count = xp.zeros(z.shape[0], dtype=xp.int64)
    moved = xp.zeros(z.shape[0], dtype=xp.bool)
    remaining = xp.full(z.shape[0], int(polish), dtype=xp.int64)  # polishing steps left
    active = ~(residual <= tol)
    for _ in range(steps):
        idx = xp.nonzero(active)[0]
        if idx.shape[0] == 0:
            break
        wa = w[idx]
        polishing = residual[idx] <= tol  # this step starts within tol: a polishing step
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            p, dp = surface.value_and_gradient(wa)
            g = xp.conj(dp)
            u = g - xp.sum(xp.conj(wa) * g, axis=-1)[:, None] * wa
            uu = xp.sum(xp.real(u) ** 2 + xp.imag(u) ** 2, axis=-1)
            dz = (-p / uu)[:, None] * u
            length = xp.sqrt(xp.sum(xp.real(dz) ** 2 + xp.imag(dz) ** 2, axis=-1))
            # |dz| = tan of the FS length of the step (dz is horizontal, |w| = 1)
            cap = xp.where(length > np.tan(max_move), np.tan(max_move) / length, 1.0)
            new = wa + cap[:, None] * dz
            new = new / xp.sqrt(xp.sum(xp.real(new) ** 2 + xp.imag(new) ** 2, axis=-1))[:, None]
        ok = xp.all(xp.isfinite(new), axis=-1)  # uu = 0: a critical point, no Newton direction
        new = xp.where(ok[:, None], new, wa)
        res = xp.where(ok, surface.relative_residual(new), residual[idx])
        w[idx] = new
        residual[idx] = res
        count[idx] += 1
        moved[idx] = True
        left = remaining[idx] - xp.astype(polishing, xp.int64)
        remaining[idx] = left
        active[idx] = ok & (~(res <= tol) | (left > 0))
    out = xp.where(moved[:, None], w * scale[:, None], z)
    residual = xp.where(moved, surface.relative_residual(out), residual)  # of the z returned
    converged = residual <= tol
    if strict and not bool(xp.all(converged)):
        bad = xp.nonzero(~converged)[0]
        few = backend.to_numpy(bad[:5]).tolist()
        worst = float(xp.max(xp.where(converged, 0.0, residual)))
        raise ValueError(
            f"{bad.shape[0]} of {z.shape[0]} point(s) did not reach X within steps = {steps} Newton steps "
            f"(relative residual up to {worst:.3g} > tol = {tol:g}; e.g. points {few}): pass more steps, or "
            "strict=False to get them flagged in Projection.converged")
    return Projection(z=out, residual=residual, converged=converged, steps=count)


def fs_distance_rows(z1: Array, z2: Array) -> Array:
    """FS geodesic distance (3.2) between matching rows of z1 (N, n+1) and z2 (N, n+1) -> (N,).

    The cancellation-free form of :mod:`mfarray.geometry.distance` (2 asin(|u - lam v| / 2)),
    entry by entry: a few ulps at every distance, exactly 0 for equal rows.
    """
    for name, a in (("z1", z1), ("z2", z2)):
        if not hasattr(a, "ndim") or a.ndim != 2 or a.shape[-1] < 2:
            raise ValueError(f"{name} must have shape (N, n+1) with n >= 1; got {getattr(a, 'shape', type(a))}")
    if tuple(z1.shape) != tuple(z2.shape):
        raise ValueError(f"z1 and z2 must have the same shape (matching rows); got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    u, v = unit_vectors(z1), unit_vectors(z2)
    xp = backend.namespace(u, v)
    if not (bool(xp.all(xp.isfinite(u))) and bool(xp.all(xp.isfinite(v)))):
        raise ValueError("z1 and z2 must hold points of P^n (finite, non-zero rows)")
    return _sine_form(u, v)
