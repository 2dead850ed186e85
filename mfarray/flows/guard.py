"""Positivity of Hermitian metrics: the guard every flow step passes through."""

from __future__ import annotations

from .. import backend
from ..geometry.fubini_study import positive_definite

__all__ = ["FlowError", "min_eigenvalue", "positive_definite"]


class FlowError(RuntimeError):
    """A flow could not take a step that keeps every metric finite and positive definite."""


def min_eigenvalue(g):
    """Smallest eigenvalue of each Hermitian metric g (N, k, k) -> (N,)."""
    xp = backend.namespace(g)
    return xp.linalg.eigvalsh(g)[..., 0]
