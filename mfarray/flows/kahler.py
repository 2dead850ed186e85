r"""Kähler-potential flows (Appendix B): gradient descent of a potential model
g_theta = g_FS + i dd-bar phi_theta (B.6) on a pointwise loss, through the one integrator.

The parameters theta are global, so every sampled point is used in its own chart (no rejection
sampling), the metric stays Kähler and in the class of g_FS, and test metrics -- in any chart
-- follow exactly from theta.  For the linear phi-model (:class:`mfarray.kahler.SectionPotential`)
the flow is the frozen-kernel flow of the phi-NTK Theta = J J^T (eq. 2.7 with global parameters):
g <- g - lr J J^T dl/dg.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from .. import backend, linalg, losses
from ..kahler import SectionPotential, balanced_metric
from ..kahler.velocities import velocity_named
from ..pointset.charts import surface_of
from .frozen import resolve_loss
from .integrate import FlowError, StepControl, check_steps, integrate
from .models import PotentialModel, VelocityModel
from .results import flow_result
from .sites import materialize

__all__ = ["kahler_flow", "potential_metrics", "potential_of"]

Array = Any


def potential_of(model: Any, surface: Any = None, sites: Any = None, train: Any = None, reference: Any = None) -> Any:
    """A potential spec from ``model``: an int k -- the linear phi-model of degree-k sections made
    orthonormal on the train points (``sites``; :meth:`SectionPotential.orthonormal`), from the
    ``reference`` metric ("fs", "balanced": Donaldson's balanced metric of degree k on the
    ``train`` set, or (k_ref, H_ref)) --, None (k = 3), or a spec with
    prepare/metric/ddbar/vjp/init/describe, used as it is."""
    if model is None:
        model = 3
    if isinstance(model, (int, np.integer)) and not isinstance(model, bool):
        k = int(model)
        if sites is None:
            return SectionPotential(k)
        base = SectionPotential.orthonormal(surface, sites.z, sites.patch, sites.elim, sites.weight, k, "train")
        if reference in (None, "fs"):
            return base
        if isinstance(reference, str) and reference == "balanced":
            reference = (k, balanced_metric(surface, train, k).H)
        if not (isinstance(reference, tuple) and len(reference) == 2):
            raise ValueError(f"reference must be 'fs', 'balanced' or a pair (k_ref, H_ref); got {reference!r}")
        return SectionPotential(k, base.basis, (int(reference[0]), np.asarray(reference[1], dtype=np.complex128)))
    if reference not in (None, "fs"):
        raise ValueError("reference applies to an integer model k; a potential spec carries its own "
                         "(SectionPotential(k, basis, reference=(k_ref, H_ref)))")
    needed = ("prepare", "metric", "ddbar", "vjp", "init", "describe")
    if all(hasattr(model, name) for name in needed):
        return model
    raise TypeError(f"model must be a Kähler potential spec (e.g. mfarray.kahler.SectionPotential(k=3)) or an integer "
                    f"degree k; got {model!r}")


def potential_metrics(potential: Any, theta: Array, points: xr.Dataset) -> Array:
    """The metrics (N, kd, kd) of a potential model with parameters theta at a point set, each
    point in its own chart (the point set's patch and elim)."""
    sites = materialize(points, one_chart=False)[0]
    data = potential.prepare(surface_of(points), sites.z, sites.patch, sites.elim)
    return potential.metric(np.asarray(theta, dtype=np.float64), data)


def kahler_flow(train: xr.Dataset, model: Any = None, *, steps: int, lr: float = 0.1,
                loss: str | losses.Loss = "sigma_squared", test: xr.Dataset | None = None, adaptive: bool = True,
                normalize: bool = True, clip: float | None = None, grow: float = 1.25, max_halvings: int = 40,
                theta0: Array | None = None, reference: Any = None, velocity: str | Callable | None = None,
                sign: int = 1,
                callback: Callable[[int, dict], Any] | None = None,
                progress: bool = False) -> xr.Dataset:
    """Run a Kähler-potential flow on the train points; test metrics follow exactly.

    Parameters
    ----------
    train, test : point sets (``mfarray.sample_points``, lazy or computed) in ANY charts: each
        point's metric lives in its own chart (patch, elim), sigma (B.11) compares det g with
        |Omega|^2 in that chart.
    model : the potential: an int k (default 3) is the linear phi-model of degree-k sections
        orthonormal in L^2 of the train points' measure (the phi-NTK that keeps converging; the
        monomial basis, ``mfarray.kahler.SectionPotential(k)``, stalls at k >= 4), or a potential
        spec of :mod:`mfarray.kahler`.
    steps, lr, adaptive, grow, normalize, clip, max_halvings, loss, callback, progress : as
        :func:`mfarray.kernel_flow` (the one integrator), but normalised steps by default: lr is
        the largest per-point change of the metric in a step (Frobenius), 0.1, then grown by
        backtracking.  (The gradient is a sum over the train points, so an un-normalised lr = 1
        starts some 2^30 too large at 3 x 10^4 points, and growing back by 1.25 per step wastes
        the first ~100 steps.)
    theta0 : initial parameters (P,), default ``model.init(surface)`` (phi = 0: the reference).
    reference : for an int model, the reference metric g_0 of (B.6): "fs" (default, g_FS),
        "balanced" (Donaldson's balanced metric of degree k, computed on the train points: a
        better start in the same Kähler class) or (k_ref, H_ref) for an algebraic metric.
    velocity, sign : None (default) for gradient descent on ``loss``; or a phi-flow of Appendix
        B, "ultralocal" (B.21, d phi/dt = -2 (eta - 1)) or "two_derivative" (B.20, -eta^(-1/2)),
        or a function eta -> v, realised through the model's tangent kernel
        (:class:`~mfarray.flows.models.VelocityModel`); ``loss`` then only judges steps
        (backtracking) and is recorded.  ``sign=-1`` reverses the velocity: B.21 as printed is a
        backward heat flow for eta (docs/paper-notes.md); use ``adaptive=False`` to follow it.

    Returns the result Dataset of :mod:`mfarray.flows.results` (attribute ``chart = "own"``) with
    ``theta``/``theta_initial`` (param) and each point's chart ``patch_train``/``elim_train``
    (``_test``); :func:`mfarray.predict` gives the metric at any point set from it.
    """
    steps = check_steps(steps)
    if isinstance(sign, (bool, np.bool_)) or sign not in (1, -1):
        raise ValueError(f"sign must be +1 (the paper's velocity) or -1 (reversed); got {sign!r}")
    if velocity is None and sign != 1:
        raise ValueError("sign reverses a velocity: pass velocity='B.20' or 'B.21' with it (gradient descent on "
                         "the loss has no sign to choose)")
    sign = int(sign)
    potential_of(model)  # refuse a wrong model (or degree) before computing the points
    control = StepControl(lr=lr, adaptive=adaptive, normalize=normalize, clip=clip, grow=grow,
                          max_halvings=max_halvings)
    loss_fn = resolve_loss(loss)
    if loss_fn.name == "mse":
        raise ValueError("loss='mse' needs target metrics, which kahler_flow does not take: use 'sigma', "
                         "'sigma_squared' or 'sigma_dynamic'")
    tr, te = materialize(train, test, one_chart=False)
    surface = surface_of(train)
    surface.require_calabi_yau("a Kähler-potential flow towards the Ricci-flat metric")
    potential = potential_of(model, surface, tr, train, reference)
    th0 = potential.init(surface) if theta0 is None else np.array(theta0, dtype=np.float64)
    if th0.shape != (potential.size(surface),):
        raise ValueError(f"theta0 must have shape ({potential.size(surface)},) for {potential.describe()['name']}; "
                         f"got {th0.shape}")
    if not np.all(np.isfinite(th0)):
        raise ValueError("theta0 has non-finite entries (NaN or inf): pass finite initial parameters "
                         "(default: the model's init, phi = 0)")
    data = potential.prepare(surface, tr.z, tr.patch, tr.elim)
    data_test = None if te is None else potential.prepare(surface, te.z, te.patch, te.elim)
    xp = backend.namespace(tr.g_fs)
    g_start = potential.metric(th0, data)
    linalg.require_valid(g_start, "the initial metrics of `model` at the train points (theta0, default the model's "
                                  "init) must be valid")
    loss_data = losses.loss_data(tr.omega2, tr.weight, xp.asarray(g_start))
    if velocity is None:
        model_ = PotentialModel(potential, th0, data, data_test)
        flow = "Kähler-potential flow g = g_FS + i dd-bar phi (B.6), gradient descent on the loss"
    else:
        model_ = VelocityModel(potential, th0, data, data_test, velocity=velocity_named(velocity, sign),
                               weight=tr.weight, omega2=tr.omega2, kappa=loss_data.kappa)
        flow = (f"phi-flow d phi/dt = {sign:+d} x {getattr(velocity, '__name__', velocity)}(eta) (Appendix B) "
                "through the model's tangent kernel")
    attrs = {"flow": flow, "model": "kahler", "velocity": "none" if velocity is None else str(velocity),
             "velocity_sign": int(sign),
             "loss": loss_fn.name, "potential": json.dumps(potential.describe()),
             "step_control": json.dumps(control.describe())}

    def result(trajectory):
        model_vars = {"theta": ("param", backend.to_numpy(trajectory.theta)),
                      "theta_initial": ("param", th0),
                      "patch_train": ("point", tr.patch), "elim_train": ("point", tr.elim)}
        if getattr(potential, "basis", None) is not None:
            model_vars["section_basis"] = (("section", "section_in_basis"), backend.to_numpy(potential.basis))
        if getattr(potential, "at", None) is not None:  # a linearised phi-network (TangentPotential)
            model_vars["linearised_at"] = ("param", backend.to_numpy(potential.at))
        if getattr(potential, "reference", None) is not None:
            model_vars["reference_H"] = (("reference_section", "reference_section_in"),
                                         np.asarray(potential.reference[1]))
        if te is not None:
            model_vars.update({"patch_test": ("test_point", te.patch), "elim_test": ("test_point", te.elim)})
        # g_*_initial: the model's initial metrics (the reference metric, or theta0's), not g_FS
        tr0 = dataclasses.replace(tr, g0=g_start)
        te0 = None if te is None else dataclasses.replace(te, g0=potential.metric(th0, data_test))
        return flow_result(trajectory, tr0, te0, model_vars=model_vars, attrs=attrs, steps=steps)

    try:
        trajectory = integrate(model_, loss_fn, loss_data, control, steps, tr, te, callback=callback,
                               progress=progress)
    except FlowError as err:
        err.result = result(err.trajectory)
        raise
    return result(trajectory)
