"""An in-memory kernel matrix as an operator: scalar (Kronecker) or component-mixing.

A scalar matrix ``K (n_out, n_in)`` applies the Kronecker metric-NTK of eq. (2.23),
``Theta_{ijkl}(x, x') = delta_ik delta_jl k(x, x')``, to every component of ``v (n_in,
*trailing)`` at once; a general metric-NTK ``(n_out, n_in, c, c)`` mixes the ``c`` flattened
components, ``(Theta . v)[a, i] = sum_{b, k} Theta[a, b, i, k] v[b, k]`` (the mat-vec of the
flow, eq. 2.12).  NumPy, CuPy or Dask (lazy result).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from ... import backend
from .graph import matrix_matvec
from .protocol import apply_block, check_square, diagonal, flatten, result_dtype, unflatten, unify_dask

Array = Any  # a NumPy, CuPy or Dask array


@dataclass(frozen=True, eq=False)
class DenseOperator:
    """An in-memory matrix: ``(n_out, n_in)`` scalar kernel (acting on every component,
    eq. 2.23) or ``(n_out, n_in, c, c)`` component-mixing metric-NTK blocks acting on v
    whose trailing dims flatten to ``c``.  NumPy, CuPy or Dask (lazy result).

    symmetric : the caller's promise that the scalar matrix equals its transpose (a symmetric
        kernel on one point set); the mat-vec then reads it in BLAS's faster orientation.
    """

    matrix: Any
    symmetric: bool = False

    def __post_init__(self):
        M = self.matrix
        if not hasattr(M, "shape"):
            object.__setattr__(self, "matrix", M := np.asarray(M))
        if len(M.shape) not in (2, 4):
            raise ValueError(
                f"matrix must have shape (n_out, n_in) or (n_out, n_in, c, c); got {tuple(M.shape)}"
            )
        if len(M.shape) == 4 and M.shape[2] != M.shape[3]:
            raise ValueError(f"matrix component blocks must be square (c, c); got {tuple(M.shape[2:])}")
        if self.symmetric and (len(M.shape) != 2 or M.shape[0] != M.shape[1]):
            raise ValueError(f"symmetric=True needs a square (n, n) matrix; got {tuple(M.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def components(self) -> int | None:
        """``c`` for a component-mixing operator, None for a scalar (Kronecker) kernel."""
        return int(self.matrix.shape[2]) if len(self.matrix.shape) == 4 else None

    def matvec(self, v: Array) -> Array:
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        M, v2 = unify_dask(self.matrix, v2)
        if self.components is None:
            if backend.is_dask(M):
                out = matrix_matvec(M, v2)
            else:
                out = apply_block(M, v2, transpose=self.symmetric)  # M.T == M, read row-major
            return unflatten(out, n_out, trailing)
        c = self.components
        if v2.shape[1] != c:
            raise ValueError(
                f"v has trailing shape {trailing} ({v2.shape[1]} components) but the mixing "
                f"operator acts on c = {c} components"
            )
        xp = array_api_compat.array_namespace(M, v2)
        dt = result_dtype(M.dtype, v2.dtype)
        out = xp.tensordot(M.astype(dt, copy=False), v2.astype(dt, copy=False), axes=([1, 3], [0, 1]))
        return unflatten(out, n_out, trailing)

    def diagonal(self) -> Array:
        check_square(self)
        return diagonal(self.matrix)

    def to_dense(self) -> Array:
        return self.matrix

    @property
    def T(self) -> DenseOperator:
        M = self.matrix
        if self.symmetric:
            return self
        return DenseOperator(M.T if len(M.shape) == 2 else M.transpose(1, 0, 3, 2))

    def transpose(self) -> DenseOperator:
        return self.T
