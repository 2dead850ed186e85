r"""The Gaussian on FS distance as a sparse matrix: its entries >= tol, found by screening.

A local kernel (:func:`mfarray.kernels.gaussian_fs` at small sigma, either form) is below
``tol`` beyond the distance R with k(R) = tol,

.. math::  R = \sqrt{2}\,\sigma\sqrt{\ln(1/\mathrm{tol})} \ \ (\text{heat form}), \qquad
           R = 2\sigma\ln(1/\mathrm{tol}) \ \ (\text{eq. 3.5}),

so of the ``n_out x n_in`` entries only the pairs within R matter: at sigma = 0.05 (heat
form), tol = 1e-12, R = 0.37, about 0.3% of the pairs of 10^4 one-chart quintic points and
0.06% of 10^5 points of all charts.  :func:`.screen.screen_pairs` finds them (every pair
screened by |<u, v>|^2 in one fused pass, rigorously with a slack), their exact distances
(:func:`mfarray.geometry.distance.fs_distance_pairs`) give the kernel values, and those >= tol
form a SciPy CSR matrix in the original point order, built once; a mat-vec is then O(nnz).

The error is bounded, row by row, by what was left out (each row of ``K - K_sparse``):

* the screened pairs whose value fell below tol (dropped; their sum is known exactly);
* pairs screened out at R, but within R2 (k(R2) = tol^2, counted in the same pass): each < tol;
* the rest, beyond R2: each < tol^2,

so ``|(K - K_sparse) v|_inf <= error_factor |v|_inf`` with ``error_factor`` the largest row
sum of these (:meth:`SparseGaussianOperator.error_bound`, :meth:`~SparseGaussianOperator.
describe`).  The values are the kernel's up to rounding (its NumPy form on the pair's
distance: a few ulps from the fused tiles), which comes on top of the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ... import backend
from .local import DEFAULT_TOL, _check_tol, _gaussian_hyper, _kernel_dtype, _profile
from .protocol import check_pair, check_positive, check_square, flatten, kernel_spec, unflatten
from .screen import SCREEN_BLOCK, SLACK, TooManyPairs, host_units, pair_distances, screen_pairs

__all__ = ["SparseGaussianOperator", "TooLarge", "gaussian_radius"]

Array = Any  # a NumPy array


class TooLarge(ValueError):
    """The sparse matrix would not pay: the kernel is not local at this tol, or its entries
    >= tol exceed the byte budget or a quarter of the matrix."""


def gaussian_radius(value: float, sigma: float, squared: bool) -> float:
    """The FS distance R at which gaussian_fs equals ``value`` (0 < value < 1): the heat form
    exp(-(R / (sqrt(2) sigma))^2) or eq. (3.5) exp(-R / (2 sigma)); may exceed pi/2 (then the
    kernel is >= value everywhere on P^n)."""
    t = math.log(1.0 / value)
    return math.sqrt(2.0) * sigma * math.sqrt(t) if squared else 2.0 * sigma * t


def _screen_c2(radius: float) -> float:
    """The screening threshold on c2 = |<u, v>|^2 that keeps every pair within ``radius``
    (cos^2 R less :data:`.screen.SLACK`; below 0 beyond pi/2: every pair)."""
    return math.cos(radius) ** 2 - SLACK if radius < math.pi / 2 else -1.0


class SparseGaussianOperator:
    """``K[a, b] = gaussian_fs(x_out[a], x_in[b])`` with the entries < ``tol`` dropped, the rest
    a CSR matrix (module docstring); shape (n_out, n_in).

    kernel : :func:`mfarray.kernels.gaussian_fs` with sigma bound (either ``squared``), no
        rescaling.
    x_out (n_out, n+1), x_in (n_in, n+1) : homogeneous points (Dask ones are computed); x_in
        None or ``x_out`` itself: one point set, screened once per pair (i <= j) and mirrored.
    tol : entries below tol (the kernel's maximum is 1) are dropped; in (0, 1).
    sparse_max_bytes : budget of the CSR matrix (and of the pairs while it is built, 24 bytes
        a pair); :class:`TooLarge` beyond it, or when more than a quarter of the entries are
        >= tol, or when k(pi/2) >= tol (nothing can be dropped: use the tiles instead).
    block, workers : the screening tiles (points a side) and threads (default all usable
        cores); the result does not depend on either.

    The entries are computed in float64 from the distances and stored in the kernel's dtype:
    gaussian_fs bound with ``dtype="float32"`` gives float32 entries (as the dense operator of that
    kernel; ``dtype``, :meth:`describe`), multiplied with v in v's precision (SciPy upcasts).

    Attributes: ``nnz``; ``radius`` R (k(R) = tol); ``error_factor`` with
    |(K - K_sparse) v|_inf <= error_factor |v|_inf; ``max_skipped_per_row``.
    """

    def __init__(self, kernel: Callable[..., Array], x_out: Array, x_in: Array | None = None, *,
                 tol: float = DEFAULT_TOL, sparse_max_bytes: int = 2**30, block: int = SCREEN_BLOCK,
                 workers: int | None = None) -> None:
        import scipy.sparse

        spec = kernel_spec(kernel)
        self.sigma, self.squared = _gaussian_hyper(spec)
        self.dtype = _kernel_dtype(spec)  # a float32 kernel (dtype="float32" bound): its entries rounded to float32
        self.kernel, self.tol = kernel, _check_tol(tol)
        if isinstance(sparse_max_bytes, bool) or not isinstance(sparse_max_bytes, (int, np.integer)) \
                or sparse_max_bytes < 0:
            raise ValueError(f"sparse_max_bytes must be a non-negative integer; got {sparse_max_bytes!r}")
        self.sparse_max_bytes = int(sparse_max_bytes)
        self.block = check_positive(block, "block")
        self.workers = None if workers is None else check_positive(workers, "workers")
        self.symmetric = x_in is None or x_in is x_out
        x_in = x_out if x_in is None else x_in
        check_pair(x_out, x_in)
        if backend.is_cupy(x_out) or backend.is_cupy(x_in):
            raise ValueError("SparseGaussianOperator keeps a SciPy sparse matrix (NumPy inputs): for CuPy points "
                             "use the tiles, method='local' with sparse=False")
        self.x_out, self.x_in = x_out, x_in
        self.radius = gaussian_radius(self.tol, self.sigma, self.squared)
        if self.radius >= math.pi / 2:
            raise TooLarge(f"gaussian_fs(sigma={self.sigma:g}) is >= tol = {self.tol:g} at every distance on P^n "
                           f"(d <= pi/2): nothing can be dropped")
        outer = gaussian_radius(self.tol**2, self.sigma, self.squared)
        n_out, n_in = self.shape
        u_out = host_units(x_out, "x_out")
        u_in = u_out if self.symmetric else host_units(x_in, "x_in")
        max_pairs = min(self.sparse_max_bytes // 24, max(n_out * n_in // 4, 16))
        try:
            found = screen_pairs(u_out, None if self.symmetric else u_in, _screen_c2(self.radius), _screen_c2(outer),
                                 block=self.block, workers=self.workers, max_pairs=max_pairs)
        except TooManyPairs:
            raise TooLarge(f"more than {max_pairs} pairs lie within the radius {self.radius:.3g} where the kernel "
                           f"falls to tol = {self.tol:g} (sparse_max_bytes = {self.sparse_max_bytes}, or a quarter "
                           "of the matrix)") from None
        i, j = found.i, found.j
        d = pair_distances(u_out, u_in, i, j)
        k = _profile(d, self.sigma, self.squared)
        keep = k >= self.tol
        if self.symmetric:  # the pairs i < j stand for (j, i) too
            off = i != j
            i, j, k, keep = (np.concatenate([a, b[off]]) for a, b in ((i, j), (j, i), (k, k), (keep, keep)))
        candidates = np.bincount(i, minlength=n_out)
        dropped = np.bincount(i, weights=np.where(keep, 0.0, k), minlength=n_out)
        self.nnz = int(keep.sum())
        if 16 * self.nnz > self.sparse_max_bytes:
            raise TooLarge(f"the {self.nnz} entries >= tol = {self.tol:g} exceed sparse_max_bytes = "
                           f"{self.sparse_max_bytes}")
        self._csr = scipy.sparse.csr_matrix((k[keep].astype(self.dtype), (i[keep], j[keep])), shape=self.shape)
        self._csr.sort_indices()  # each row's entries by column: one summation order
        # per row: dropped values (known) + screened out within R2 (each < k(R) = tol) + beyond R2
        # (each < k(R2) = tol^2): a screened-out pair lies beyond the radius (screen.py)
        below_r = float(_profile(np.array(self.radius), self.sigma, self.squared))
        below_outer = float(_profile(np.array(outer), self.sigma, self.squared)) if outer < math.pi / 2 else 0.0
        per_row = dropped + (found.counts - candidates) * below_r + (n_in - found.counts) * below_outer
        self.error_factor = float(per_row.max()) if n_out else 0.0
        self.max_skipped_per_row = int(n_in - np.diff(self._csr.indptr).min()) if n_out else 0

    # ------------------------------------------------------------------ protocol
    @property
    def shape(self) -> tuple[int, int]:
        """(n_out, n_in)."""
        return (int(self.x_out.shape[0]), int(self.x_in.shape[0]))

    @property
    def sparse(self) -> bool:
        """Always True (the tile operator, :class:`.local.LocalGaussianOperator`, says False)."""
        return True

    def error_bound(self, v: Array) -> float:
        """The bound on ``|(K - K_sparse) v|_inf`` for ``v (n_in, ...)``: ``error_factor *
        |v|_inf`` (the rounding of the kept entries, ~1e-16 relative -- 6e-8 for a float32 kernel --
        comes on top)."""
        vmax = float(np.max(np.abs(backend.to_numpy(v)))) if math.prod(v.shape) else 0.0
        return self.error_factor * vmax

    def describe(self) -> dict:
        """JSON-safe record: method, kernel, tol, radius, nnz and the bound."""
        return {
            "operator": "SparseGaussianOperator", "method": "local", "kernel": kernel_spec(self.kernel).describe(),
            "shape": list(self.shape), "dtype": self.dtype.name, "tol": self.tol, "radius": self.radius,
            "symmetric": self.symmetric,
            "sparse": True, "nnz": self.nnz, "max_skipped_per_row": self.max_skipped_per_row,
            "error_factor": self.error_factor,
            "error_bound": "|(K - K_sparse) v|_inf <= error_factor * |v|_inf",
        }

    def matvec(self, v: Array) -> Array:
        """``K_sparse @ v`` for v (n_in, *trailing) -> (n_out, *trailing), real or complex (a
        Dask v is computed): SciPy's serial CSR product, row i the sum over its stored entries
        in increasing column -- the same bits on every call."""
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        if backend.is_dask(v2):
            v2 = v2.compute()
        return unflatten(np.asarray(self._csr @ backend.to_numpy(v2)), n_out, trailing)

    def diagonal(self) -> np.ndarray:
        """(n,) the diagonal (square operators)."""
        check_square(self)
        return self._csr.diagonal()

    def to_dense(self) -> np.ndarray:
        """The (n_out, n_in) matrix, dropped entries as zeros.  Small cases only."""
        return self._csr.toarray()

    @property
    def T(self) -> SparseGaussianOperator:
        """The transposed operator (the Gaussian is symmetric: rebuilt on (x_in, x_out), so its
        bound is per row of the transpose)."""
        if self.symmetric:
            return self
        return SparseGaussianOperator(self.kernel, self.x_in, self.x_out, tol=self.tol,
                                      sparse_max_bytes=self.sparse_max_bytes, block=self.block, workers=self.workers)

    def transpose(self) -> SparseGaussianOperator:
        """:attr:`T`."""
        return self.T
