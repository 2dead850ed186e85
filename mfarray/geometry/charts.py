"""Charts on a hypersurface X in P^n: patch, eliminated coordinate, local coordinates.

A chart is a pair (patch a, eliminated coordinate e), a != e.  On the affine patch
z_a = 1 the local coordinates x_b are the n - 1 remaining affine coordinates z_i
(i != a, e, in increasing order) and z_e(x) is fixed by p = 0 (implicit function
theorem).  Following the paper (§3.1) each point gets the chart where

* a = argmax_i |z_i|        (the largest coordinate scaled to 1), and
* e = argmax_{j != a} |dp/dz_j|   (the smallest |Omega|^2, eq. B.10).

The holomorphic top form is the Poincaré residue Omega = dx_1 ^ ... ^ dx_{n-1} / (dp/dz_e),
evaluated at the affine representative, so |Omega|^2 = 1 / |dp/dz_e|^2.

All functions are bare formulas: arrays in, arrays out, namespace from the inputs,
shapes (...) for per-point integers and (..., n+1) for coordinates.
"""

from __future__ import annotations

from typing import Any

from .. import backend

Array = Any  # a NumPy, CuPy or Dask array


def patch_index(z: Array) -> Array:
    """Index of the largest |z_i|, shape (...)."""
    xp = backend.namespace(z)
    return xp.argmax(xp.abs(z), axis=-1)


def _take(x, index, xp):
    """x[..., index] for a per-point integer index of shape (...)."""
    return xp.take_along_axis(x, index[..., None], axis=-1)[..., 0]


def to_patch(z: Array, patch: Array) -> Array:
    """The affine representative z / z_patch (so that z_patch = 1), shape (..., n+1)."""
    xp = backend.namespace(z)
    return z / _take(z, patch, xp)[..., None]


def elim_index(dp: Array, patch: Array) -> Array:
    """argmax_{j != patch} |dp/dz_j|, shape (...)."""
    xp = backend.namespace(dp)
    a = xp.abs(dp)
    onehot = patch[..., None] == xp.arange(dp.shape[-1])
    return xp.argmax(xp.where(onehot, -1.0, a), axis=-1)


def local_indices(n_ambient: int, patch: Array, elim: Array) -> Array:
    """The n - 1 coordinates other than patch and elim, increasing; shape (..., n-1)."""
    xp = backend.namespace(patch)
    lo, hi = xp.minimum(patch, elim)[..., None], xp.maximum(patch, elim)[..., None]
    b = xp.arange(n_ambient - 2)
    i = b + xp.astype(b >= lo, b.dtype)  # skip the smaller removed index ...
    return i + xp.astype(i >= hi, b.dtype)  # ... then the larger one


def implicit_slopes(dp: Array, elim: Array, local: Array) -> Array:
    """u_b = dz_e/dx_b = -(dp/dz_{local_b}) / (dp/dz_e), shape (..., n-1)."""
    xp = backend.namespace(dp)
    return -xp.take_along_axis(dp, local, axis=-1) / _take(dp, elim, xp)[..., None]


def embedding_jacobian(n_ambient: int, elim: Array, local: Array, slopes: Array) -> Array:
    """dz_i/dx_b of the chart embedding x -> z (z_patch = 1): shape (..., n+1, n-1).

    Rows of local coordinates are the identity, the patch row is zero and the
    eliminated row holds the implicit slopes.
    """
    xp = backend.namespace(slopes)
    coord = xp.arange(n_ambient)
    dtype = slopes.dtype
    identity = xp.astype(local[..., None, :] == coord[:, None], dtype)  # (..., n+1, n-1)
    elim_row = xp.astype(elim[..., None] == coord, dtype)  # (..., n+1)
    return identity + elim_row[..., :, None] * slopes[..., None, :]


def omega_squared(dp: Array, elim: Array) -> Array:
    """|Omega|^2 = 1 / |dp/dz_elim|^2 at the affine representative (Poincaré residue)."""
    xp = backend.namespace(dp)
    return 1.0 / xp.abs(_take(dp, elim, xp)) ** 2


def chart_transition(z_dst: Array, jac_dst: Array, src_patch: Array, src_local: Array) -> Array:
    """T_bc = d x^src_b / d y^dst_c, shape (..., n-1, n-1).

    ``z_dst`` is the affine representative of the destination chart (z_dst_patch = 1) and
    ``jac_dst`` its embedding Jacobian; source local coordinates are x_b = z_{l_b} / z_{a}
    with a = src_patch, l = src_local, so that
        dx_b/dy_c = J[l_b, c] / z_a - z_{l_b} J[a, c] / z_a^2.
    A metric transforms as g_dst = T^T g_src conj(T)  (see :func:`transform_metric`).
    """
    xp = backend.namespace(z_dst)
    za = _take(z_dst, src_patch, xp)[..., None]  # (..., 1)
    zl = xp.take_along_axis(z_dst, src_local, axis=-1)  # (..., n-1)
    jl = xp.take_along_axis(jac_dst, src_local[..., :, None], axis=-2)  # (..., n-1, n-1)
    ja = xp.take_along_axis(jac_dst, src_patch[..., None, None], axis=-2)  # (..., 1, n-1)
    return jl / za[..., None] - (zl / za**2)[..., :, None] * ja


def transform_metric(g: Array, transition: Array) -> Array:
    """g_dst = T^T g_src conj(T) for Hermitian metrics g (..., k, k) and T = dx_src/dy_dst."""
    xp = backend.namespace(g, transition)
    return xp.matrix_transpose(transition) @ g @ xp.conj(transition)
