"""The study's report: Markdown plus PNG figures in the output folder.

Sections: the settings (the config as TOML), the gains table beside the paper's numbers, the
tuned hyper-parameters with their score on unseen points, the feature-learning comparison (every
model on one split, issue 13) where it ran, the figures (gains, Figure 2, Figure 3 and the kernel
distance per width where their stages ran), timings per stage and package versions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from .. import plots
from ..pointset.provenance import versions
from .config import StudyConfig, to_toml

__all__ = ["comparison_table", "gains_table", "write_report"]


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.2e}"


def gains_table(gains: Any) -> str:
    """The gains Dataset as a Markdown table (kernel, hyper-parameters, points, gains, paper)."""
    presets = json.loads(gains.attrs["presets"])
    rows = ["| kernel | hyper-parameters | lr | train points | train gain | test gain | paper train | paper test | s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for k in gains.kernel.values:
        p = presets[str(k)]
        hyper = ", ".join(f"{a}={_fmt(v) if isinstance(v, float) else v}" for a, v in p["hyper"].items()) or "-"
        g = gains.sel(kernel=k)
        rows.append(f"| {k} ({p['kernel']}) | {hyper} | {_fmt(p['lr'])} | {int(g.n_train)} | {_fmt(float(g.gain_train))} | "
                    f"{_fmt(float(g.gain_test))} | {_fmt(float(g.paper_gain_train))} | "
                    f"{_fmt(float(g.paper_gain_test))} | {float(g.seconds):.1f} |")
    return "\n".join(rows)


def comparison_table(ds: Any) -> str:
    """A :func:`~mfarray.experiments.comparison.model_comparison` Dataset as a Markdown table:
    a row per model with its points, parameters, optimiser, sigma and gains and wall time."""
    rows = [("| model | points | parameters | optimiser | train sigma | test sigma | train gain | test gain | "
             "test gain, one-chart test | s |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for m in ds.model.values:
        r = ds.sel(model=m)
        rows.append(f"| {m} | {r.points.values} | {int(r.parameters):,} | {r.optimizer.values} | "
                    f"{_fmt(float(r.sigma_train))} | {_fmt(float(r.sigma_test))} | {_fmt(float(r.gain_train))} | "
                    f"{_fmt(float(r.gain_test))} | {_fmt(float(r.gain_test_one_chart))} | {float(r.seconds):.1f} |")
    return "\n".join(rows)


def _feature_learning_section(ds: Any, curves: Any) -> list[str]:
    lines = ["## Feature learning: every model on one split (issue 13)", ""]
    if ds is not None:
        what = (f"{ds.attrs['n_train']} train / {ds.attrs['n_test']} test one-chart points")
        if ds.attrs.get("n_train_all_charts"):
            what += (f"; the chart-free models on {ds.attrs['n_train_all_charts']} / {ds.attrs['n_test_all_charts']} "
                     "all-chart points, each in its own chart (gains against g_FS there, `fs_all_charts`)")
        lines += [(f"Gain = sigma(g_FS) / sigma(model) on the same points, sigma (B.11); {what}.  The last gain "
                   "column scores every model on the one-chart test points.  `network_adam_w` is the depth x w "
                   "network trained with Adam on mini-batches; `network_flow_w` the same network from the same "
                   "initial parameters, trained by the kernel flows' integrator (full batch, backtracking): read "
                   "it against `after_kernel_flow_w`, its frozen final kernel under the same optimiser, and "
                   "`network_adam_w` against `after_kernel_w`.  Descriptions: the `description` variable of "
                   "`feature_learning.zarr`."), "", comparison_table(ds), ""]
    if curves is not None:
        lines += [f"Kernel distance 1 - cos(Theta_0, Theta_T) after {curves.attrs['epochs']} epochs "
                  f"({curves.attrs['optimizer']}, {curves.attrs['depth']} hidden {curves.attrs['activation']} "
                  f"layer(s)) per width: " + ", ".join(
                      f"{int(w)}: {_fmt(float(d))}" for w, d in zip(curves.width.values, curves.kernel_distance.values))
                  + f"; fitted rate width^{curves.attrs['rate']:.2f}, the relative change width^"
                  f"{curves.attrs['change_rate']:.2f} (lazy-regime theory: change at most width^-1/2, leading term "
                  "width^-1).", ""]
    return lines


def _tuning_table(tuning: Any) -> str:
    rows = ["| kernel | best parameters | evaluations | best log10 test gain (tuning sets) | test gain on unseen points |",
            "|---|---|---|---|---|"]
    for k in tuning.kernel.values:
        t = tuning.sel(kernel=k)
        best = json.loads(str(t.best_params.values))
        text = ", ".join(f"{a}={_fmt(v) if isinstance(v, float) else v}" for a, v in best.items())
        n = int((~t.target.isnull()).sum()) if "target" in t else 0
        rows.append(f"| {k} | {text} | {n} | {_fmt(float(t.target.max()))} | {_fmt(float(t.holdout_gain_test))} |")
    return "\n".join(rows)


def _measured_relation(noise: Any, kernel: str, variant: str = "paper") -> tuple[list, list]:
    """The noise study's (distance to train, test gain) for one kernel: the points with gain > 1
    while the gain still falls strictly (what a read-off along Figure 3 left needs)."""
    d = noise.distance_to_train.sel(variant=variant).values
    g = noise.gain_test.sel(kernel=kernel, variant=variant).values
    order = d.argsort()
    d, g = d[order], g[order]
    keep = 1
    while keep < len(g) and g[keep] < g[keep - 1] and g[keep] > 1:
        keep += 1
    return d[:keep].tolist(), g[:keep].tolist()


def _spacing_section(ds: Any, noise: Any = None) -> list[str]:
    from ..experiments import spacing as sp

    fit = sp.fit_power_law(ds)
    est = sp.paper_estimates(fit)
    rows = ["| target | gain | distance | paper's points | from the paper's fit (3.6) | from this fit (1 sigma range) |",
            "|---|---|---|---|---|---|"]
    for i in range(est.sizes["estimate"]):
        e = est.isel(estimate=i)
        rows.append(f"| {e.estimate.values} ({e.kernel.values}) | {_fmt(float(e.gain))} | {_fmt(float(e.target_distance))} | "
                    f"{_fmt(float(e.paper_points))} | {_fmt(float(e.points_paper_fit))} | {_fmt(float(e.points))} "
                    f"[{_fmt(float(e.points_low))}, {_fmt(float(e.points_high))}] |")
    return ["## Distance scaling (Figure 3 right)", "",
            (f"Mean nearest-train FS distance of {ds.sizes['test']} test points, N = {int(ds.n_train.min())} .. "
             f"{int(ds.n_train.max())}: mu = {float(fit.coefficient):.3f} N^({float(fit.exponent):.4f} +- "
             f"{float(fit.exponent_se):.4f}); the paper's (3.6): 0.968 N^-0.184; -1/m = "
             f"{-1 / ds.attrs['real_dimension'] if ds.attrs.get('real_dimension') else float('nan'):.3f}."), "",
            "Points a kernel would need (the paper's gain-distance statements, experiments.spacing):", "",
            *rows, "", *_measured_needs(fit, noise)]


def _measured_needs(fit: Any, noise: Any) -> list[str]:
    """Points needed for a test gain of 100, from this study's own noise curves (paper variant)."""
    from ..experiments import spacing as sp

    if noise is None:
        return []
    rows = ["| kernel | relation points | distance for gain 100 | extrapolated | points needed (1 sigma range) |",
            "|---|---|---|---|---|"]
    for k in noise.kernel.values:
        d, g = _measured_relation(noise, str(k))
        if len(d) < 2:
            rows.append(f"| {k} | {len(d)} | - | - | the test gain never falls from above 1: no read-off |")
            continue
        train_gain = float(noise.gain_train.sel(kernel=k))
        if train_gain < 100:
            rows.append(f"| {k} | {len(d)} | - | - | not with this flow: its train gain {_fmt(train_gain)} "
                        f"< 100 is the test gain's limit at distance 0 |")
            continue
        e = sp.points_for_gain(fit, 100.0, d, g).isel(target=0)
        rows.append(f"| {k} | {len(d)} | {_fmt(float(e.target_distance))} | {bool(e.extrapolated)} | "
                    f"{_fmt(float(e.points))} [{_fmt(float(e.points_low))}, {_fmt(float(e.points_high))}] |")
    return [("The same from this study's own noise curves (test gain against mean nearest-train distance, the "
             "paper's off-X variant, the part above gain 1 where it falls):"), "", *rows, ""]


def _noise_section(ds: Any) -> list[str]:
    rows = ["| kernel | variant | " + " | ".join(f"scale {_fmt(float(s))}" for s in ds.scale.values) + " |",
            "|---|---|" + "---|" * ds.sizes["scale"]]
    for k in ds.kernel.values:
        for v in ds.variant.values:
            cells = [f"{_fmt(float(g))} @ {_fmt(float(d))}" for g, d in
                     zip(ds.gain_test.sel(kernel=k, variant=v).values, ds.distance_to_train.sel(variant=v).values)]
            rows.append(f"| {k} | {v} | " + " | ".join(cells) + " |")
    return ["## Noise study (Figure 3 left)", "",
            "Test gain @ mean nearest-train FS distance; test points are the train points plus complex Gaussian "
            "noise of each scale, off X as in the paper ('paper', formulas evaluated off X: approximate) or projected "
            "back onto X ('projected').  Train gains: " + ", ".join(
                f"{k} {_fmt(float(ds.gain_train.sel(kernel=k)))}" for k in ds.kernel.values) + ".", "", *rows, ""]


def write_report(config: StudyConfig, results: Mapping[str, Any], out: str | os.PathLike,
                 timings: Mapping[str, float]) -> str:
    """Write ``<out>/report.md`` and its PNGs; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = os.fspath(out)
    lines = ["# mfarray study report", "",
             (f"Surface: {config.surface}; seed {config.seed}.  Paper: Halverson & Ruehle, *Metric Flows with "
              "Neural Networks*, §3."), ""]
    figures = []

    def figure(name: str, draw: Any, caption: str) -> None:
        fig = plt.figure(figsize=(9, 3.8))
        draw(fig)
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figures.append(f"![{caption}]({name}.png)\n\n*{caption}*\n")

    if "gains" in results:
        g = results["gains"]
        lines += ["## Train and test gains", "",
                  ("Gain = sigma(g_FS) / sigma(g_flowed), sigma (B.11); train on the first `train points` of one "
                   f"chart, test on {g.attrs['n_test']} independent points.  Paper columns: orders of magnitude read "
                   "from §3.2 and Figure 3 (train at zero distance; best test 'a factor of ~5')."), "",
                  gains_table(g), ""]
        figure("gains", lambda fig: plots.plot_gains(g, ax=fig.add_subplot(1, 1, 1)), "Train and test gains per kernel")
    if "tuning" in results:
        lines += ["## Tuned hyper-parameters", "",
                  ("Bayesian optimisation (mfarray.tune); the last column scores the best parameters on point sets "
                   "never used during tuning (the paper saw its optimiser overfit one set)."),
                  "", _tuning_table(results["tuning"]), ""]
    if "feature_learning" in results or "kernel_evolution" in results:
        lines += _feature_learning_section(results.get("feature_learning"), results.get("kernel_evolution"))
    if "spacing" in results:
        lines += _spacing_section(results["spacing"], results.get("noise"))
    if "noise" in results:
        lines += _noise_section(results["noise"])
    if "figure2" in results:
        f2 = results["figure2"]
        figure("figure2", lambda fig: plots.plot_figure2(f2, axes=fig.subplots(1, f2.sizes["order"])),
               f"Figure 2: FS distances of {f2.attrs['n']} points, unclustered / batched / full clustering")
    for name in ("noise", "spacing"):
        if name in results and hasattr(plots, f"plot_{name}"):
            ds = results[name]
            figure(name, lambda fig, ds=ds, name=name: getattr(plots, f"plot_{name}")(ds, ax=fig.add_subplot(1, 1, 1)),
                   {"noise": "Figure 3 left: gain against distance to the train set",
                    "spacing": "Figure 3 right: nearest-train distance against N"}[name])
    if "kernel_evolution" in results:
        ke = results["kernel_evolution"]
        figure("kernel_evolution", lambda fig: plots.plot_kernel_evolution(ke, ax=fig.add_subplot(1, 1, 1)),
               "Kernel distance and relative change of the empirical metric-NTK after training, per width (issue 13)")
    if figures:
        lines += ["## Figures", ""] + figures
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()] + [""]
    lines += ["## Settings", "", "```toml", to_toml(config).rstrip(), "```", "",
              "## Versions", "", ", ".join(f"{k.removesuffix('_version')} {v}" for k, v in versions().items()), ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return path
