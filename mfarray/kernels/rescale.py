"""The rescaling trick (paper eq. 2.15-2.16, 2.28): multiply a network by a deterministic h(x).

If phi has NTK Theta(x, x'), then h(x) phi(x) has NTK h(x) h(x') Theta(x, x') (2.16).  With
h = det(g_ref)^(-1/4) the R^d delta function of a narrow normalised Gaussian NTK becomes the
delta function of the manifold's volume form (2.26-2.29).

A rescaled kernel is a :class:`~mfarray.kernels.spec.Kernel` spec with one more factor: it keeps
the kernel's inputs, pairwise-ness, symmetry and hyper-parameters, and h must act on the same
inputs as the kernel (:class:`~mfarray.kernels.spec.Rescaling`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backend
from ..geometry.local import chart_geometry
from ..linalg import hermitian_det
from .features import map_point_chunks
from .spec import Kernel, Rescaling, as_kernel

if TYPE_CHECKING:
    from ..geometry.hypersurface import Hypersurface

Array = Any  # a NumPy, CuPy or Dask array


def rescaled(kernel: Kernel | Callable[..., Array], h: Rescaling | Callable[[Array], Array]) -> Kernel:
    """The kernel (x1, x2) -> h(x1)[:, None] * kernel(x1, x2) * h(x2)[None, :]  (eq. 2.16).

    ``kernel``: a spec, a ``functools.partial`` of one (nested too) or a callable
    (:func:`~mfarray.kernels.spec.as_kernel`).  ``h`` maps inputs (n, ...) to real factors (n,)
    and must be deterministic (no parameters): a :class:`~mfarray.kernels.spec.Rescaling`, which
    must act on the kernel's inputs (points or features; ValueError otherwise), or a plain
    callable, taken to act on them.  Returns ``as_kernel(kernel).rescale(h)``.
    """
    if not callable(kernel) or not callable(h):
        raise TypeError("rescaled(kernel, h) needs two callables: a kernel k(x1, x2) and h(x)")
    return as_kernel(kernel).rescale(h)


def det_metric_rescaling(surface: Hypersurface, metric: Callable[[Array], Array] | None = None) -> Rescaling:
    """h(z) = det(g_ref(z))^(-1/4) on homogeneous points z (n, n+1) -> (n,) (eq. 2.28),
    g_ref = g_FS by default.

    ``metric`` may be a function z -> (n, k, k) Hermitian metrics in each point's own chart;
    det g_ref is taken in that chart (the paper's choice of one chart per point set).  The result
    acts on points (``inputs="points"``), so it rescales point kernels such as
    ``functools.partial(gaussian_fs, sigma=0.3)`` and is refused for kernels of features.  A Dask
    z gives a lazy h, computed chunk of points by chunk of points.
    """

    def h(z):
        if backend.is_dask(z):
            return map_point_chunks(h, z, dtype=np.float64)
        if metric is None:
            det = chart_geometry(surface, z).det_g_fs
        else:
            det = hermitian_det(metric(z))
        xp = backend.namespace(det)
        if not bool(xp.all(det > 0)):
            raise ValueError("the reference metric is not positive definite at some points")
        return det ** (-0.25)

    return Rescaling(h, inputs="points", name="det_metric_rescaling")
