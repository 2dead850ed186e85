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

Attributes (JSON, so a result round-trips through Zarr): ``flow`` (which equation), ``model``
("kernel" | "network"), ``loss``, ``step_control`` and ``kernel`` / ``network`` (JSON strings),
``steps`` (asked), ``steps_done``, ``chart``, the train set's surface and seed attributes,
``test_seed``, and the versions of mfarray and its dependencies.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .. import backend

__all__ = ["flow_result", "versions"]


def versions() -> dict:
    """Versions of mfarray and the libraries a result depends on."""
    import dask
    import scipy
    import zarr

    from .. import __version__

    return {"mfarray_version": __version__, "numpy_version": np.__version__, "scipy_version": scipy.__version__,
            "dask_version": dask.__version__, "xarray_version": xr.__version__, "zarr_version": zarr.__version__}


def _host(a):
    return backend.to_numpy(a)


def _json_attrs(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def _per_point(prefix, dim, sites, g, g_initial):
    data = {
        f"g_{prefix}": ((dim, "row", "col"), _host(g)),
        f"g_{prefix}_initial": ((dim, "row", "col"), _host(g_initial)),
        f"weight_{prefix}": (dim, _host(sites.weight)),
        f"z_{prefix}": ((dim, "ambient"), _host(sites.z)),
    }
    if sites.omega2 is not None:
        data[f"omega2_{prefix}"] = (dim, _host(sites.omega2))
    return data


def flow_result(trajectory, train, test, *, model_vars: dict, attrs: dict, steps: int) -> xr.Dataset:
    """The result Dataset of a flow (module docstring) from an integrator Trajectory."""
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
    info = _json_attrs(train.attrs)
    info.pop("split", None)
    info.update(versions())
    info.update(attrs)
    info.update({"steps": int(steps), "steps_done": int(trajectory.steps_done), "chart": list(train.chart)})
    if test is not None and "seed" in test.attrs:
        info["test_seed"] = test.attrs["seed"]
    ds = xr.Dataset(data, coords=coords, attrs=info)
    docs = {
        "loss": "mean per-point loss over the train points",
        "sigma_train": "sigma measure (B.11) of the train metrics, kappa of the metric itself",
        "sigma_test": "sigma measure (B.11) of the predicted test metrics",
        "lr": "step size taken (0 at step 0)",
        "rejected": "step halvings since the previous record (validity guard and backtracking)",
        "rejected_test": "halvings forced by test-metric validity",
        "g_train": "final train metrics g_{b cbar} in the flow's chart",
        "g_test": "final predicted test metrics in the flow's chart",
    }
    for name, doc in docs.items():
        if name in ds:
            ds[name].attrs["description"] = doc
    return ds
