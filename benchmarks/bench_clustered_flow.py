#!/usr/bin/env python
"""Benchmark: the error of neglecting cross-cluster kernel terms (§3.1), ``mfarray.clustered_flow``
against the unclustered frozen-kernel flow ``mfarray.kernel_flow`` (eq. 2.12).

Points: the paper's rejection sampling, ``select_chart(sample_points(fermat_quintic(), 23 M,
seed=7), 0, 1)`` (1 point in ~20 survives), of which the first N = 10^4 are the train points and
the next 2000 the test points (M = N + 2000), computed once.  Clusters: ``mfarray.cluster(train,
size=1000)`` (default batch 10,000, so at N = 10^4 one batch: the full average-linkage
clustering; C = 10), timed on its own.

For each kernel -- ``gaussian_fs`` sigma = 0.05 and sigma = 0.3 (both ``squared=True``, the
heat-kernel form exp(-d^2 / 2 sigma^2)), ``relu_ntk`` (defaults, on patch features) and
``delta`` -- both flows take the same steps (default 30), loss "sigma_squared" (B.14), a dense
operator (``method="dense"``):

- "backtracking": the default control, backtracking from lr = 1 (``kernel_flow``'s defaults);
  the clustered flow with kappa (B.10) of each cluster's own train points (``kappa="cluster"``,
  its default) and of all train points (``kappa="global"``, as the unclustered flow).  Here the
  clustered flow differs from the unclustered one by the kernel entries between clusters, by
  each cluster's own step control and, with ``kappa="cluster"``, by its kappa (module docstring
  of ``mfarray.flows.clustered``); ``delta`` is block-diagonal, so its rows show what the step
  control and kappa alone change.
- "fixed": one fixed step size per kernel (``adaptive=False``, lr about the unclustered flow's
  last backtracking step) and ``kappa="global"``: with no halvings the only difference left is
  the kernel entries between clusters (for ``delta`` none: the same flow to rounding).

Reported: sigma (B.11) of the final train and test metrics of both and their difference
(clustered - unclustered); the largest relative difference of the final metrics over the
points, max_x |g_c(x) - g_u(x)|_F / |g_u(x)|_F (train / test), and its median; halvings (the
clustered flow's summed over clusters) and the last step size (the clustered flow's range over
clusters); wall time of each flow (the clustered one on Dask's threaded scheduler, test
assignment included, clustering not).

Usage::

    python benchmarks/bench_clustered_flow.py            # N = 10^4 (+2000 test), 30 steps
    python benchmarks/bench_clustered_flow.py --quick    # N = 2000 (+400 test), size 200
    python benchmarks/bench_clustered_flow.py --only delta --steps 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model


def point_sets(n_train, n_test, seed=7):
    """(train, test): one-chart quintic points (chart (0, 1)), disjoint, computed."""
    import mfarray as mf

    total = n_train + n_test
    ds = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 23 * total, seed=seed), 0, 1)
    if ds.sizes["point"] < total:
        raise RuntimeError(f"only {ds.sizes['point']} points in chart (0, 1); raise the sample size")
    ds = ds.isel(point=slice(0, total)).compute()
    return ds.isel(point=slice(0, n_train)), ds.isel(point=slice(n_train, total))


def kernels():
    """(name, kernel, fixed lr): the fixed step is about the last one the unclustered flow with
    backtracking takes at N = 10^4, so that neither flow halves it."""
    import mfarray.kernels as K

    return [("gaussian_fs sigma=0.05 sq", K.gaussian_fs.bind(sigma=0.05, squared=True), 5e-3),
            ("gaussian_fs sigma=0.3 sq", K.gaussian_fs.bind(sigma=0.3, squared=True), 1e-4),
            ("relu_ntk (defaults)", K.relu_ntk, 3e-5),
            ("delta", K.delta, 5e-3)]


def rel_diff(a, b):
    """Per point |a - b|_F / |b|_F of metrics (N, k, k)."""
    return np.linalg.norm(a - b, axis=(1, 2)) / np.linalg.norm(b, axis=(1, 2))


def reference(kernel, train, test, steps, control):
    """(the unclustered flow's result, its wall time) or (FlowError message, None)."""
    import mfarray as mf

    t = time.perf_counter()
    try:
        ref = mf.kernel_flow(train, kernel, steps=steps, test=test, method="dense", **control)
    except mf.FlowError as err:
        return f"unclustered: FlowError at step {err.step}", None
    return ref, time.perf_counter() - t


def compare(name, kernel, ref, t_ref, clustered, test, steps, kappa, control):
    """One row: the clustered flow with ``kappa`` against the unclustered result ``ref``."""
    import mfarray as mf

    row = {"kernel": name, "kappa": kappa, "t_ref": t_ref}
    t = time.perf_counter()
    try:
        got = mf.clustered_flow(clustered, kernel, steps=steps, test=test, method="dense", kappa=kappa,
                                **control).compute()
    except mf.FlowError as err:
        return {**row, "error": f"clustered: FlowError in cluster {getattr(err, 'cluster', '?')} at step {err.step}"}
    row["t_clu"] = time.perf_counter() - t
    ev_ref, ev_got = mf.evaluate(ref), mf.evaluate(got)
    for part in ("train", "test"):
        row[f"s0_{part}"] = float(ev_ref[f"sigma_{part}_initial"])
        row[f"ref_{part}"] = float(ev_ref[f"sigma_{part}_final"])
        row[f"clu_{part}"] = float(ev_got[f"sigma_{part}_final"])
        d = rel_diff(got[f"g_{part}"].values, ref[f"g_{part}"].values)
        row[f"maxrel_{part}"], row[f"medrel_{part}"] = float(d.max()), float(np.median(d))
    row["halvings_ref"] = int(ref.rejected.sum())
    row["halvings_clu"] = int(np.nansum(got.cluster_rejected.values))
    lr = got.cluster_lr.values[:, -1]
    row["lr"] = f"{float(ref.lr[-1]):.3g} | {np.nanmin(lr):.3g}..{np.nanmax(lr):.3g}"
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", default="", help="run only the kernels whose name contains this text")
    a = ap.parse_args()
    n_train, n_test, size = (2000, 400, 200) if a.quick else (10_000, 2000, 1000)

    import dask

    import mfarray as mf

    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before {load[0]:.2f}")
    t = time.perf_counter()
    train, test = point_sets(n_train, n_test)
    print(f"points: {n_train} train + {n_test} test in chart (0, 1), sampled in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    clustered = mf.cluster(train, size=size).compute()
    sizes = np.bincount(clustered["cluster"].values)
    print(f"clustering (size {size}, batch 10000): {sizes.size} clusters of {sizes.min()}..{sizes.max()} train points "
          f"in {time.perf_counter() - t:.1f} s")
    print(f"flows: {a.steps} steps, loss sigma_squared, method dense; "
          f"clustered flow on Dask's threaded scheduler ({dask.config.get('num_workers', None) or os.cpu_count()} "
          "workers)\n")

    head = (f"{'kernel':26s} {'control':12s} {'kappa':7s} {'sigma0 tr/te':>13s} {'unclustered tr/te':>17s} "
            f"{'clustered tr/te':>17s} {'diff tr/te':>17s} {'max rel dg tr/te':>17s} {'median rel dg':>17s} "
            f"{'time u/c s':>11s} {'halvings u/c':>12s}  final lr u | c")
    print(head)
    rows = []
    for name, kernel, lr in kernels():
        if a.only not in name:
            continue
        for label, control, kappas in (("backtracking", {}, ("cluster", "global")),
                                       (f"fixed {lr:.0e}", {"lr": lr, "adaptive": False}, ("global",))):
            ref, t_ref = reference(kernel, train, test, a.steps, control)
            if t_ref is None:
                print(f"{name:26s} {label:12s} {ref}")
                continue
            for kappa in kappas:
                r = compare(name, kernel, ref, t_ref, clustered, test, a.steps, kappa, control)
                rows.append({**r, "control": label})
                lead = f"{name:26s} {label:12s} {kappa:7s}"
                if "error" in r:
                    print(f"{lead} {r['error']}")
                    continue
                print(f"{lead} {r['s0_train']:6.4f}/{r['s0_test']:6.4f} {r['ref_train']:8.5f}/{r['ref_test']:8.5f} "
                      f"{r['clu_train']:8.5f}/{r['clu_test']:8.5f} "
                      f"{r['clu_train'] - r['ref_train']:+8.5f}/{r['clu_test'] - r['ref_test']:+8.5f} "
                      f"{r['maxrel_train']:8.2e}/{r['maxrel_test']:8.2e} {r['medrel_train']:8.2e}/"
                      f"{r['medrel_test']:8.2e} {r['t_ref']:5.1f}/{r['t_clu']:5.1f} "
                      f"{r['halvings_ref']:5d}/{r['halvings_clu']:5d}  {r['lr']}", flush=True)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    return rows


if __name__ == "__main__":
    main()
