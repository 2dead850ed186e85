"""Positivity of Hermitian metrics: the guard every flow step passes through."""

from __future__ import annotations

from .. import backend


class FlowError(RuntimeError):
    """A flow could not take a step that keeps every metric finite and positive definite."""


def min_eigenvalue(g):
    """Smallest eigenvalue of each Hermitian metric g (N, k, k) -> (N,)."""
    xp = backend.namespace(g)
    return xp.linalg.eigvalsh(g)[..., 0]


def positive_definite(g):
    """(N,) bool: finite and positive definite."""
    xp = backend.namespace(g)
    finite = xp.all(xp.isfinite(xp.reshape(g, (g.shape[0], -1))), axis=-1)
    safe = xp.where(finite[:, None, None], g, xp.eye(g.shape[-1], dtype=g.dtype))
    return finite & (min_eigenvalue(safe) > 0)
