"""Benchmark: feature learning, measured (mfarray.experiments.feature_learning, after_kernel,
phi_kernel; issue 13) on one-chart Fermat-quintic points.

Parts (each can be skipped):

1. timing -- one epoch of the 3 x 64 metric network (ReLU, Adam, batch 128) over ``--n-time``
   points (default 10^5).  Goal: under 10 s on 2 cores.  The epoch cost does not depend on
   whether points repeat, so ``--n-unique`` sampled points (default 2 x 10^4: one-chart
   rejection sampling of 10^5 points takes minutes here) are tiled up to ``--n-time``.
2. checkpoints -- kernel statistics of a ``--n-probe`` (1000) point probe (empirical metric-NTK
   (1000, 1000, 9, 9) against Theta_0, alignments): seconds per checkpoint beside seconds per
   epoch, and the overhead of the default checkpoints (0, 1, 2, 4, ..., E) of an E-epoch run
   (``--overhead-epochs``, 50) at that epoch time.  Goal: at most 10 %.
3. after-kernel -- ``--epochs`` epochs of the 3 x 64 network on ``--n-train`` points, then the
   frozen-kernel flows (``--flow-steps``) of the initial empirical NTK, the analytic ReLU NTK and
   the after-kernel; test sigma and gains on ``--n-test`` points, with the kernel distance of the
   run on a ``--n-probe-small`` probe.
4. widths -- kernel_evolution (1 hidden ReLU layer, SGD) over widths 64 ... 4096: final kernel
   distance and change per width and their log-log rates.
5. phi -- the phi-network's kernel distance and alignment on a small probe during training.

    python benchmarks/bench_feature_learning.py [--n-time 100000] [--n-unique 20000] [--n-probe 1000]
        [--n-train 2000] [--n-test 1000] [--epochs 20] [--flow-steps 300] [--skip timing,checkpoints,...]

The machine's load (``/proc/loadavg``) is printed before and after each part: on a shared
machine wall times are only comparable at equal load.

Measured (2-core AMD EPYC shared with other jobs; figures in the report of issue 13 with the load
of each run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import xarray as xr

import mfarray as mf
from mfarray.experiments.after_kernel import after_kernel_experiment
from mfarray.experiments.feature_learning import (
    default_checkpoints,
    kernel_evolution,
    metric_mlp,
    train_metric_network,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
PARTS = ("timing", "checkpoints", "after_kernel", "widths", "phi")


from machine import load, machine_info


def chart_points(n: int, seed: int, chart: tuple | None = None) -> xr.Dataset:
    t = time.perf_counter()
    ds = mf.sample_chart(mf.fermat_quintic(), n, seed=seed, chart=chart).compute()
    print(f"  sampled {n} one-chart points (seed {seed}) in {time.perf_counter() - t:.1f} s", flush=True)
    return ds


def tiled(ds: xr.Dataset, n: int) -> xr.Dataset:
    """``ds`` repeated up to n points (weights kept: their mean stays 1)."""
    reps = -(-n // ds.sizes["point"])
    out = xr.concat([ds] * reps, dim="point").isel(point=slice(0, n))
    return out.assign_coords(point=np.arange(n))


def part_timing(args, pts):
    print(f"\n[1] one epoch over {args.n_time} points ({pts.sizes['point']} sampled, tiled), "
          f"3 x 64 {args.activation}, "
          f"Adam, batch {args.batch}; load {load()}", flush=True)
    train = tiled(pts, args.n_time)
    r = train_metric_network(train, metric_mlp(activation=args.activation), 2, args.batch, 1e-2)
    print(f"  epoch times {[round(float(t), 2) for t in r.time.values[1:]]} s (training steps), sigma evaluation "
          f"of {args.n_time} points {float(r.eval_time.values[1]):.2f} s; sigma_train {r.sigma_train.values[0]:.4f} "
          f"-> {r.sigma_train.values[-1]:.4f}; load {load()}", flush=True)
    return float(np.min(r.time.values[1:]))


def part_checkpoints(args, pts, probe, epoch_seconds):
    print(f"\n[2] kernel checkpoints, {probe.sizes['point']}-point probe (empirical metric-NTK "
          f"({probe.sizes['point']}, {probe.sizes['point']}, 9, 9)); load {load()}", flush=True)
    train = tiled(pts, args.n_time)
    r = train_metric_network(train, metric_mlp(activation=args.activation), 2, args.batch, 1e-2, probe=probe,
                             checkpoints=(0, 1, 2))
    kt = r.kernel_time.values
    per = float(np.mean(kt[1:]))
    epoch = float(np.mean(r.time.values[1:])) if epoch_seconds is None else epoch_seconds
    marks = default_checkpoints(args.overhead_epochs)
    overhead = (kt[0] + per * (len(marks) - 1)) / (epoch * args.overhead_epochs)
    print(f"  checkpoint 0 (Theta_0 kept as upper blocks): {kt[0]:.2f} s; later checkpoints {per:.2f} s each "
          f"({[round(float(t), 2) for t in kt[1:]]}); epoch over {args.n_time} points {epoch:.2f} s", flush=True)
    print(f"  kernel distance after 1, 2 epochs: {r.kernel_distance.values[1]:.4g}, {r.kernel_distance.values[2]:.4g}; "
          f"alignment {r.alignment.values[-1]:.4g} vs Theta_0's {r.alignment_initial_kernel.values[-1]:.4g}")
    print(f"  overhead of the default checkpoints {marks} of a {args.overhead_epochs}-epoch run: "
          f"{100 * overhead:.1f} % of the training time (this 2-epoch run: "
          f"{100 * r.attrs['kernel_overhead']:.0f} %); load {load()}", flush=True)


def part_after_kernel(args, pts):
    train = pts.isel(point=slice(0, args.n_train))
    test = pts.isel(point=slice(args.n_train, args.n_train + args.n_test))
    probe = pts.isel(point=slice(args.n_train + args.n_test, args.n_train + args.n_test + args.n_probe_small))
    print(f"\n[3] after-kernel: 3 x 64 {args.activation}, {args.epochs} epochs Adam lr {args.lr} x "
          f"{args.lr_decay}^epoch, batch "
          f"{args.batch_small}, {args.n_train} train / {args.n_test} test points; flows {args.flow_steps} steps "
          f"(sigma_squared, backtracking); load {load()}", flush=True)
    t = time.perf_counter()
    r = train_metric_network(train, metric_mlp(activation=args.activation), args.epochs, args.batch_small, args.lr,
                             test=test, probe=probe, lr_decay=args.lr_decay)
    distances = dict(zip(r.checkpoint.values.tolist(), np.round(r.kernel_distance.values, 4).tolist()))
    print(f"  trained in {time.perf_counter() - t:.1f} s (kernel checkpoints {r.attrs['kernel_seconds']:.1f} s); "
          f"sigma_test {r.sigma_test.values[0]:.4f} -> {r.sigma_test.values[-1]:.4f}; kernel distance per "
          f"checkpoint {distances}")
    print(f"  alignment Theta_t {np.round(r.alignment.values, 4).tolist()}, Theta_0 "
          f"{np.round(r.alignment_initial_kernel.values, 4).tolist()}", flush=True)
    ds = after_kernel_experiment(train, test, result=r, flow_steps=args.flow_steps)
    print(f"  {'model':<14}{'sigma_train':>12}{'sigma_test':>12}{'gain_train':>12}{'gain_test':>11}{'seconds':>9}")
    for m in ds.model.values:
        row = ds.sel(model=m)
        print(f"  {m:<14}{float(row.sigma_train):>12.4f}{float(row.sigma_test):>12.4f}{float(row.gain_train):>12.2f}"
              f"{float(row.gain_test):>11.2f}{float(row.seconds):>9.1f}")
    print(f"  load {load()}", flush=True)


def part_widths(args, pts):
    train = pts.isel(point=slice(0, args.n_train))
    probe = pts.isel(point=slice(args.n_train, args.n_train + args.n_probe_small))
    print(f"\n[4] kernel_evolution: 1 hidden ReLU layer, SGD lr {args.width_lr}, {args.width_epochs} epochs, batch "
          f"{args.batch_small}, {args.n_train} points, probe {args.n_probe_small}; load {load()}", flush=True)
    ds = kernel_evolution(train, probe, widths=(64, 256, 1024, 4096), epochs=args.width_epochs, lr=args.width_lr,
                          batch=args.batch_small)
    for w in ds.width.values:
        row = ds.sel(width=w)
        print(f"  width {w:>5}: distance {float(row.kernel_distance):.3e}, change {float(row.kernel_change):.3e}, "
              f"|Theta_0 - Theta_bar|/|Theta_bar| {float(row.analytic_distance):.3f}, sigma_train "
              f"{float(row.sigma_train):.4f} ({float(row.seconds):.1f} s)")
    print(f"  rates: distance {ds.attrs['rate']:.2f} +- {ds.attrs['rate_se']:.2f}, change "
          f"{ds.attrs['change_rate']:.2f} +- {ds.attrs['change_rate_se']:.2f} (theory: change <= -1/2, leading -1; "
          f"distance twice the change's); load {load()}", flush=True)


def part_phi(args):
    from mfarray.experiments.phi_kernel import phi_kernel_evolution
    from mfarray.kahler.network import PhiNetwork

    q = mf.fermat_quintic()
    train = mf.sample_points(q, args.n_train, seed=11).compute()
    test = mf.sample_points(q, args.n_test, seed=12).compute()
    probe = mf.sample_points(q, args.n_probe_phi, seed=13).compute()
    print(f"\n[5] phi-network 3 x 64 gelu, {args.phi_epochs} epochs on {args.n_train} points, probe "
          f"{args.n_probe_phi} (own charts); load {load()}", flush=True)
    r = phi_kernel_evolution(train, PhiNetwork((64, 64, 64)), args.phi_epochs, 128, 3e-2, probe, test=test,
                             lr_decay=0.85)
    print(f"  sigma_test {r.sigma_test.values[0]:.4f} -> {r.sigma_test.values[-1]:.4f}")
    for i, e in enumerate(r.checkpoint.values):
        print(f"  epoch {e:>3}: distance {r.kernel_distance.values[i]:.4f}, change {r.kernel_change.values[i]:.3g}, "
              f"alignment {r.alignment.values[i]:.4f} (Theta_0 {r.alignment_initial_kernel.values[i]:.4f}), "
              f"kernel {r.kernel_time.values[i]:.2f} s")
    print(f"  load {load()}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-time", type=int, default=100_000)
    ap.add_argument("--n-unique", type=int, default=20_000)
    ap.add_argument("--n-probe", type=int, default=1000)
    ap.add_argument("--n-probe-small", type=int, default=200)
    ap.add_argument("--n-probe-phi", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batch-small", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lr-decay", type=float, default=0.9)
    ap.add_argument("--flow-steps", type=int, default=300)
    ap.add_argument("--overhead-epochs", type=int, default=50)
    ap.add_argument("--width-epochs", type=int, default=5)
    ap.add_argument("--width-lr", type=float, default=0.05)
    ap.add_argument("--phi-epochs", type=int, default=8)
    ap.add_argument("--activation", default="relu", choices=("relu", "tanh"), help="of the 3 x 64 network")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip, of {PARTS}")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(PARTS):
        ap.error(f"--skip takes parts of {PARTS}; got {sorted(skip - set(PARTS))}")
    print(machine_info(), flush=True)
    t0 = time.perf_counter()
    pts = None
    if {"timing", "checkpoints", "after_kernel", "widths"} - skip:
        pts = chart_points(max(args.n_unique, args.n_train + args.n_test + max(args.n_probe, args.n_probe_small)), 21)
    epoch_seconds = None
    if "timing" not in skip:
        epoch_seconds = part_timing(args, pts)
    if "checkpoints" not in skip:
        probe = chart_points(args.n_probe, 22, tuple(int(c) for c in pts.attrs["chart"]))
        part_checkpoints(args, pts, probe, epoch_seconds)
    if "after_kernel" not in skip:
        part_after_kernel(args, pts)
    if "widths" not in skip:
        part_widths(args, pts)
    if "phi" not in skip:
        part_phi(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load {load()}")


if __name__ == "__main__":
    main()
