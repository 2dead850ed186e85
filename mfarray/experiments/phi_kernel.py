r"""The empirical metric-NTK of a phi-network (chart-free Kähler potential) during training (issue 13).

A phi-network (:mod:`mfarray.kahler.network`) gives g_theta = g_FS + i dd-bar phi_theta in each
point's own chart with GLOBAL parameters theta.  Its metric-NTK (2.7) on a probe of n points is

.. math::

    \Theta[a, b, i, j] = \sum_I \frac{\partial r_i(g(x_a))}{\partial\theta_I}
                               \frac{\partial r_j(g(x_b))}{\partial\theta_I},

shape (n, n, kd^2, kd^2), with r = :func:`mfarray.linalg.hermitian_to_real` the orthonormal real
coordinates of the kd x kd Hermitian metric (kd^2 = 9 on the quintic), each point's metric read
in its own chart (the kernel of the flow that point's metric feels).  The Jacobian rows
d r_i(g(x_a))/d theta are pull-backs (:func:`mfarray.kahler.network.metric_and_pullback`) of the
basis matrices B_i of :func:`mfarray.linalg.real_basis` at one point at a time, since
r_i(g) = Re tr(B_i^dagger g): n forward and n kd^2 reverse passes, so for probes of a few hundred
points (measured: 9-19 ms per point for a 3 x 64 network, kd = 3, on a 2-core machine at load 4-5).

:func:`phi_kernel_evolution` trains with :func:`mfarray.kahler.training.train_phi_network` itself
-- in segments that end at the checkpoint epochs, resumed from its Zarr checkpoints, which gives
the numbers of one uninterrupted run -- and records at each checkpoint the statistics of
:mod:`mfarray.experiments.probe_kernel` (kernel distance to Theta_0, change, alignment with the
probe's loss gradients).  With ``zero_head=True`` (the default) phi = 0 at initialisation and
only the output layer has a non-zero gradient there, so Theta_0 is the kernel of the last
hidden layer's features: expect large distances after the first epoch.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import backend, linalg, losses
from ..flows.sites import materialize
from ..geometry.hypersurface import Hypersurface
from ..kahler import network
from ..kahler.sections import SectionFrame, section_exponents, section_frame
from ..kahler.training import LOSSES, train_phi_network
from ..pointset.provenance import format_call, provenance
from ..pointset.charts import require_same_surface
from .feature_learning import _check_int, _check_positive, _checkpoint_marks
from .probe_kernel import KERNEL_DOCS, kernel_statistics

__all__ = ["phi_frame", "phi_jacobian", "phi_kernel_evolution", "phi_network_ntk"]

Array = Any


def phi_frame(points: xr.Dataset, config: network.PhiNetwork) -> tuple[SectionFrame, Hypersurface]:
    """(section frame of the points in their own charts, their surface) for ``config``'s degree k."""
    sites = materialize(points, one_chart=False)[0]
    surface = Hypersurface.from_attrs(sites.attrs)
    z = np.asarray(backend.to_numpy(sites.z), dtype=np.complex128)
    return section_frame(surface, z, section_exponents(surface, config.k), sites.patch, sites.elim), surface


def phi_jacobian(config: network.PhiNetwork, params: Array, frame: SectionFrame) -> np.ndarray:
    """d r_i(g(x_a)) / d theta, shape (n, kd^2, P): per point, the pull-backs of the real basis."""
    params = np.asarray(params, dtype=np.float64)
    n, kd = frame.s.shape[0], frame.ds.shape[1]
    basis = linalg.real_basis(kd)  # (kd^2, kd, kd)
    out = np.empty((n, kd * kd, params.shape[0]))
    ws = network.Workspace()
    with backend.one_blas_thread():
        for a in range(n):
            _, pullback = network.metric_and_pullback(config, params, frame.take(slice(a, a + 1)), workspace=ws)
            for i in range(kd * kd):
                out[a, i] = pullback(basis[i][None])
    return out


def phi_network_ntk(config: network.PhiNetwork, params: Array, points: xr.Dataset | SectionFrame) -> np.ndarray:
    """The empirical metric-NTK (n, n, kd^2, kd^2) of a phi-network at ``params`` (module
    docstring) on a point set (each point in its own chart) or a section frame."""
    frame = points if isinstance(points, SectionFrame) else phi_frame(points, config)[0]
    J = phi_jacobian(config, params, frame)
    n, c, P = J.shape
    flat = J.reshape(n * c, P)
    with backend.one_blas_thread():
        K = flat @ flat.T
    return np.ascontiguousarray(K.reshape(n, c, n, c).transpose(0, 2, 1, 3))


def _targets(config, params, frame, omega2, weight, kappa, loss_fn):
    """y (n, kd^2): dl/dg at the probe points in real coordinates (0 where g is not valid)."""
    g = network.metric(config, np.asarray(params, dtype=np.float64), frame)
    m = linalg.metrics(g)
    y = np.zeros((g.shape[0], g.shape[-1] ** 2))
    ok = np.asarray(m.valid)
    if ok.any():
        sub = linalg.metrics(g[ok])
        data = losses.LossData(omega2=omega2[ok], weight=weight[ok], kappa=kappa)
        y[ok] = linalg.hermitian_to_real(losses.gradient(loss_fn, sub, data))
    return y


def phi_kernel_evolution(train: xr.Dataset, config: network.PhiNetwork, epochs: int, batch: int, lr: float,
                         probe: xr.Dataset, *, test: xr.Dataset | None = None, loss: str = "sigma", seed: int = 0,
                         checkpoints: Sequence[int] | None = None, lr_decay: float = 1.0,
                         workdir: str | None = None, progress: bool = False) -> xr.Dataset:
    """Train a phi-network (:func:`mfarray.kahler.training.train_phi_network`) and measure its
    empirical metric-NTK on ``probe`` at the ``checkpoints`` epochs.

    Parameters
    ----------
    train, test, probe : point sets of one Calabi-Yau hypersurface (any charts); a test or probe
        set of another surface is refused.
    config, epochs, batch, lr, loss, seed, lr_decay : as for train_phi_network (checked here,
        before any kernel or training).
    checkpoints : epochs, integers in 0..epochs (a fractional one is refused, not rounded); epoch 0
        is always measured; default :func:`~mfarray.experiments.feature_learning.default_checkpoints`.
    workdir : where train_phi_network keeps its checkpoints between segments (default: a
        temporary directory, removed afterwards).

    Returns
    -------
    The train_phi_network result (coordinate ``epoch``, sigma per epoch, ``params``) with
    coordinate ``checkpoint`` and the variables of
    :data:`~mfarray.experiments.probe_kernel.KERNEL_DOCS`; attribute ``n_probe``.
    """
    if not isinstance(config, network.PhiNetwork):
        raise TypeError(f"config must be a PhiNetwork (mfarray.kahler.network); got {type(config).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}; got {loss!r}")
    epochs, batch, seed = _check_int("epochs", epochs, 1), _check_int("batch", batch, 1), _check_int("seed", seed, 0)
    lr, lr_decay = _check_positive("lr", lr), _check_positive("lr_decay", lr_decay)
    if lr_decay > 1:
        raise ValueError(f"lr_decay must lie in (0, 1] (the per-epoch factor of lr); got {lr_decay}")
    marks = _checkpoint_marks(checkpoints, epochs)
    train = train.compute()
    test = None if test is None else test.compute()
    require_same_surface(probe, train, "probe")
    if test is not None:
        require_same_surface(test, train, "test")
    frame, surface = phi_frame(probe, config)
    sites = materialize(probe, one_chart=False)[0]
    omega2, weight = backend.to_numpy(sites.omega2), backend.to_numpy(sites.weight)
    stats = {name: np.full(len(marks), np.nan) for name in KERNEL_DOCS}
    loss_fn = LOSSES[loss]()
    params = network.init(config, surface)
    K0 = None
    kappa = None
    result = None
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i, epoch in enumerate(marks):
            if epoch > 0:
                result = train_phi_network(train, config, epoch, batch, lr, loss=loss, test=test, seed=seed,
                                           checkpoint=f"{tmp}/run", progress=progress, lr_decay=lr_decay)
                params = np.asarray(result["params"].values, dtype=np.float64)
                kappa = float(result.attrs["kappa"])
            elif kappa is None:
                tr = materialize(train, one_chart=False)[0]
                kappa = losses.loss_data(tr.omega2, tr.weight, tr.g_fs).kappa
            t0 = time.perf_counter()
            K = phi_network_ntk(config, params, frame)
            K0 = K if K0 is None else K0
            y = _targets(config, params, frame, omega2, weight, kappa, loss_fn)
            for name, value in kernel_statistics(K0, K, y).items():
                stats[name][i] = value
            stats["kernel_time"][i] = time.perf_counter() - t0
        if result is None or int(result.sizes["epoch"]) - 1 < epochs:
            result = train_phi_network(train, config, epochs, batch, lr, loss=loss, test=test, seed=seed,
                                       checkpoint=f"{tmp}/run", progress=progress, lr_decay=lr_decay)
    ds = result.assign_coords(checkpoint=np.asarray(marks))
    for name, values in stats.items():
        ds[name] = ("checkpoint", values)
        ds[name].attrs["description"] = KERNEL_DOCS[name]
    ds["checkpoint"].attrs["description"] = "epochs at which the probe kernel was measured"
    ds.attrs.update({
        "n_probe": int(frame.s.shape[0]), "kernel_seconds": float(np.nansum(stats["kernel_time"])),
        "kernel": "empirical metric-NTK of the phi-network (n, n, kd^2, kd^2), real coordinates, own charts",
        "alignment_definition": "y^T Theta y / (|Theta|_F |y|^2), y = dl/dg at the probe points (real basis)",
        "phi_config": json.dumps(config.to_attrs(), sort_keys=True),
        **provenance(format_call("mfarray.experiments.phi_kernel.phi_kernel_evolution", train, config, epochs,
                                 batch, lr, probe, test=test, loss=loss, seed=seed, lr_decay=lr_decay))})
    return ds
