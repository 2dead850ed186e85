"""The Fubini-Study metric of P^n and its pull-back to a hypersurface chart.

Convention (chosen once, used everywhere): the Kähler potential is K = log |z|^2 and

    g_{i jbar} = d_i dbar_j log |z|^2 = delta_ij / |z|^2 - zbar_i z_j / |z|^4,

with line element ds^2 = g_{i jbar} dz^i dzbar^j, so that the geodesic distance is exactly the
paper's eq. (3.2), arccos(|<z, z'>| / |z||z'|), with diameter pi/2.  Overall constant factors
(1/pi, 2, ...) used by other codes cancel in the MC weights, eta and sigma (paper B.10-B.11).

Hermitian matrices are stored as g[..., b, c] = g_{b cbar}.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..linalg import hermitian_det, ldl_pivots, positive_definite  # noqa: F401  (the one Hermitian module)

Array = Any  # a NumPy, CuPy or Dask array


def fs_metric_ambient(z: Array) -> Array:
    """g_{i jbar} of P^n at homogeneous z, shape (..., n+1, n+1) (rank n: the z-direction is null)."""
    xp = backend.namespace(z)
    norm2 = xp.sum(xp.real(z) ** 2 + xp.imag(z) ** 2, axis=-1)[..., None, None]
    eye = xp.eye(z.shape[-1], dtype=z.dtype)
    return eye / norm2 - xp.conj(z)[..., :, None] * z[..., None, :] / norm2**2


def pullback(jacobian: Array, g_ambient: Array) -> Array:
    """g_{b cbar} = J_ib g_{i jbar} conj(J_jc): (..., n+1, k) and (..., n+1, n+1) -> (..., k, k)."""
    xp = backend.namespace(jacobian, g_ambient)
    return xp.matrix_transpose(jacobian) @ g_ambient @ xp.conj(jacobian)


def fs_metric_chart(z_affine: Array, slopes: Array, elim: Array, local: Array) -> Array:
    """Pulled-back FS metric in the chart (patch, elim), closed form, shape (..., n-1, n-1).

    With the embedding Jacobian J (identity on local rows, slopes u on the eliminated
    row, zero on the patch row) the pull-back J^T g_FS conj(J) reduces to

        g = (1 + u u^dagger) / |z|^2 - v v^dagger / |z|^4,   v_b = conj(z_{l_b}) + u_b conj(z_e),

    which costs O(n^2) per point instead of two (n+1)-size matrix products.
    ``z_affine`` must be the representative with z_patch = 1.
    """
    xp = backend.namespace(z_affine, slopes)
    norm2 = xp.sum(xp.real(z_affine) ** 2 + xp.imag(z_affine) ** 2, axis=-1)[..., None, None]
    ze = xp.take_along_axis(z_affine, elim[..., None], axis=-1)  # (..., 1)
    zl = xp.take_along_axis(z_affine, local, axis=-1)  # (..., n-1)
    v = xp.conj(zl) + slopes * xp.conj(ze)
    k = slopes.shape[-1]
    eye = xp.eye(k, dtype=slopes.dtype)
    uu = slopes[..., :, None] * xp.conj(slopes)[..., None, :]
    vv = v[..., :, None] * xp.conj(v)[..., None, :]
    return (eye + uu) / norm2 - vv / norm2**2
