"""Kernels on Fubini-Study geodesic distance (paper §3.2): Gaussian (3.5) and Delta.

These act on homogeneous points z (n, n+1) of P^n and use the cancellation-free distance of
:mod:`mfarray.geometry.distance`, so the paper's threshold for nearly equal points (§3.1,
after eq. 3.4) is not needed.  Both give the scalar k(x, x') of the Kronecker-structured
metric-NTK Theta_{ijkl} = delta_ik delta_jl k(x, x') (eq. 2.23, 3.5), as
:class:`~mfarray.kernels.spec.Kernel` specs reading points (``inputs="points"``); the Delta
kernel is not pairwise (its k(x, x') depends on the whole second point set) nor symmetric.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .. import backend
from ..geometry.distance import fs_distance, map_unit_pairs, nearest
from . import fused, fused32
from .checks import Choice, FloatDType, Flag, Real
from .spec import kernel

#: the allowed values of gaussian_fs's keywords (:mod:`mfarray.kernels.checks`)
DOMAINS = {
    "sigma": Real(0, low_open=True, doc="the kernel width"),
    "squared": Flag(doc="exp(-d^2 / (2 sigma^2)) if True, exp(-d / (2 sigma)) if False"),
    "method": Choice(("auto", "fused", "gemm", "entrywise"), doc="how the kernel is computed: 'auto' is 'fused' "
                     "for NumPy (and NumPy-backed Dask) inputs where numba is installed, else 'gemm'"),
    "dtype": FloatDType(doc="the kernel's dtype: float32 tiles form the inner products in float64"),
}

_SQRT2 = math.sqrt(2.0)

Array = Any  # a NumPy, CuPy or Dask array


@kernel("points", domains=DOMAINS)
def gaussian_fs(z1: Array, z2: Array, *, sigma: float, squared: bool = False, method: str = "auto",
                dtype: Any = None) -> Array:
    """Gaussian kernel of FS distance d = d_FS(z1, z2), shape (n1, n2).

    ``squared=False`` is eq. (3.5) exactly as written in the paper, exp(-d / (2 sigma)) (a
    Laplace-type kernel of d, despite the name); ``squared=True`` is the heat-kernel form
    exp(-d^2 / (2 sigma^2)).  Note that a Gaussian of the squared geodesic distance on a curved
    space need not be positive semi-definite (see docs/paper-notes.md for measured spectra).
    Dask inputs give a lazy result.

    ``method`` (kernels are what must scale to 10^5 points):

    * ``"fused"``: distance and kernel in one compiled pass per row, without (n1, n2)
      temporaries (:func:`mfarray.kernels.fused.gaussian_fs_tile`, numba); NumPy inputs, or Dask
      inputs with NumPy chunks (one fused tile per pair of chunks).  Its distances have the
      error bound of ``"gemm"`` and its exp a few ulps.
    * ``"gemm"`` computes the distances with a complex GEMM
      (:func:`~mfarray.geometry.distance.fs_distance_block_gemm`); NumPy, CuPy or Dask.
    * ``"entrywise"`` gives distances bit-identical across blocks and chunks.
    * ``"auto"`` (default): ``"fused"`` where it applies (numba installed, not CuPy), else
      ``"gemm"``.

    All agree to a few ulps of d (``"fused"`` and ``"gemm"`` with ``"entrywise"``: the GEMM bound
    2 m eps / sin(NEAR_RADIUS) + 1 ulp), and identical points give exactly 1 with every method.

    Every positive finite ``sigma`` is exact, down to the smallest subnormal: the exponent is
    formed as (d / (sqrt(2) sigma))^2 or d / (2 sigma), never with 1/sigma^2, so a tiny width gives
    the delta-like kernel (1 at d = 0, 0 elsewhere) and a huge one the constant 1.

    ``dtype`` (None: float64) is the kernel's dtype.  ``float32`` with ``"fused"`` runs
    :func:`mfarray.kernels.fused32.gaussian_fs_tile32`: inner products and 1 - |<u, v>|^2 in
    float64, the angle and the kernel in float32, twice as fast; |K32 - K64| <= 4 eps32 K +
    5e-8 / w (w = sqrt(2) sigma or 2 sigma), identical points give exactly 1.  The other methods
    compute in float64 and round the result.  A float32 kernel makes a float32 operator (its
    tiles' products with v in float32, summed in float64: :func:`~mfarray.kernels.operators.protocol.apply_block`).
    """
    method = _resolve_method(method, z1, z2)
    float32 = dtype is not None and np.dtype(dtype) == np.float32
    if method == "fused":
        tile = fused32.gaussian_fs_tile32 if float32 else fused.gaussian_fs_tile
        return map_unit_pairs(functools.partial(tile, sigma=sigma, squared=squared), z1, z2,
                              block_elements=None, dtype=np.float32 if float32 else np.float64)
    K = _of_distances(fs_distance(z1, z2, method=method), sigma, squared)
    return K.astype(np.float32) if float32 else K


def _of_distances(d: Array, sigma: float, squared: bool) -> Array:
    """exp(-(d / (sqrt(2) sigma))^2) or exp(-d / (2 sigma)) of FS distances d, in place for
    NumPy/CuPy d (no (n1, n2) temporaries), lazy for Dask d."""
    width = _SQRT2 * sigma if squared else 2.0 * sigma  # no underflow: sigma > 0 is only doubled
    if backend.is_dask(d):
        import dask.array as da

        t = d / width
        return da.exp(-(t * t) if squared else -t)
    xp = backend.namespace(d)
    with np.errstate(over="ignore"):  # d / width may overflow to inf for a tiny width: exp(-inf) = 0
        d /= width
        if squared:
            d *= d
    xp.negative(d, out=d)
    return xp.exp(d, out=d)


def _on_cupy(z: Array) -> bool:
    """CuPy arrays, or Dask arrays with CuPy chunks."""
    return backend.is_cupy(z._meta if backend.is_dask(z) else z)


def _resolve_method(method: str, z1: Array, z2: Array) -> str:
    """``"auto"`` -> ``"fused"`` or ``"gemm"``; ``"fused"`` refused (ValueError naming method and
    the fix) for CuPy inputs or without numba."""
    cupy = _on_cupy(z1) or (z2 is not None and _on_cupy(z2))
    if method == "auto":
        return "fused" if fused.available() and not cupy else "gemm"
    if method == "fused":
        if cupy:
            raise ValueError("gaussian_fs: method='fused' is a CPU (numba) kernel, but the points are CuPy arrays: "
                             "use method='gemm' (or 'auto', which picks it for CuPy), or pass NumPy arrays")
        if not fused.available():
            raise ValueError("gaussian_fs: method='fused' needs numba, which is not installed: pip install numba, "
                             "or use method='gemm'")
    return method


def nearest_index(z_test: Array, z_train: Array) -> Array:
    """Index (n_test,) of the nearest train point of every test point (streamed)."""
    return nearest(z_test, z_train)[0]


@kernel("points", pairwise=False, symmetric=False)
def delta(z1: Array, z2: Array) -> Array:
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
