#!/usr/bin/env python
"""Benchmark: flow steps per second of the frozen-kernel flow (eq. 2.12) with the Gaussian FS kernel.

Kernel ``functools.partial(gaussian_fs, sigma=0.1, squared=True)`` on Fermat-quintic points in
ONE chart (patch 0, elim 1), loss "sigma_squared", fixed lr = 1e-3 (no step is rejected; the
script checks).  For each N_train (default 2500 and 10^4), side by side:

(a) dense operator: kernel matrix built once (tiled, threaded, upper triangle; build time
    reported on its own), then the flow;
(b) lazy blockwise operator (``method="blockwise"``: symmetric 1024^2 tiles on all cores, every
    tile recomputed in every mat-vec), and the same with a 1 GiB tile cache (the first mat-vec
    fills it and is reported as its "build");
    steps/s = S / (t(flow, S steps) - t(flow, 0 steps)): one-off setup (loss data, positivity
    of g0, the step-0 record) is timed by the 0-step run and reported separately.
(c) the mat-vec phase against the machine's float64 GEMM rate measured in the same run:
    ``K.matvec`` on (N, 3, 3) complex input is one real (18 x N) @ (N x N) product (2 N^2 18
    flops); the flow itself applies K to the 9 real coordinates of the Hermitian dl/dg (2 N^2 9
    flops, less time).  References: a square numpy matmul (n^3) and the skinny numpy products
    K @ (N x 18) and (18 x N) @ K on the same matrix.
(d) peak memory (VmHWM) of a flow run at the largest N, dense vs lazy vs cached, each in a fresh
    subprocess, minus an idle interpreter with the same imports (also shown: idle + points).
(e) per-step breakdown: each piece of a step timed alone (loss gradient, mat-vec phase,
    positivity check, loss total, sigma_measure) and a cProfile of the dense flow.
(f) one gaussian_fs tile: entrywise distances vs the GEMM path, ns per entry.

Goals (issue): dense mat-vec >= 50 % of GEMM rate; lazy within 3x of dense at 10^4 points
while holding < 1 GB.

Points: the suggested ``express_in_chart(sample_points(fermat_quintic(), N).compute(), 0, 1)``
is unusable here: it raises (chart (0, 1) singular at 37 of 10^4 points), and with those
points dropped the far-from-chart points have g_FS so ill-conditioned (lambda_min ~ 1e-6,
det ~ 1e-12) that at N = 2500 g0 already fails the positivity check and at N = 500 every lr
from 1e-3 to 1e-7 ends in "det g <= 0" or rejected steps.  We use the paper's rejection
sampling instead: ``select_chart(sample_points(fermat_quintic(), ~23 N), 0, 1)`` (1 point in
~20 survives; 230k samples take < 1 s), first N points.  Operator costs do not depend on
which points are used.

Usage::

    python benchmarks/bench_flows.py            # N = 2500, 10000 (~1.5 min on 2 cores)
    python benchmarks/bench_flows.py --quick    # N = 500, 1000 (sanity, ~10 s)
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import time

import numpy as np

import mfarray
from mfarray import losses
from mfarray.flows.frozen import kernel_flow, resolve_loss
from mfarray.flows.models import metric_matvec
from mfarray.linalg import positive_definite
from mfarray.kernels.fs import gaussian_fs
from mfarray.kernels.operators import BlockwiseOperator, as_operator
from mfarray.pointset import sigma_measure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import best_auto, best_of, cpu_model  # noqa: E402  (benchmarks/machine.py)

KERNEL = functools.partial(gaussian_fs, sigma=0.1, squared=True)
LOSS = "sigma_squared"
LR = 1e-3
CHART = (0, 1)
CACHE = 2**30  # tile-cache budget of the cached lazy operator (1 GiB)


# ----------------------------------------------------------------------------- helpers


def points(n: int):
    """The first n Fermat-quintic points whose own chart is (0, 1) (rejection sampling)."""
    m = 23 * n + 2000
    while True:
        ds = mfarray.sample_points(mfarray.fermat_quintic(), m, seed=0).compute()
        sel = mfarray.select_chart(ds, *CHART)
        if sel.sizes["point"] >= n:
            train = sel.isel(point=slice(0, n))
            train["weight"] = train["weight"] / train["weight"].mean()
            return train
        m = int(m * 1.3)


def vm_hwm_mb() -> float:
    """Peak RSS of this process's own address space (/proc VmHWM; reset by exec, unlike
    ru_maxrss, which Linux carries over from the forking parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_s = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001  (older numpy)
        blas_s = "unknown"
    threads = ""
    try:
        import threadpoolctl

        info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        if info:
            threads = f", {info[0].get('num_threads')} BLAS threads ({info[0].get('architecture')})"
    except ImportError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cpu_model()}, {cores} cores usable ({os.cpu_count()} online), {platform.machine()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, BLAS {blas_s}{threads}")


# ----------------------------------------------------------------------------- (a) (b) flows


def flow_rate(train, kernel_or_op, steps, method, repeat=1):
    """(setup s, s/step, result): setup from a 0-step run, steps from an S-step run (best of repeat)."""
    t0, _ = best_of(lambda: kernel_flow(train, kernel_or_op, steps=0, lr=LR, loss=LOSS, method=method), repeat)
    tS, res = best_of(lambda: kernel_flow(train, kernel_or_op, steps=steps, lr=LR, loss=LOSS, method=method), repeat)
    rej = int(res["rejected"].sum())
    if rej:
        print(f"  WARNING: {rej} step(s) rejected (lr halved); rate not comparable")
    return t0, max(tS - t0, 1e-12) / steps, res


# ----------------------------------------------------------------------------- (e) breakdown


def step_pieces(train, K, repeat=5):
    """Time each piece of one flow step alone (seconds)."""
    g = np.array(train["g_fs"].values, dtype=np.complex128)
    loss_fn = resolve_loss(LOSS)
    data = losses.make_loss_data(train, g)
    grad = loss_fn.gradient(g, data)
    upd = metric_matvec(K, grad)
    trial = g - LR * upd
    out = {}
    out["loss gradient"] = best_of(lambda: loss_fn.gradient(g, data), repeat)[0]
    out["positivity (LDL pivots)"] = best_of(lambda: bool(np.all(positive_definite(trial))), repeat)[0]
    out["loss total (record)"] = best_of(lambda: losses.total(loss_fn, trial, data), repeat)[0]
    out["sigma_measure (record)"] = best_of(lambda: sigma_measure(train, trial), repeat)[0]
    out["update g, dual"] = best_of(lambda: (g - LR * upd, g + LR * grad), repeat)[0]
    return out


PROFILE_KEYS = [
    ("matvec", "kernels/operators/", "K.matvec"),
    ("_squared_gradient", "losses.py", "loss gradient"),
    ("positive_definite", "guard.py", "positive_definite"),
    ("total", "losses.py", "loss total (record)"),
    ("sigma_measure", "pointset/measures.py", "sigma_measure (record)"),
    ("det_metric", "pointset/measures.py", "  of which det_metric"),
]


def profile_flow(train, K, steps, label):
    pr = cProfile.Profile()
    pr.enable()
    t = time.perf_counter()
    kernel_flow(train, K, steps=steps, lr=LR, loss=LOSS)
    total = time.perf_counter() - t
    pr.disable()
    st = pstats.Stats(pr)
    cum = {}
    for (fname, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        for name, where, lab in PROFILE_KEYS:
            if func == name and where in fname:
                cum[lab] = cum.get(lab, 0.0) + ct
    print(f"  cProfile, {label}, {steps} steps, {total:.2f} s total ({1e3 * total / steps:.1f} ms/step incl. setup):")
    for _name, _where, lab in PROFILE_KEYS:
        if lab in cum:
            print(f"    {lab:<24s} {1e3 * cum[lab] / (steps + 1):8.2f} ms/step  ({100 * cum[lab] / total:5.1f} %)")
    print("    top 8 by own time:")
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:8]
    for (fname, line, func), (_cc, nc, tt, _ct, _callers) in rows:
        print(f"      {1e3 * tt / steps:8.2f} ms/step  {nc:6d} calls  {os.path.basename(fname)}:{line}({func})")


def kernel_tile(z, b):
    """ns per entry of one b x b gaussian_fs tile: entrywise distances vs the GEMM path."""
    from mfarray.geometry.distance import unit_vectors

    z1, z2 = z[:b], (z[b:2 * b] if z.shape[0] >= 2 * b else z[:b])
    u, v = unit_vectors(z1), unit_vectors(z2)
    t_ent = best_of(lambda: KERNEL(z1, z2, method="entrywise"), 2)[0]
    t_gemm = best_of(lambda: KERNEL(z1, z2), 3)[0]
    t_zgemm = best_of(lambda: np.conj(u) @ v.T, 3)[0]
    per = 1e9 / b**2
    print(f"\n(f) one {b} x {b} gaussian_fs tile, one thread of NumPy: entrywise distances "
          f"{per * t_ent:.1f} ns/entry, GEMM path {per * t_gemm:.1f} ns/entry "
          f"({t_ent / t_gemm:.1f}x); of which the complex GEMM <u, v> {per * t_zgemm:.1f} ns/entry")


# ----------------------------------------------------------------------------- (d) memory


def mem_child(mode, n, steps):
    """Run in a fresh interpreter: print ru_maxrss (MB) after `mode`."""
    if mode != "idle":
        train = points(n)
        if mode in ("dense", "blockwise"):
            res = kernel_flow(train, KERNEL, steps=steps, lr=LR, loss=LOSS, method=mode)
            assert int(res["rejected"].sum()) == 0
        if mode == "cached":
            z = train["z"].values
            op = BlockwiseOperator(KERNEL, z, z, cache_bytes=CACHE)
            res = kernel_flow(train, op, steps=steps, lr=LR, loss=LOSS)
            assert int(res["rejected"].sum()) == 0
    print(json.dumps({"mode": mode, "maxrss_mb": peak_rss_mb(), "vmhwm_mb": vm_hwm_mb()}))


def mem_run(mode, n, steps):
    cmd = [sys.executable, os.path.abspath(__file__), "--_mem", mode, "--mem-n", str(n), "--mem-steps", str(steps)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["maxrss_mb"], r["vmhwm_mb"], time.perf_counter() - t


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sanity run (N = 500, 1000)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--_mem", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mem-n", type=int, default=10_000, help=argparse.SUPPRESS)
    ap.add_argument("--mem-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._mem:
        mem_child(args._mem, args.mem_n, args.mem_steps)
        return

    sizes = args.sizes or ([500, 1000] if args.quick else [2500, 10_000])
    dense_steps = 5 if args.quick else 20
    lazy_steps = {n: (3 if args.quick else (20 if n <= 2500 else 8)) for n in sizes}
    gemm_n = 1500 if args.quick else 4000
    t_all = time.perf_counter()

    machine_info()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    n_mem = sizes[-1]
    msteps = 2
    mem = {}
    for mode, label in (("idle", "idle (same imports)"), ("points", "idle + points"),
                        ("dense", "dense flow"), ("blockwise", "blockwise flow"),
                        ("cached", "blockwise+cache flow")):
        mem[label] = mem_run(mode, n_mem, msteps)
    print(f"kernel gaussian_fs(sigma=0.1, squared=True), loss {LOSS}, lr {LR}, chart {CHART}, "
          f"BlockwiseOperator block 1024 (symmetric tiles, {os.cpu_count()} threads), cache {CACHE / 2**30:.0f} GiB")

    # square GEMM reference
    rng = np.random.default_rng(0)
    A = rng.standard_normal((gemm_n, gemm_n))
    B = rng.standard_normal((gemm_n, gemm_n))
    A @ B
    t_gemm = best_auto(lambda: A @ B, budget=3.0)[0]
    gemm = 2 * gemm_n**3 / t_gemm / 1e9
    A = B = None  # free them (a del would unbind the lambdas above)
    print(f"float64 GEMM {gemm_n}^3: {t_gemm:.3f} s -> {gemm:.1f} GFLOP/s\n")

    rows, mv_rows, pieces, read_gbs = [], [], {}, {}
    for n in sizes:
        t = time.perf_counter()
        train = points(n)
        t_pts = time.perf_counter() - t
        z = train["z"].values
        print(f"N = {n}: points {t_pts:.2f} s")

        # (a) dense: the tiled, threaded, symmetric build, then the flow
        t = time.perf_counter()
        K = as_operator(KERNEL, z, z, method="dense")
        t_build = time.perf_counter() - t
        setup_d, step_d, _ = flow_rate(train, K, dense_steps, "dense", repeat=2)
        rows.append((n, "dense", t_build, setup_d, dense_steps, step_d))

        # (c) mat-vec vs GEMM
        v = rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))
        v = v + np.conj(np.swapaxes(v, 1, 2))  # Hermitian, like dl/dg
        K.matvec(v)
        t_mv = best_auto(lambda: K.matvec(v))[0]
        t_phase = best_auto(lambda: metric_matvec(K, v))[0]
        M = K.matrix
        w = rng.standard_normal((n, 18))
        wt = np.ascontiguousarray(w.T)
        M @ w
        t_sk = best_auto(lambda: M @ w)[0]
        t_skt = best_auto(lambda: wt @ M)[0]
        t_read = best_auto(lambda: M.sum())[0]  # one streaming read of K: the memory roofline
        read_gbs[n] = 8.0 * n * n / t_read / 1e9
        f18, f9 = 2.0 * n * n * 18, 2.0 * n * n * 9
        mv_rows.append((n, "dense K.matvec(N,3,3)", t_mv, f18 / t_mv / 1e9))
        mv_rows.append((n, "flow phase, 9 real", t_phase, f9 / t_phase / 1e9))
        mv_rows.append((n, "numpy K@(Nx18)", t_sk, f18 / t_sk / 1e9))
        mv_rows.append((n, "numpy (18xN)@K", t_skt, f18 / t_skt / 1e9))

        pieces[n] = step_pieces(train, K)
        pieces[n]["flow mat-vec phase dense"] = t_phase
        if n == sizes[-1]:
            profile_flow(train, K, dense_steps, f"dense N={n}")
        K = M = None

        # (b) lazy blockwise: every tile recomputed in every mat-vec
        setup_b, step_b, _ = flow_rate(train, KERNEL, lazy_steps[n], "blockwise")
        rows.append((n, "blockwise", 0.0, setup_b, lazy_steps[n], step_b))
        Kb = as_operator(KERNEL, z, z, method="blockwise")
        t_mvb, _ = best_of(lambda: metric_matvec(Kb, v), 1 if n > 2500 else 2)
        pieces[n]["flow mat-vec phase blockwise"] = t_mvb
        # (b') lazy with a tile cache: the first mat-vec fills it (reported as "build")
        Kc = BlockwiseOperator(KERNEL, z, z, cache_bytes=CACHE)
        t = time.perf_counter()
        metric_matvec(Kc, v)
        t_fill = time.perf_counter() - t
        setup_c, step_c, _ = flow_rate(train, Kc, dense_steps, "blockwise", repeat=2)
        rows.append((n, "cached", t_fill, setup_c, dense_steps, step_c))
        print(f"  cache holds {Kc._cache.used / 2**20:.0f} MiB of {CACHE / 2**20:.0f} MiB "
              f"({len(Kc._cache.tiles)} tiles)")
        del Kc
        print(f"  done in {time.perf_counter() - t_all:.0f} s so far")

    # ---------------------------------------------------------------- tables
    print("\n(a)/(b) flow steps per second (setup = 0-step kernel_flow run; build = dense matrix, "
          "or the cache-filling first mat-vec)")
    print(f"{'N':>6s} {'operator':<10s} {'build s':>8s} {'setup s':>8s} {'steps':>5s} {'ms/step':>9s} {'steps/s':>8s} {'/dense':>7s}")
    dense_step = {}
    for n, op, b, s, k, st in rows:
        if op == "dense":
            dense_step[n] = st
        ratio = f"{st / dense_step[n]:.1f}x" if op != "dense" else ""
        print(f"{n:6d} {op:<10s} {b:8.2f} {s:8.2f} {k:5d} {1e3 * st:9.1f} {1 / st:8.2f} {ratio:>7s}")

    print(f"\n(c) mat-vec phase; square GEMM {gemm:.1f} GFLOP/s.  GFLOP/s = flops executed / time: "
          "2 N^2 18 for an (N, 3, 3) complex input (one real product on [Re | Im]), 2 N^2 9 for the "
          "flow's 9 real coordinates of a Hermitian 3x3")
    print(f"{'N':>6s} {'what':<24s} {'s':>9s} {'GFLOP/s':>8s} {'/GEMM':>7s} {'K GB/s':>7s}")
    for n, what, t, g in mv_rows:
        print(f"{n:6d} {what:<24s} {t:9.4f} {g:8.1f} {100 * g / gemm:6.1f}% {8 * n * n / t / 1e9:7.2f}")
    for n, bw in read_gbs.items():
        print(f"  N={n}: K.sum() reads K at {bw:.1f} GB/s (one thread): the products above are not memory bound")

    print("\n(e) per-step pieces timed alone (ms); a step = gradient + mat-vec phase + positivity + "
          "record (total + sigma) + update")
    names = list(next(iter(pieces.values())).keys())
    print(f"{'piece':<30s}" + "".join(f"{'N=' + str(n):>12s}" for n in sizes))
    for nm in names:
        print(f"{nm:<30s}" + "".join(f"{1e3 * pieces[n][nm]:12.2f}" for n in sizes))
    for n in sizes:
        p = pieces[n]
        over = sum(p[k] for k in ("loss gradient", "positivity (LDL pivots)", "loss total (record)",
                                  "sigma_measure (record)", "update g, dual"))
        print(f"  N={n}: flow overhead (non-matvec) {1e3 * over:.1f} ms = "
              f"{100 * over / (over + p['flow mat-vec phase dense']):.0f} % of a dense step, "
              f"{100 * over / (over + p['flow mat-vec phase blockwise']):.1f} % of a blockwise step")

    print(f"\n(d) peak RSS of fresh interpreters (run first, while this parent is small), N = {n_mem}, "
          f"{msteps} flow steps")
    print(f"  {'':<24s} {'ru_maxrss':>9s} {'VmHWM':>9s} {'VmHWM-idle':>10s}")
    for mode, (rss, hwm, wall) in mem.items():
        print(f"  {mode:<24s} {rss:8.0f}M {hwm:8.0f}M {hwm - mem['idle (same imports)'][1]:9.0f}M   ({wall:.0f} s)")
    print(f"  dense float64 matrix alone: {8 * n_mem**2 / 2**20:.0f} MB")

    # ---------------------------------------------------------------- (f) kernel tile
    kernel_tile(z, 1024 if args.quick else 2048)

    # ---------------------------------------------------------------- goals
    n = sizes[-1]
    dense_g = [g for m, what, _t, g in mv_rows if m == n and what == "dense K.matvec(N,3,3)"][0]
    lazy_ratio = [st for m, op, _b, _s, _k, st in rows if m == n and op == "blockwise"][0] / dense_step[n]
    lazy_mem = mem["blockwise flow"][1] - mem["idle (same imports)"][1]
    cached_ratio = [st for m, op, _b, _s, _k, st in rows if m == n and op == "cached"][0] / dense_step[n]
    cached_mem = mem["blockwise+cache flow"][1] - mem["idle (same imports)"][1]
    print(f"\nGoals at N = {n}:")
    print(f"  dense mat-vec >= 50% of GEMM:  {100 * dense_g / gemm:.1f}% of square GEMM -> "
          f"{'MET' if dense_g >= 0.5 * gemm else 'NOT MET'}")
    print(f"  lazy within 3x of dense:       recompute {lazy_ratio:.1f}x -> {'MET' if lazy_ratio <= 3 else 'NOT MET'}; "
          f"with tile cache {cached_ratio:.1f}x -> {'MET' if cached_ratio <= 3 else 'NOT MET'}")
    print(f"  lazy < 1 GB:                   recompute +{lazy_mem:.0f} MB, cached +{cached_mem:.0f} MB over idle "
          f"(VmHWM) -> {'MET' if max(lazy_mem, cached_mem) < 1024 else 'NOT MET'}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
