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

Every accepted step keeps every train metric finite and positive definite: a step that does
not is halved (the shorter rate is kept for later steps, as in ``kernel_flow``) until it does,
or :class:`~mfarray.flows.guard.FlowError` is raised after ``max_halvings`` halvings.

NumPy only (the point set is brought to host memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from .. import backend, losses
from .. import networks as nw
from ..kernels.empirical import empirical_ntk
from ..kernels.features import patch_features
from .frozen import resolve_loss, sigma_or_nan, single_chart
from .guard import FlowError, positive_definite

__all__ = [
    "network_metric",
    "network_inputs",
    "parameter_gradient",
    "network_flow",
    "RealBasisOperator",
    "metric_ntk_operator",
]


# ------------------------------------------------------------------ model
def network_inputs(ds, features=patch_features):
    """The network inputs ``features(z)`` of a point set, float64 NumPy (n, d_in)."""
    z = backend.to_numpy(ds["z"].data)
    return np.asarray(backend.to_numpy(features(z)), dtype=np.float64)


def _g_ref(ds):
    return np.array(backend.to_numpy(ds["g_fs"].data), dtype=np.complex128)


def _k_of(config, ds):
    k = int(ds["g_fs"].shape[-1])
    if config.c_out != k * k:
        raise ValueError(f"the network has {config.c_out} outputs; {k}x{k} Hermitian metrics need c = {k * k}")
    return k


def network_metric(config, params, ds, *, features=patch_features, params0=None):
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
    k = _k_of(config, ds)
    x = network_inputs(ds, features)
    f = nw.apply(config, params, x)
    if params0 is not None:
        f = f - nw.apply(config, _as_tree(config, params0), x)
    return _g_ref(ds) + losses.real_to_hermitian(f, k)


def _as_tree(config, params):
    if hasattr(params, "ndim") and params.ndim == 1:
        return nw.unflatten(config, np.asarray(params, dtype=np.float64))
    return params


@dataclass
class _Model:
    """The metric on a fixed set of inputs as a function of the flat parameter vector."""

    config: nw.MLP
    params0: tuple
    x: np.ndarray
    g_ref: np.ndarray
    k: int
    linearized: bool
    center: bool

    def __post_init__(self):
        f0 = nw.apply(self.config, self.params0, self.x)
        self.theta0 = nw.flatten(self.params0)
        # Constant part of the metric: g_ref (centred) or g_ref + R(f0).
        self.base = self.g_ref if self.center else self.g_ref + losses.real_to_hermitian(f0, self.k)
        self.f0 = f0

    def metric(self, theta):
        if self.linearized:
            d = nw.jvp(self.config, self.params0, self.x, nw.unflatten(self.config, theta - self.theta0))
            return self.base + losses.real_to_hermitian(d, self.k)
        f = nw.apply(self.config, nw.unflatten(self.config, theta), self.x)
        if self.center:
            return self.g_ref + losses.real_to_hermitian(f - self.f0, self.k)
        return self.g_ref + losses.real_to_hermitian(f, self.k)

    def pullback(self, theta, G):
        """``J(theta)^T r(G)`` (J at theta0 for the linearised model), flat (P,)."""
        params = self.params0 if self.linearized else nw.unflatten(self.config, theta)
        return nw.flatten(nw.vjp(self.config, params, self.x, losses.hermitian_to_real(G)))


def parameter_gradient(config, params, ds, *, loss="sigma_squared", data=None, target=None,
                       features=patch_features, params0=None):
    r"""Gradient of ``sum_x l(x) = N * losses.total(loss, g_theta, data)`` w.r.t. the flat parameters.

    ``= vjp(config, params, x, hermitian_to_real(dl/dg))`` -- the direction ``network_flow``
    descends.  ``data`` defaults to ``losses.make_loss_data(ds, g_theta, target=target)``
    (kappa of the current metric).  ``params0`` as in :func:`network_metric`.
    Returns a float64 vector of length ``num_params(config)``.
    """
    theta = nw.flatten(_as_tree(config, params))
    ref = _as_tree(config, theta if params0 is None else params0)
    model = _Model(config, ref, network_inputs(ds, features), _g_ref(ds), _k_of(config, ds),
                   linearized=False, center=params0 is not None)
    loss_fn = resolve_loss(loss)
    g = model.metric(theta)
    if data is None:
        data = losses.make_loss_data(ds, g, target=target)
    return model.pullback(theta, loss_fn.gradient(g, data))  # the flow's own chain rule


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
    def shape(self):
        return tuple(self.inner.shape)

    def matvec(self, v):
        r = losses.hermitian_to_real(np.asarray(v))
        return losses.real_to_hermitian(self.inner.matvec(r), self.k)

    def diagonal(self):
        return self.inner.diagonal()


def metric_ntk_operator(config, params, ds_out, ds_in=None, *, features=patch_features):
    """The empirical metric-NTK of :func:`network_metric` at ``params`` as a Hermitian-metric operator.

    Dense ``(n_out, n_in, c, c)`` blocks (small point sets only), wrapped in
    :class:`RealBasisOperator`.  At the initial parameters this is the frozen kernel
    ``Theta^L`` (2.11) of the linearised network.
    """
    from ..kernels.operators import DenseOperator

    params = _as_tree(config, params)
    k = _k_of(config, ds_out)
    x_out = network_inputs(ds_out, features)
    x_in = x_out if ds_in is None else network_inputs(ds_in, features)
    return RealBasisOperator(DenseOperator(empirical_ntk(config, params, x_out, x_in)), k)


# ------------------------------------------------------------------ flow
def network_flow(train: xr.Dataset, config, params, *, steps: int, lr: float, loss="sigma_squared",
                 test: xr.Dataset | None = None, linearized: bool = False, center: bool = False,
                 record_every: int = 1, target=None, features=patch_features,
                 max_halvings: int = 40) -> xr.Dataset:
    r"""Gradient descent of a network metric: the evolving-kernel flow (2.8) or, with
    ``linearized=True``, the linearised network (2.10) (= frozen empirical-NTK flow, 2.11-2.12).

    Parameters
    ----------
    train, test : point sets in one chart (``z``, ``g_fs``, ``omega2``, ``weight``).
    config, params : the MLP (``c_out = k*k``) and its initial parameters theta0.
    steps, lr : number of steps and learning rate; ``theta <- theta - lr * grad(N L)``.
    loss : "sigma", "sigma_dynamic", "sigma_squared", "mse" (needs ``target``) or a
        ``losses.PointwiseLoss``.  kappa is that of the initial train metric.
    linearized : train the linear model (2.10) around theta0 instead of the network.
    center : subtract ``f_theta0`` so the flow starts at ``g_FS`` (see :func:`network_metric`).
    record_every : history is stored at steps 0, record_every, 2 record_every, ... and the last.
    target : (N, k, k) target metrics for the MSE loss.
    max_halvings : step shortenings tried (positivity guard) before :class:`FlowError`.

    Returns
    -------
    xarray.Dataset with ``loss`` (the mean, ``losses.total``), ``sigma_train``, ``lr`` (the step
    size of the last step taken), ``rejected`` (halvings since the previous record) and, with a
    test set, ``sigma_test`` along ``step``; final ``g_train`` / ``g_test`` and initial
    ``g_train_initial`` / ``g_test_initial`` (point, row, col); final parameters ``theta`` and
    initial ``theta_initial`` (param), flattened as :func:`mfarray.networks.flatten`.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite learning rate; got {lr!r}")
    if not isinstance(record_every, (int, np.integer)) or record_every < 1:
        raise ValueError(f"record_every must be a positive integer; got {record_every!r}")
    single_chart(train, test)
    params0 = _as_tree(config, params)
    nw._check_params(config, params0)
    params0 = tuple((np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)) for W, b in params0)
    k = _k_of(config, train)
    x_train = network_inputs(train, features)
    if x_train.shape[1] != config.d_in:
        raise ValueError(f"features give {x_train.shape[1]} inputs per point; the network takes {config.d_in}")
    model = _Model(config, params0, x_train, _g_ref(train), k, linearized, center)
    theta = model.theta0.copy()
    g = model.metric(theta)
    if not np.all(positive_definite(g)):
        raise ValueError(
            "the initial network metric g_FS + R(f_theta0) is not positive definite at every train point: "
            "use center=True or smaller initial outputs (e.g. scale the last layer)"
        )
    loss_fn = resolve_loss(loss)
    data = losses.make_loss_data(train, g, target=target)
    if loss_fn.name == "mse" and data.target is None:
        raise ValueError("loss='mse' needs target metrics: pass target=(N, k, k)")
    test_model = None
    if test is not None:
        test_model = _Model(config, params0, network_inputs(test, features), _g_ref(test), k, linearized, center)
        gt0 = test_model.metric(theta)

    history = {"step": [], "loss": [], "sigma_train": [], "lr": [], "rejected": []}
    if test is not None:
        history["sigma_test"] = []

    def record(step, g, theta, rate, rejected):
        history["step"].append(step)
        history["loss"].append(losses.total(loss_fn, g, data))
        history["sigma_train"].append(sigma_or_nan(train, g))
        history["lr"].append(rate)
        history["rejected"].append(rejected)
        if test is not None:
            history["sigma_test"].append(sigma_or_nan(test, test_model.metric(theta)))

    record(0, g, theta, 0.0, 0)
    rate = float(lr)
    rejected_since = 0
    for step in range(1, steps + 1):
        grad = model.pullback(theta, loss_fn.gradient(g, data))
        rejected = 0
        while True:
            trial_theta = theta - rate * grad
            trial = model.metric(trial_theta)
            if bool(np.all(positive_definite(trial))):
                break
            rejected += 1
            rate *= 0.5
            if rejected > max_halvings:
                raise FlowError(
                    f"step {step}: no step size down to {rate:.3g} keeps every train metric positive "
                    "definite; the flow cannot continue (lower lr)"
                )
        theta, g = trial_theta, trial
        rejected_since += rejected
        if step % record_every == 0 or step == steps:
            record(step, g, theta, rate, rejected_since)
            rejected_since = 0

    data_vars = {
        "loss": ("step", np.asarray(history["loss"])),
        "sigma_train": ("step", np.asarray(history["sigma_train"])),
        "lr": ("step", np.asarray(history["lr"])),
        "rejected": ("step", np.asarray(history["rejected"], dtype=np.int64)),
        "g_train": (("point", "row", "col"), g),
        "g_train_initial": (("point", "row", "col"), model.metric(model.theta0)),
        "theta": ("param", theta),
        "theta_initial": ("param", model.theta0.copy()),
    }
    if test is not None:
        data_vars["sigma_test"] = ("step", np.asarray(history["sigma_test"]))
        data_vars["g_test"] = (("test_point", "row", "col"), test_model.metric(theta))
        data_vars["g_test_initial"] = (("test_point", "row", "col"), gt0)
    attrs = {"flow": "linearized network (2.10)" if linearized else "evolving-kernel network (2.8)",
             "linearized": int(bool(linearized)), "center": int(bool(center)), "loss": loss_fn.name,
             "widths": list(config.widths), "activation": config.activation,
             "sigma_w": config.sigma_w, "sigma_b": config.sigma_b}
    return xr.Dataset(data_vars, coords={"step": np.asarray(history["step"], dtype=np.int64)}, attrs=attrs)
