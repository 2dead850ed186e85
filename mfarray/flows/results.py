"""One result schema for every flow: an xarray Dataset that knows where it came from.

Dims and coordinates: ``step`` (recorded steps), ``point`` (train point index, kept from the
input point set), ``test_point`` (test point index), ``row``/``col`` (k), ``ambient`` (n+1).

Variables (along ``step``): ``loss`` (mean per-point loss), ``sigma_train``, ``sigma_test``
(sigma, B.11, of the recorded metrics; on Calabi-Yau surfaces), ``lr`` (step size taken),
``rejected`` and ``rejected_test`` (halvings; those caused by test validity).  Per point:
``g_train``, ``g_train_initial`` (point, row, col), ``weight_train``, ``omega2_train``,
``z_train`` (point, ambient); the same with ``test`` on ``test_point``.  Model variables:
``dual`` (point, row, col) for kernel flows, ``theta`` / ``theta_initial`` (param) for
networks.

Every variable and coordinate has ``attrs["description"]`` and, where there is one,
``attrs["convention"]`` (:data:`RESULT_DOCS`).  Metrics are Hermitian complex matrices
``g[..., b, c] = g_{b cbar}`` in the flow's chart (the real rows of the engine are converted
back at this boundary).

Attributes (JSON, so a result round-trips through Zarr): ``flow`` (which equation), ``model``
("kernel" | "network"), ``loss``, ``step_control`` and ``kernel`` / ``network`` (JSON strings),
``steps`` (asked), ``steps_done``, ``chart``, the train set's surface, ``n``, ``degree`` and
``seed`` attributes, ``test_seed``, the calls that made the point sets (``train_call``,
``test_call``; ``train_command`` where ``mfarray sample`` made it; ``train_split`` and
``test_split`` where :func:`mfarray.split` made them), and the provenance of
:func:`mfarray.pointset.provenance.provenance` shared with point sets: ``call`` (the flow call)
and the versions of mfarray and its dependencies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .. import backend
from ..pointset.provenance import (
    G_CONVENTION,
    POINTSET_DOCS,
    describe,
    json_attrs,
    provenance,
    versions,
)

__all__ = ["OWN_CHARTS", "RESULT_DOCS", "flow_result", "versions"]

# the ``chart`` attribute of a flow whose metrics are each in their own point's chart (Kähler models)
OWN_CHARTS = "own"

# attributes of a point set that describe how the set was made: kept as train_<key> / test_<key>
SET_PROVENANCE = ("call", "command", "chunk_size", "sampler", "split")
# the point set's own attributes that a result does not keep (its own replace them)
SET_DROPPED = ("title",)


def _host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


def _per_point(prefix: str, dim: str, sites: Any, g: Any, g_initial: Any) -> dict:
    data = {
        f"g_{prefix}": ((dim, "row", "col"), _host(g)),
        f"g_{prefix}_initial": ((dim, "row", "col"), _host(g_initial)),
        f"weight_{prefix}": (dim, _host(sites.weight)),
        f"z_{prefix}": ((dim, "ambient"), _host(sites.z)),
    }
    if sites.omega2 is not None:
        data[f"omega2_{prefix}"] = (dim, _host(sites.omega2))
    return data


def _flow_call(attrs: dict, steps: int, test: Any) -> str:
    """The flow call as recorded when the caller gave none: its function and main arguments
    (the rest are the attributes kernel / network, step_control, method, operator_options)."""
    function = {"kernel": "kernel_flow", "network": "network_flow"}.get(attrs.get("model"), "flow")
    args = ["train", "kernel" if function == "kernel_flow" else "config"]
    args += [f"steps={int(steps)}", f"loss={attrs.get('loss')!r}"] + (["test=test"] if test is not None else [])
    if "method" in attrs:
        args.append(f"method={attrs['method']!r}")
    return f"mfarray.{function}({', '.join(args)})"


def _set_provenance(sites: Any, part: str) -> dict:
    return {f"{part}_{key}": sites.attrs[key] for key in SET_PROVENANCE if key in sites.attrs}


def flow_result(trajectory: Any, train: Any, test: Any, *, model_vars: dict, attrs: dict,
                steps: int) -> xr.Dataset:
    """The result Dataset of a flow (module docstring) from an integrator Trajectory.

    ``train``/``test``: the flow's Sites (``mfarray.flows.sites``); ``model_vars``: the model's
    variables (``dual``, or ``theta`` and ``theta_initial``); ``attrs``: the flow's JSON
    attributes, with ``call`` the flow call where the caller records it.
    """
    h = trajectory.history
    data = {
        "loss": ("step", np.asarray(h["loss"], dtype=np.float64)),
        "lr": ("step", np.asarray(h["lr"], dtype=np.float64)),
        "rejected": ("step", np.asarray(h["rejected"], dtype=np.int64)),
        "rejected_test": ("step", np.asarray(h["rejected_test"], dtype=np.int64)),
    }
    if train.omega2 is not None:
        data["sigma_train"] = ("step", np.asarray(h["sigma_train"], dtype=np.float64))
        if test is not None:
            data["sigma_test"] = ("step", np.asarray(h["sigma_test"], dtype=np.float64))
    data.update(_per_point("train", "point", train, trajectory.train.g, train.g0))
    coords = {"step": np.asarray(h["step"], dtype=np.int64), "point": train.point}
    if test is not None:
        data.update(_per_point("test", "test_point", test, trajectory.test.g, test.g0))
        coords["test_point"] = test.point
    data.update(model_vars)
    attrs = dict(attrs)
    call = attrs.pop("call", None) or _flow_call(attrs, steps, test)
    info = {key: value for key, value in json_attrs(train.attrs).items()
            if key not in SET_PROVENANCE + SET_DROPPED and not key.endswith("_version")}
    info["title"] = f"mfarray flow result: {attrs.get('flow', 'metric flow')}"
    info.update(json_attrs(_set_provenance(train, "train")))
    info.update(provenance(call))
    info.update(attrs)
    info.update({"steps": int(steps), "steps_done": int(trajectory.steps_done), "chart": OWN_CHARTS if train.chart is None else list(train.chart)})
    if test is not None:
        if "seed" in test.attrs:
            info["test_seed"] = test.attrs["seed"]
        info.update(json_attrs(_set_provenance(test, "test")))
    ds = xr.Dataset(data, coords=coords, attrs=info)
    return describe(ds, RESULT_DOCS)


def _per_point_docs(part: str, dim: str) -> dict[str, dict[str, str]]:
    """Descriptions of the per-point variables of the train or test points."""
    role = "the flow's train points" if part == "train" else "the test points (predicted, never trained on)"
    return {
        dim: {"description": f"index of each of {role} in the sample it was drawn from (the {part} set's "
                             "point coordinate)", "convention": "0-based"},
        f"g_{part}": {"description": f"metrics at {role} at the last recorded step, in the flow's chart "
                                     "(attribute chart = [patch, elim])", "convention": G_CONVENTION},
        f"g_{part}_initial": {"description": f"initial metrics at {role} (g_fs, the given g0, or the network's "
                                             "initial metric), in the flow's chart", "convention": G_CONVENTION},
        f"weight_{part}": {"description": f"MC weights of {role} as the flow used them: "
                                          f"{POINTSET_DOCS['weight']['description']}",
                           "convention": POINTSET_DOCS["weight"]["convention"]},
        f"omega2_{part}": {"description": f"|Omega|^2 at {role} in the flow's chart: "
                                          f"{POINTSET_DOCS['omega2']['description']}",
                           "convention": POINTSET_DOCS["omega2"]["convention"]},
        f"z_{part}": {"description": f"homogeneous coordinates of {role}, patch coordinate 1",
                      "convention": POINTSET_DOCS["z"]["convention"].replace("point", dim, 1)},
    }


RESULT_DOCS: dict[str, dict[str, str]] = {
    "step": {"description": "flow step of each record (0: the initial metrics)", "convention": "0-based"},
    "loss": {"description": "mean over the train points of the per-point loss (attribute loss) of the metrics "
                            "at this step", "convention": "L = sum_x l(x) / N (eq. 2.3 divided by N), what the flow "
                                                          "minimises; l(x) holds the MC weight where the loss has one"},
    "sigma_train": {"description": "sigma measure (B.11) of the train metrics at this step, kappa (B.10) of the "
                                   "same metrics and points",
                    "convention": "E_w[|1 - eta|] with the MC weights weight_train; 0 for the Calabi-Yau metric"},
    "sigma_test": {"description": "sigma measure (B.11) of the predicted test metrics at this step",
                   "convention": "E_w[|1 - eta|] with the MC weights weight_test, kappa of the test metrics"},
    "lr": {"description": "step size taken to reach this record's metrics, after halvings (0 at step 0)",
           "convention": "as the step control defines it (attribute step_control)"},
    "rejected": {"description": "step halvings since the previous record (validity guard and backtracking)",
                 "convention": "count"},
    "rejected_test": {"description": "of those halvings, the ones forced by test metrics that were not valid",
                      "convention": "count"},
    **_per_point_docs("train", "point"),
    **_per_point_docs("test", "test_point"),
    "dual": {"description": "dual coefficients A of the frozen-kernel flow (2.12, dual form): the metric at any "
                            "point x is g(x) = g_initial(x) - sum_y Theta(x, y) A(y) over the train points y, "
                            "with Theta the kernel (attribute kernel) acting on each component (2.23)",
             "convention": "Hermitian complex matrices (point, row, col) in the flow's chart, indexed as g_train"},
    "theta": {"description": "model parameters at the last recorded step, flattened: network parameters "
                             "(attribute network: widths, activation, sigma_w, sigma_b) or, for a Kähler flow, "
                             "the potential's (attribute potential; SectionPotential: hermitian_to_real(H))",
              "convention": "networks: NTK parameterisation, mfarray.networks.flatten order; Kähler flows: the "
                            "order of the potential's parameters (SectionPotential: mfarray.linalg.real_basis)"},
    **{f"{v}_{part}": {"description": f"each {part} point's chart: the {what} coordinate of the chart in which "
                                      f"its metric g_{part} is given (Kähler flows: every point in its own chart)",
                       "convention": "0-based index into z"}
       for part in ("train", "test") for v, what in (("patch", "patch (z_patch = 1)"), ("elim", "eliminated"))},
    "section_basis": {"description": "the basis B of the phi-model's sections, s' = s_hat B (mfarray.kahler."
                                     "SectionPotential; columns: the basis sections in the monomials of "
                                     "mfarray.kahler.section_exponents)",
                      "convention": "complex (n_s, n_s); the L^2-orthonormal sections of the train sample"},
    "reference_H": {"description": "H of the reference metric g_0 = (1/k) dd-bar log(s^T H conj s) of (B.6) "
                                   "(attribute potential: its degree k)",
                    "convention": "complex Hermitian positive definite (n_s, n_s) over the monomial sections"},
    "theta_initial": {"description": "network parameters at initialisation, flattened",
                      "convention": "NTK parameterisation, mfarray.networks.flatten order"},
}
