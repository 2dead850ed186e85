"""Evaluation of a flow: sigma before and after on train and test points, gains, positivity."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..pointset import sigma_measure
from .guard import positive_definite


def _sigma(ds, g):
    """sigma (B.11) over the points whose metric is positive definite, and that fraction."""
    ok = np.asarray(positive_definite(np.asarray(g)))
    if not ok.any():
        return np.nan, 0.0
    sub = ds.isel(point=np.nonzero(ok)[0])
    return sigma_measure(sub, np.asarray(g)[ok]), float(ok.mean())


def evaluate(result: xr.Dataset, train: xr.Dataset, test: xr.Dataset | None = None) -> xr.Dataset:
    """Scalar summary of a :func:`kernel_flow` result.

    Variables: ``sigma_train_initial``, ``sigma_train_final``, ``gain_train`` (sigma_FS /
    sigma_flow), the same for test when given, and ``positive_fraction_train`` /
    ``positive_fraction_test`` (points whose metric stayed positive definite; sigma is taken
    over those points, so a non-positive metric is counted, never passed on as a NaN).
    """
    out = {}
    for name, ds, g0, g in (
        ("train", train, result["g_train_initial"].values, result["g_train"].values),
        ("test", test, None if test is None else result["g_test_initial"].values,
         None if test is None else result["g_test"].values),
    ):
        if ds is None:
            continue
        s0, _ = _sigma(ds, g0)
        s1, frac = _sigma(ds, g)
        out[f"sigma_{name}_initial"] = s0
        out[f"sigma_{name}_final"] = s1
        out[f"gain_{name}"] = s0 / s1 if s1 > 0 else np.inf
        out[f"positive_fraction_{name}"] = frac
    return xr.Dataset({k: ((), v) for k, v in out.items()})
