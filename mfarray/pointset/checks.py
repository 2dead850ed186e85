"""The values of a point set that every Monte-Carlo average over it needs: one check, one message.

Flows (:mod:`mfarray.flows.sites`), the sigma measure (:mod:`.measures`) and the algebraic and
phi-network metrics (:mod:`mfarray.kahler.algebraic`) all refuse the same things the same way,
naming the argument (``what``) and the variable.
"""

from __future__ import annotations

from typing import Any

from .. import backend

__all__ = ["require_point_values"]

Array = Any  # a NumPy or CuPy array (computed)


def require_point_values(what: str, *, z: Array | None = None, weight: Array | None = None,
                         omega2: Array | None = None, chunk: bool = False) -> None:
    """ValueError naming ``what.<variable>`` unless the given arrays are fit for an MC average:

    z (N, n+1) and weight, omega2 (N,) finite; weight >= 0 with a positive sum (Monte-Carlo
    weights; zeros make passive points); omega2 = |Omega|^2 > 0.  N = 0 is refused too, except
    for ``chunk=True`` (one chunk of a lazy set: empty allowed, the sum is the whole set's).
    """
    given = {name: a for name, a in (("z", z), ("weight", weight), ("omega2", omega2)) if a is not None}
    for name, a in given.items():
        xp = backend.namespace(a)
        n = int(a.shape[0])
        if n == 0:
            if chunk:
                continue
            raise ValueError(f"{what} holds no points: pass a point set with at least one point")
        finite = xp.isfinite(a) if a.ndim == 1 else xp.all(xp.isfinite(backend.per_row(a)), axis=-1)
        bad = n - int(xp.sum(xp.astype(finite, xp.int64)))
        if bad:
            raise ValueError(f"{what}.{name} has non-finite entries (NaN or inf) at {bad} of {n} points: recompute "
                             "or drop those points")
        if name == "weight" and not (bool(xp.all(a >= 0)) and (chunk or float(xp.sum(a)) > 0)):
            raise ValueError(f"{what}.weight must be >= 0 at every point with a positive sum (Monte-Carlo weights; "
                             "recompute them with mfarray.sample_points or points_from_z)")
        if name == "omega2" and not bool(xp.all(a > 0)):
            raise ValueError(f"{what}.omega2 (|Omega|^2) must be > 0 at every point")
