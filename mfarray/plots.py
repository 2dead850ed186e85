"""The paper's figures and the study's plots (matplotlib), each a function of an experiment's
Dataset with an ``ax=`` (or ``axes=``) argument; each returns what it drew on.

    plot_gains     train and test gains per kernel beside the paper's (experiments.gains)
    plot_figure2   Figure 2: distance matrices unclustered / batched / full (cluster.figure2_data)
    plot_noise     Figure 3 left: test gain against distance, per kernel and variant (experiments.noise)
    plot_spacing   Figure 3 right: nearest-train distance against N, fit and paper (experiments.spacing)
    plot_kernel_evolution  empirical metric-NTK movement against width or epoch (experiments.feature_learning)

matplotlib is imported when a plot is drawn (a dependency of mfarray, imported lazily to keep
``import mfarray`` light).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_figure2", "plot_gains", "plot_kernel_evolution", "plot_noise", "plot_spacing"]


def _pyplot() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _require(ds: Any, plot: str, source: str, variables: tuple, dims: tuple) -> None:
    """Refuse (ValueError, TypeError for a non-Dataset) a ``ds`` lacking what ``plot`` draws,
    naming the function whose result it needs."""
    need = f"{plot} draws the Dataset of mfarray.{source}(...)"
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{need}; got {type(ds).__name__}")
    missing = [v for v in variables if v not in ds.data_vars] + [d for d in dims if d not in ds.dims]
    if missing:
        raise ValueError(f"{need} (variables {list(variables)}, dims {list(dims)}); this Dataset lacks "
                         f"{missing}: pass that function's result")


def plot_gains(ds: xr.Dataset, ax: Any = None) -> Any:
    """Bars of ``gain_train`` and ``gain_test`` per kernel (log scale), the paper's orders of
    magnitude as markers; ``ds`` from :func:`mfarray.experiments.gains.gains`."""
    _require(ds, "plot_gains", "experiments.gains.gains",
             ("gain_train", "gain_test", "paper_gain_train", "paper_gain_test"), ("kernel",))
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
    _require(data, "plot_figure2", "cluster.figure2_data", ("distance",), ("order",))
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

    _require(ds, "plot_spacing", "experiments.spacing.nearest_distance_scaling", ("mean", "min", "max"), ("n_train",))
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
    _require(ds, "plot_noise", "experiments.noise.noise_study", ("gain_test", distance), ("kernel", "variant"))
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


def plot_kernel_evolution(ds: xr.Dataset, ax: Any = None) -> Any:
    """How far the empirical metric-NTK moved in training (issue 13).

    ``ds`` from :func:`~mfarray.experiments.feature_learning.kernel_evolution` (dim ``width``):
    final kernel distance and change against width on log-log axes, their fitted rates, and
    width^(-1/2) and width^(-1) through the first change; or from
    :func:`~mfarray.experiments.feature_learning.train_metric_network` /
    :func:`~mfarray.experiments.phi_kernel.phi_kernel_evolution` (dim ``checkpoint``): kernel
    distance and the kernel-target alignments of Theta_t and Theta_0 against the epoch.
    """
    plt = _pyplot()
    if "width" in ds.dims:
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.8))
        w = ds.width.values.astype(float)
        ax.plot(w, ds.kernel_distance.values, "o-", label="kernel distance 1 - cos(Theta_0, Theta_T)")
        ax.plot(w, ds.kernel_change.values, "s:", label="|Theta_T - Theta_0| / |Theta_0|")
        grid = np.geomspace(w.min(), w.max(), 50)
        for key, label in (("rate", "distance"), ("change_rate", "change")):
            rate, icpt = float(ds.attrs[key]), float(ds.attrs[f"{key}_intercept"])
            ax.plot(grid, np.exp(icpt) * grid**rate, "k-", lw=0.8, label=f"{label} fit width^{rate:.2f}")
        c0 = float(ds.kernel_change.values[0])
        ax.plot(grid, c0 * (grid / w[0]) ** -0.5, "k--", lw=0.8, label="width^-1/2 (lazy bound)")
        ax.plot(grid, c0 * (grid / w[0]) ** -1.0, "k:", lw=0.8, label="width^-1")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hidden width")
        ax.set_ylabel("kernel movement")
    elif "checkpoint" in ds.dims and "kernel_distance" in ds:
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.8))
        e = ds.checkpoint.values
        ax.plot(e, ds.kernel_distance.values, "o-", label="kernel distance to Theta_0")
        ax.plot(e, ds.alignment.values, "s-", label="alignment of Theta_t")
        ax.plot(e, ds.alignment_initial_kernel.values, "s:", label="alignment of Theta_0")
        ax.set_xlabel("epoch")
        ax.set_ylabel("kernel statistic")
    else:
        raise ValueError("ds must be a kernel_evolution result (dim 'width') or a train_metric_network / "
                         "phi_kernel_evolution result with a probe (dim 'checkpoint', 'kernel_distance')")
    ax.legend(fontsize=8)
    return ax
