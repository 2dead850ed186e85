r"""Feature learning, measured: how far the empirical metric-NTK (2.7) of a trained metric
network moves from its value at initialisation (issue 13; paper §2.1-2.2 and §4).

The paper attributes the gap between finite networks and frozen kernels to feature learning
and leaves "how the empirical NTK evolves as compared to the frozen NTK" open (§4).
:func:`train_metric_network` trains the one-chart metric network of
:func:`mfarray.flows.network_flow`,

.. math::

    g_\theta(x) = g_{FS}(x) + R\bigl(f_\theta(\phi(x)) - f_{\theta_0}(\phi(x))\bigr)

(``R`` = :func:`mfarray.linalg.real_to_hermitian`, an isometry; centred, so training starts at
g_FS), with Adam or plain SGD on mini-batches of the sigma loss (kappa fixed at g_FS,
B.10-B.11), and at checkpoint epochs measures the empirical metric-NTK
:math:`\Theta_t = \Theta(\theta_t)` (n, n, c, c) on a fixed probe set against
:math:`\Theta_0`: kernel distance :math:`1 - \cos(\Theta_0, \Theta_t)`, relative change, and
kernel-target alignment with the probe's current loss gradients, for :math:`\Theta_t` and for
:math:`\Theta_0` (definitions, cost: :mod:`mfarray.experiments.probe_kernel`).  Feature
learning shows as a kernel that moves, and moves toward the task (alignment of
:math:`\Theta_t` above that of :math:`\Theta_0`).  Checkpoint time is recorded apart from
training time.

:func:`kernel_evolution` repeats the run for growing widths in the NTK parameterisation (same
optimiser, learning rate and mini-batches) and fits log-log rates against width.  Theory for the
lazy regime: the relative change :math:`\|\Theta_T - \Theta_0\|/\|\Theta_0\|` is at most
O(width^-1/2) (Jacot et al. 2018, Lee et al. 2019), and its leading term is O(width^-1) (Dyer &
Gur-Ari 2019); the kernel distance 1 - cos is quadratic in the part of the change orthogonal to
:math:`\Theta_0`, so its rate is twice the change's.  (Measured, 1 hidden ReLU layer, SGD:
change ~ width^-0.8, distance ~ width^-1.6, from 64 to 4096.)  Adam moves every parameter by
about lr per step whatever the width, so in the NTK parameterisation the function moves by
about lr width^(3/2): the lazy limit is one of (S)GD at a fixed learning rate, the default there.

Bare NumPy (point sets are loaded to the host); BLAS is held to one thread in the training loop
(small GEMMs: 5-20x faster than threaded OpenBLAS on a loaded machine) and in the checkpoints
(the probe kernel's tiles run in their own threads, one per core,
:func:`~mfarray.kernels.empirical.empirical_ntk_products`).  Measured (3 x 64 ReLU,
Adam, batch 128, 2-core machine at load 4-5): 1.0-1.5 s per epoch over 10^5 points, plus 0.5-0.9 s
for sigma on them (benchmarks/bench_feature_learning.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import backend, linalg, losses, optim
from .. import networks as nw
from ..flows.evolving import network_inputs
from ..flows.frozen import resolve_loss
from ..flows.sites import Sites, materialize
from ..kernels.checks import Integer, Real
from ..kernels.features import patch_features
from ..kernels.operators.record import fingerprint
from ..pointset.charts import require_same_surface
from ..pointset.provenance import format_call, provenance
from .probe_kernel import KERNEL_DOCS, ProbeKernel, analytic_distance

__all__ = [
    "EVOLUTION_DOCS",
    "HISTORY_DOCS",
    "batch_gradient",
    "default_checkpoints",
    "fit_width_rate",
    "kernel_evolution",
    "metric_mlp",
    "network_params",
    "points_fingerprint",
    "train_metric_network",
]

Array = Any

LOSSES = ("sigma", "sigma_squared", "mse")
OPTIMIZERS = ("adam", "sgd")
PROBE_DTYPES = ("float64", "float32")

HISTORY_DOCS = {
    "loss": "mean training loss over the epoch's mini-batches (NaN at epoch 0)",
    "sigma_train": "sigma (B.11, kappa of the current metric) over the whole train set after the epoch "
                   "(epoch 0: g_FS)",
    "sigma_test": "sigma (B.11) over the whole test set after the epoch (epoch 0: g_FS)",
    "invalid_train": "train points whose metric is not positive definite after the epoch",
    "invalid_test": "test points whose metric is not positive definite after the epoch",
    "skipped": "train-point visits in the epoch left out of the gradient (metric not positive definite)",
    "time": "wall-clock seconds of the epoch's training steps (no evaluation, no kernel checkpoint)",
    "eval_time": "wall-clock seconds of the epoch's sigma evaluations",
    "params": "flat parameters after the last epoch (mfarray.networks.flatten order)",
    "params_initial": "flat initial parameters theta_0 (the model is centred at f_theta0)",
}

EVOLUTION_DOCS = {
    "kernel_distance": "kernel distance 1 - cos(Theta_0, Theta_T) on the probe after the last epoch",
    "kernel_change": "|Theta_T - Theta_0|_F / |Theta_0|_F on the probe after the last epoch",
    "alignment": "kernel-target alignment of Theta_T after the last epoch",
    "alignment_initial_kernel": "kernel-target alignment of Theta_0 with the final targets",
    "analytic_distance": "|Theta_0 - delta (x) Theta_bar|_F / |delta (x) Theta_bar|_F: initial empirical "
                         "metric-NTK vs the infinite-width ReLU NTK (relu_ntk) on the probe (NaN: no closed form)",
    "sigma_train": "sigma (B.11) on the train set after the last epoch",
    "sigma_test": "sigma (B.11) on the test set after the last epoch",
    "kernel_distance_curve": "kernel distance at each checkpoint epoch",
    "kernel_change_curve": "kernel change at each checkpoint epoch",
    "seconds": "wall time of the width's run",
}


# ----------------------------------------------------------------------------- configuration
def metric_mlp(hidden: Sequence[int] = (64, 64, 64), activation: str = "relu", *, d_in: int = 10, k: int = 3,
               sigma_w: float = 1.0, sigma_b: float = 0.0) -> nw.MLP:
    """The MLP of the one-chart metric network: ``d_in`` features -> hidden widths -> k*k outputs.

    ``d_in = 10`` is :func:`~mfarray.kernels.features.patch_features` of P^4 points; ``activation``
    one of :data:`mfarray.networks.ACTIVATIONS` ("relu", or "tanh" for a smooth network).
    """
    return nw.MLP((d_in, *hidden, k * k), activation, sigma_w, sigma_b)  # MLP refuses non-integer widths


def default_checkpoints(epochs: int) -> tuple[int, ...]:
    """Epochs 0, 1, 2, 4, 8, ... (powers of two below ``epochs``) and ``epochs``: kernel checkpoints
    dense early, when the kernel moves fastest, and O(log epochs) of them in all."""
    out = {0, int(epochs)}
    e = 1
    while e < epochs:
        out.add(e)
        e *= 2
    return tuple(sorted(out))


def _check_int(name, value, lo):
    """``value`` as a Python int >= lo (NumPy integers too); TypeError for a non-integer, ValueError below lo."""
    return Integer(low=lo).check(value, name)


def _check_positive(name, value):
    """``value`` as a positive finite Python float (NumPy reals too); TypeError for a non-number."""
    return Real(low=0, low_open=True).check(value, name)


def _checkpoint_marks(checkpoints, epochs, *, last=False):
    """The checkpoint epochs as sorted distinct Python ints: 0 always, ``checkpoints`` (default
    :func:`default_checkpoints`), and ``epochs`` too with ``last``; each an integer in 0..epochs
    (TypeError for a fractional one, ValueError for one out of range), checked before any training."""
    if checkpoints is None:
        checkpoints = default_checkpoints(epochs)
    elif isinstance(checkpoints, (str, bytes)) or not hasattr(checkpoints, "__iter__"):
        raise TypeError(f"checkpoints must be a sequence of epochs in 0..epochs = {epochs}, or None; "
                        f"got {checkpoints!r}")
    domain = Integer(low=0, high=epochs, doc="an epoch in 0..epochs")
    marks = {0, *(domain.check(e, "checkpoints entry") for e in checkpoints)}
    if last:
        marks.add(int(epochs))
    return sorted(marks)


def points_fingerprint(sites: Sites) -> str:
    """SHA-256 of the points' z (complex128) of materialised Sites: what a result records of its train
    points (``train_z_sha256``) and :func:`~mfarray.experiments.after_kernel.after_kernel_experiment`
    checks a result against."""
    return fingerprint(np.asarray(backend.to_numpy(sites.z), dtype=np.complex128))




# ----------------------------------------------------------------------------- arrays of a point set
class _Points:
    """What training reads of a point set: inputs x (n, d_in), reference rows (c, n), f_theta0
    (n, c), |Omega|^2 and weights (NumPy)."""

    def __init__(self, sites, config, params0, features, name):
        if sites.omega2 is None:
            raise ValueError(f"{name} lies on a surface without a Calabi-Yau form: the sigma loss needs |Omega|^2")
        self.n, self.k, self.chart = sites.n, sites.k, sites.chart
        self.x = network_inputs(backend.to_numpy(sites.z), features)
        if self.x.shape[1] != config.d_in:
            raise ValueError(f"features give {self.x.shape[1]} inputs per {name} point; the network takes "
                             f"{config.d_in}: build config with d_in={self.x.shape[1]} (metric_mlp)")
        if config.c_out != self.k * self.k:
            raise ValueError(f"the network has {config.c_out} outputs; {self.k}x{self.k} metrics need "
                             f"c = {self.k * self.k}")
        self.g_fs = backend.to_numpy(sites.g_fs)
        self.rows = np.ascontiguousarray(linalg.to_rows(self.g_fs))
        self.f0 = _apply(config, params0, self.x)
        self.omega2 = np.asarray(backend.to_numpy(sites.omega2), dtype=np.float64)
        self.weight = np.asarray(backend.to_numpy(sites.weight), dtype=np.float64)


def _apply(config, params, x, chunk=16384):
    return np.concatenate([nw.apply(config, params, x[i:i + chunk]) for i in range(0, max(len(x), 1), chunk)])


def _rows(config, params, pts):
    """Metric rows (c, n) of the centred network at every point of ``pts``."""
    return pts.rows + (_apply(config, params, pts.x) - pts.f0).T


def _sigma(config, params, pts):
    """(sigma (B.11), number of metrics that are not valid) over all points of ``pts``."""
    from ..geometry import measures

    rows = _rows(config, params, pts)
    det = linalg.hermitian_det(linalg.from_rows(rows, pts.k))
    invalid = int(np.count_nonzero(~linalg.metrics_rows(rows, pts.k).valid))
    return float(measures.sigma(det, pts.omega2, pts.weight)), invalid


# ----------------------------------------------------------------------------- one step
def batch_gradient(config: nw.MLP, theta: Array, x: Array, g_ref_rows: Array, f0: Array, data: losses.LossData,
                   loss: str | losses.Loss = "sigma") -> tuple[float, Array, int]:
    r"""Mean loss of a mini-batch and its gradient in the flat parameters.

    Model: metric rows ``g_ref_rows + (f_theta(x) - f0)^T`` (the centred network of the module
    docstring); loss ``L_b = (1/b) sum_x l(x)`` (:mod:`mfarray.losses`), gradient
    ``vjp(x, r(dl/dg)) / b`` (R is an isometry, see :mod:`mfarray.flows.evolving`).  A point
    whose metric is not valid (not positive definite) has no sigma-loss gradient: it is left out
    (still counted in the 1/b) and counted as skipped; the MSE loss takes every point.

    Parameters
    ----------
    config : mfarray.networks.MLP with c = k*k outputs
    theta : (P,) flat parameters (:func:`mfarray.networks.flatten` order)
    x : (b, d_in) network inputs
    g_ref_rows : (c, b) reference metric rows (:func:`mfarray.linalg.to_rows` of g_FS)
    f0 : (b, c) network outputs at theta_0 (the centring)
    data : LossData of the b points (kappa fixed)
    loss : "sigma", "sigma_squared", "mse" or a loss object

    Returns
    -------
    (L_b, gradient (P,), number of points skipped)
    """
    loss_fn = resolve_loss(loss)
    params = nw.unflatten(config, np.asarray(theta, dtype=np.float64))
    b = x.shape[0]
    k = math.isqrt(config.c_out)
    rows = g_ref_rows + (nw.apply(config, params, x) - f0).T
    m = linalg.metrics_rows(rows, k)
    skipped = 0
    if loss_fn.name != "mse" and not m.all_valid:
        ok = np.asarray(m.valid)
        skipped = int(np.count_nonzero(~ok))
        if skipped == b:
            return 0.0, np.zeros(nw.num_params(config)), skipped
        m = linalg.metrics_rows(np.ascontiguousarray(rows[:, ok]), k)
        data = losses.LossData(omega2=data.omega2[ok], weight=data.weight[ok], kappa=data.kappa,
                               target=None if data.target is None else data.target[ok])
    value = losses.total(loss_fn, m, data) * m.n / b
    G = losses.gradient_rows(loss_fn, m, data)  # (c, b')
    if skipped:
        full = np.zeros((G.shape[0], b))
        full[:, ok] = G
        G = full
    grad = nw.flatten(nw.vjp(config, params, x, np.ascontiguousarray(G.T))) / b
    return value, grad, skipped


def _probe_targets(config, params, probe, kappa, loss_fn):
    """y (n, c): the loss gradients dl/dg at the probe points in real coordinates (0 where the
    metric is not valid)."""
    rows = _rows(config, params, probe)
    m = linalg.metrics_rows(rows, probe.k)
    y = np.zeros((probe.n, config.c_out))
    ok = np.asarray(m.valid)
    if loss_fn.name == "mse" or not ok.any():
        loss_fn = losses.sigma_loss()  # the probe follows the sigma task (an MSE target is train-only)
        if not ok.any():
            return y
    sub = linalg.metrics_rows(np.ascontiguousarray(rows[:, ok]), probe.k)
    data = losses.LossData(omega2=probe.omega2[ok], weight=probe.weight[ok], kappa=kappa)
    y[ok] = losses.gradient_rows(loss_fn, sub, data).T
    return y


# ----------------------------------------------------------------------------- training
def _history(epochs, has_test):
    names = ["loss", "sigma_train", "invalid_train", "skipped", "time", "eval_time"]
    if has_test:
        names += ["sigma_test", "invalid_test"]
    return {name: np.full(epochs + 1, np.nan) for name in names}


def train_metric_network(train: xr.Dataset, config: nw.MLP | None = None, epochs: int = 10, batch: int = 128,
                         lr: float = 1e-2, *, test: xr.Dataset | None = None, seed: int = 0, loss: str = "sigma",
                         probe: xr.Dataset | None = None, checkpoints: Sequence[int] | None = None,
                         optimizer: str = "adam", lr_decay: float = 1.0, params: nw.Params | Array | None = None,
                         target: Array | None = None, features: Callable[[Array], Array] = patch_features,
                         block_rows: int | None = None, probe_dtype: str = "float64",
                         progress: bool = False) -> xr.Dataset:
    r"""Train the centred one-chart metric network on mini-batches; measure its empirical metric-NTK.

    One epoch: the train points in the mini-batches of :func:`mfarray.optim.epoch_batches`
    (``seed``, epoch), one optimiser step per batch on ``L_b`` (:func:`batch_gradient`), learning
    rate ``lr * lr_decay**(epoch - 1)``; then sigma (B.11) on the whole train and test sets.  At
    the ``checkpoints`` epochs (with a ``probe`` set) the kernel statistics of the module
    docstring are recorded.

    Parameters
    ----------
    train, test, probe : point sets of one surface in one shared chart (``mfarray.select_chart`` /
        ``mfarray.sample_chart``), lazy or computed; test and probe optional.
    config : mfarray.networks.MLP with d_in = the feature dimension and c = k*k outputs
        (default :func:`metric_mlp`: 3 hidden ReLU layers of 64).
    epochs, batch : passes over the train set, mini-batch size (the last batch may be smaller).
    lr : learning rate (Adam's step scale, or the SGD step); NTK parameterisation.  Measured
        (3 x 64 ReLU, Adam, batch 64, lr 1e-2 x 0.9^(epoch - 1)): test sigma 0.37 -> 0.13 in 20
        epochs over 2000 points.
    seed : initial parameters (:func:`mfarray.networks.init`) and mini-batch order.
    loss : "sigma" (w |1 - eta|, B.11), "sigma_squared" (w (1 - eta)^2, B.14) or "mse" (needs
        ``target``); kappa fixed at its value for g_FS on the train set.  The probe's targets y
        are the gradients of this loss (of the sigma loss with "mse": the target is train-only).
    checkpoints : epochs (0..epochs) at which to measure the probe kernel (default
        :func:`default_checkpoints`), integers (NumPy too); epoch 0 (Theta_0, the reference) is
        always measured.  Cost of a 1000-point probe (3 x 64 ReLU, 2-core machine shared at load 4.5-5.8, the
        paths side by side in one run): 0.60-0.69 epochs of 10^5 train points at batch 128 per
        checkpoint in float64 (0.34-0.41 with ``probe_dtype="float32"``; the previous row
        blocks 1.2-1.3); the default checkpoints add 22-26 % to 20 epochs (float32 12-14 %) and,
        projected, 10-12 % to 50 (float32 5-7 %): under 10 % from about 55 epochs on (float32
        about 30).  Choose fewer for less.
    optimizer : "adam" (b1 0.9, b2 0.999, eps 1e-8; :func:`mfarray.optim.adam`) or "sgd"
        (theta -= lr grad L_b).
    lr_decay : per-epoch factor of the learning rate, in (0, 1].
    params : initial parameters (tree or flat), default ``networks.init(config, seed)``.
    target : (N, k, k) target metrics at the train points for loss="mse".
    features : z -> network inputs (default patch_features, as network_flow).
    block_rows : probe rows per kernel block (default :data:`mfarray.kernels.empirical.ROWS`).
    probe_dtype : "float64" (default) or "float32": Theta_0's stored blocks and the probe kernels'
        layer products (:class:`~mfarray.experiments.probe_kernel.ProbeKernel`; sums in float64).
        float32 makes a checkpoint 1.6-1.9x faster; measured against float64 it moved the kernel
        distance by at most 3e-7 relative (widths 64-4096, distances 2e-6 to 0.13).
    progress : a line per epoch on stderr.

    Returns
    -------
    xarray.Dataset with coordinate ``epoch`` (0..epochs) and the variables of
    :data:`HISTORY_DOCS`; with a probe, coordinate ``checkpoint`` (epochs) and those of
    :data:`KERNEL_DOCS`; ``params`` and ``params_initial`` (param).  Attributes: the network and
    training settings (JSON ``network``), kappa, point counts, the ``chart``,
    ``train_z_sha256`` (:func:`points_fingerprint` of the train points: what
    :func:`~mfarray.experiments.after_kernel.after_kernel_experiment` checks a result against),
    ``train_seconds``, ``kernel_seconds`` and ``kernel_overhead`` = kernel_seconds / train_seconds.
    """
    epochs = _check_int("epochs", epochs, 1)
    batch = _check_int("batch", batch, 1)
    seed = _check_int("seed", seed, 0)
    lr = _check_positive("lr", lr)
    lr_decay = _check_positive("lr_decay", lr_decay)
    if lr_decay > 1:
        raise ValueError(f"lr_decay must lie in (0, 1] (the per-epoch factor of lr); got {lr_decay}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
    if probe_dtype not in PROBE_DTYPES:
        raise ValueError(f"probe_dtype must be one of {PROBE_DTYPES}; got {probe_dtype!r}")
    loss_fn = resolve_loss(loss)
    tr_sites, te_sites = materialize(train, test)
    config = metric_mlp(d_in=network_inputs(backend.to_numpy(tr_sites.z[:1]), features).shape[1],
                        k=tr_sites.k) if config is None else config
    if not isinstance(config, nw.MLP):
        raise TypeError(f"config must be a mfarray.networks.MLP (see metric_mlp); got {type(config).__name__}")
    if params is None:
        params0 = nw.init(config, seed)
    else:
        params0 = nw.unflatten(config, np.asarray(params, dtype=np.float64)) if hasattr(params, "ndim") else params
        nw._check_params(config, params0)
        params0 = tuple((np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)) for W, b in params0)
    tr = _Points(tr_sites, config, params0, features, "train")
    te = None if te_sites is None else _Points(te_sites, config, params0, features, "test")
    pr = None
    if probe is not None:
        require_same_surface(probe, train, "probe")
        pr_sites = materialize(probe)[0]
        if pr_sites.chart != tr_sites.chart:
            raise ValueError(f"probe points are in chart {pr_sites.chart}, the train points in {tr_sites.chart}: "
                             f"select the probe with mfarray.select_chart(probe, like=train)")
        pr = _Points(pr_sites, config, params0, features, "probe")
    kappa = losses.loss_data(tr.omega2, tr.weight, tr.g_fs).kappa
    targets = None
    if loss == "mse":
        if target is None:
            raise ValueError("loss='mse' needs target metrics at the train points: pass target=(N, k, k)")
        targets = np.asarray(target, dtype=np.complex128)
        if targets.shape != tr.g_fs.shape:
            raise ValueError(f"target must have shape {tr.g_fs.shape}; got {targets.shape}")
    marks = _checkpoint_marks(checkpoints, epochs)

    per_epoch = optim.n_batches(tr.n, batch)
    schedule = lr if lr_decay == 1.0 else (lambda step: lr * lr_decay ** (step // per_epoch))
    init_fn, update = (optim.adam if optimizer == "adam" else optim.sgd)(schedule)
    state = init_fn(nw.flatten(params0))
    theta = nw.flatten(params0).copy()
    hist = _history(epochs, te is not None)
    kstats = {name: np.full(len(marks), np.nan) for name in KERNEL_DOCS} if pr is not None else None
    probe_kernel = None

    def record_eval(epoch):
        t0 = time.perf_counter()
        p = nw.unflatten(config, theta)
        hist["sigma_train"][epoch], hist["invalid_train"][epoch] = _sigma(config, p, tr)
        if te is not None:
            hist["sigma_test"][epoch], hist["invalid_test"][epoch] = _sigma(config, p, te)
        hist["eval_time"][epoch] = time.perf_counter() - t0

    def record_kernel(epoch):
        nonlocal probe_kernel
        if pr is None or epoch not in marks:
            return
        t0 = time.perf_counter()
        p = params0 if epoch == 0 else nw.unflatten(config, theta)
        if probe_kernel is None:
            probe_kernel = ProbeKernel(config, params0, pr.x, block_rows, dtype=probe_dtype)
        stats = probe_kernel.statistics(p, _probe_targets(config, p, pr, kappa, loss_fn))
        i = marks.index(epoch)
        for name, value in stats.items():
            kstats[name][i] = value
        kstats["kernel_time"][i] = time.perf_counter() - t0

    def value_and_grad(theta, idx):  # the batch's mean loss, gradient and skipped points
        data = losses.LossData(omega2=tr.omega2[idx], weight=tr.weight[idx], kappa=kappa,
                               target=None if targets is None else targets[idx])
        return batch_gradient(config, theta, tr.x[idx], tr.rows[:, idx], tr.f0[idx], data, loss_fn)

    record_eval(0)
    hist["time"][0] = 0.0
    record_kernel(0)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        with backend.one_blas_thread():  # small GEMMs: BLAS threads only add overhead
            theta, state, hist["loss"][epoch], hist["skipped"][epoch] = optim.run_epoch(
                theta, state, update, optim.epoch_batches(tr.n, batch, seed, epoch), value_and_grad)
        hist["time"][epoch] = time.perf_counter() - t0
        optim.require_finite_epoch("metric-network", epoch, hist["loss"][epoch], theta, lr)
        record_eval(epoch)
        record_kernel(epoch)
        if progress:
            line = (f"metric network epoch {epoch}/{epochs} loss {hist['loss'][epoch]:.4g} "
                    f"sigma_train {hist['sigma_train'][epoch]:.4g}")
            if te is not None:
                line += f" sigma_test {hist['sigma_test'][epoch]:.4g}"
            print(line + f" [{hist['time'][epoch]:.1f} s]", file=sys.stderr, flush=True)

    data_vars = {name: ("epoch", values) for name, values in hist.items()}
    data_vars["params"] = ("param", theta)
    data_vars["params_initial"] = ("param", nw.flatten(params0))
    coords = {"epoch": np.arange(epochs + 1)}
    if kstats is not None:
        data_vars.update({name: ("checkpoint", values) for name, values in kstats.items()})
        coords["checkpoint"] = np.asarray(marks)
    ds = xr.Dataset(data_vars, coords=coords)
    for name, text in {**HISTORY_DOCS, **KERNEL_DOCS}.items():
        if name in ds:
            ds[name].attrs["description"] = text
    ds["epoch"].attrs["description"] = "epochs done (0: g_FS, before any step)"
    if kstats is not None:
        ds["checkpoint"].attrs["description"] = "epochs at which the probe kernel was measured"
    train_seconds = float(np.nansum(hist["time"]))
    kernel_seconds = float(np.nansum(kstats["kernel_time"])) if kstats is not None else 0.0
    network = {"widths": list(config.widths), "activation": config.activation, "sigma_w": config.sigma_w,
               "sigma_b": config.sigma_b, "center": True,
               "features": getattr(features, "__qualname__", repr(features))}
    ds.attrs.update({
        "network": json.dumps(network), "widths": list(config.widths), "activation": config.activation,
        "sigma_w": config.sigma_w, "sigma_b": config.sigma_b, "batch": batch, "lr": lr, "lr_decay": lr_decay,
        "optimizer": optimizer, "loss": loss, "seed": seed, "kappa": kappa, "n_train": tr.n,
        "n_test": 0 if te is None else te.n, "n_probe": 0 if pr is None else pr.n,
        "chart": [int(c) for c in tr.chart], "train_z_sha256": points_fingerprint(tr_sites),
        "probe_dtype": probe_dtype, "train_seconds": train_seconds,
        "kernel_seconds": kernel_seconds,
        "kernel_overhead": kernel_seconds / train_seconds if train_seconds > 0 else math.nan,
        "alignment_definition": "y^T Theta y / (|Theta|_F |y|^2), y = dl/dg at the probe points (real basis)",
        **provenance(format_call("mfarray.experiments.feature_learning.train_metric_network", train, epochs=epochs,
                                 batch=batch, lr=lr, test=test, seed=seed, loss=loss, probe=probe,
                                 optimizer=optimizer, lr_decay=lr_decay))})
    return ds


def network_params(result: xr.Dataset) -> tuple[nw.MLP, nw.Params, nw.Params]:
    """(config, final parameters, initial parameters) of a :func:`train_metric_network` result."""
    if not isinstance(result, xr.Dataset) or "params" not in result or "network" not in result.attrs:
        raise ValueError("result must be the Dataset returned by train_metric_network (with 'params' and a "
                         "'network' attribute)")
    net = json.loads(result.attrs["network"])
    config = nw.MLP(tuple(net["widths"]), net["activation"], net["sigma_w"], net["sigma_b"])
    return (config, nw.unflatten(config, np.asarray(result["params"].values, dtype=np.float64)),
            nw.unflatten(config, np.asarray(result["params_initial"].values, dtype=np.float64)))


# ----------------------------------------------------------------------------- width scan
def fit_width_rate(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit ``log value = intercept + slope log width``: (slope, intercept, slope
    standard error; NaN with two widths).  The widths must be distinct (one value per width, as
    :func:`kernel_evolution` and :class:`~mfarray.experiments.comparison.ComparisonSpec` hold)."""
    w, v = np.asarray(widths, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if w.ndim != 1 or w.shape != v.shape or w.size < 2:
        raise ValueError(f"widths and values must be two equally long sequences of >= 2 numbers; got "
                         f"shapes {w.shape} and {v.shape}")
    if np.unique(w).size != w.size:
        raise ValueError(f"widths must be distinct (one value per width); got {w.tolist()}")
    for name, a in (("widths", w), ("values", v)):
        if not (np.all(np.isfinite(a)) and np.all(a > 0)):
            raise ValueError(f"{name} must be positive and finite to be fitted on a log scale; got {a.tolist()}")
    w, v = np.log(w), np.log(v)
    A = np.stack([np.ones_like(w), w], axis=1)
    coef, *_ = np.linalg.lstsq(A, v, rcond=None)
    se = math.nan
    if w.size > 2:
        resid = v - A @ coef
        s2 = float(resid @ resid) / (w.size - 2)
        se = math.sqrt(s2 * np.linalg.inv(A.T @ A)[1, 1])
    return float(coef[1]), float(coef[0]), se


def kernel_evolution(train: xr.Dataset, probe: xr.Dataset, widths: Sequence[int] = (64, 256, 1024, 4096), *,
                     depth: int = 1, activation: str = "relu", epochs: int = 10, batch: int = 128,
                     lr: float = 0.05, optimizer: str = "sgd", loss: str = "sigma", test: xr.Dataset | None = None,
                     sigma_w: float = 1.0, sigma_b: float = 0.0, seed: int = 0,
                     checkpoints: Sequence[int] | None = None,
                     features: Callable[[Array], Array] = patch_features, progress: bool = False) -> xr.Dataset:
    """The kernel distance after training per width (lazy regime), with the fitted rate.

    Each width trains ``metric_mlp((width,) * depth, activation)`` from its own draw (``seed``)
    with the same optimiser, learning rate and mini-batches (:func:`train_metric_network`), and
    measures the probe kernel.  Default: one hidden ReLU layer (the architecture of the paper's
    ReLU NTK, Table 1) and SGD (see the module docstring for why not Adam).

    ``widths``: two or more distinct integers >= 1.  ``checkpoints``: the epochs (0..epochs) of
    the curves (default :func:`default_checkpoints`); epoch 0 and the last epoch ``epochs`` are
    always added, so ``kernel_distance``, ``kernel_change`` and the alignments (and the fitted
    rates) are those after the last epoch, beside that epoch's sigma.  Every argument is checked
    before the first width trains.

    Returns
    -------
    xarray.Dataset with coordinate ``width`` (and ``checkpoint``) and the variables of
    :data:`EVOLUTION_DOCS`; attributes ``rate``, ``rate_se``, ``rate_intercept`` (least-squares
    fit ``log kernel_distance = rate_intercept + rate log width``), ``change_rate``,
    ``change_rate_se``, ``change_rate_intercept`` (the same for kernel_change; lazy-regime theory:
    at most -1/2, leading term -1, see the module docstring), and the settings.
    """
    widths = [_check_int("widths entry", w, 1) for w in widths]
    if len(widths) < 2:
        raise ValueError(f"widths must hold at least two widths to fit a rate; got {widths}")
    if len(set(widths)) != len(widths):
        raise ValueError(f"widths must be distinct (one run, one kernel distance per width); got {widths}")
    depth = _check_int("depth", depth, 1)
    epochs, batch, seed = _check_int("epochs", epochs, 1), _check_int("batch", batch, 1), _check_int("seed", seed, 0)
    lr = _check_positive("lr", lr)
    checkpoints = _checkpoint_marks(checkpoints, epochs, last=True)  # the fitted values are the last epoch's
    train, probe = train.compute(), probe.compute()  # once for every width
    test = None if test is None else test.compute()
    require_same_surface(probe, train, "probe")
    x_probe = network_inputs(backend.to_numpy(materialize(probe)[0].z), features)
    k = int(train["g_fs"].shape[-1])
    rows = {name: [] for name in EVOLUTION_DOCS}
    marks = None
    for width in widths:
        t0 = time.perf_counter()
        config = metric_mlp((width,) * depth, activation, d_in=x_probe.shape[1], k=k, sigma_w=sigma_w,
                            sigma_b=sigma_b)
        r = train_metric_network(train, config, epochs, batch, lr, test=test, seed=seed, loss=loss, probe=probe,
                                 checkpoints=checkpoints, optimizer=optimizer, features=features)
        marks = r.checkpoint.values
        for name in ("kernel_distance", "kernel_change", "alignment", "alignment_initial_kernel"):
            rows[name].append(float(r[name].values[-1]))
        rows["kernel_distance_curve"].append(r.kernel_distance.values)
        rows["kernel_change_curve"].append(r.kernel_change.values)
        rows["sigma_train"].append(float(r.sigma_train.values[-1]))
        rows["sigma_test"].append(float(r.sigma_test.values[-1]) if "sigma_test" in r else math.nan)
        _, _, p0 = network_params(r)
        rows["analytic_distance"].append(analytic_distance(config, p0, x_probe))
        rows["seconds"].append(time.perf_counter() - t0)
        if progress:
            print(f"kernel_evolution: width {width}: kernel distance {rows['kernel_distance'][-1]:.3g}, "
                  f"change {rows['kernel_change'][-1]:.3g} ({rows['seconds'][-1]:.1f} s)", file=sys.stderr,
                  flush=True)
    curves = ("kernel_distance_curve", "kernel_change_curve")
    data = {name: ("width", np.asarray(v)) for name, v in rows.items() if name not in curves}
    data.update({name: (("width", "checkpoint"), np.stack(rows[name])) for name in curves})
    ds = xr.Dataset(data, coords={"width": np.asarray(widths), "checkpoint": marks})
    for name, text in EVOLUTION_DOCS.items():
        ds[name].attrs["description"] = text
    ds["width"].attrs["description"] = "hidden width of every hidden layer"
    ds["checkpoint"].attrs["description"] = "epochs at which the probe kernel was measured"
    slope, intercept, se = fit_width_rate(widths, ds.kernel_distance.values)
    cslope, cintercept, cse = fit_width_rate(widths, ds.kernel_change.values)
    ds.attrs.update({
        "rate": slope, "rate_se": se, "rate_intercept": intercept, "change_rate": cslope, "change_rate_se": cse,
        "change_rate_intercept": cintercept,
        "theory": "kernel_change <= O(width^-1/2) (Lee et al. 2019), leading term O(width^-1) (Dyer & Gur-Ari "
                  "2019); kernel_distance = 1 - cos is quadratic in the change: twice its rate",
        "depth": depth, "activation": activation, "epochs": epochs, "batch": batch, "lr": lr,
        "optimizer": optimizer, "loss": loss, "sigma_w": float(sigma_w), "sigma_b": float(sigma_b), "seed": seed,
        **provenance(format_call("mfarray.experiments.feature_learning.kernel_evolution", train, probe,
                                 widths=tuple(widths), depth=depth, activation=activation, epochs=epochs,
                                 batch=batch, lr=lr, optimizer=optimizer, loss=loss, seed=seed))})
    return ds
