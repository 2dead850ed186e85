"""Kernels on Fubini-Study geodesic distance (paper §3.2): Gaussian (3.5) and Delta.

These act on homogeneous points z (n, n+1) of P^n and use the cancellation-free distance of
:mod:`mfarray.geometry.distance`, so the paper's threshold for nearly equal points (§3.1,
after eq. 3.4) is not needed.  Both give the scalar k(x, x') of the Kronecker-structured
metric-NTK Theta_{ijkl} = delta_ik delta_jl k(x, x') (eq. 2.23, 3.5), as
:class:`~mfarray.kernels.spec.Kernel` specs reading points (``inputs="points"``); the Delta
kernel is not pairwise (its k(x, x') depends on the whole second point set) nor symmetric.
"""

from __future__ import annotations

import math
import numbers

from .. import backend
from ..geometry.distance import fs_distance, nearest
from .spec import kernel


def _check_sigma(sigma) -> float:
    """The kernel width as a float: any real number (NumPy scalars too) that is positive and
    finite; bools, strings and other types raise TypeError, NaN, inf and sigma <= 0 ValueError."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a positive finite real number (the kernel width); got {sigma!r} "
                        f"of type {type(sigma).__name__}")
    value = float(sigma)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"sigma must be a positive finite number (the kernel width); got {sigma!r}")
    return value


@kernel("points")
def gaussian_fs(z1, z2, *, sigma: float, squared: bool = False, method: str = "gemm"):
    """Gaussian kernel of FS distance d = d_FS(z1, z2), shape (n1, n2).

    ``squared=False`` is eq. (3.5) exactly as written in the paper, exp(-d / (2 sigma)) (a
    Laplace-type kernel of d, despite the name); ``squared=True`` is the heat-kernel form
    exp(-d^2 / (2 sigma^2)).  Note that a Gaussian of the squared geodesic distance on a curved
    space need not be positive semi-definite (see docs/paper-notes.md for measured spectra).
    Dask inputs give a lazy result.

    ``method="gemm"`` (the default: kernels are what must scale to 10^5 points) computes the
    distances with a complex GEMM (:func:`~mfarray.geometry.distance.fs_distance_block_gemm`);
    its entries agree with ``method="entrywise"`` to a few ulps of d, and identical points still
    give exactly 1.  ``"entrywise"`` gives distances bit-identical across blocks and chunks.
    """
    sigma = _check_sigma(sigma)
    d = fs_distance(z1, z2, method=method)
    scale = -1.0 / (2 * sigma**2) if squared else -1.0 / (2 * sigma)
    if backend.is_dask(d):
        import dask.array as da

        return da.exp((d * d if squared else d) * scale)
    # in place on the freshly computed d (exp is the NumPy/CuPy ufunc): no (n1, n2) temporaries
    if squared:
        d *= d
    d *= scale
    return backend.namespace(d).exp(d, out=d)


def nearest_index(z_test, z_train):
    """Index (n_test,) of the nearest train point of every test point (streamed)."""
    return nearest(z_test, z_train)[0]


@kernel("points", pairwise=False, symmetric=False)
def delta(z1, z2):
    """The Delta kernel of §3.2: k[i, j] = 1 if train point j is the nearest to point i, else 0.

    Shape (n1, n2); the update of a test point is the update of its nearest train point.  On
    the train set itself (z1 = z2, distinct points) it is the identity: the local flow (2.14).
    For large sets use :func:`nearest_index` and gather instead of this dense matrix.
    """
    idx = nearest_index(z1, z2)
    if backend.is_dask(idx):
        idx = idx.compute()
    xp = backend.namespace(idx)
    return xp.astype(idx[:, None] == xp.arange(z2.shape[0])[None, :], xp.float64)
