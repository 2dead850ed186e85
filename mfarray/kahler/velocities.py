r"""The phi-flows of Appendix B as pointwise velocities d phi/dt = v(eta), eta = det g/(kappa |Omega|^2).

* (B.21), the "ultra-local" flow:      v = -2 (eta - 1)
* (B.20), the two-derivative flow:     v = -eta^(-1/2)

A constant in v moves phi by a constant, which leaves g = g_0 + i dd-bar phi unchanged, so only
the eta-dependence matters.  Linearised around a metric, d eta = eta Delta_g (d phi) (Delta_g =
g^{a bbar} d_a dbar_b), so v = -c F(eta) gives d eta/dt = -c eta Delta_g F(eta): a forward
(smoothing, eta -> const) heat flow when F is DEcreasing in eta (B.20: F = eta^(-1/2)), a
backward (ill-posed) one when F is increasing (B.21 as printed).  ``sign=-1`` reverses a
velocity; docs/paper-notes.md has the measurement.  A network or a linear model realises a
velocity through its tangent kernel: theta <- theta + lr mean_x w(x) v(x) d phi(x)/d theta, so
phi moves by lr Theta_phi w v (mfarray.flows.models.VelocityModel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import backend

Array = Any

__all__ = ["VELOCITIES", "two_derivative", "ultralocal", "velocity_named"]


def ultralocal(eta: Array) -> Array:
    """v = -2 (eta - 1) (B.21)."""
    return -2.0 * (eta - 1.0)


def two_derivative(eta: Array) -> Array:
    """v = -eta^(-1/2) (B.20)."""
    xp = backend.namespace(eta)
    return -1.0 / xp.sqrt(eta)


VELOCITIES = {"ultralocal": ultralocal, "B.21": ultralocal, "two_derivative": two_derivative, "B.20": two_derivative}


def velocity_named(name: str | Callable[[Array], Array], sign: float = 1.0) -> Callable[[Array], Array]:
    """A velocity eta -> v by name ("ultralocal"/"B.21", "two_derivative"/"B.20") or itself,
    times ``sign`` (+1: as printed in the paper; -1: reversed)."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (the paper's velocity) or -1 (reversed); got {sign!r}")
    fn = VELOCITIES.get(name) if isinstance(name, str) else name
    if not callable(fn):
        raise ValueError(f"velocity must be one of {sorted(VELOCITIES)} or a function eta -> v; "  # noqa: TRY004
                         f"got {name!r}")
    if sign == 1:
        return fn
    return lambda eta: -fn(eta)
