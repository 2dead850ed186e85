#!/usr/bin/env python
"""Benchmark: per-step overhead of the frozen-kernel metric flow (``mfarray.kernel_flow``).

Issue goal: at 1500 train / 500 test points, the work per step outside the kernel mat-vec
(validation, positivity guard, sigma, conversions) is at most 20 % of the mat-vec.

Setup (public API only, so the same script runs before and after the flow rewrite):
Fermat-quintic points of one chart, ``select_chart(sample_points(fermat_quintic(), 45_000,
seed=0).compute(), 0, 1)`` (more samples if fewer than 2000 survive), train = first 1500,
test = next 500; kernel ``functools.partial(gaussian_fs, sigma=0.1, squared=True)``, loss
"sigma_squared", ``method="dense"``; two step controls: fixed (adaptive=False, lr=1e-3; the
script checks that no step is rejected) and adaptive (adaptive=True, lr=1e-3).

(a) time per step = (t(flow, S steps) - t(flow, 0 steps)) / S, each best of 3, S = 200.  The
    0-step run times the setup (loss data, positivity of g0, the dense kernel-matrix builds,
    the step-0 record), so the kernel build is not counted as per-step work.
(b) mat-vec phase per step: the same dense operators, ``as_operator(kernel, z_train, z_train,
    method="dense")`` and ``as_operator(kernel, z_test, z_train, method="dense")``, applied to a
    (1500, 9) float64 array (the flow applies the kernel to the 9 real coordinates of the
    Hermitian dl/dg: train update and test prediction, once each per step); best of many.
(c) overhead = (a) - (b), and overhead / mat-vec, for both step controls.
(d) cProfile of the fixed flow, S steps minus a 0-step run (so setup and the kernel build
    drop out): top 15 functions by own time (tottime), per step; and calls per step of a few
    named functions (those that do not exist in the profiled version are left out).

Shared machines: with other processes on the cores, the BLAS threads of a flow step wait for
each other and a step takes 5-20x its quiet time.  Every timed run therefore records the CPU
time other processes used meanwhile (/proc/stat minus this process); a run during which they
used >= 0.1 cores is discarded and repeated once the CPUs are idle again (``--retries``), and
the report says how many were discarded and warns if a kept run was disturbed.

Usage::

    python benchmarks/bench_step_overhead.py [--json PATH] [--steps 200] [--repeat 3]
                                             [--wait-quiet SECONDS] [--retries 5]

Runtime ~40 s on 2 idle cores.  OPENBLAS_* / OMP_* variables are neither set nor unset here.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import platform
import pstats
import subprocess
import sys
import time

import numpy as np

import mfarray as mf
from mfarray.kernels import as_operator, gaussian_fs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import best_auto, cpu_model  # noqa: E402

N_TRAIN, N_TEST = 1500, 500
N_SAMPLES = 45_000
CHART = (0, 1)
KERNEL = functools.partial(gaussian_fs, sigma=0.1, squared=True)
LOSS = "sigma_squared"
LR = 1e-3
GOAL = 0.20  # overhead / mat-vec
QUIET = 0.1  # a timed run counts only if other processes used fewer cores than this during it
CONTROLS = {"fixed": False, "adaptive": True}
# functions whose calls per step are counted in (d), by name (absent ones are skipped)
COUNT_NAMES = ("ldl_pivots", "positive_definite", "hermitian_det", "cholesky", "eigvalsh",
               "_as_metrics", "_require_positive_definite", "_hermitian_inverse",
               "sigma_measure", "det_metric", "to_numpy", "total", "value", "gradient",
               "matvec", "metric_matvec",
               # names of the rewritten flow engine (mfarray.linalg, flows/models.py)
               "_metrics", "_adjugate", "_times_inverse")


# ----------------------------------------------------------------------------- machine


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = []
    try:
        import threadpoolctl

        for i in threadpoolctl.threadpool_info():
            blas.append({k: i.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                                "threading_layer", "architecture")})
    except ImportError:
        pass
    commit = dirty = None
    src = os.path.dirname(os.path.dirname(os.path.abspath(mf.__file__)))
    try:
        commit = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    import xarray

    return {"cpu": cpu_model(), "cores_affinity": cores, "cpu_count": os.cpu_count(),
            "arch": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "xarray": xarray.__version__, "blas": blas, "mfarray_file": mf.__file__,
            "mfarray_commit": commit, "mfarray_dirty": dirty}


def machine_line(m: dict) -> str:
    b = [x for x in m["blas"] if x.get("user_api") == "blas"]
    bs = (f"{b[0]['internal_api']} {b[0]['version']} ({b[0]['threading_layer']}, {b[0]['num_threads']} threads, "
          f"{b[0]['architecture']})") if b else "BLAS unknown (no threadpoolctl)"
    return (f"{m['cpu']}, {m['cores_affinity']} cores (affinity; cpu_count {m['cpu_count']}), "
            f"Python {m['python']}, NumPy {m['numpy']}, {bs}, xarray {m['xarray']}")


# ----------------------------------------------------------------------------- foreign load


def _cpu_busy_s():
    """Busy CPU seconds of the whole machine (all processes), from /proc/stat; None if unknown."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ForeignLoad:
    """CPU seconds used by OTHER processes between start() and stop(), in cores (per wall second).

    Timings on a shared machine are only meaningful when this is ~0: with other processes on
    the cores, the BLAS threads of a flow step wait for each other and a mat-vec can take 5-50x
    its quiet time."""

    def start(self):
        self.t, self.busy, self.own = time.perf_counter(), _cpu_busy_s(), sum(os.times()[:2])
        return self

    def stop(self):
        wall = time.perf_counter() - self.t
        busy = _cpu_busy_s()
        if busy is None or self.busy is None or wall <= 0:
            return float("nan")
        own = sum(os.times()[:2]) - self.own
        return max(busy - self.busy - own, 0.0) / wall


def foreign_now(dt=1.0):
    f = ForeignLoad().start()
    time.sleep(dt)
    return f.stop()


def wait_quiet(max_wait, threshold=0.15, need=3):
    """Wait (up to max_wait s) until other processes use < threshold cores for `need` seconds."""
    t0, ok = time.perf_counter(), 0
    while time.perf_counter() - t0 < max_wait:
        ok = ok + 1 if foreign_now(1.0) < threshold else 0
        if ok >= need:
            return time.perf_counter() - t0
    return None


# ----------------------------------------------------------------------------- timing


def points():
    n_need, m = N_TRAIN + N_TEST, N_SAMPLES
    while True:
        one = mf.select_chart(mf.sample_points(mf.fermat_quintic(), m, seed=0).compute(), *CHART)
        if one.sizes["point"] >= 2000 and one.sizes["point"] >= n_need:
            break
        m = int(m * 1.3)
    train = one.isel(point=slice(0, N_TRAIN))
    test = one.isel(point=slice(N_TRAIN, N_TRAIN + N_TEST))
    return m, int(one.sizes["point"]), train, test


def flow(train, test, steps, adaptive):
    return mf.kernel_flow(train, KERNEL, steps=steps, lr=LR, loss=LOSS, test=test, adaptive=adaptive,
                          method="dense")


def clean_run(fn, args, discarded):
    """(seconds, result, foreign cores) of one run of fn during which other processes stayed off
    the CPUs (< QUIET cores); a disturbed run is discarded and retried after the CPUs are idle
    again (at most args.retries times; then the last run is kept and its load reported)."""
    for attempt in range(args.retries + 1):
        fl = ForeignLoad().start()
        t = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t
        f = fl.stop()
        if not f >= QUIET or attempt == args.retries:
            return t, out, f
        discarded[0] += 1
        wait_quiet(max(args.wait_quiet, 60.0))
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- (d) profile


def _profile(train, test, steps, adaptive=False):
    pr = cProfile.Profile()
    pr.enable()
    flow(train, test, steps, adaptive)
    pr.disable()
    return pstats.Stats(pr).stats


def profile_steps(train, test, steps, args, discarded, top=15, adaptive=False):
    """Per-step profile: S-step run minus a 0-step run (setup drops out)."""
    w0, s0, f0 = clean_run(lambda: _profile(train, test, 0, adaptive), args, discarded)
    wS, sS, fS = clean_run(lambda: _profile(train, test, steps, adaptive), args, discarded)
    rows = []
    for key, (_cc, nc, tt, ct, _callers) in sS.items():
        nc0, tt0, ct0 = (s0[key][1], s0[key][2], s0[key][3]) if key in s0 else (0, 0.0, 0.0)
        if nc <= nc0:  # setup only (same calls in the 0-step run): its time difference is noise
            continue
        rows.append({"file": os.path.basename(key[0]), "path": key[0], "line": key[1], "func": key[2],
                     "calls_per_step": (nc - nc0) / steps, "tottime_ms_per_step": 1e3 * (tt - tt0) / steps,
                     "cumtime_ms_per_step": 1e3 * (ct - ct0) / steps})
    total_ms = 1e3 * (wS - w0) / steps
    rows.sort(key=lambda r: -r["tottime_ms_per_step"])
    counts = {}
    for r in rows:  # mfarray's own functions, and NumPy's factorisations
        ours = "mfarray" in r["path"] or r["func"] in ("cholesky", "eigvalsh")
        if ours and r["func"] in COUNT_NAMES and r["calls_per_step"] > 0.5 / steps:
            label = f"{r['func']} ({r['file']})"
            counts[label] = counts.get(label, 0.0) + r["calls_per_step"]
    return {"profiled_ms_per_step": total_ms, "top": rows[:top], "calls_per_step": counts,
            "foreign_cores": [f0, fS]}


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write all figures as JSON")
    ap.add_argument("--steps", type=int, default=200, help="S, flow steps per timed run (default 200)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many flow runs (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile section (d)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to this long for other processes to leave the CPUs idle")
    ap.add_argument("--retries", type=int, default=5,
                    help="retries of a timed run disturbed by other processes (default 5)")
    args = ap.parse_args()
    S = args.steps
    t_all = time.perf_counter()

    m = machine()
    print(f"mfarray: {m['mfarray_file']} (commit {m['mfarray_commit']}"
          f"{', tracked files modified' if m['mfarray_dirty'] else ''})")
    print(f"machine: {machine_line(m)}")
    if args.wait_quiet > 0:
        waited = wait_quiet(args.wait_quiet)
        print(f"waited {waited:.0f} s for idle CPUs" if waited is not None else
              f"WARNING: CPUs still busy with other processes after {args.wait_quiet:.0f} s; going on")
    load0 = os.getloadavg()[0]
    print(f"load average at start: {load0:.2f}; other processes now use {foreign_now(0.5):.2f} cores")
    foreign = ForeignLoad().start()

    t = time.perf_counter()
    n_samples, n_chart, train, test = points()
    t_pts = time.perf_counter() - t
    print(f"points: {n_samples} samples -> {n_chart} in chart {CHART}; train {train.sizes['point']}, "
          f"test {test.sizes['point']} ({t_pts:.2f} s)")
    print(f"kernel gaussian_fs(sigma=0.1, squared=True), loss {LOSS}, lr {LR}, method dense, "
          f"S = {S} steps, best of {args.repeat}")

    # (b) mat-vec phase: the same dense operators on a (N_train, 9) float64 array
    z_train = np.asarray(train["z"].values)
    z_test = np.asarray(test["z"].values)
    t = time.perf_counter()
    K = as_operator(KERNEL, z_train, z_train, method="dense")
    K_test = as_operator(KERNEL, z_test, z_train, method="dense")
    t_build = time.perf_counter() - t
    v = np.random.default_rng(0).standard_normal((N_TRAIN, 9))
    K.matvec(v), K_test.matvec(v)
    mv = {"train": [float("inf"), 0], "test": [float("inf"), 0], "both": [float("inf"), 0]}

    def time_matvec(budget=0.3):
        # measured between the flow runs below, so both see the same machine conditions
        for key, fn in (("train", lambda: K.matvec(v)), ("test", lambda: K_test.matvec(v)),
                        ("both", lambda: (K.matvec(v), K_test.matvec(v)))):
            t, n = best_auto(fn, budget=budget, lo=20, hi=2000)
            mv[key] = [min(mv[key][0], t), mv[key][1] + n]

    # (a) per-step time, interleaved with (b)
    runs, discarded = {}, [0]
    for name, adaptive in CONTROLS.items():
        flow(train, test, 2, adaptive)  # warm-up
        time_matvec()
        t0 = tS = float("inf")
        f0 = fS = float("nan")
        for _ in range(args.repeat):
            t, _, f = clean_run(lambda: flow(train, test, 0, adaptive), args, discarded)
            if t < t0:
                t0, f0 = t, f
            t, r, f = clean_run(lambda: flow(train, test, S, adaptive), args, discarded)
            if t < tS:
                tS, fS = t, f
            time_matvec()
        runs[name] = (adaptive, t0, tS, r, f0, fS)
    K = K_test = None  # free them (a del would unbind the closures above)
    t_mv_train, t_mv_test, t_mv_both = mv["train"][0], mv["test"][0], mv["both"][0]
    t_mv = min(t_mv_both, t_mv_train + t_mv_test)
    print(f"(b) dense build (train + test) {t_build:.3f} s; mat-vec on (1500, 9) float64: train "
          f"{1e3 * t_mv_train:.3f} ms (best of {mv['train'][1]}), test {1e3 * t_mv_test:.3f} ms "
          f"(best of {mv['test'][1]}), both in one call {1e3 * t_mv_both:.3f} ms (best of {mv['both'][1]}); "
          f"mat-vec per step = {1e3 * t_mv:.3f} ms")

    # (c) overhead
    results = {}
    for name, (adaptive, t0, tS, r, f0, fS) in runs.items():
        rejected = int(r["rejected"].sum())
        if not adaptive and rejected:
            raise SystemExit(f"fixed lr {LR}: {rejected} step(s) rejected; the per-step time is not comparable")
        step = (tS - t0) / S
        over = step - t_mv
        results[name] = {"adaptive": adaptive, "setup_s": t0, "run_s": tS, "step_ms": 1e3 * step,
                         "matvec_ms": 1e3 * t_mv, "overhead_ms": 1e3 * over, "ratio": over / t_mv,
                         "foreign_cores_best_runs": [f0, fS], "rejected": rejected, "final_lr": float(r["lr"].values[-1]),
                         "final_loss": float(r["loss"].values[-1]),
                         "sigma_train": [float(r["sigma_train"].values[0]), float(r["sigma_train"].values[-1])],
                         "sigma_test": [float(r["sigma_test"].values[0]), float(r["sigma_test"].values[-1])]}
        print(f"(a) {name}: setup (0 steps) {t0:.3f} s, {S} steps {tS:.3f} s -> {1e3 * step:.2f} ms/step; "
              f"rejected {rejected}, last lr {results[name]['final_lr']:.3g}, "
              f"sigma_train {results[name]['sigma_train'][0]:.4f} -> {results[name]['sigma_train'][1]:.4f}, "
              f"sigma_test {results[name]['sigma_test'][0]:.4f} -> {results[name]['sigma_test'][1]:.4f}; "
              f"other processes used {f0:.2f} / {fS:.2f} cores during the best 0-step / {S}-step runs")

    # (e) the work outside the mat-vec measured directly: the same flows with
    #     DenseOperator.matvec replaced by a stub that returns zeros of the right shape (the
    #     metrics then stay put, so every step is accepted); per step = (t(10 S) - t(0)) / (10 S):
    #     10 S steps, since a stubbed step is short next to the setup (kernel build) it is netted against.
    #     Independent of how fast the mat-vec runs inside a step (cache, BLAS thread wake-ups).
    from mfarray.kernels import DenseOperator

    real_matvec, zeros = DenseOperator.matvec, {}

    def stub(self, vec):
        key = (int(self.shape[0]),) + tuple(vec.shape[1:])
        if (key, vec.dtype) not in zeros:
            zeros[key, vec.dtype] = np.zeros(key, dtype=vec.dtype)
        return zeros[key, vec.dtype]

    DenseOperator.matvec = stub
    try:
        for name, adaptive in CONTROLS.items():
            t0 = min(clean_run(lambda: flow(train, test, 0, adaptive), args, discarded)[0] for _ in range(args.repeat))
            tS = min(clean_run(lambda: flow(train, test, 10 * S, adaptive), args, discarded)[0]
                     for _ in range(args.repeat))
            direct = (tS - t0) / (10 * S)
            results[name]["direct_overhead_ms"] = 1e3 * direct
            results[name]["direct_ratio"] = direct / t_mv
            print(f"(e) {name}: work outside the mat-vec, measured with the mat-vec stubbed: "
                  f"{1e3 * direct:.3f} ms/step = {100 * direct / t_mv:.0f} % of the mat-vec")
    finally:
        DenseOperator.matvec = real_matvec

    prof = None
    if not args.no_profile:
        prof = profile_steps(train, test, S, args, discarded)
        prof["calls_per_step_adaptive"] = profile_steps(train, test, S, args, discarded,
                                                        adaptive=True)["calls_per_step"]
    load1 = os.getloadavg()[0]
    other = foreign.stop()
    wall = time.perf_counter() - t_all

    # ---------------------------------------------------------------- report (markdown)
    print(f"\n### Per-step overhead, {N_TRAIN} train / {N_TEST} test points (goal: overhead <= "
          f"{100 * GOAL:.0f} % of the mat-vec)\n")
    print("| step control | time per step [ms] | mat-vec per step [ms] | overhead [ms] | overhead / mat-vec | rejected steps |")
    print("|---|---|---|---|---|---|")
    for name, d in results.items():
        print(f"| {name} (lr {LR}{', adaptive' if d['adaptive'] else ''}) | {d['step_ms']:.2f} | "
              f"{d['matvec_ms']:.3f} | {d['overhead_ms']:.2f} | {d['ratio']:.2f} ({100 * d['ratio']:.0f} %) | "
              f"{d['rejected']} |")
    print(f"\nmat-vec per step = train ({1e3 * t_mv_train:.3f} ms) + test ({1e3 * t_mv_test:.3f} ms) "
          f"dense operator applied to (1500, 9) float64.")
    print("\nMeasured directly (mat-vec stubbed out, (e)):\n")
    print("| step control | work outside the mat-vec [ms/step] | / mat-vec |")
    print("|---|---|---|")
    for name, d in results.items():
        print(f"| {name} | {d['direct_overhead_ms']:.3f} | {100 * d['direct_ratio']:.0f} % |")
    if prof:
        print(f"\n### cProfile, fixed lr, {S} steps minus a 0-step run, per step "
              f"({prof['profiled_ms_per_step']:.2f} ms/step under the profiler)\n")
        print("| own time [ms/step] | cum. time [ms/step] | calls/step | function |")
        print("|---|---|---|---|")
        for r in prof["top"]:
            print(f"| {r['tottime_ms_per_step']:.3f} | {r['cumtime_ms_per_step']:.3f} | {r['calls_per_step']:.2f} | "
                  f"`{r['file']}:{r['line']}({r['func']})` |")
        print("\ncalls per step of selected functions (from the profiles; fixed | adaptive):\n")
        print("| function | fixed | adaptive |")
        print("|---|---|---|")
        ca = prof["calls_per_step_adaptive"]
        for k in sorted(set(prof["calls_per_step"]) | set(ca)):
            print(f"| `{k}` | {prof['calls_per_step'].get(k, 0.0):.2f} | {ca.get(k, 0.0):.2f} |")
    print(f"\nmachine: {machine_line(m)}")
    print(f"mfarray {m['mfarray_file']} commit {m['mfarray_commit']}; load average {load0:.2f} at start, "
          f"{load1:.2f} at end; other processes used {other:.2f} cores on average during the run; "
          f"total {wall:.0f} s")
    kept = [f for d in results.values() for f in d["foreign_cores_best_runs"]]
    kept += prof["foreign_cores"] if prof else []
    print(f"timed runs discarded (other processes on the CPUs) and rerun: {discarded[0]}; other processes "
          f"used at most {max(kept):.2f} cores during the runs kept")
    if not max(kept) < QUIET:
        print(f"WARNING: other processes used up to {max(kept):.2f} of {m['cores_affinity']} cores during "
              "the runs kept: these are not quiet-machine figures (rerun with --wait-quiet 300)")

    if args.json:
        out = {"machine": m, "n_train": N_TRAIN, "n_test": N_TEST, "samples": n_samples, "in_chart": n_chart,
               "steps": S, "repeat": args.repeat, "lr": LR, "loss": LOSS,
               "matvec": {"train_ms": 1e3 * t_mv_train, "test_ms": 1e3 * t_mv_test, "both_ms": 1e3 * t_mv_both,
                          "per_step_ms": 1e3 * t_mv, "build_s": t_build},
               "controls": results, "profile": prof, "load": [load0, load1], "foreign_cores": other, "discarded_runs": discarded[0], "wall_s": wall,
               "argv": sys.argv}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
