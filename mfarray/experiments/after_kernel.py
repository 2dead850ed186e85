r"""The after-kernel: a trained network's empirical metric-NTK, frozen, as a kernel method (issue 13).

The paper's frozen kernels (§3.2) generalise poorly; its finite networks do well, which it
attributes to feature learning (§4).  The after-kernel (Long 2021; Atanasov et al. 2022)
separates the two: freeze the empirical metric-NTK (2.7) of the TRAINED network,

.. math::

    \Theta_T(x, x') = \Theta(x, x')\big|_{\theta = \theta_T},

and run the frozen-kernel flow (2.12) with it from g_FS on the same train points.  If the
learned kernel alone carries the network's advantage, the after-kernel flow should generalise
about as well as the network; if not, the network's nonlinear dynamics matter beyond the kernel.

:func:`after_kernel_experiment` compares, by the test gain sigma(g_FS) / sigma(g) (B.11):

* ``fs``            g_FS itself (gain 1);
* ``initial_ntk``   the frozen empirical metric-NTK at initialisation, Theta_0 (= the
  linearised network, 2.10-2.11);
* ``analytic_ntk``  the infinite-width NTK :math:`\delta_{ij}\bar\Theta` (2.9; ReLU:
  :func:`mfarray.kernels.relu.relu_ntk` with the network's depth, sigma_w, sigma_b; NaN for other
  activations: no closed form here);
* ``after_kernel``  the frozen Theta_T;
* ``network``       the trained network g_theta_T itself.

The three kernel flows are :func:`mfarray.flows.kernel_flow` with the same steps, step control
and loss; the empirical kernels enter as a pair of operators ``(K_train_train, K_test_train)``
(:func:`network_kernel_operators`): matrix-free by default (:class:`NetworkKernelOperator`,
``Theta v = J (J^T v)``, one reverse and one forward pass, O(n P) per product, no memory; the
pair shares the reverse pass), or dense (n, n, c, c) blocks for small sets.  Read in the
orthonormal Hermitian basis (:class:`mfarray.flows.evolving.RealBasisOperator`), they act on
dl/dg as the metric-NTK of the network metric :func:`mfarray.flows.evolving.network_metric` does.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .. import backend, linalg
from .. import networks as nw
from ..flows import FlowError, kernel_flow
from ..flows.evolving import RealBasisOperator, network_inputs, network_metric
from ..flows.frozen import resolve_loss
from ..flows.integrate import check_steps
from ..flows.sites import materialize
from ..geometry import measures
from ..kernels.empirical import empirical_ntk
from ..kernels.features import patch_features
from ..kernels.operators import DenseOperator
from ..kernels.relu import relu_ntk
from ..pointset.provenance import format_call, provenance
from .feature_learning import _check_positive, network_params, points_fingerprint, train_metric_network

__all__ = [
    "AFTER_KERNEL_DOCS",
    "MODELS",
    "NetworkKernelOperator",
    "after_kernel_experiment",
    "network_kernel_operators",
]

Array = Any

MODELS = ("fs", "initial_ntk", "analytic_ntk", "after_kernel", "network")
METHODS = ("matvec", "dense")

AFTER_KERNEL_DOCS = {
    "sigma_train": "sigma (B.11) on the train points at the end (fs: g_FS)",
    "sigma_test": "sigma (B.11) on the test points at the end (kernels: predicted, 2.12)",
    "gain_train": "sigma_train(fs) / sigma_train",
    "gain_test": "sigma_test(fs) / sigma_test: how the model generalises",
    "steps_done": "kernel-flow steps taken (NaN: no flow)",
    "seconds": "wall time of the model's flow or training, with its operators",
}


class _Pullback:
    """The last J_in^T v of operators that share ``x_in`` and ``params``: a flow applies
    K(train, train) and K(test, train) to the same v every step, so one reverse pass serves both
    (reused only for the same config, params and x_in objects and a v equal, entry for entry, to
    the last one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key = self._v = self._t = None

    def __call__(self, config: nw.MLP, params: tuple, x_in: Any, v: np.ndarray) -> nw.Params:
        key = (config, params, x_in)  # held, so compared by identity
        with self._lock:
            same = self._key is not None and all(a is b for a, b in zip(self._key, key))
            if same and self._v.shape == v.shape and np.array_equal(self._v, v):
                return self._t
        t = nw.vjp(config, params, x_in, v)
        with self._lock:
            self._key, self._v, self._t = key, np.array(v, copy=True), t
        return t


@dataclass(frozen=True, eq=False)
class NetworkKernelOperator:
    r"""The empirical metric-NTK :math:`\Theta(x_{out}, x_{in})` (2.7) of an MLP at ``params`` as a
    matrix-free operator on real components: ``matvec(v (n_in, c)) = J_out (J_in^T v)`` (the
    products of :func:`mfarray.kernels.empirical.ntk_matvec`), shape (n_out, n_in).

    config : mfarray.networks.MLP; params : parameter tree; x_out (n_out, d_in), x_in (n_in, d_in):
    network inputs; pullback : a :class:`_Pullback` shared by operators with the same x_in and
    params (:func:`network_kernel_operators` gives its pair one), so J_in^T v is computed once per
    v.  Wrap it in :class:`~mfarray.flows.evolving.RealBasisOperator` to act on Hermitian metrics.
    """

    config: nw.MLP
    params: tuple
    x_out: Any
    x_in: Any
    pullback: _Pullback = field(default_factory=_Pullback, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x_out.shape[0]), int(self.x_in.shape[0]))

    def matvec(self, v: Array) -> Array:
        v = np.asarray(v)
        n_in, c = self.shape[1], self.config.c_out
        if v.shape[0] != n_in or math.prod(v.shape[1:]) != c:
            raise ValueError(f"v must have shape ({n_in}, {c}) (real components per point); got {v.shape}")
        with backend.one_blas_thread():
            t = self.pullback(self.config, self.params, self.x_in, v.reshape(n_in, c))
            out = nw.jvp(self.config, self.params, self.x_out, t)
        return out.reshape((self.shape[0], *v.shape[1:]))


def network_kernel_operators(config: nw.MLP, params: nw.Params, train: xr.Dataset, test: xr.Dataset | None = None, *,
                             method: str = "matvec",
                             features: Callable[[Array], Array] = patch_features) -> tuple[Any, Any]:
    """``(K_train_train, K_test_train)`` of the MLP's empirical metric-NTK at ``params``, for
    ``kernel_flow(train, pair, test=test)`` (``K_test_train`` None without test points).

    method : "matvec" (two :class:`NetworkKernelOperator` sharing one pull-back per v, no memory)
        or "dense" (``empirical_ntk`` blocks (n_out, n_in, c, c) in a DenseOperator; n_train
        (n_train + n_test) c^2 floats).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    k = int(train["g_fs"].shape[-1])
    if config.c_out != k * k:
        raise ValueError(f"the network has {config.c_out} outputs; {k}x{k} metrics need c = {k * k}")
    x = network_inputs(train, features)
    x_test = None if test is None else network_inputs(test, features)
    shared = _Pullback()  # one reverse pass per flow step for the pair

    def op(x_out):
        if method == "dense":
            with backend.one_blas_thread():
                return DenseOperator(empirical_ntk(config, params, x_out, x))
        return NetworkKernelOperator(config, params, x_out, x, shared)

    return RealBasisOperator(op(x), k), None if x_test is None else RealBasisOperator(op(x_test), k)


def _sigma(ds, g):
    """sigma (B.11) of metrics g (N, k, k) at the points of ds."""
    det = linalg.hermitian_det(np.asarray(g))
    return float(measures.sigma(det, np.asarray(ds.omega2.values), np.asarray(ds.weight.values)))


def _flow_row(name, kernel, train, test, options, progress):
    t0 = time.perf_counter()
    try:
        r = kernel_flow(train, kernel, test=test, **options)
    except FlowError as err:  # the steps done still count (the guard could not keep metrics valid)
        r = err.result
    row = {"sigma_train": float(r.sigma_train.values[-1]), "sigma_test": float(r.sigma_test.values[-1]),
           "steps_done": float(r.attrs.get("steps_done", r.sizes["step"] - 1))}
    if progress:
        print(f"after_kernel: {name}: sigma_test {row['sigma_test']:.4g}", file=sys.stderr, flush=True)
    return row, time.perf_counter() - t0


def _check_result(result, sites):
    """Refuse (ValueError) a train_metric_network ``result`` not trained on these train points:
    another number of points, another chart, or (where it records them) other points."""
    network_params(result)  # a train_metric_network result at all
    n = sites.n
    if int(result.attrs.get("n_train", -1)) != n:
        raise ValueError(f"result was trained on {result.attrs.get('n_train')} points; train has {n}: pass the "
                         f"train points it was trained on")
    chart = [int(c) for c in sites.chart]
    trained = [int(c) for c in np.ravel(result.attrs.get("chart", chart))]
    if trained != chart:
        raise ValueError(f"result was trained on points in chart {trained}; train is in chart {chart}: pass the "
                         f"train points it was trained on")
    recorded = result.attrs.get("train_z_sha256")
    if recorded is not None and recorded != points_fingerprint(sites):
        raise ValueError(f"result was trained on other train points than these {n} (their fingerprint "
                         f"train_z_sha256 differs): pass the train points it was trained on")


def after_kernel_experiment(train: xr.Dataset, test: xr.Dataset, config: nw.MLP | None = None, epochs: int = 10,
                            batch: int = 128, lr: float = 1e-2, *, result: xr.Dataset | None = None, seed: int = 0,
                            loss: str = "sigma", optimizer: str = "adam", flow_steps: int = 100,
                            flow_lr: float = 1.0, flow_loss: str = "sigma_squared", method: str = "matvec",
                            features: Callable[[Array], Array] = patch_features,
                            progress: bool = False) -> xr.Dataset:
    """Train the metric network (or take ``result``), freeze its kernels, flow them; compare.

    Parameters
    ----------
    train, test : point sets in one shared chart.
    config, epochs, batch, lr, seed, loss, optimizer : the network's training
        (:func:`~mfarray.experiments.feature_learning.train_metric_network`); ignored with ``result``
        (and then left out of the recorded ``call``).
    result : a :func:`train_metric_network` result on these train points (its parameters and
        config are used; no training here): it must record as many train points, in the same chart,
        and, where it records their fingerprint (``train_z_sha256``), the same points.  The
        network's and g_FS's sigma are computed here, on these train and test points.
    flow_steps, flow_lr, flow_loss : the kernel flows (:func:`mfarray.flows.kernel_flow`, from
        g_FS, backtracking from ``flow_lr``; loss "sigma", "sigma_dynamic" or "sigma_squared" (the
        default: the |1 - eta| loss chatters under one global step, docs/paper-notes.md); there are
        no target metrics for "mse").
    method : "matvec" or "dense" empirical-kernel operators (:func:`network_kernel_operators`).

    Every argument (and ``result`` against the train points) is checked before any training or flow.

    Returns
    -------
    xarray.Dataset with coordinate ``model`` (:data:`MODELS`) and the variables of
    :data:`AFTER_KERNEL_DOCS`; attributes: the network, training and flow settings.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    flow_steps = check_steps(flow_steps, "flow_steps")
    flow_lr = _check_positive("flow_lr", flow_lr)
    try:
        flow_loss_fn = resolve_loss(flow_loss)
    except ValueError:
        raise ValueError(f"flow_loss must be 'sigma', 'sigma_dynamic', 'sigma_squared' or a loss object with "
                         f"value/gradient; got {flow_loss!r}") from None
    if flow_loss_fn.name == "mse":
        raise ValueError("flow_loss='mse' needs target metrics, which the after-kernel flows have none of: use "
                         "'sigma', 'sigma_dynamic' or 'sigma_squared'")
    train, test = train.compute(), test.compute()
    if result is not None:  # (train_metric_network checks the points before it trains)
        _check_result(result, materialize(train, test)[0])
    t0 = time.perf_counter()
    if result is None:
        result = train_metric_network(train, config, epochs, batch, lr, test=test, seed=seed, loss=loss,
                                      optimizer=optimizer, features=features, progress=progress)
        call = format_call("mfarray.experiments.after_kernel.after_kernel_experiment", train, test, config,
                           epochs=epochs, batch=batch, lr=lr, seed=seed, loss=loss, optimizer=optimizer,
                           flow_steps=flow_steps, flow_lr=flow_lr, flow_loss=flow_loss, method=method)
    else:
        call = format_call("mfarray.experiments.after_kernel.after_kernel_experiment", train, test, result=result,
                           flow_steps=flow_steps, flow_lr=flow_lr, flow_loss=flow_loss, method=method)
    train_seconds = time.perf_counter() - t0
    config, params, params0 = network_params(result)
    options = {"steps": flow_steps, "lr": flow_lr, "loss": flow_loss, "features": features}
    rows = {name: {} for name in MODELS}
    seconds = dict.fromkeys(MODELS, math.nan)
    for name, p in (("initial_ntk", params0), ("after_kernel", params)):
        t = time.perf_counter()
        pair = network_kernel_operators(config, p, train, test, method=method, features=features)
        rows[name], _ = _flow_row(name, pair, train, test, options, progress)
        seconds[name] = time.perf_counter() - t
    if config.activation == "relu":
        spec = functools.partial(relu_ntk, depth=config.depth, sigma_w=config.sigma_w, sigma_b=config.sigma_b)
        rows["analytic_ntk"], seconds["analytic_ntk"] = _flow_row("analytic_ntk", spec, train, test, options,
                                                                  progress)
    else:
        rows["analytic_ntk"] = {"sigma_train": math.nan, "sigma_test": math.nan, "steps_done": math.nan}
    rows["fs"] = {"sigma_train": _sigma(train, train.g_fs.values), "sigma_test": _sigma(test, test.g_fs.values),
                  "steps_done": math.nan}
    rows["network"] = {name: _sigma(ds, network_metric(config, params, ds, features=features, params0=params0))
                       for name, ds in (("sigma_train", train), ("sigma_test", test))}
    rows["network"]["steps_done"] = math.nan
    seconds["network"] = train_seconds if train_seconds > 1e-3 else float(result.attrs.get("train_seconds", math.nan))
    column = {key: np.array([rows[m][key] for m in MODELS]) for key in ("sigma_train", "sigma_test", "steps_done")}
    column["gain_train"] = rows["fs"]["sigma_train"] / column["sigma_train"]
    column["gain_test"] = rows["fs"]["sigma_test"] / column["sigma_test"]
    column["seconds"] = np.array([seconds[m] for m in MODELS])
    data = {key: ("model", values) for key, values in column.items()}
    ds = xr.Dataset(data, coords={"model": list(MODELS)})
    for name, text in AFTER_KERNEL_DOCS.items():
        ds[name].attrs["description"] = text
    ds["model"].attrs["description"] = ("fs: g_FS; initial_ntk / after_kernel: frozen empirical metric-NTK at "
                                        "initialisation / after training; analytic_ntk: infinite-width NTK; "
                                        "network: the trained network")
    ds.attrs.update({
        "network": result.attrs["network"], "training": json.dumps({
            key: result.attrs.get(key) for key in ("epochs", "batch", "lr", "lr_decay", "optimizer", "loss", "seed")
            if key in result.attrs} | {"epochs": int(result.sizes["epoch"] - 1)}),
        "flow": json.dumps({"steps": flow_steps, "lr": flow_lr, "loss": flow_loss, "method": method}),
        "n_train": int(train.sizes["point"]), "n_test": int(test.sizes["point"]),
        "analytic_ntk": "relu_ntk" if config.activation == "relu" else f"none for activation {config.activation!r}",
        **provenance(call)})
    return ds
