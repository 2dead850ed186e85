"""The frozen phi-kernel flow (issue 12 goal: test sigma <= 0.015 on the Fermat quintic, a gain of
25 over g_FS, where the paper's kernels reach about 5): the linear phi-model over degree-k
sections, orthonormal in L^2 of the train sample (mfarray.kahler_flow(train, k)), against the
same model over the bare monomials.  Every sampled point is used, in its own chart.

    python benchmarks/bench_kahler_kernel.py --n 30000 --k 5 --steps 200 [--basis monomial] [--reference balanced]

Prints one line per run: surface, k, P, N train / test, steps, time, train and test sigma at
steps 0, 10 %, ..., 100 % and the best test sigma.
"""

import argparse
import os
import time

import numpy as np

import mfarray as mf
from mfarray.kahler import SectionPotential


def run(surface_name, n, n_test, k, steps, basis, seed=1, loss="sigma_squared", reference="fs"):
    surface = mf.geometry.surface_named(surface_name)
    train = mf.sample_points(surface, n, seed=seed).compute()
    test = mf.sample_points(surface, n_test, seed=seed + 1000).compute()
    model = k if basis == "orthonormal" else SectionPotential(k)
    start = time.perf_counter()
    r = mf.kahler_flow(train, model, steps=steps, test=test, loss=loss, progress=True,
                       reference=reference if basis == "orthonormal" else None)
    seconds = time.perf_counter() - start
    picks = np.unique(np.linspace(0, steps, 11).astype(int))
    s_tr, s_te = r.sigma_train.values, r.sigma_test.values
    best = int(np.argmin(s_te))
    print(f"| {surface_name} | {k} | {basis}, from {reference} | {SectionPotential(k).size(surface)} | {n} / {n_test} | {steps} | "
          f"{seconds:.0f} s | {s_tr[0]:.4f} -> {s_tr[-1]:.4f} | {s_te[0]:.4f} -> {s_te[-1]:.4f} | "
          f"{s_te[best]:.4f} (step {best}) |", flush=True)
    print("  train", np.round(s_tr[picks], 4).tolist(), "\n  test ", np.round(s_te[picks], 4).tolist(), flush=True)
    return r


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--surface", default="quintic")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--basis", default="orthonormal", choices=["orthonormal", "monomial"])
    ap.add_argument("--loss", default="sigma_squared")
    ap.add_argument("--reference", default="fs", choices=["fs", "balanced"])
    a = ap.parse_args()
    print(f"# machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| surface | k | basis | P | N train / test | steps | time | train sigma | test sigma | best test |")
    run(a.surface, a.n, a.n_test, a.k, a.steps, a.basis, loss=a.loss, reference=a.reference)
