"""What makes a Dataset self-describing: provenance attributes and variable descriptions.

One helper for every Dataset mfarray makes (point sets here, flow results and evaluations in
``mfarray.flows``), so their attributes agree:

    provenance(call) -> {"call": call, "mfarray_version": ..., "numpy_version": ...,
                         "scipy_version": ..., "dask_version": ..., "xarray_version": ...,
                         "zarr_version": ...}

``call`` is the Python call that made the Dataset, written by :func:`format_call` with its
arguments (arrays and Datasets as a short summary, never their values).  The ``mfarray``
command line adds ``command``, the equivalent command line.

Every variable and coordinate carries ``attrs["description"]``, and ``attrs["convention"]``
or ``attrs["units"]`` where it has any: :func:`describe` applies a table of them,
:func:`undocumented` lists what a Dataset leaves undescribed.  All values are JSON (complex
numbers split into real and imaginary parts), so they survive ``mfarray.to_zarr`` /
``open_zarr``.  This module sits in the ``pointset`` layer because point sets are the
lowest layer making Datasets; ``mfarray.flows`` imports it from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import xarray as xr

from .. import backend

__all__ = ["versions", "provenance", "format_call", "derived_call", "describe", "undocumented", "json_attrs", "POINTSET_DOCS"]

XrObject = TypeVar("XrObject", xr.Dataset, xr.DataArray)

VERSION_KEYS = ("mfarray_version", "numpy_version", "scipy_version", "dask_version", "xarray_version",
                "zarr_version")


def versions() -> dict[str, str]:
    """Versions of mfarray and of the libraries its results depend on, keyed ``<name>_version``."""
    import dask
    import scipy
    import zarr

    from .. import __version__

    return {"mfarray_version": __version__, "numpy_version": np.__version__, "scipy_version": scipy.__version__,
            "dask_version": dask.__version__, "xarray_version": xr.__version__, "zarr_version": zarr.__version__}


def provenance(call: str) -> dict[str, str]:
    """The provenance attributes of a Dataset made by ``call``: the call and :func:`versions`."""
    if not isinstance(call, str):
        raise TypeError(f"call must be a string describing the call that made the data; got {call!r}")
    return {"call": call, **versions()}


def _summary(value: Any) -> str:
    """A short, value-free description of an argument for :func:`format_call`."""
    if isinstance(value, xr.Dataset):
        dims = ", ".join(f"{k}={v}" for k, v in value.sizes.items())
        return f"<Dataset ({dims})>"
    if isinstance(value, xr.DataArray):
        return f"<DataArray {value.dtype} {dict(value.sizes)}>"
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) > 0:
        kind = "dask" if backend.is_dask(value) else "cupy" if backend.is_cupy(value) else "numpy"
        return f"<{kind} array {value.dtype} {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def format_call(function: str, *args: Any, **kwargs: Any) -> str:
    """``function(arg, ..., key=value, ...)`` with short reprs: arrays and Datasets summarised by
    kind, dtype and shape, long reprs cut at 200 characters.  For the ``call`` attribute."""
    parts = [_summary(a) for a in args] + [f"{k}={_summary(v)}" for k, v in kwargs.items()]
    return f"{function}({', '.join(parts)})"


def derived_call(function: str, ds: xr.Dataset, *args: Any, suffix: str = "", **kwargs: Any) -> str:
    """The ``call`` of a Dataset derived from ``ds`` by ``function``: the call that made ds nested
    as the first argument (``"<point set>"`` where ds records none), e.g.
    ``mfarray.select_chart(mfarray.sample_points(...), patch=0, elim=1)``."""
    inner = ds.attrs.get("call") if isinstance(ds.attrs.get("call"), str) else "<point set>"
    rest = [_summary(a) for a in args] + [f"{k}={_summary(v)}" for k, v in kwargs.items()]
    return f"{function}({', '.join([inner, *rest])}){suffix}"


def json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``attrs`` whose values are JSON (what a Zarr store can hold); others dropped."""
    out = {}
    for key, value in attrs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def describe(obj: XrObject, docs: Mapping[str, Mapping[str, str]]) -> XrObject:
    """A shallow copy of ``obj`` whose variables and coordinates named in ``docs`` get those
    attributes (``{"name": {"description": ..., "convention": ...}}``); for a DataArray its
    own name's entry, else ``docs[None]`` where given."""
    out = obj.copy(deep=False)
    if isinstance(out, xr.DataArray):
        entry = docs.get(out.name, docs.get(None))
        if entry:
            out.attrs.update(entry)
        names = list(out.coords)
    else:
        names = list(out.variables)
    for name in names:
        if name in docs:
            out[name].attrs.update(docs[name])
    return out


def undocumented(obj: xr.Dataset | xr.DataArray) -> list[str]:
    """Names of the variables and coordinates of ``obj`` (and a DataArray itself) without a
    non-empty ``description`` attribute."""
    items = dict(obj.variables) if isinstance(obj, xr.Dataset) else {**dict(obj.coords), obj.name: obj}
    return [str(name) for name, v in items.items() if not v.attrs.get("description")]


# ------------------------------------------------------------------- point sets
G_CONVENTION = (
    "Hermitian complex matrices (not real rows), g[..., b, c] = g_{b cbar}; the paper's normalisation K = log|z|^2, "
    "g_{b cbar} = d_b dbar_c K, ds^2 = g_{b cbar} dx^b dxbar^c (the FS distance is exactly the paper's 3.2); "
    "row/col index the chart's local coordinates x = z_j/z_patch, j not in {patch, elim}, in increasing j"
)

POINTSET_DOCS: dict[str, dict[str, str]] = {
    "point": {"description": "index of the point in the sample it was drawn from (the row of z given to "
                             "points_from_z); kept by select_chart, split, isel and Zarr",
              "convention": "0-based"},
    "z": {"description": "homogeneous coordinates of the point in P^n, scaled so that the chart's patch "
                         "coordinate is 1 (in the point's own chart: the largest |z_i|)",
          "convention": "complex128, dims (point, ambient = n+1)"},
    "patch": {"description": "chart patch: index of the homogeneous coordinate set to 1 (in the point's own "
                             "chart: argmax_i |z_i|)",
              "convention": "0-based index into ambient"},
    "elim": {"description": "eliminated coordinate, solved for from p = 0 (in the point's own chart: "
                            "argmax_{j != patch} |dp/dz_j|)",
             "convention": "0-based index into ambient"},
    "omega2": {"description": "|Omega|^2 of the holomorphic top form Omega (Poincare residue) in the chart's "
                              "local coordinates: 1/|dp/dz_elim|^2 at the representative with z_patch = 1",
               "convention": "chart dependent density; only on Calabi-Yau hypersurfaces"},
    "g_fs": {"description": "Fubini-Study metric of P^n pulled back to X, in the chart's local coordinates",
             "convention": G_CONVENTION},
    "det_g_fs": {"description": "det g_fs (real, > 0) in the chart's local coordinates",
                 "convention": "same normalisation as g_fs"},
    "weight": {"description": "Monte-Carlo weight |Omega|^2 / det g_fs (chart independent), normalised to mean 1 "
                              "over this point set: E_w[f] = mean(weight * f) estimates the Calabi-Yau average of f",
               "convention": "mean 1, the mean from an exactly rounded sum (the same bits for any chunking); "
                             "renormalised by select_chart and split"},
}

WEIGHT_NOT_CY = {"description": "1 at every point: X is not Calabi-Yau (no holomorphic top form), so the natural "
                                "measure is the sampler's own, the restricted Fubini-Study volume",
                 "convention": "mean 1"}
