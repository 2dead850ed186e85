"""The paper's figures and the study's plots (matplotlib), each a function of an experiment's
Dataset with an ``ax=`` (or ``axes=``) argument; each returns what it drew on.

    plot_gains     train and test gains per kernel beside the paper's (experiments.gains)
    plot_figure2   Figure 2: distance matrices unclustered / batched / full (cluster.figure2_data)

matplotlib is imported when a plot is drawn (a dependency of mfarray, imported lazily to keep
``import mfarray`` light).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_gains", "plot_figure2"]


def _pyplot() -> Any:
    import matplotlib.pyplot as plt

    return plt


def plot_gains(ds: xr.Dataset, ax: Any = None) -> Any:
    """Bars of ``gain_train`` and ``gain_test`` per kernel (log scale), the paper's orders of
    magnitude as markers; ``ds`` from :func:`mfarray.experiments.gains.gains`."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * ds.sizes["kernel"] + 2, 3.5))
    x = np.arange(ds.sizes["kernel"])
    ax.bar(x - 0.2, ds.gain_train.values, 0.4, label="train gain")
    ax.bar(x + 0.2, ds.gain_test.values, 0.4, label="test gain")
    ax.scatter(x - 0.2, ds.paper_gain_train.values, marker="_", s=400, color="k", label="paper (order of magnitude)")
    ax.scatter(x + 0.2, ds.paper_gain_test.values, marker="_", s=400, color="k")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(k) for k in ds.kernel.values], rotation=20)
    ax.set_ylabel("sigma(g_FS) / sigma(g)")
    ax.legend(fontsize=8)
    return ax


def plot_figure2(data: xr.Dataset, axes: Any = None) -> Any:
    """Three panels of ``data.distance`` (from :func:`mfarray.cluster.figure2_data`), one per
    order; returns the axes."""
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(1, len(data["order"]), figsize=(4 * len(data["order"]), 4))
    for ax, order in zip(np.atleast_1d(axes), data["order"].values):
        im = ax.imshow(data["distance"].sel(order=order).values, cmap="viridis", vmin=0, vmax=np.pi / 2)
        ax.set_title(str(order))
        ax.set_xticks([])
        ax.set_yticks([])
    plt.colorbar(im, ax=axes, label="FS distance")
    return axes
