"""Benchmark: Donaldson's balanced metrics (mfarray.kahler.algebraic) for k = 2 ... 8.

For the Fermat quintic, the Dwork quintic psi = 0.5 and the quartic K3, and each k: n_s =
dim H^0(X, O(k)), the number of real parameters of H (n_s^2), the integration points N (default
N = 10 n_s^2, clipped to [--min-points, --max-points]: with the cap, large k run with N < 10 n_s^2
and their balanced metric overfits -- N/n_s^2 is printed), the T-iterations to the balance
tolerance, the wall time of the iteration, and sigma on an INDEPENDENT test set (--test-points,
another seed) with its Monte-Carlo standard error.

Time budget: a surface stops early once one k took more than --budget seconds, and skips a k
whose predicted time (the last k's time scaled by N n_s^2 and the iteration count) is above
1.5 budget.  BLAS runs on one thread (OpenBLAS's threaded zgemm is ~100x slower for these
tall-skinny products on a busy 2-core machine; --blas-threads keeps the library default).

Usage::

    python benchmarks/bench_donaldson.py                 # defaults: a few minutes on 2 cores
    python benchmarks/bench_donaldson.py --budget 20     # shorter
    python benchmarks/bench_donaldson.py --surfaces fermat --kmax 6 --max-points 200000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import cpu_model

import mfarray as mf
from mfarray import backend
from mfarray.kahler import algebraic, sections

SURFACES = {
    "fermat": ("Fermat quintic", mf.fermat_quintic),
    "dwork": ("Dwork quintic psi=0.5", lambda: mf.dwork_quintic(0.5)),
    "k3": ("quartic K3", mf.quartic_k3),
}


def sigma_with_error(surface, pts, H, k):
    """sigma (B.11) and the MC standard error of the mean of w |1 - eta| (kappa held fixed)."""
    det = algebraic.algebraic_det(surface, pts, H, k)
    w, o2 = pts.weight.values, pts.omega2.values
    kappa = np.sum(w * det / o2) / np.sum(w)
    terms = w * np.abs(1.0 - det / (kappa * o2))
    return float(terms.mean() / w.mean()), float(terms.std() / np.sqrt(len(w)) / w.mean())


def run_surface(key, args, rows):
    name, make = SURFACES[key]
    surface = make()
    sizes = {k: sections.section_count(surface, k) for k in range(args.kmin, args.kmax + 1)}
    n_for = {k: int(min(args.max_points, max(args.min_points, args.points_factor * n * n))) for k, n in sizes.items()}
    t = time.perf_counter()
    train_all = mf.sample_points(surface, max(n_for.values()), seed=args.seed).compute()
    test = mf.sample_points(surface, args.test_points, seed=args.seed + 1).compute()
    print(f"# {name}: sampled {max(n_for.values())} + {args.test_points} points in {time.perf_counter() - t:.1f} s",
          flush=True)
    last = None  # (cost, seconds, iterations) of the previous k
    for k in range(args.kmin, args.kmax + 1):
        n_s, n = sizes[k], n_for[k]
        cost = n * n_s * n_s
        if last is not None:
            predicted = last[1] * cost / last[0] * (last[2] + 2) / max(1, last[2])
            if predicted > 1.5 * args.budget:
                rows.append({"surface": name, "k": k, "n_s": n_s, "params": n_s * n_s, "points": n, "note": f"skipped: predicted {predicted:.0f} s"})
                print(f"  k={k}: skipped (predicted {predicted:.0f} s > 1.5 x budget {args.budget:g} s)", flush=True)
                break
        train = train_all.isel(point=slice(0, n))
        b = algebraic.balanced_metric(surface, train, k, iterations=args.iterations, tol=args.tol)
        t = time.perf_counter()
        sig, err = sigma_with_error(surface, test, b.H, k)
        t_sigma = time.perf_counter() - t
        rows.append({"surface": name, "k": k, "n_s": n_s, "params": n_s * n_s, "points": n, "ratio": n / (n_s * n_s),
                         "iterations": b.iterations, "residual": b.residuals[-1], "converged": b.converged,
                         "seconds": b.seconds, "sigma_seconds": t_sigma, "sigma": sig, "sigma_err": err, "note": ""})
        print(f"  k={k}: n_s={n_s} N={n} it={b.iterations} res={b.residuals[-1]:.1e} {b.seconds:.1f} s "
              f"sigma={sig:.4f}+-{err:.4f} ({t_sigma:.1f} s)", flush=True)
        last = (cost, b.seconds, b.iterations)
        if b.seconds > args.budget:
            print(f"  stopping {name}: k={k} took {b.seconds:.0f} s > budget {args.budget:g} s", flush=True)
            break


def markdown(rows):
    out = ["| surface | k | n_s | params (n_s^2) | points N | N/n_s^2 | iterations | residual | time [s] | test sigma |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("note"):
            out.append(f"| {r['surface']} | {r['k']} | {r['n_s']} | {r['params']} | {r['points']} | | | | | {r['note']} |")
            continue
        flag = "" if r["converged"] else " (not converged)"
        out.append(f"| {r['surface']} | {r['k']} | {r['n_s']} | {r['params']} | {r['points']} | {r['ratio']:.1f} | "
                   f"{r['iterations']}{flag} | {r['residual']:.1e} | {r['seconds']:.1f} | "
                   f"{r['sigma']:.4f} ± {r['sigma_err']:.4f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--surfaces", nargs="+", default=list(SURFACES), choices=list(SURFACES))
    p.add_argument("--kmin", type=int, default=2)
    p.add_argument("--kmax", type=int, default=8)
    p.add_argument("--budget", type=float, default=60.0, help="seconds per k before a surface stops (default 60)")
    p.add_argument("--points-factor", type=float, default=10.0, help="N = factor * n_s^2 (default 10)")
    p.add_argument("--min-points", type=int, default=20_000)
    p.add_argument("--max-points", type=int, default=100_000)
    p.add_argument("--test-points", type=int, default=20_000)
    p.add_argument("--iterations", type=int, default=40, help="maximum T-iterations (default 40)")
    p.add_argument("--tol", type=float, default=1e-6, help="balance residual tolerance (default 1e-6)")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--blas-threads", action="store_true", help="keep the BLAS library's thread count")
    args = p.parse_args(argv)

    print(f"# machine: {cpu_model()}, {backend.cores()} cores, Python {platform.python_version()}, "
          f"NumPy {np.__version__}, BLAS {'default threads' if args.blas_threads else 'one thread'}")
    print(f"# N = clip({args.points_factor:g} n_s^2, {args.min_points}, {args.max_points}); test points "
          f"{args.test_points}; tol {args.tol:g}; budget {args.budget:g} s per k")
    rows = []
    start = time.perf_counter()
    with contextlib.nullcontext() if args.blas_threads else backend.one_blas_thread():
        for key in args.surfaces:
            run_surface(key, args, rows)
    print(f"# total {time.perf_counter() - start:.0f} s\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
