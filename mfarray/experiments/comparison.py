r"""Every model on one train/test split: g_FS, the paper's kernels, the empirical NTKs, the
one-chart network under two optimisers, the phi-network and the phi-kernel (issue 13).

The paper compares frozen kernels (§3.2) with finite networks (§4) on different footing; this
module scores them all on ONE split by sigma (B.11), with the gains

.. math::

    \mathrm{gain} = \sigma(g_{FS}) / \sigma(g_{model})

on the row's own train and test points.  Rows of :func:`model_comparison` (coordinate
``model``):

* ``fs``                 g_FS itself (gain 1), on the one-chart points;
* preset names           the paper's kernels (Table 1 and the cosine-net NTK,
  :data:`mfarray.experiments.presets.PRESETS`, or tuned presets): :func:`mfarray.flows.kernel_flow`
  (2.12) from g_FS with the preset's kernel, lr and loss, ``flow_steps`` backtracking steps;
* ``analytic_ntk``       the infinite-width NTK (2.9) of the network (ReLU only:
  :func:`mfarray.kernels.relu.relu_ntk` with its depth, sigma_w, sigma_b), the same flow;
* per hidden width w of the one-chart metric network (``depth`` x w, ReLU, centred at g_FS;
  :mod:`mfarray.experiments.feature_learning`):

  - ``network_adam_w``      Adam on mini-batches of the sigma loss
    (:func:`~mfarray.experiments.feature_learning.train_metric_network`), the paper's §4 network;
  - ``network_flow_w``      the SAME network from the SAME theta_0, trained by the evolving-kernel
    flow (2.8) :func:`mfarray.flows.network_flow`: full batch, the loss, lr and backtracking
    step control of the kernel flows (one integrator);
  - ``initial_ntk_w``       the frozen empirical metric-NTK at theta_0 (2.11, the linearised network);
  - ``after_kernel_w``      the frozen empirical metric-NTK of the Adam-trained network;
  - ``after_kernel_flow_w`` the frozen empirical metric-NTK of the flow-trained network;

  the three frozen kernels flow exactly like the paper's kernels (kernel_flow with the operator
  pair of :func:`mfarray.experiments.after_kernel.network_kernel_operators`, as
  :func:`~mfarray.experiments.after_kernel.after_kernel_experiment` does), so ``network_flow_w``
  against ``after_kernel_flow_w`` is "network vs its after-kernel" under one optimiser, and
  ``network_adam_w`` against ``after_kernel_w`` the same under the network's own optimiser;
* ``fs_all_charts``      g_FS on the all-chart points (only when they are given);
* ``phi_network``        the chart-free phi-network g = g_FS + i dd-bar phi (B.6), Adam
  (:func:`mfarray.kahler.training.train_phi_network`);
* ``phi_after_kernel``   the phi-network's empirical metric-NTK at the Adam-trained parameters,
  frozen (its after-kernel), and
* ``phi_initial_ntk``    the same at theta_0: :func:`mfarray.kahler_flow` from g_FS with
  :class:`mfarray.kahler.TangentPotential` (the network linearised there), ``kahler_steps``
  normalised backtracking steps;
* ``phi_kernel_k<k>``    the phi-NTK of degree-k sections, frozen (:func:`mfarray.kahler_flow`
  with an int model: normalised backtracking steps of (B.14)).

The chart-free models (phi-network, phi-kernel) train and test on the all-chart points when
``train_all`` / ``test_all`` are given (each point in its own chart; their gains are against
``fs_all_charts``), else on the one-chart split.  Every row is also scored on the one-chart test
set (``sigma_test_one_chart``), so one column compares all models on the same points.

Cost: the paper kernels' operators are dense (memory-bound: 1.2 GB read per step at 10^4 + 5000
points, 0.7 s); the matrix-free empirical NTK costs O(n P) per product (a reverse and a forward pass),
one train and one test product per flow step; network_flow tries each step size with a forward pass
over train and test points.  Measured on 5000 + 2500 points, 300 steps, 2-core machine at load 4-5
(benchmarks/bench_model_comparison.py): empirical-NTK flows 21-24 s for 3 x 64 (P = 9609), 200-250 s
for 3 x 256 (P = 136,713); network_flow 85 s and 310 s; paper-kernel flows 13-72 s; Adam 20 epochs
6-11 s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .. import linalg
from .. import networks as nw
from ..flows import FlowError, kahler_flow, kernel_flow, network_flow, predict
from ..flows.evolving import network_inputs
from ..flows.integrate import check_steps
from ..geometry import measures
from ..kahler.network import PhiNetwork
from ..kahler.network import init as phi_init
from ..kahler.potentials import TangentPotential
from ..kahler.training import phi_network_metric, train_phi_network
from ..kernels.checks import Integer, Real
from ..kernels.relu import relu_ntk
from ..pointset.charts import surface_of
from ..pointset.provenance import format_call, provenance
from .after_kernel import network_kernel_operators
from .feature_learning import metric_mlp, network_params, train_metric_network
from .presets import PRESETS, Preset

__all__ = ["COMPARISON_DOCS", "FAMILIES", "ComparisonSpec", "model_comparison"]

FAMILIES = ("fs", "paper_kernels", "analytic_ntk", "network_adam", "network_flow", "initial_ntk", "after_kernel",
            "after_kernel_flow", "phi_network", "phi_initial_ntk", "phi_after_kernel", "phi_kernel")
"""The model families a :class:`ComparisonSpec` can ``skip`` (module docstring)."""

COMPARISON_DOCS = {
    "sigma_train": "sigma (B.11) of the model's metrics on its train points at the end",
    "sigma_test": "sigma (B.11) of the model's metrics on its test points (kernels: predicted, 2.12)",
    "gain_train": "sigma_train of g_FS on the same train points / sigma_train",
    "gain_test": "sigma_test of g_FS on the same test points / sigma_test: how the model generalises",
    "sigma_test_one_chart": "sigma (B.11) of the model's metrics on the one-chart test points (every row on the "
                            "same points; equal to sigma_test for the one-chart models)",
    "gain_test_one_chart": "sigma of g_FS on the one-chart test points / sigma_test_one_chart",
    "seconds": "wall time of the model's training or flow, with its operators and per-step evaluations",
    "parameters": "trained real numbers: dual coefficients n_train k^2 for kernel flows, weights for networks, "
                  "n_s^2 for the phi-kernel, the phi-network's P for its frozen kernels (the linearised network's "
                  "delta; 0 for g_FS)",
    "steps": "optimiser steps taken (flow steps, or Adam mini-batch steps)",
    "n_train": "train points of the model",
    "n_test": "test points of the model (sigma_test)",
    "width": "hidden width of the one-chart network the row belongs to (NaN: none)",
    "family": "model family (FAMILIES)",
    "points": "where the model trains and tests: 'one chart' or 'all charts' (each point in its own chart)",
    "optimizer": "how it is trained",
    "description": "what the row is",
}


def _int(name, value, lo):
    """``value`` as a Python int >= lo (NumPy integers too); TypeError / ValueError naming the field."""
    return Integer(low=lo).check(value, f"ComparisonSpec.{name}")


def _pos(name, value, high=None):
    """``value`` as a positive finite Python float (NumPy reals too), at most ``high`` where given."""
    doc = "the per-epoch factor of the learning rate" if high is not None else ""
    return Real(low=0, high=high, low_open=True, doc=doc).check(value, f"ComparisonSpec.{name}")


@dataclasses.dataclass(frozen=True)
class ComparisonSpec:
    """Settings of :func:`model_comparison` (defaults: the measured settings of
    docs/feature-learning.md and docs/kahler-results.md; seconds for a few hundred points).

    Kernel flows (paper kernels, analytic and empirical NTKs) and network_flow: ``flow_steps``
    backtracking steps of ``flow_loss`` from ``flow_lr`` (paper kernels: their preset's lr and
    loss).  One-chart network: ``depth`` hidden layers of each width in ``widths``,
    ``activation``, Adam ``epochs`` x mini-batches of ``batch``, lr ``lr * lr_decay**(epoch - 1)``
    on ``network_loss``, initial parameters and batches from ``seed``.  phi-network:
    ``phi_widths`` (gelu, sections of degree ``phi_k``), Adam ``phi_epochs``, ``phi_batch``,
    ``phi_lr``, ``phi_lr_decay``.  phi-kernel: each degree in ``kahler_degrees``,
    ``kahler_steps`` steps.  ``method``: empirical-NTK operators ("matvec" or "dense").
    ``skip``: families of :data:`FAMILIES` not to run.
    """

    flow_steps: int = 100
    flow_lr: float = 1.0
    flow_loss: str = "sigma_squared"
    depth: int = 3
    widths: tuple = (64,)
    activation: str = "relu"
    epochs: int = 20
    batch: int = 64
    lr: float = 1e-2
    lr_decay: float = 0.9
    network_loss: str = "sigma"
    phi_widths: tuple = (64, 64, 64)
    phi_k: int = 1
    phi_epochs: int = 20
    phi_batch: int = 128
    phi_lr: float = 3e-2
    phi_lr_decay: float = 0.85
    kahler_degrees: tuple = (3,)
    kahler_steps: int = 30
    method: str = "matvec"
    seed: int = 0
    skip: tuple = ()

    def __post_init__(self) -> None:
        for name in ("widths", "phi_widths", "kahler_degrees", "skip"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
                raise TypeError(f"ComparisonSpec.{name} must be a tuple; got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name, lo in (("flow_steps", 0), ("depth", 1), ("epochs", 1), ("batch", 1), ("phi_k", 1),
                         ("phi_epochs", 1), ("phi_batch", 1), ("kahler_steps", 0), ("seed", 0)):
            object.__setattr__(self, name, _int(name, getattr(self, name), lo))
        object.__setattr__(self, "flow_steps", check_steps(self.flow_steps, "ComparisonSpec.flow_steps"))
        object.__setattr__(self, "kahler_steps", check_steps(self.kahler_steps, "ComparisonSpec.kahler_steps"))
        for name in ("flow_lr", "lr", "phi_lr"):
            object.__setattr__(self, name, _pos(name, getattr(self, name)))
        for name in ("lr_decay", "phi_lr_decay"):  # what train_metric_network / train_phi_network accept
            object.__setattr__(self, name, _pos(name, getattr(self, name), high=1.0))
        if not self.widths:
            raise ValueError("ComparisonSpec.widths must hold at least one hidden width, e.g. (64,)")
        if not self.phi_widths:  # the phi-network is built whatever skip says
            raise ValueError("ComparisonSpec.phi_widths must hold at least one hidden width, e.g. (64, 64, 64)")
        for name in ("widths", "phi_widths", "kahler_degrees"):
            object.__setattr__(self, name, tuple(_int(f"{name} entry", v, 1) for v in getattr(self, name)))
        if len(set(self.widths)) != len(self.widths):
            raise ValueError(f"ComparisonSpec.widths must be distinct (one row set per width); got {self.widths}")
        unknown = sorted(set(self.skip) - set(FAMILIES))
        if unknown:
            raise ValueError(f"ComparisonSpec.skip must name families among {FAMILIES}; got {unknown}")
        if set(FAMILIES) <= set(self.skip):
            raise ValueError("ComparisonSpec.skip leaves no model to run: skip fewer families")
        if self.flow_loss not in ("sigma", "sigma_dynamic", "sigma_squared"):
            raise ValueError(f"ComparisonSpec.flow_loss must be 'sigma', 'sigma_dynamic' or 'sigma_squared' (the "
                             f"flows have no target metrics); got {self.flow_loss!r}")
        if self.network_loss not in ("sigma", "sigma_squared"):
            raise ValueError(f"ComparisonSpec.network_loss must be 'sigma' or 'sigma_squared' (the losses both "
                             f"networks train on); got {self.network_loss!r}")
        if self.activation not in nw.ACTIVATIONS:
            raise ValueError(f"ComparisonSpec.activation must be one of {nw.ACTIVATIONS}; got {self.activation!r}")
        if self.method not in ("matvec", "dense"):
            raise ValueError(f"ComparisonSpec.method must be 'matvec' or 'dense'; got {self.method!r}")
        try:  # the phi-network's own checks, before model_comparison trains anything
            PhiNetwork(self.phi_widths, "gelu", k=self.phi_k, seed=self.seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"ComparisonSpec: phi_widths / phi_k / seed: {exc}") from None

    def runs(self, family: str) -> bool:
        return family not in self.skip

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- scoring
def _sigma(ds: xr.Dataset, g: Any) -> float:
    """sigma (B.11) of metrics g (N, k, k) at the points of ds (every metric enters with its det)."""
    det = linalg.hermitian_det(np.asarray(g))
    return float(measures.sigma(det, np.asarray(ds.omega2.values), np.asarray(ds.weight.values)))


class _Table:
    """Rows collected in order; :meth:`dataset` turns them into the result."""

    def __init__(self, progress: bool):
        self.rows: dict[str, dict] = {}
        self.progress = progress

    def add(self, name: str, **row: Any) -> None:
        self.rows[name] = row
        if self.progress:
            print(f"model_comparison: {name}: sigma_train {row['sigma_train']:.4g}, sigma_test "
                  f"{row['sigma_test']:.4g} ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)


def _flow_sigmas(result: xr.Dataset) -> tuple[float, float, int]:
    """(final train sigma, final test sigma, steps done) of a flow result."""
    steps = int(result.attrs.get("steps_done", result.sizes["step"] - 1))
    return float(result.sigma_train.values[-1]), float(result.sigma_test.values[-1]), steps


def _run_flow(fn, *args, **kwargs) -> tuple[xr.Dataset, float]:
    """(result, seconds) of a flow; a flow stopped by its validity guard keeps the steps done."""
    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except FlowError as err:
        result = err.result
    return result, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the comparison
def model_comparison(train: xr.Dataset, test: xr.Dataset, *, train_all: xr.Dataset | None = None,
                     test_all: xr.Dataset | None = None, spec: ComparisonSpec | None = None,
                     presets: Mapping[str, Preset] | None = None, progress: bool = False) -> xr.Dataset:
    """Train and score every model of the module docstring on one split.

    Parameters
    ----------
    train, test : one-chart point sets of one Calabi-Yau hypersurface in the same chart
        (``mfarray.sample_chart``, or ``mfarray.select_chart(..., like=train)``), lazy or computed.
    train_all, test_all : all-chart point sets of the same surface (``mfarray.sample_points``) for
        the chart-free models, given together; default: the one-chart split.
    spec : :class:`ComparisonSpec` (default ``ComparisonSpec()``).
    presets : the paper's kernels, name -> :class:`~mfarray.experiments.presets.Preset` (default
        the four of :data:`~mfarray.experiments.presets.PRESETS`); each flows ``spec.flow_steps``
        steps with its own lr and loss on these train points (its ``n_train`` is not used).
    progress : a line per model on stderr.

    Returns
    -------
    xarray.Dataset with coordinate ``model`` (rows in the module docstring's order) and the
    variables of :data:`COMPARISON_DOCS`; attributes: the spec and presets (JSON), point counts,
    the chart and provenance.
    """
    spec = ComparisonSpec() if spec is None else spec
    if not isinstance(spec, ComparisonSpec):
        raise TypeError(f"spec must be a ComparisonSpec; got {type(spec).__name__}")
    presets = {name: PRESETS[name] for name in ("relu", "gaussian", "delta", "cosine")} if presets is None \
        else dict(presets)
    for name, p in presets.items():
        if not isinstance(p, Preset):
            raise TypeError(f"presets[{name!r}] must be a Preset (mfarray.experiments.presets); got {type(p).__name__}")
    if (train_all is None) != (test_all is None):
        raise ValueError("train_all and test_all go together: pass both all-chart sets, or neither (the chart-free "
                         "models then use the one-chart split)")
    for name, ds in (("train", train), ("test", test), ("train_all", train_all), ("test_all", test_all)):
        if ds is not None and not isinstance(ds, xr.Dataset):
            raise TypeError(f"{name} must be a point set (xarray.Dataset from mfarray.sample_points / sample_chart); "
                            f"got {type(ds).__name__}")
    train, test = train.compute(), test.compute()
    all_charts = train_all is not None
    train_k, test_k = (train_all.compute(), test_all.compute()) if all_charts else (train, test)
    k = int(train["g_fs"].shape[-1])
    n, n_k = train.sizes["point"], train_k.sizes["point"]
    table = _Table(progress)
    one, every = "one chart", ("all charts" if all_charts else "one chart")
    fs = {"train": _sigma(train, train.g_fs.values), "test": _sigma(test, test.g_fs.values)}
    fs_k = {"train": _sigma(train_k, train_k.g_fs.values), "test": _sigma(test_k, test_k.g_fs.values)} \
        if all_charts else fs

    def one_chart_row(name, family, sig_train, sig_test, seconds, parameters, steps, optimizer, description,
                      width=math.nan):
        table.add(name, family=family, sigma_train=sig_train, sigma_test=sig_test, sigma_test_one_chart=sig_test,
                  seconds=seconds, parameters=parameters, steps=steps, n_train=n, n_test=test.sizes["point"],
                  width=width, points=one, optimizer=optimizer, description=description)

    backtracking = "full-batch GD, backtracking from lr {lr:.3g}, " + spec.flow_loss
    if spec.runs("fs"):
        one_chart_row("fs", "fs", fs["train"], fs["test"], 0.0, 0, 0, "none", "the Fubini-Study metric g_FS")

    # the paper's kernels: kernel_flow (2.12) with the preset's kernel, lr and loss
    if spec.runs("paper_kernels"):
        for name, p in presets.items():
            r, seconds = _run_flow(kernel_flow, train, p.spec(), steps=spec.flow_steps, lr=p.lr, loss=p.loss,
                                   test=test)
            s_tr, s_te, steps = _flow_sigmas(r)
            hyper = ", ".join(f"{a}={v}" for a, v in p.hyper.items()) or "no hyper-parameters"
            one_chart_row(name, "paper_kernels", s_tr, s_te, seconds, n * k * k, steps,
                          f"full-batch GD, backtracking from lr {p.lr:.3g}, {p.loss}",
                          f"frozen kernel {p.kernel} ({hyper}; {p.source or 'preset'})")

    # the infinite-width NTK of the network (2.9): the same for every width
    d_in = int(network_inputs(train.isel(point=slice(0, 1))).shape[1])
    if spec.activation == "relu" and spec.runs("analytic_ntk"):
        config = metric_mlp((spec.widths[0],) * spec.depth, spec.activation, d_in=d_in, k=k)
        kernel = functools.partial(relu_ntk, depth=config.depth, sigma_w=config.sigma_w, sigma_b=config.sigma_b)
        r, seconds = _run_flow(kernel_flow, train, kernel, steps=spec.flow_steps, lr=spec.flow_lr,
                               loss=spec.flow_loss, test=test)
        s_tr, s_te, steps = _flow_sigmas(r)
        one_chart_row("analytic_ntk", "analytic_ntk", s_tr, s_te, seconds, n * k * k, steps,
                      backtracking.format(lr=spec.flow_lr),
                      f"infinite-width NTK of the {spec.depth}-hidden-layer ReLU network (2.9; relu_ntk, "
                      f"sigma_w {config.sigma_w}, sigma_b {config.sigma_b})")

    # the one-chart network per width: Adam, the evolving flow, and their frozen kernels
    for width in spec.widths:
        config = metric_mlp((width,) * spec.depth, spec.activation, d_in=d_in, k=k)
        P = nw.num_params(config)
        arch = f"{spec.depth} x {width} {spec.activation}"
        params0 = nw.init(config, spec.seed)  # one theta_0 for Adam, the flow and the initial NTK
        params_adam = None
        if spec.runs("network_adam") or spec.runs("after_kernel"):
            t0 = time.perf_counter()
            adam = train_metric_network(train, config, spec.epochs, spec.batch, spec.lr, test=test, seed=spec.seed,
                                        loss=spec.network_loss, optimizer="adam", lr_decay=spec.lr_decay,
                                        params=params0)
            adam_seconds = time.perf_counter() - t0
            _, params_adam, _ = network_params(adam)
            if spec.runs("network_adam"):
                one_chart_row(f"network_adam_{width}", "network_adam", float(adam.sigma_train.values[-1]),
                              float(adam.sigma_test.values[-1]), adam_seconds, P,
                              spec.epochs * -(-n // spec.batch),
                              f"Adam, {spec.epochs} epochs x batch {spec.batch}, lr {spec.lr:.3g} x "
                              f"{spec.lr_decay:.3g}^epoch, {spec.network_loss}",
                              f"the one-chart metric network {arch} (centred at g_FS), trained with Adam", width)
        theta_flow = None
        if spec.runs("network_flow") or spec.runs("after_kernel_flow"):
            r, seconds = _run_flow(network_flow, train, config, params0, steps=spec.flow_steps, lr=spec.flow_lr,
                                   loss=spec.flow_loss, test=test, center=True)
            theta_flow = nw.unflatten(config, np.asarray(r["theta"].values, dtype=np.float64))
            if spec.runs("network_flow"):
                s_tr, s_te, steps = _flow_sigmas(r)
                one_chart_row(f"network_flow_{width}", "network_flow", s_tr, s_te, seconds, P, steps,
                              backtracking.format(lr=spec.flow_lr),
                              "the same network from the same theta_0, trained by the evolving-kernel flow (2.8, "
                              "mfarray.network_flow): the kernel flows' integrator", width)
        frozen = (("initial_ntk", params0, "at initialisation (2.11: the linearised network)"),
                  ("after_kernel", params_adam, "of the Adam-trained network (the after-kernel)"),
                  ("after_kernel_flow", theta_flow, "of the flow-trained network (its after-kernel)"))
        for family, params, what in frozen:
            if not spec.runs(family) or params is None:
                continue
            t0 = time.perf_counter()
            pair = network_kernel_operators(config, params, train, test, method=spec.method)
            r, seconds = _run_flow(kernel_flow, train, pair, steps=spec.flow_steps, lr=spec.flow_lr,
                                   loss=spec.flow_loss, test=test)
            s_tr, s_te, steps = _flow_sigmas(r)
            one_chart_row(f"{family}_{width}", family, s_tr, s_te, time.perf_counter() - t0, n * k * k, steps,
                          backtracking.format(lr=spec.flow_lr),
                          f"frozen empirical metric-NTK of the {arch} network {what}", width)

    # chart-free models: every point in its own chart
    def chart_free_row(name, family, sig_train, sig_test, g_one_chart, seconds, parameters, steps, optimizer,
                       description):
        table.add(name, family=family, sigma_train=sig_train, sigma_test=sig_test,
                  sigma_test_one_chart=_sigma(test, g_one_chart) if all_charts else sig_test, seconds=seconds,
                  parameters=parameters, steps=steps, n_train=n_k, n_test=test_k.sizes["point"], width=math.nan,
                  points=every, optimizer=optimizer, description=description)

    if all_charts and spec.runs("fs"):
        chart_free_row("fs_all_charts", "fs", fs_k["train"], fs_k["test"], test.g_fs.values, 0.0, 0, 0, "none",
                       "g_FS on the all-chart points (the chart-free models' reference)")
    normalised = f"full-batch GD, normalised backtracking steps (kahler_flow), {spec.flow_loss}"

    def chart_free_flow(name, family, model, description):
        r, seconds = _run_flow(kahler_flow, train_k, model, steps=spec.kahler_steps, loss=spec.flow_loss, test=test_k)
        s_tr, s_te, steps = _flow_sigmas(r)
        g = predict(r, test, invalid="nan").values if all_charts else None
        chart_free_row(name, family, s_tr, s_te, g, seconds, int(r.sizes["param"]), steps, normalised, description)

    phi_config = PhiNetwork(tuple(spec.phi_widths), "gelu", k=spec.phi_k, seed=spec.seed)
    phi_arch = f"phi-network {' x '.join(map(str, spec.phi_widths))} gelu over degree-{spec.phi_k} sections"
    if spec.runs("phi_network") or spec.runs("phi_after_kernel"):
        t0 = time.perf_counter()
        r = train_phi_network(train_k, phi_config, spec.phi_epochs, spec.phi_batch, spec.phi_lr,
                              loss=spec.network_loss, test=test_k, seed=spec.seed, lr_decay=spec.phi_lr_decay)
        seconds = time.perf_counter() - t0
        phi_trained = np.asarray(r["params"].values, dtype=np.float64)
        if spec.runs("phi_network"):
            g = phi_network_metric(r, test) if all_charts else None
            chart_free_row("phi_network", "phi_network", float(r.sigma_train.values[-1]),
                           float(r.sigma_test.values[-1]), g, seconds, int(r.sizes["param"]),
                           spec.phi_epochs * -(-n_k // spec.phi_batch),
                           f"Adam, {spec.phi_epochs} epochs x batch {spec.phi_batch}, lr {spec.phi_lr:.3g} x "
                           f"{spec.phi_lr_decay:.3g}^epoch, {spec.network_loss}",
                           f"{phi_arch}: g = g_FS + i dd-bar phi (B.6), chart-free")
        if spec.runs("phi_after_kernel"):
            chart_free_flow("phi_after_kernel", "phi_after_kernel", TangentPotential(phi_config, phi_trained),
                            f"frozen empirical metric-NTK of the Adam-trained {phi_arch} (its after-kernel; the "
                            f"network linearised there, from g_FS)")
    if spec.runs("phi_initial_ntk"):
        chart_free_flow("phi_initial_ntk", "phi_initial_ntk",
                        TangentPotential(phi_config, phi_init(phi_config, surface_of(train_k))),
                        f"frozen empirical metric-NTK of the {phi_arch} at theta_0 (the linearised network)")
    if spec.runs("phi_kernel"):
        for degree in spec.kahler_degrees:
            chart_free_flow(f"phi_kernel_k{degree}", "phi_kernel", int(degree),
                            f"frozen phi-NTK of degree-{degree} sections (linear phi-model, L^2-orthonormal "
                            f"sections; mfarray.kahler_flow)")
    return _dataset(table, fs, fs_k, spec, presets, train, test, train_k if all_charts else None,
                    test_k if all_charts else None)


def _dataset(table, fs, fs_k, spec, presets, train, test, train_all, test_all) -> xr.Dataset:
    if not table.rows:
        raise ValueError(f"spec.skip = {spec.skip} and presets {sorted(presets)} leave no model to run: skip fewer "
                         f"families of {FAMILIES}")
    names = list(table.rows)
    fs_one_chart_test = _sigma(test, test.g_fs.values)

    def column(key):
        return [table.rows[m][key] for m in names]

    data = {key: ("model", np.asarray(column(key), dtype=np.float64))
            for key in ("sigma_train", "sigma_test", "sigma_test_one_chart", "seconds", "width")}
    data.update({key: ("model", np.asarray(column(key), dtype=np.int64))
                 for key in ("parameters", "steps", "n_train", "n_test")})
    data.update({key: ("model", np.asarray(column(key), dtype=str))
                 for key in ("family", "points", "optimizer", "description")})
    chart_free = np.array([table.rows[m]["points"] == "all charts" for m in names])
    ref_train = np.where(chart_free, fs_k["train"], fs["train"])
    ref_test = np.where(chart_free, fs_k["test"], fs["test"])
    data["gain_train"] = ("model", ref_train / data["sigma_train"][1])
    data["gain_test"] = ("model", ref_test / data["sigma_test"][1])
    data["gain_test_one_chart"] = ("model", fs_one_chart_test / data["sigma_test_one_chart"][1])
    order = ["sigma_train", "sigma_test", "gain_train", "gain_test", "sigma_test_one_chart", "gain_test_one_chart",
             "seconds", "parameters", "steps", "n_train", "n_test", "width", "family", "points", "optimizer",
             "description"]
    ds = xr.Dataset({key: data[key] for key in order}, coords={"model": names})
    for key, text in COMPARISON_DOCS.items():
        ds[key].attrs["description"] = text
    ds["model"].attrs["description"] = "the model of the row (mfarray.experiments.comparison module docstring)"
    ds.attrs.update({
        "spec": json.dumps(spec.to_json()), "presets": json.dumps({k: p.to_json() for k, p in presets.items()}),
        "n_train": int(train.sizes["point"]), "n_test": int(test.sizes["point"]),
        "n_train_all_charts": 0 if train_all is None else int(train_all.sizes["point"]),
        "n_test_all_charts": 0 if test_all is None else int(test_all.sizes["point"]),
        "chart": [int(c) for c in train.attrs.get("chart", [int(train.patch.values[0]), int(train.elim.values[0])])],
        "sigma_fs_train": fs["train"], "sigma_fs_test": fs["test"],
        "gain_definition": "sigma(g_FS) / sigma(model) on the same points, sigma of (B.11)",
        **provenance(format_call("mfarray.experiments.comparison.model_comparison", train, test,
                                 train_all=train_all, test_all=test_all, spec=spec))})
    return ds
