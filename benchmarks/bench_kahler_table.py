"""Issue 12's table: test sigma versus number of parameters versus time, per surface, for
Donaldson's balanced metrics, the sigma-optimised algebraic metric, the frozen phi-kernel flow
(the linear phi-model over orthonormal degree-k sections from the balanced metric) and a 3 x 64
phi-network -- every method on the same independent test set, every point in its own chart.

    python benchmarks/bench_kahler_table.py [--surfaces quintic dwork:0.5 k3] [--scale 1.0] [--steps S]

``--scale`` multiplies every point count (0.2 for a quick look).  Prints a markdown table per
surface (docs/kahler-results.md keeps the measured ones).  Donaldson k = 2..8 in full is
``benchmarks/bench_donaldson.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import mfarray as mf
from mfarray import backend
from mfarray.kahler import PhiNetwork, algebraic, network, section_count, train_phi_network

# per surface: (degree k of the kernel and the algebraic metrics, train points, kernel steps)
SETTINGS = {"quintic": (5, 100_000, 200), "dwork:0.5": (5, 100_000, 200), "k3": (6, 60_000, 200)}


def row(method, params, n, seconds, sigma):
    return f"| {method} | {params} | {n} | {seconds:.0f} s | {sigma:.4f} |"


def surface_table(name, scale, n_test=20_000, steps=None):
    surface = mf.geometry.surface_named(name)
    k, n, default_steps = SETTINGS[name]
    steps = steps or default_steps
    n = int(n * scale)
    train = mf.sample_points(surface, n, seed=1).compute()
    test = mf.sample_points(surface, n_test, seed=2).compute()
    n_s = section_count(surface, k)
    lines = [f"### {surface.label} (train {n} points, test {n_test} others)", "",
             "| method | parameters | train points | time (2 cores) | test sigma |", "|---|---|---|---|---|"]
    lines.append(row("Fubini-Study", 0, 0, 0, float(mf.sigma_measure(test))))
    with backend.one_blas_thread():
        start = time.perf_counter()
        bal = algebraic.balanced_metric(surface, train, k)
        t_bal = time.perf_counter() - start
        s_bal = algebraic.algebraic_sigma(surface, test, bal.H, k)
    lines.append(row(f"Donaldson balanced, k = {k}", n_s * n_s, n, t_bal, s_bal))
    print("\n".join(lines), flush=True)
    start = time.perf_counter()
    opt = algebraic.optimise_sigma(surface, train.isel(point=slice(0, min(n, 30_000))), bal.H, k, steps=100)
    lines.append(row(f"algebraic, H optimised (Adam, 100 steps), k = {k}", n_s * n_s, min(n, 30_000),
                     t_bal + time.perf_counter() - start, algebraic.algebraic_sigma(surface, test, opt.H, k)))
    print(lines[-1], flush=True)
    start = time.perf_counter()
    r = mf.kahler_flow(train, k, steps=steps, test=test, reference="balanced")
    lines.append(row(f"phi-kernel flow from balanced, k = {k}, {steps} steps", n_s * n_s, n,
                     time.perf_counter() - start, float(r.sigma_test.values[-1])))
    print(lines[-1], flush=True)
    config = PhiNetwork()
    n_net = min(n, 20_000)
    start = time.perf_counter()
    res = train_phi_network(train.isel(point=slice(0, n_net)), config, 20, 128, 3e-2, test=test, lr_decay=0.85)
    lines.append(row("phi-network 3 x 64 (gelu), 20 epochs", network.num_params(config, surface), n_net,
                     time.perf_counter() - start, float(res.sigma_test.values[-1])))
    print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--surfaces", nargs="+", default=list(SETTINGS))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None, help="phi-kernel flow steps (default per surface)")
    a = ap.parse_args()
    print(f"# {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    for name in a.surfaces:
        print(surface_table(name, a.scale, steps=a.steps), "\n", flush=True)
