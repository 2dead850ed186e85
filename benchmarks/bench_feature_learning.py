"""Benchmark: feature learning, measured (mfarray.experiments.feature_learning, after_kernel,
phi_kernel; issue 13) on one-chart Fermat-quintic points.

Parts (each can be skipped):

1. timing -- one epoch of the 3 x 64 metric network (ReLU, Adam, batch 128) over ``--n-time``
   points (default 10^5).  Goal: under 10 s on 2 cores.  The epoch cost does not depend on
   whether points repeat, so ``--n-unique`` sampled points (default 2 x 10^4: one-chart
   rejection sampling of 10^5 points takes minutes here) are tiled up to ``--n-time``.
2. checkpoints -- kernel statistics of a ``--n-probe`` (1000) point probe (empirical metric-NTK
   (1000, 1000, 9, 9) against Theta_0, alignments) during ``--schedule-epochs`` (20) epochs over
   ``--n-time`` points with the default checkpoints (0, 1, 2, 4, ..., E); at every checkpoint
   three paths in turn (``SideBySide``), so that they share the run's epochs and load: the
   previous implementation (``PreviousProbeKernel``, kept here), the fused tiles in float64 (the
   default) and in float32.  Per path: seconds per checkpoint, in epochs, and the checkpoints'
   share of the training time (measured, and projected to ``--overhead-epochs``, 50), the
   speed-ups and the paths' kernel distances against each other.  ``--schedule-runs`` (2) runs.
   Goal: at most 10 %.
3. after-kernel -- ``--epochs`` epochs of the 3 x 64 network on ``--n-train`` points, then the
   frozen-kernel flows (``--flow-steps``) of the initial empirical NTK, the analytic ReLU NTK and
   the after-kernel; test sigma and gains on ``--n-test`` points, with the kernel distance of the
   run on a ``--n-probe-small`` probe.
4. widths -- kernel_evolution (1 hidden ReLU layer, SGD) over widths 64 ... 4096: final kernel
   distance and change per width and their log-log rates.
5. phi -- the phi-network's kernel distance and alignment on a small probe during training.

    python benchmarks/bench_feature_learning.py [--n-time 100000] [--n-unique 20000] [--n-probe 1000]
        [--n-train 2000] [--n-test 1000] [--epochs 20] [--flow-steps 300] [--schedule-epochs 20]
        [--skip timing,checkpoints,...]

The machine's load (``/proc/loadavg``) is printed before and after each part: on a shared
machine wall times are only comparable at equal load.

Measured (2-core AMD EPYC shared with other jobs; figures in the report of issue 13 with the load
of each run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import xarray as xr

import mfarray as mf
from mfarray import backend
from mfarray import networks as nw
from mfarray.experiments import feature_learning
from mfarray.experiments.after_kernel import after_kernel_experiment
from mfarray.experiments.feature_learning import (
    default_checkpoints,
    kernel_evolution,
    metric_mlp,
    train_metric_network,
)
from mfarray.experiments.probe_kernel import ProbeKernel
from mfarray.kernels.empirical import empirical_ntk

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


class PreviousProbeKernel:
    """The probe kernel before the fused tiles (kept here for the before/after figures): each upper
    row block a separate ``empirical_ntk(x[r0:r1], x[r0:])`` on the array path (no symmetric
    tiles), about 64 MiB a block, Theta_0's blocks as (rows, n - r0, c, c) float64, and the sums by
    whole-block ``vdot``s and a difference block."""

    def __init__(self, config, params0, x, block_rows=None, *, dtype="float64", n_threads=None):
        self.config, self.params0 = config, params0
        self.x = np.asarray(x, dtype=np.float64)
        n, c = self.x.shape[0], config.c_out
        self.rows = int(block_rows) if block_rows else max(8, min(n, 64 * 2**20 // (n * c * c * 8)))
        with backend.one_blas_thread():
            self.blocks0 = list(self._blocks(params0))
        self.norm0 = math.sqrt(sum(self._inner_block(b, b, r1 - r0) for r0, r1, b in self.blocks0))

    def _blocks(self, params):
        n = self.x.shape[0]
        for r0 in range(0, n, self.rows):
            r1 = min(n, r0 + self.rows)
            yield r0, r1, empirical_ntk(self.config, params, self.x[r0:r1], self.x[r0:], symmetric=False,
                                        method="array")

    @staticmethod
    def _inner_block(a, b, r):
        whole = float(np.vdot(a, b))
        diag = float(np.vdot(np.ascontiguousarray(a[:, :r]), np.ascontiguousarray(b[:, :r])))
        return 2.0 * whole - diag

    def statistics(self, params, y):
        y = np.asarray(y, dtype=np.float64)
        inner = norm2 = change2 = 0.0
        same = params is self.params0
        with backend.one_blas_thread():
            for (r0, r1, b0), (_, _, bt) in zip(self.blocks0, self.blocks0 if same else self._blocks(params)):
                if same:
                    inner = norm2 = self.norm0**2
                    break
                inner += self._inner_block(b0, bt, r1 - r0)
                norm2 += self._inner_block(bt, bt, r1 - r0)
                bt -= b0
                change2 += self._inner_block(bt, bt, r1 - r0)
            norm = math.sqrt(norm2)
            yy = float(np.vdot(y, y))
            out = {"kernel_distance": 1.0 - inner / (self.norm0 * norm),
                   "kernel_change": math.sqrt(change2) / self.norm0, "kernel_norm": norm}
            for key, p, nrm in (("alignment", params, norm), ("alignment_initial_kernel", self.params0, self.norm0)):
                quad = float(np.sum(nw.flatten(nw.vjp(self.config, p, self.x, y)) ** 2))
                out[key] = quad / (nrm * yy) if yy > 0 else math.nan
        return out


PATHS = (("previous", PreviousProbeKernel, "float64"), ("fused float64", ProbeKernel, "float64"),
         ("fused float32", ProbeKernel, "float32"))


class SideBySide:
    """A probe kernel for train_metric_network that runs every checkpoint with each of PATHS in turn
    (the order rotating from checkpoint to checkpoint), timing each apart, and returns the statistics
    of the default path (fused float64): the paths share one run, its epochs and its load."""

    def __init__(self, config, params0, x, block_rows=None, *, dtype="float64", n_threads=None):
        self.params0, self.kernels, self.times, self.stats = params0, {}, {p[0]: [] for p in PATHS}, []
        for label, cls, dt in PATHS:
            t = time.perf_counter()
            self.kernels[label] = cls(config, params0, x, block_rows, dtype=dt, n_threads=n_threads)
            self.times[label].append(time.perf_counter() - t)  # Theta_0: part of checkpoint 0

    def statistics(self, params, y):
        out, first = {}, params is self.params0
        order = list(self.kernels)
        k = len(self.stats) % len(order)
        for label in order[k:] + order[:k]:
            t = time.perf_counter()
            out[label] = self.kernels[label].statistics(params, y)
            dt = time.perf_counter() - t
            if first:
                self.times[label][0] += dt
            else:
                self.times[label].append(dt)
        self.stats.append(out)
        return out["fused float64"]


def part_checkpoints(args, pts, probe):
    n_probe = probe.sizes["point"]
    marks = default_checkpoints(args.schedule_epochs)
    print(f"\n[2] kernel checkpoints, {n_probe}-point probe (empirical metric-NTK ({n_probe}, {n_probe}, 9, 9)), "
          f"3 x 64 {args.activation}, Adam, batch {args.batch}, {args.n_time} train points, {args.schedule_epochs} "
          f"epochs with the default checkpoints {marks}; every checkpoint by each path in turn "
          f"({', '.join(p[0] for p in PATHS)}); load {load()}", flush=True)
    t = time.perf_counter()
    cfg = metric_mlp(activation=args.activation)
    small = np.random.default_rng(0).standard_normal((8, cfg.d_in))
    for dtype in ("float64", "float32"):  # numba: compiled once per machine (on-disk cache), loaded per process
        ProbeKernel(cfg, nw.init(cfg, 0), small, dtype=dtype).statistics(nw.init(cfg, 1), np.ones((8, cfg.c_out)))
    print(f"  fused tiles compiled or loaded from numba's cache in {time.perf_counter() - t:.1f} s (once per "
          f"process; not counted below)", flush=True)
    train = tiled(pts, args.n_time)
    marks50 = default_checkpoints(args.overhead_epochs)
    made = []

    def side_by_side(*a, **kw):
        made.append(SideBySide(*a, **kw))
        return made[-1]

    for seed in range(args.schedule_runs):
        saved = feature_learning.ProbeKernel
        feature_learning.ProbeKernel = side_by_side  # the training loop builds its probe kernel by this name
        try:
            r = train_metric_network(train, cfg, args.schedule_epochs, args.batch, 1e-2, probe=probe, seed=seed)
        finally:
            feature_learning.ProbeKernel = saved
        sbs = made[-1]
        ep = r.time.values[1:]
        epoch, train_s = float(np.mean(ep)), r.attrs["train_seconds"]
        # what every path shares at a checkpoint (the probe's targets y, parameters): the rest of kernel_time
        shared = r.kernel_time.values - sum(np.asarray(v) for v in sbs.times.values())
        print(f"  run {seed}: epochs {epoch:.2f} s (min {ep.min():.2f}, max {ep.max():.2f}), training "
              f"{train_s:.1f} s; per checkpoint shared {np.mean(shared):.3f} s (targets y); load {load()}")
        for label, times in sbs.times.items():
            kt = np.asarray(times) + shared
            later = float(np.mean(kt[1:]))
            proj = (kt[0] + later * (len(marks50) - 1)) / (epoch * args.overhead_epochs)
            print(f"    {label:<14} checkpoint 0 (Theta_0) {kt[0]:.2f} s, later {later:.2f} s each "
                  f"({[round(float(v), 2) for v in kt[1:]]}) = {later / epoch:.2f} epochs; all {kt.sum():.1f} s = "
                  f"{100 * kt.sum() / train_s:.1f} % of training ({args.overhead_epochs} epochs, projected: "
                  f"{100 * proj:.1f} %)")
        prev = np.asarray(sbs.times["previous"][1:])
        for label in ("fused float64", "fused float32"):
            ratio = prev / np.asarray(sbs.times[label][1:])
            print(f"    speed-up of {label} over previous, per checkpoint: median {np.median(ratio):.1f}x "
                  f"(range {ratio.min():.1f}-{ratio.max():.1f}); Theta_0 {sbs.times['previous'][0] / sbs.times[label][0]:.1f}x")
        ref = np.array([s["fused float64"]["kernel_distance"] for s in sbs.stats[1:]])
        for label in ("previous", "fused float32"):
            d = np.array([s[label]["kernel_distance"] for s in sbs.stats[1:]])
            print(f"    kernel distance, {label} vs fused float64: max relative deviation "
                  f"{np.abs(d / ref - 1).max():.1e} (distances {ref.min():.3g} ... {ref.max():.3g})")
        print(f"    load {load()}", flush=True)


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
    ap.add_argument("--schedule-epochs", type=int, default=20, help="epochs of the checkpoint runs")
    ap.add_argument("--overhead-epochs", type=int, default=50, help="epochs of the projected overhead")
    ap.add_argument("--schedule-runs", type=int, default=2, help="checkpoint runs (seeds 0, 1, ...)")
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
    if "timing" not in skip:
        part_timing(args, pts)
    if "checkpoints" not in skip:
        probe = chart_points(args.n_probe, 22, tuple(int(c) for c in pts.attrs["chart"]))
        part_checkpoints(args, pts, probe)
    if "after_kernel" not in skip:
        part_after_kernel(args, pts)
    if "widths" not in skip:
        part_widths(args, pts)
    if "phi" not in skip:
        part_phi(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load {load()}")


if __name__ == "__main__":
    main()
