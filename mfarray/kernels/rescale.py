"""The rescaling trick (paper eq. 2.15-2.16, 2.28): multiply a network by a deterministic h(x).

If phi has NTK Theta(x, x'), then h(x) phi(x) has NTK h(x) h(x') Theta(x, x') (2.16).  With
h = det(g_ref)^(-1/4) the R^d delta function of a narrow normalised Gaussian NTK becomes the
delta function of the manifold's volume form (2.26-2.29).
"""

from __future__ import annotations

import functools

from .. import backend


def rescaled(kernel, h):
    """The kernel (x1, x2) -> h(x1)[:, None] * kernel(x1, x2) * h(x2)[None, :]  (eq. 2.16).

    ``h`` maps inputs (n, ...) to real factors (n,); it must be deterministic (no parameters).
    """
    if not callable(kernel) or not callable(h):
        raise TypeError("rescaled(kernel, h) needs two callables: a kernel k(x1, x2) and h(x)")

    @functools.wraps(kernel)
    def k(x1, x2, **hyper):
        h1, h2 = h(x1), h(x2)
        xp = backend.namespace(h1, h2)
        if not (bool(xp.all(xp.isfinite(h1))) and bool(xp.all(xp.isfinite(h2)))):
            raise ValueError("the rescaling h(x) is not finite at some inputs")
        return h1[:, None] * kernel(x1, x2, **hyper) * h2[None, :]

    return k


def det_metric_rescaling(surface, metric=None):
    """h(z) = det(g_ref(z))^(-1/4) on homogeneous points (eq. 2.28), g_ref = g_FS by default.

    ``metric`` may be a function z -> (n, k, k) Hermitian metrics in each point's own chart;
    det g_ref is taken in that chart (the paper's choice of one chart per point set).
    """
    from ..geometry.fubini_study import hermitian_det
    from ..geometry.local import chart_geometry

    def h(z):
        if metric is None:
            det = chart_geometry(surface, z).det_g_fs
        else:
            det = hermitian_det(metric(z))
        xp = backend.namespace(det)
        if not bool(xp.all(det > 0)):
            raise ValueError("the reference metric is not positive definite at some points")
        return det ** (-0.25)

    return h
