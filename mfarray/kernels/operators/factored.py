"""A low-rank kernel ``K = Phi_out Phi_in^T`` as an operator (random features, Jacobians).

``phi_out (n_out, rank)``, ``phi_in (n_in, rank)``: the mat-vec of the flow (eq. 2.12) with
the Kronecker kernel of eq. (2.23) is ``Phi_out (Phi_in^T v)`` for ``v (n_in, *trailing)``,
in O((n_out + n_in) * rank * m) and never forming the ``(n_out, n_in)`` matrix.  For
``Phi = J`` the Jacobian of the network outputs, ``J J^T`` is the empirical NTK of eq. (2.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat

from .protocol import apply_block, check_square, flatten, unflatten, unify_dask

Array = Any  # a NumPy, CuPy or Dask array


@dataclass(frozen=True, eq=False)
class FactoredOperator:
    """``K = Phi_out Phi_in^T`` (random features, Jacobians): ``matvec = Phi_out (Phi_in^T v)``
    in O((n_out + n_in) * rank * m).  ``phi_in`` defaults to ``phi_out`` (square, PSD)."""

    phi_out: Any
    phi_in: Any = None

    def __post_init__(self):
        if self.phi_in is None:
            object.__setattr__(self, "phi_in", self.phi_out)
        for name in ("phi_out", "phi_in"):
            p = getattr(self, name)
            if not hasattr(p, "shape") or len(p.shape) != 2:
                raise ValueError(f"{name} must have shape (n, rank); got {getattr(p, 'shape', type(p).__name__)}")
        if self.phi_out.shape[1] != self.phi_in.shape[1]:
            raise ValueError(
                f"phi_in has rank {self.phi_in.shape[1]} but phi_out has rank {self.phi_out.shape[1]}: "
                f"phi_out {tuple(self.phi_out.shape)} and phi_in {tuple(self.phi_in.shape)} must share the rank"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.phi_out.shape[0]), int(self.phi_in.shape[0]))

    @property
    def rank(self) -> int:
        return int(self.phi_out.shape[1])

    def matvec(self, v: Array) -> Array:
        n_out, n_in = self.shape
        v2, trailing = flatten(v, n_in)
        po, pi, v2 = unify_dask(self.phi_out, self.phi_in, v2)
        t = apply_block(pi.T, v2)  # (rank, m)
        return unflatten(apply_block(po, t), n_out, trailing)

    def diagonal(self) -> Array:
        check_square(self)
        po, pi = unify_dask(self.phi_out, self.phi_in)
        xp = array_api_compat.array_namespace(po, pi)
        return xp.sum(po * pi, axis=1)

    def to_dense(self) -> Array:
        po, pi = unify_dask(self.phi_out, self.phi_in)
        xp = array_api_compat.array_namespace(po, pi)
        return xp.matmul(po, pi.T)

    @property
    def T(self) -> FactoredOperator:
        return FactoredOperator(self.phi_in, self.phi_out)

    def transpose(self) -> FactoredOperator:
        return self.T
