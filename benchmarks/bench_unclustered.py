"""Unclustered frozen-kernel flow steps at N = 10^5 train points (issue 10): the exact operator
(BlockwiseOperator: every tile recomputed each step, symmetric tiles, fused numba tiles), wall
time per step, the projection to 100 steps, and the peak memory.

    nice -n 10 python benchmarks/bench_unclustered.py [--n 100000] [--steps 2] [--kernels gaussian relu]
        [--dtypes float64 float32]

The flow runs a few steps with a fixed step size (one mat-vec each, no test set) so that the
time per step is the mat-vec's; 100 steps take 100 times that.  On a shared machine the wall
time depends on the other jobs; the process CPU time per step (both threads) divided by the 2
cores is the wall time the step would take on two free cores (the tiles scale linearly: one
thread per core, no shared state).  The operator is exact (float64
tiles, no entry dropped), so its error against "the exact operator" is rounding: fused vs
NumPy tiles differ by <= 1.2e-15 relative in the mat-vec (tests/test_fused_kernels.py).
With ``--dtypes float64 float32`` each kernel also runs with float32 tiles (float64 inner
products, float32 kernel and products, float64 sums: mfarray.kernels.fused32), and the
float32 flow's metrics are compared with the float64 flow's after the same steps (max
relative Frobenius difference per point, "max rel dg").
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from machine import cpu_model, peak_rss_gb

import mfarray as mf
from mfarray.kernels import gaussian_fs, relu_ntk

KERNELS = {"gaussian": gaussian_fs.bind(sigma=0.3, squared=True), "relu": relu_ntk}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS))
    ap.add_argument("--dtypes", nargs="+", default=["float64"], choices=["float64", "float32"])
    args = ap.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.python_version()}, numpy {np.__version__}, "
          f"load {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    train = mf.sample_chart(n=args.n, seed=0).compute()
    print(f"points: {args.n} one-chart quintic points in {time.perf_counter() - t:.0f} s; peak RSS {peak_rss_gb():.2f} GB")
    print("| kernel | dtype | N | steps | s per step | CPU s per step | 100 steps (projected) | "
          "100 steps from CPU / 2 cores | sigma before -> after | max rel dg vs float64 | peak RSS GB | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs = [(name, dtype) for name in args.kernels for dtype in args.dtypes]
    reference = {}
    for name, dtype in runs:
        times, cpus = [], []
        last = [time.perf_counter(), time.process_time()]

        def callback(step, info, times=times, cpus=cpus, last=last):
            now, cpu = time.perf_counter(), time.process_time()
            times.append(now - last[0])
            cpus.append(cpu - last[1])
            last[0], last[1] = now, cpu

        last[0], last[1] = time.perf_counter(), time.process_time()
        kernel = KERNELS[name] if dtype == "float64" else KERNELS[name].bind(dtype=dtype)
        result = mf.kernel_flow(train, kernel, steps=args.steps, lr=1e-6, adaptive=False, method="blockwise",
                                callback=callback)
        g = result["g_train"].values.reshape(args.n, -1)
        if dtype == "float64":
            reference[name] = g
        dg = (f"{np.max(np.linalg.norm(g - reference[name], axis=1) / np.linalg.norm(reference[name], axis=1)):.1e}"
              if dtype != "float64" and name in reference else "-")
        ev = mf.evaluate(result)
        per_step = float(np.median(times[1:] if len(times) > 1 else times))
        cpu_step = float(np.median(cpus[1:] if len(cpus) > 1 else cpus))
        print(f"| {name} | {dtype} | {args.n} | {args.steps} | {per_step:.1f} | {cpu_step:.1f} | "
              f"{100 * per_step / 60:.0f} min | {100 * cpu_step / 2 / 60:.0f} min | {float(ev.sigma_train_initial):.5f} -> "
              f"{float(ev.sigma_train_final):.7f} | {dg} | {peak_rss_gb():.2f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
