"""Train and test gains of frozen-kernel flows per kernel (paper §3.2, Table 1).

:func:`gains` flows each :class:`~mfarray.experiments.presets.Preset` from g_FS on its own
number of one-chart train points and scores it on one shared independent test set: the gain
sigma(g_FS) / sigma(g_flowed) (B.11) on train and test, beside the paper's orders of magnitude
(:data:`~mfarray.experiments.presets.PAPER_GAINS`).  With ``cluster_size`` the train points
are clustered (:func:`mfarray.cluster`) and flowed per cluster (:func:`mfarray.clustered_flow`,
§3.1), as the paper did at 10^4-10^5 points.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import dask
import numpy as np
import xarray as xr

from ..cluster import cluster
from ..flows import clustered_flow, evaluate, kernel_flow
from ..geometry import Hypersurface, fermat_quintic
from ..kernels.checks import Integer, Optional
from ..pointset import sample_chart
from ..pointset.provenance import format_call, provenance
from .presets import PAPER_GAINS, TABLE1, Preset

__all__ = ["GAIN_DOCS", "gains"]

GAIN_DOCS = {
    "sigma_train_initial": "sigma (B.11) of g_FS on the train points",
    "sigma_train_final": "sigma (B.11) of the flowed metrics on the train points",
    "sigma_test_initial": "sigma (B.11) of g_FS on the test points",
    "sigma_test_final": "sigma (B.11) of the flowed metrics predicted at the test points",
    "gain_train": "sigma_train_initial / sigma_train_final",
    "gain_test": "sigma_test_initial / sigma_test_final: how the flow generalises",
    "paper_gain_train": "the paper's train gain (Figure 3 left at distance 0; order of magnitude)",
    "paper_gain_test": "the paper's best test gain (§3.2: 'a factor of ~5'; order of magnitude)",
    "n_train": "train points of the kernel's flow", "steps_done": "flow steps taken",
    "seconds": "wall time of the flow and its evaluation",
}


def gains(presets: Mapping[str, Preset] = TABLE1, *, surface: Hypersurface | None = None, n_test: int = 1000,
          seed: int = 0, cluster_size: int | None = None, progress: bool = False) -> xr.Dataset:
    """Flow every preset and score it; a Dataset with dim ``kernel`` (the presets' names).

    Points: ``sample_chart(surface, max n_train + n_test, seed)``; each preset trains on the
    first ``n_train`` points, every preset is tested on the last ``n_test``.  Attrs record the
    presets (JSON), the surface, seed, clustering and provenance.
    """
    surface = fermat_quintic() if surface is None else surface
    n_test = Integer(low=1).check(n_test, "n_test (test points)")
    if not presets:
        raise ValueError("presets must name at least one Preset")
    for name, p in presets.items():
        if not isinstance(p, Preset):
            raise TypeError(f"presets[{name!r}] must be a Preset; got {type(p).__name__}")
    cluster_size = Optional(Integer(low=2)).check(cluster_size, "cluster_size (points per cluster)")
    n_max = max(p.n_train for p in presets.values())
    pts = sample_chart(surface, n_max + n_test, seed=seed).compute()
    test = pts.isel(point=slice(n_max, None))
    rows = {k: [] for k in GAIN_DOCS}
    for name, p in presets.items():
        t = time.perf_counter()
        train = pts.isel(point=slice(0, p.n_train))
        options = {"steps": p.steps, "lr": p.lr, "loss": p.loss, "test": test}
        if cluster_size is not None and p.n_train > cluster_size:
            result = clustered_flow(cluster(train, size=cluster_size, seed=seed), p.spec(), **options)
        else:
            result = kernel_flow(train, p.spec(), **options)
        result, ev = dask.compute(result, evaluate(result))  # one pass over a lazy (clustered) flow
        for k in ("sigma_train_initial", "sigma_train_final", "sigma_test_initial", "sigma_test_final",
                  "gain_train", "gain_test"):
            rows[k].append(float(ev[k]))
        paper = PAPER_GAINS.get(name, {})
        rows["paper_gain_train"].append(paper.get("train", np.nan))
        rows["paper_gain_test"].append(paper.get("test", np.nan))
        rows["n_train"].append(p.n_train)
        done = result.attrs["steps_done"] if "steps_done" in result.attrs else result.cluster_steps_done.max()
        rows["steps_done"].append(int(done))
        rows["seconds"].append(time.perf_counter() - t)
        if progress:
            print(f"gains: {name}: train gain {rows['gain_train'][-1]:.3g}, test gain {rows['gain_test'][-1]:.3g} "
                  f"({rows['seconds'][-1]:.1f} s)", flush=True)
    ds = xr.Dataset({k: ("kernel", np.asarray(v)) for k, v in rows.items()}, coords={"kernel": list(presets)})
    for k, text in GAIN_DOCS.items():
        ds[k].attrs["description"] = text
    ds.attrs.update({"presets": json.dumps({k: p.to_json() for k, p in presets.items()}),
                     "surface_name": surface.name, "seed": seed, "n_test": n_test,
                     "cluster_size": -1 if cluster_size is None else cluster_size,
                     **provenance(format_call("mfarray.experiments.gains", seed=seed, n_test=n_test,
                                              cluster_size=cluster_size))})
    return ds
