"""The paper's figures and the study's plots (matplotlib), each a function of an experiment's
Dataset with an ``ax=`` (or ``axes=``) argument; each returns what it drew on.

    plot_gains     train and test gains per kernel beside the paper's (experiments.gains)
    plot_figure2   Figure 2: distance matrices unclustered / batched / full (cluster.figure2_data)
    plot_noise     Figure 3 left: test gain against distance, per kernel and variant (experiments.noise)
    plot_spacing   Figure 3 right: nearest-train distance against N, fit and paper (experiments.spacing)

matplotlib is imported when a plot is drawn (a dependency of mfarray, imported lazily to keep
``import mfarray`` light).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_gains", "plot_figure2", "plot_noise", "plot_spacing"]


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


def plot_spacing(ds: xr.Dataset, ax: Any = None, *, fit: xr.Dataset | None = None) -> Any:
    """Figure 3 right: mean, min and max nearest-train FS distance against N (log-log), the
    power-law fit (``fit``, default :func:`~mfarray.experiments.spacing.fit_power_law` of the
    mean) and the paper's (3.6); ``ds`` from
    :func:`~mfarray.experiments.spacing.nearest_distance_scaling`."""
    from .experiments.spacing import distance_for_points, fit_power_law, paper_fit

    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.8))
    n = ds.n_train.values
    for stat, style in (("max", "v:"), ("mean", "o-"), ("min", "^:")):
        ax.plot(n, ds[stat].values, style, label=stat)
    fit = fit_power_law(ds) if fit is None else fit
    grid = np.geomspace(n.min(), n.max(), 50)
    a, b, se = float(fit.coefficient), float(fit.exponent), float(fit.exponent_se)
    ax.plot(grid, distance_for_points(fit, grid), "k-", lw=1, label=f"fit {a:.3f} N^({b:.3f}+-{se:.3f})")
    ax.plot(grid, distance_for_points(paper_fit(), grid), "k--", lw=1, label="paper 0.968 N^-0.184")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("train points N")
    ax.set_ylabel("nearest-train FS distance")
    ax.legend(fontsize=8)
    return ax


def plot_noise(ds: xr.Dataset, ax: Any = None, *, distance: str = "distance_to_train") -> Any:
    """Figure 3 left: ``gain_test`` against ``distance`` (``"distance_to_train"``, the paper's
    axis, or ``"distance_to_source"``) on log-log axes, a colour per kernel, solid for points
    projected onto X and dashed for the paper's off-X points; ``ds`` from
    :func:`~mfarray.experiments.noise.noise_study`."""
    if distance not in ("distance_to_train", "distance_to_source"):
        raise ValueError(f"distance must be 'distance_to_train' or 'distance_to_source'; got {distance!r}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.8))
    styles = {"projected": "-", "paper": "--"}
    for i, kernel in enumerate(ds.kernel.values):
        for variant in ds.variant.values:
            d = ds[distance].sel(variant=variant).values
            g = ds.gain_test.sel(kernel=kernel, variant=variant).values
            keep = d > 0
            ax.plot(d[keep], g[keep], styles.get(str(variant), ":"), color=f"C{i}", marker="o", ms=3,
                    label=f"{kernel} ({variant})")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(distance.replace("_", " ") + " (FS)")
    ax.set_ylabel("test gain")
    ax.legend(fontsize=7)
    return ax
