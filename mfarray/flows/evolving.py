r"""The evolving-kernel metric flow (2.8) of a finite network, and its linearisation (2.10).

Network metric model
--------------------
For a point set in ONE chart (``mfarray.select_chart``) with ``k x k`` Hermitian metrics,

.. math::

    g_\theta(x) = g_{ref}(x) + R\bigl(f_\theta(\phi(x))\bigr),

with ``f`` an MLP (:mod:`mfarray.networks`) with ``c = k*k`` outputs, ``phi`` the input
features (default :func:`mfarray.kernels.features.patch_features`), ``R`` =
:func:`mfarray.losses.real_to_hermitian` (real coordinates in the ORTHONORMAL Hermitian
basis, so ``R`` is an isometry and its adjoint is :func:`mfarray.losses.hermitian_to_real`),
and ``g_ref`` the point set's ``g_fs``.  ``g_ref`` does not depend on theta, so the
metric-NTK (2.7) of ``g_theta`` is the empirical NTK of ``f``
(:func:`mfarray.kernels.empirical.empirical_ntk`), read in the orthonormal basis:

.. math::

    \Theta_g(x, x')\cdot G = R\Bigl(\sum_{b} \Theta_f(x, x')_{ab}\, r(G)_b\Bigr),
    \qquad r = R^{-1} = R^\top = \mathrm{hermitian\_to\_real}.

With ``center=True`` the initial output is subtracted, ``g = g_ref + R(f_theta - f_theta0)``,
so the flow starts exactly at ``g_ref`` (same NTK).

Chain rule
----------
The losses' derivative convention is ``dl = Re tr(G^dagger dg)`` (:mod:`mfarray.losses`).  With
``dg = R(df)`` and ``R`` isometric, ``Re tr(G^dagger R(df)) = <r(G), df>``, so the parameter
gradient of ``sum_x l(x)`` is exactly ``vjp(config, params, x, hermitian_to_real(G))``.

Flow
----
Plain gradient descent on theta, with the same normalisation as
:func:`mfarray.flows.kernel_flow` (which applies the kernel to the per-point ``dl/dg``
without ``1/N``, i.e. descends ``N L`` with ``L = losses.total`` the mean):

.. math::

    \theta \leftarrow \theta - \mathrm{lr}\, \sum_{x} J(x)^\top r\bigl(\partial l/\partial g(x)\bigr),

whose first-order metric update is ``-lr Theta(theta) . dl/dg`` -- the discrete form of the
evolving-kernel flow (2.8).  With ``linearized=True`` the model is the linearised network
(2.10), ``f_lin(theta) = f(theta0) + J(theta0)(theta - theta0)`` (forward mode at theta0),
whose gradient descent is exactly the frozen empirical-NTK flow (2.11)-(2.12) with
``Theta^L = Theta(theta0)``: :func:`metric_ntk_operator` + ``kernel_flow`` reproduce it.

The model is :class:`~mfarray.flows.models.NetworkModel`; steps, the validity guard and the
record are the one integrator's (:mod:`mfarray.flows.integrate`), exactly as for
``kernel_flow``.  NumPy (the networks of :mod:`mfarray.networks` run on the inputs' namespace).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .. import backend, linalg, losses
from .. import networks as nw
from ..kernels.empirical import empirical_ntk
from ..kernels.features import patch_features
from .frozen import resolve_loss
from .integrate import FlowError, StepControl, check_steps, integrate
from .models import NetworkModel, as_float_params
from .results import flow_result
from .sites import materialize

__all__ = [
    "RealBasisOperator",
    "metric_ntk_operator",
    "network_flow",
    "network_inputs",
    "network_metric",
    "parameter_gradient",
]

Array = Any  # a NumPy, CuPy or Dask array


# ------------------------------------------------------------------ model
def network_inputs(ds: xr.Dataset | Array, features: Callable[[Array], Array] = patch_features) -> Array:
    """The network inputs ``features(z)`` of a point set, float64 (n, d_in)."""
    z = ds["z"].data if isinstance(ds, xr.Dataset) else ds
    return _inputs(backend.to_numpy(z), features)


def _inputs(z, features):
    x = features(z)
    xp = backend.namespace(x)
    return xp.astype(x, xp.float64)


def _k_of(config, k):
    if config.c_out != k * k:
        raise ValueError(f"the network has {config.c_out} outputs; {k}x{k} Hermitian metrics need c = {k * k}")
    return k


def _as_tree(config, params, name="params"):
    """Parameters (a tuple or a flat vector) as float64 NumPy copies, refused up front (naming
    ``name``) where their shapes do not fit or an entry is not finite (:func:`networks.as_params`)."""
    return as_float_params(nw.as_params(config, params, name))


def _model(config, params0, ds, *, features=patch_features, linearized=False, center=False):
    g_ref = np.array(backend.to_numpy(ds["g_fs"].data), dtype=np.complex128)
    _k_of(config, g_ref.shape[-1])
    return NetworkModel(config, params0, network_inputs(ds, features), linalg.to_rows(g_ref),
                        linearized=linearized, center=center)


def network_metric(config: nw.MLP, params: nw.Params | Array, ds: xr.Dataset, *,
                   features: Callable[[Array], Array] = patch_features,
                   params0: nw.Params | Array | None = None) -> Array:
    r"""``g_theta(x) = g_FS(x) + real_to_hermitian(f_theta(features(x)), k)``, shape (N, k, k).

    Parameters
    ----------
    config : mfarray.networks.MLP with ``c_out = k*k`` and ``d_in`` = the feature dimension.
    params : parameter tuple (:func:`mfarray.networks.init`) or flat vector (length P).
    ds : point set (``z``, ``g_fs``) in one chart.
    params0 : optional; if given, ``f_{params0}`` is subtracted (the centred model of
        ``network_flow(center=True)``: ``g_{params0} = g_FS``).
    """
    params = _as_tree(config, params)
    ref = params if params0 is None else _as_tree(config, params0, "params0")
    model = _model(config, ref, ds, features=features, center=params0 is not None)
    return linalg.from_rows(model.metrics(nw.flatten(params)), int(ds["g_fs"].shape[-1]))


def parameter_gradient(config: nw.MLP, params: nw.Params | Array, ds: xr.Dataset, *,
                       loss: str | losses.Loss = "sigma_squared", data: losses.LossData | None = None,
                       target: Array | None = None, features: Callable[[Array], Array] = patch_features,
                       params0: nw.Params | Array | None = None) -> Array:
    r"""Gradient of ``sum_x l(x) = N * losses.total(loss, g_theta, data)`` w.r.t. the flat parameters.

    ``= vjp(config, params, x, hermitian_to_real(dl/dg))`` -- the direction ``network_flow``
    descends.  ``data`` defaults to ``losses.make_loss_data(ds, g_theta, target=target)``
    (kappa of the current metric).  ``params0`` as in :func:`network_metric`.
    Returns a float64 vector of length ``num_params(config)``.
    """
    theta = nw.flatten(_as_tree(config, params))
    ref = _as_tree(config, theta) if params0 is None else _as_tree(config, params0, "params0")
    model = _model(config, ref, ds, features=features, center=params0 is not None)
    loss_fn = resolve_loss(loss)
    k = int(ds["g_fs"].shape[-1])
    m = linalg.require_valid(linalg.metrics_rows(model.metrics(theta), k))
    if data is None:
        data = losses.make_loss_data(ds, m.g, target=target)
    return model.pullback(theta, losses.gradient_rows(loss_fn, m, data))


# ------------------------------------------------------------------ NTK operator
@dataclass(frozen=True, eq=False)
class RealBasisOperator:
    """A kernel operator on real components ``(n, c)`` read as one on Hermitian metrics.

    ``matvec(G (n_in, k, k)) = real_to_hermitian(inner.matvec(hermitian_to_real(G)), k)``.
    With ``inner = DenseOperator(empirical_ntk(config, params, x, x))`` this is the metric-NTK
    (2.7) of :func:`network_metric` acting on ``dl/dg`` -- usable with ``kernel_flow``.
    """

    inner: object
    k: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inner.shape)

    def matvec(self, v: Array) -> Array:
        r = linalg.hermitian_to_real(v)
        return linalg.real_to_hermitian(self.inner.matvec(r), self.k)

    def diagonal(self) -> Array:
        return self.inner.diagonal()


def metric_ntk_operator(config: nw.MLP, params: nw.Params | Array, ds_out: xr.Dataset, ds_in: xr.Dataset | None = None,
                        *, features: Callable[[Array], Array] = patch_features) -> RealBasisOperator:
    """The empirical metric-NTK of :func:`network_metric` at ``params`` as a Hermitian-metric operator.

    Dense ``(n_out, n_in, c, c)`` blocks (small point sets only), wrapped in
    :class:`RealBasisOperator`.  At the initial parameters this is the frozen kernel
    ``Theta^L`` (2.11) of the linearised network.
    """
    from ..kernels.operators import DenseOperator

    params = _as_tree(config, params)
    k = _k_of(config, int(ds_out["g_fs"].shape[-1]))
    x_out = network_inputs(ds_out, features)
    x_in = x_out if ds_in is None else network_inputs(ds_in, features)
    return RealBasisOperator(DenseOperator(empirical_ntk(config, params, x_out, x_in)), k)


# ------------------------------------------------------------------ flow
def network_flow(train: xr.Dataset, config: nw.MLP, params: nw.Params | Array, *, steps: int, lr: float = 1.0,
                 loss: str | losses.Loss = "sigma_squared", test: xr.Dataset | None = None, linearized: bool = False,
                 center: bool = False, adaptive: bool = True, normalize: bool = False, clip: float | None = None,
                 grow: float = 1.25, max_halvings: int = 40, record_every: int = 1, target: Array | None = None,
                 features: Callable[[Array], Array] = patch_features,
                 callback: Callable[[int, dict], Any] | None = None, progress: bool = False) -> xr.Dataset:
    r"""Gradient descent of a network metric: the evolving-kernel flow (2.8) or, with
    ``linearized=True``, the linearised network (2.10) (= frozen empirical-NTK flow, 2.11-2.12).

    Parameters
    ----------
    train, test : point sets in one chart (``z``, ``g_fs``, ``omega2``, ``weight``), lazy or computed.
    config, params : the MLP (``c_out = k*k``) and its initial parameters theta0.
    steps, lr, adaptive, grow, normalize, clip, max_halvings : as in
        :func:`~mfarray.flows.kernel_flow` (one integrator); a step is
        ``theta <- theta - s * grad(N L)``.
    loss : "sigma", "sigma_dynamic", "sigma_squared", "mse" (needs ``target``) or a
        ``losses.PointwiseLoss``.  kappa is that of the initial train metric.
    linearized : train the linear model (2.10) around theta0 instead of the network.
    center : subtract ``f_theta0`` so the flow starts at ``g_FS`` (see :func:`network_metric`).
    record_every : history is stored at steps 0, record_every, 2 record_every, ... and the last.
    target : (N, k, k) target metrics for the MSE loss.

    Returns
    -------
    The result Dataset of :mod:`mfarray.flows.results` with the final parameters ``theta`` and
    initial ``theta_initial`` (param), flattened as :func:`mfarray.networks.flatten`.
    """
    steps = check_steps(steps)
    record_every = check_steps(record_every, "record_every")
    if record_every < 1:
        raise ValueError(f"record_every must be a positive integer; got {record_every!r}")
    control = StepControl(lr=lr, adaptive=adaptive, normalize=normalize, clip=clip, grow=grow,
                          max_halvings=max_halvings)
    params0 = _as_tree(config, params)  # shapes and finite values, before any flow
    tr, te = materialize(train, test)
    _k_of(config, tr.k)
    x_train = _inputs(tr.z, features)
    if x_train.shape[1] != config.d_in:
        raise ValueError(f"features give {x_train.shape[1]} inputs per point; the network takes {config.d_in}")
    model = NetworkModel(config, params0, x_train, linalg.to_rows(tr.g_fs),
                         None if te is None else _inputs(te.z, features),
                         None if te is None else linalg.to_rows(te.g_fs), linearized=linearized, center=center)
    both = linalg.metrics_rows(model.metrics(model.init()), tr.k)
    m = both.take(slice(0, tr.n))
    if not m.all_valid:
        raise ValueError(
            "the initial network metric g_FS + R(f_theta0) is not positive definite at every train point "
            f"({linalg.describe_invalid(m)}): use center=True or smaller initial outputs (e.g. scale the last layer)"
        )
    loss_fn = resolve_loss(loss)
    data = losses.loss_data(tr.omega2, tr.weight, m.g, target=target)
    if loss_fn.name == "mse" and data.target is None:
        raise ValueError("loss='mse' needs target metrics: pass target=(N, k, k)")
    network = {"widths": list(config.widths), "activation": config.activation, "sigma_w": config.sigma_w,
               "sigma_b": config.sigma_b, "linearized": bool(linearized), "center": bool(center),
               "features": getattr(features, "__qualname__", repr(features))}
    attrs = {"flow": "linearized network (2.10)" if linearized else "evolving-kernel network (2.8)",
             "model": "network", "loss": loss_fn.name, "network": json.dumps(network),
             "step_control": json.dumps(control.describe()), "linearized": int(bool(linearized)),
             "center": int(bool(center)), "widths": list(config.widths), "activation": config.activation,
             "sigma_w": config.sigma_w, "sigma_b": config.sigma_b}
    tr = _with_initial(tr, m.g)
    if te is not None:
        te = _with_initial(te, both.take(slice(tr.n, None)).g)

    def result(trajectory):
        model_vars = {"theta": ("param", backend.to_numpy(trajectory.theta)),
                      "theta_initial": ("param", backend.to_numpy(model.init()))}
        return flow_result(trajectory, tr, te, model_vars=model_vars, attrs=attrs, steps=steps)

    try:
        trajectory = integrate(model, loss_fn, data, control, steps, tr, te, record_every=record_every,
                               callback=callback, progress=progress)
    except FlowError as err:
        err.result = result(err.trajectory)
        raise
    return result(trajectory)


def _with_initial(sites, g0):
    """Sites whose initial metric is the network's at theta0 (recorded as g_*_initial)."""
    return dataclasses.replace(sites, g0=g0)
