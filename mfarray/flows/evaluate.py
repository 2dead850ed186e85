"""After a flow: its sigma summary from the result alone, and its metrics at new points.

:func:`evaluate` reads the result Dataset (:mod:`mfarray.flows.results`): initial and final
metrics, weights and |Omega|^2 of the train and test points, so it needs no point sets; given
point sets must be the ones the flow used (same ``point`` index), else it refuses.

:func:`predict` gives the metrics of a finished flow at any point set in the flow's chart,
identical to passing that set as ``test=`` to the flow: for kernel flows
g(x) = g_FS(x) - Theta(x, train) A (the dual form of 2.12), for network flows the network at
its final parameters.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .. import backend, linalg
from .. import networks as nw
from ..geometry import measures
from ..pointset.provenance import (
    G_CONVENTION,
    describe,
    format_call,
    json_attrs,
    provenance,
)
from .sites import materialize, point_index

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike

__all__ = ["EVALUATION_DOCS", "evaluate", "predict", "sigma_of"]

# result attributes an evaluation keeps: what was flowed, on which surface and points
KEPT_ATTRS = ("flow", "model", "loss", "chart", "surface_name", "surface_monomials", "surface_coefficients_real",
              "surface_coefficients_imag", "n", "degree", "seed", "test_seed", "steps", "steps_done")


def _evaluation_docs() -> dict[str, dict[str, str]]:
    docs = {}
    for part in ("train", "test"):
        where = f"the {part} points of the result"
        sigma = f"E_w[|1 - eta|] with the MC weights weight_{part}, kappa (B.10) of the same metrics and points"
        docs[f"sigma_{part}_initial"] = {"description": f"sigma measure (B.11) of the initial metrics g_{part}_initial "
                                                        f"at {where}", "convention": sigma}
        docs[f"sigma_{part}_final"] = {"description": f"sigma measure (B.11) of the final metrics g_{part} at {where}",
                                       "convention": sigma}
        docs[f"gain_{part}"] = {"description": f"sigma_{part}_initial / sigma_{part}_final: how many times the flow "
                                               f"reduced sigma on {where}",
                                "convention": "> 1 is an improvement; inf where the final sigma is 0; NaN for a "
                                              "single point (sigma is 0 there for every metric)"}
        docs[f"positive_fraction_{part}"] = {"description": f"fraction of the final metrics at {where} that are valid "
                                                            "(finite, Hermitian, positive definite; mfarray.linalg)",
                                             "convention": "in [0, 1]; 1 for every flow result"}
    return docs


EVALUATION_DOCS: dict[str, dict[str, str]] = _evaluation_docs()


def sigma_of(g: ArrayLike, omega2: ArrayLike, weight: ArrayLike, name: str = "g") -> float:
    """sigma (B.11) of metrics g (N, k, k) at points with |Omega|^2 and weights; refuses
    metrics that are not valid (:mod:`mfarray.linalg`)."""
    m = linalg.require_valid(backend.to_numpy(g), name)
    return float(measures.sigma(m.det, backend.to_numpy(omega2), backend.to_numpy(weight)))


def _check_same(result: xr.Dataset, ds: Any, dim: str, name: str) -> None:
    if ds is None:
        return
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{name} must be the point set the flow used (an xarray.Dataset); got {type(ds).__name__}")
    if dim not in result.dims:
        raise ValueError(f"the flow was run without a {name} set; evaluate(result) summarises what it has")
    ours = result[dim].values
    theirs = point_index(ds)
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        raise ValueError(
            f"{name} is not the point set this flow used (its point index differs from the result's "
            f"{dim} coordinate): evaluate(result) needs no point sets; to score other points use "
            "mfarray.predict(result, points)"
        )


def evaluate(result: xr.Dataset, train: xr.Dataset | None = None, test: xr.Dataset | None = None) -> xr.Dataset:
    """Scalar summary of a flow result: sigma before and after on train and test points, gains.

    Variables: ``sigma_train_initial``, ``sigma_train_final``, ``gain_train`` (sigma_initial /
    sigma_final), the same for test when the flow had test points, and ``positive_fraction_train``
    / ``positive_fraction_test`` (fraction of valid metrics: 1 for every flow result, since no
    flow returns an invalid metric).  ``train``/``test`` are optional and only checked to be the
    sets the flow used.  The recorded ``sigma_test`` of the result's last step equals
    ``sigma_test_final``.  Every variable is described (:data:`EVALUATION_DOCS`); attributes:
    the result's flow, model, loss, chart, surface, n, seeds and steps, ``result_call`` (the
    flow call) and the provenance shared with point sets and results (``call``, versions).
    A Dask-backed result (:func:`~mfarray.flows.clustered.clustered_flow`) gives a lazy summary:
    one task on the result's graph, computed when asked.
    """
    if not isinstance(result, xr.Dataset) or "g_train" not in result:
        raise TypeError("result must be the Dataset returned by a flow (kernel_flow, network_flow)")
    _check_same(result, train, "point", "train")
    _check_same(result, test, "test_point", "test")
    if "omega2_train" not in result:
        raise ValueError("this result has no |Omega|^2 (the surface has no Calabi-Yau form): sigma is not defined")
    parts = [name for name in ("train", "test") if f"g_{name}" in result]
    arrays = {f"{v}_{name}": result[f"{v}_{name}"].data for name in parts for v in ("g", "omega2", "weight")}
    arrays.update({f"g_{name}_initial": result[f"g_{name}_initial"].data for name in parts})
    if any(backend.is_dask(a) for a in arrays.values()):  # a lazy result (clustered_flow): a lazy summary
        import dask
        import dask.array as da

        summary = dask.delayed(_summary, pure=True)(arrays, parts)
        out = {key: da.from_delayed(summary[key], shape=(), dtype=np.float64) for key in _summary_keys(parts)}
    else:
        out = _summary(arrays, parts)
    attrs = {key: result.attrs[key] for key in KEPT_ATTRS if key in result.attrs}
    attrs = json_attrs({"title": f"mfarray evaluation of a flow result: {result.attrs.get('flow', 'metric flow')}",
                        **attrs, "result_call": result.attrs.get("call", "unknown"),
                        **provenance(format_call("mfarray.evaluate", result,
                                                 *(() if train is None and test is None else (train, test))))})
    return describe(xr.Dataset({k: ((), v) for k, v in out.items()}, attrs=attrs), EVALUATION_DOCS)


def _summary_keys(parts: list[str]) -> list[str]:
    """evaluate's variables, in order, for the parts ("train", "test") a result has."""
    return [key for name in parts for key in (f"sigma_{name}_initial", f"sigma_{name}_final", f"gain_{name}",
                                              f"positive_fraction_{name}")]


def _summary(arrays: dict[str, Any], parts: list[str]) -> dict[str, float]:
    """evaluate's numbers from the result's arrays (NumPy; a Dask task for a lazy result)."""
    out = {}
    for name in parts:
        omega2, weight = backend.to_numpy(arrays[f"omega2_{name}"]), backend.to_numpy(arrays[f"weight_{name}"])
        g = backend.to_numpy(arrays[f"g_{name}"])
        s0 = sigma_of(arrays[f"g_{name}_initial"], omega2, weight, f"g_{name}_initial")
        s1 = sigma_of(g, omega2, weight, f"g_{name}")
        out[f"sigma_{name}_initial"] = s0
        out[f"sigma_{name}_final"] = s1
        # one point: eta = 1 and sigma = 0 for every metric, up to rounding, so no gain is defined
        out[f"gain_{name}"] = np.nan if omega2.shape[0] < 2 else s0 / s1 if s1 > 0 else np.inf
        out[f"positive_fraction_{name}"] = float(np.mean(linalg.valid(g)))
    return out


def _kernel_of(result: xr.Dataset, kernel: Any) -> Any:
    from .. import kernels
    from .frozen import kernel_spec

    record = json.loads(result.attrs["kernel"])
    if record.get("operator"):
        raise ValueError("this flow ran on a kernel operator over its train points only: it cannot predict elsewhere")
    if kernel is None:
        known = getattr(kernels, record["name"], None)
        if not isinstance(known, kernels.Kernel) or record["factors"] or record["opaque"]:
            raise ValueError(f"cannot rebuild kernel {record['name']!r} from the result: pass kernel=<the flow's kernel>")
        kernel = known.bind(**record["hyper"])
    spec = kernel_spec(kernel)
    mine = spec.describe()
    if mine != record:
        raise ValueError(f"kernel {mine} is not the kernel this flow used ({record})")
    return spec


def predict(result: xr.Dataset, points: xr.Dataset, *, kernel: Any = None,
            features: Callable | None = None, g0: Any = None, invalid: str = "raise") -> xr.DataArray:
    """Metrics (point, row, col) of a finished flow at the points of ``points``.

    ``points`` must be in the flow's chart (``mfarray.select_chart(points, like=train)``).  Kernel
    flows rebuild their kernel from the result's record (pass ``kernel=`` for a rescaled or
    user-wrapped kernel, and ``features=`` if the flow had custom features); the operator is
    built as the flow built its test operator, so the prediction equals ``g_test`` of a flow
    run with ``test=points``; a flow started from a given ``g0`` (attribute ``initial = "g0"``)
    needs ``g0`` (N, k, k), the initial metrics at ``points``, and no other flow takes one.  The
    points must lie on the flow's surface.  A predicted metric that is not valid (:mod:`mfarray.linalg`)
    raises ValueError (``invalid="raise"``; pass those points as ``test=`` to the flow: its step
    control keeps test metrics valid), or with ``invalid="nan"`` comes back as NaN, flagged
    False in the ``valid`` (point,) coordinate -- never passed on as a metric.
    """
    if invalid not in ("raise", "nan"):
        raise ValueError(f"invalid must be 'raise' or 'nan'; got invalid={invalid!r}")
    from ..kernels.features import patch_features
    from ..kernels.operators import METHOD_OPTIONS, as_operator
    from .frozen import kernel_inputs
    from .models import KernelModel, NetworkModel

    if not isinstance(result, xr.Dataset) or "model" not in result.attrs or "g_train" not in result:
        raise TypeError("result must be the Dataset returned by a flow (kernel_flow, network_flow, kahler_flow), "
                        "not its evaluate() summary")
    _require_surface(result, points)
    given = result.attrs.get("initial") == "g0"
    if given and g0 is None:
        raise ValueError("this flow started from a given g0 (kernel_flow(..., g0=...)): pass g0=, the initial "
                         "metrics (N, k, k) at the points, in the flow's chart")
    if g0 is not None and not given:
        raise ValueError("this flow started from g_FS, so its prediction does too: drop g0= (only a flow run "
                         "with kernel_flow(..., g0=...) takes one)")
    if result.attrs["model"] == "kahler":
        return _checked_prediction(_kahler_prediction(result, points), result, points, invalid)
    sites = materialize(points, g0=g0, name="points")[0]
    chart = tuple(result.attrs["chart"])
    if sites.chart != chart:
        raise ValueError(f"points are in chart {sites.chart}, the flow in {chart}: select them with "
                         f"mfarray.select_chart(points, patch={chart[0]}, elim={chart[1]})")
    if result.attrs["model"] == "kernel":
        spec = _kernel_of(result, kernel)
        z_train = result["z_train"].values
        x_train = kernel_inputs(spec, z_train, features)
        # rebuilt as the flow built it, with the options that shape its values ("local" drops
        # entries < tol; "lowrank" is a Nystrom approximation the same points, rank and tol repeat)
        method = result.attrs.get("method", "dense")
        method = method if method in METHOD_OPTIONS else "dense"  # zarr: the same float64 values, dense
        options = json.loads(result.attrs.get("operator_options", "{}"))
        options = {k: v for k, v in options.items() if k in METHOD_OPTIONS[method]}
        K_new = as_operator(spec, kernel_inputs(spec, sites.z, features), x_train, method=method, **options)
        k = sites.k
        rows = KernelModel(None, None, None, k=k).predict(linalg.to_rows(result["dual"].values), K_new,
                                                           linalg.to_rows(sites.g0))
        g = linalg.from_rows(rows, k)
    elif result.attrs["model"] == "network":
        info = json.loads(result.attrs["network"])
        config = nw.MLP(tuple(info["widths"]), info["activation"], info["sigma_w"], info["sigma_b"])
        feats = features or patch_features
        theta0 = result["theta_initial"].values
        model = NetworkModel(config, nw.unflatten(config, theta0), None, None,
                             linearized=info["linearized"], center=info["center"])
        x = feats(sites.z)
        rows = model.metric_at(result["theta"].values, np.asarray(x, dtype=np.float64), linalg.to_rows(sites.g_fs))
        g = linalg.from_rows(rows, sites.k)
    else:
        raise ValueError(f"unknown flow model {result.attrs['model']!r}")
    return _checked_prediction(g, result, points, invalid, chart=list(chart))


def _require_surface(result: xr.Dataset, points: Any) -> None:
    """Refuse points of another surface than the flow's (ValueError)."""
    from ..pointset.charts import _require_point_set, require_same_surface

    _require_point_set(points, "points", needs=())
    require_same_surface(points, result, "points", "the flow's train points")


def _kahler_prediction(result: xr.Dataset, points: xr.Dataset) -> Any:
    """The metrics of a Kähler-potential flow's final theta at any point set, each point in its chart."""
    from ..kahler import CosinePotential, NetworkPotential, PhiNetwork, SectionPotential, TangentPotential
    from .kahler import potential_metrics

    info = json.loads(result.attrs["potential"])
    if info.get("name") == "CosinePotential":
        spec = CosinePotential(**{key: v for key, v in info.items() if key != "name"})
        return potential_metrics(spec, result["theta"].values, points)
    if info.get("name") == "NetworkPotential":
        config = PhiNetwork.from_attrs({key: v for key, v in info.items() if key != "name"})
        return potential_metrics(NetworkPotential(config), result["theta"].values, points)
    if info.get("name") == "TangentPotential":
        config = PhiNetwork.from_attrs({key: v for key, v in info.items() if key not in ("name", "linearised_at")})
        return potential_metrics(TangentPotential(config, result["linearised_at"].values), result["theta"].values,
                                 points)
    if info.get("name") != "SectionPotential":
        raise ValueError(f"predict rebuilds SectionPotential, CosinePotential, NetworkPotential and TangentPotential "
                         f"models; this result has "
                         f"{info.get('name')!r}: use mfarray.flows.kahler.potential_metrics(potential, "
                         "result['theta'], points)")
    basis = result["section_basis"].values if "section_basis" in result else None
    reference = None
    if "reference_H" in result:
        reference = (int(info["reference"]["k"]), result["reference_H"].values)
    return potential_metrics(SectionPotential(int(info["k"]), basis, reference), result["theta"].values, points)


def _checked_prediction(g: Any, result: xr.Dataset, points: xr.Dataset, invalid: str, chart: Any = "own") -> xr.DataArray:
    """Predicted metrics as a DataArray, invalid ones raised or NaN with the ``valid`` flag."""
    sites_point = point_index(points)
    g = backend.to_numpy(g)
    if invalid == "raise":
        linalg.require_valid(g, "the predicted metrics")
        ok = np.ones(g.shape[0], dtype=bool)
    else:
        ok = backend.to_numpy(linalg.metrics(g).valid).astype(bool)
        g = np.where(ok[:, None, None], g, np.nan)
    where = ("in its chart (attribute chart = [patch, elim])" if chart != "own"
             else "each in its own point's chart (the points' patch and elim)")
    out = xr.DataArray(g, dims=("point", "row", "col"), coords={"point": sites_point, "valid": ("point", ok)}, name="g",
                       attrs={"description": f"metrics predicted by the flow at the given points, {where}",
                              "convention": G_CONVENTION, "chart": chart,
                              "result_call": result.attrs.get("call", "unknown"),
                              **provenance(format_call("mfarray.predict", result, points))})
    return describe(out, {"point": {"description": "index of the point in the sample it was drawn from (the "
                                                   "given points' point coordinate)", "convention": "0-based"},
                          "valid": {"description": "whether the predicted metric is valid (mfarray.linalg); "
                                                   "invalid ones are NaN (predict(..., invalid='nan'))"}})
