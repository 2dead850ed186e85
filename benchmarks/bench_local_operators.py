"""Operators of local kernels (method="local") against dense and blockwise: build time, mat-vec
time, fraction of tile pairs skipped, entries kept, stated error bound and measured error.

    python benchmarks/bench_local_operators.py            # 10^4 points of one chart, 10^5 points
    python benchmarks/bench_local_operators.py --quick    # 10^4 only
    python benchmarks/bench_local_operators.py --million [delta] [heat]  # one mat-vec at 10^6 points

10^4: quintic points of one chart (select_chart of 2 x 10^5 samples, seed 1), where the flow
runs.  10^5: 10^5 quintic points of all charts (seed 2; one chart would need 2 x 10^6 samples):
the FS distance does not care about charts, and these points are sparser than 10^5 points of
one chart, so locality is understated there.  ``--million``: 10^6 points of all charts (seed 3),
the Delta kernel and the heat kernel at sigma = 0.02 (at 0.05 its ~6 x 10^8 entries >= 1e-12
would take ~10 GB): build (screening 5 x 10^11 pairs) and one mat-vec, the kernel work of one
flow step on a 10^12-entry kernel.  The mat-vec acts on v (N, 3, 3) real (9 columns),
as the flow's.  Run once; prints the machine and a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from machine import cpu_model, peak_rss_gb  # benchmarks/machine.py

import mfarray as mf
from mfarray.kernels import delta, gaussian_fs, nearest_index
from mfarray.kernels.operators import as_operator

KERNELS = [(0.05, True), (0.05, False), (0.3, True), (0.3, False)]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def row(*cells):
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def run(z, label, compare):
    n = len(z)
    v = np.random.default_rng(0).standard_normal((n, 3, 3))
    print(f"\n### {label}: N = {n}\n")
    row("kernel", "operator", "build [s]", "mat-vec [s]", "tiles skipped", "entries kept", "error_factor",
        "bound |v|_inf", "measured error")
    row(*["---"] * 9)
    for sigma, squared in KERNELS:
        k = gaussian_fs.bind(sigma=sigma, squared=squared)
        name = f"sigma={sigma} {'exp(-d^2/2s^2)' if squared else 'exp(-d/2s) (3.5)'}"
        ref = None
        if compare:
            tb, dense = timed(as_operator, k, z, z, method="dense")
            tm, ref = timed(dense.matvec, v)
            row(name, "dense", f"{tb:.2f}", f"{tm:.3f}", "", "1", "", "", "")
            del dense
            blockwise = as_operator(k, z, z, method="blockwise")
            tm, _ = timed(blockwise.matvec, v)
            row(name, "blockwise (1024)", "0", f"{tm:.2f}", "", "", "", "", "")
        if n > 50_000 and not (sigma == 0.05 and squared):
            continue  # not local at 1e-12: the full tile work of blockwise (its figures: bench_operators.py)
        tb, op = timed(as_operator, k, z, z, method="local")
        tm, out = timed(op.matvec, v)
        err = f"{np.abs(out - ref).max():.2e}" if ref is not None else ""
        if op.sparse:
            row(name, f"local (sparse by screening, R = {op.radius:.3f})", f"{tb:.2f}", f"{tm:.3f}", "",
                f"{op.nnz / n**2:.5f}", f"{op.error_factor:.2e}", f"{op.error_bound(v):.2e}", err)
        else:
            row(name, f"local (tiles, block {op.block})", f"{tb:.2f}", f"{tm:.3f}", f"{op.skipped_tile_fraction:.3f}",
                f"{1 - op.skipped_entry_fraction:.3f} (tiles)", f"{op.error_factor:.2e}", f"{op.error_bound(v):.2e}",
                err)
        if sigma == 0.05 and squared and compare:
            for block in (64, 128):
                tb, op = timed(as_operator, k, z, z, method="local", block=block, sparse=False)
                tm, out = timed(op.matvec, v)
                err = f"{np.abs(out - ref).max():.2e}" if ref is not None else ""
                row(name, f"local (tiles, block {block})", f"{tb:.2f}", f"{tm:.2f}", f"{op.skipped_tile_fraction:.3f}",
                    f"{1 - op.skipped_entry_fraction:.3f} (tiles)", f"{op.error_factor:.2e}",
                    f"{op.error_bound(v):.2e}", err)
        del op
    tb, op = timed(as_operator, delta, z, z, method="local")
    tm, out = timed(op.matvec, v)
    row("delta", "local (nearest by screening, gather)", f"{tb:.2f}", f"{tm:.4f}", "", f"{1 / n:.1e}", "0 (exact)",
        "0", "")
    if compare:
        tb, idx = timed(nearest_index, z, z)
        row("delta", "dense (nearest_index, streamed)", f"{tb:.2f}", "", "", "", "", "", "")
        assert np.array_equal(idx, op.index)


def million(which=("delta", "heat")):
    """One mat-vec at 10^6 points: the Delta kernel and/or the heat kernel at sigma = 0.02."""
    t, ds = timed(lambda: mf.sample_points(mf.fermat_quintic(), 1_000_000, seed=3).compute())
    z = ds["z"].values
    print(f"sampled {len(z)} points (all charts) in {t:.1f} s; load {os.getloadavg()[0]:.1f}")
    v = np.random.default_rng(0).standard_normal((len(z), 3, 3))
    row("kernel", "operator", "build [s]", "build CPU [s]", "mat-vec [s]", "nnz", "error_factor", "peak RSS [GB]")
    row(*["---"] * 8)
    kernels = {"delta": ("delta", delta), "heat": ("sigma=0.02 exp(-d^2/2s^2)", gaussian_fs.bind(sigma=0.02, squared=True))}
    for name, k in (kernels[w] for w in which):
        c = time.process_time()
        tb, op = timed(as_operator, k, z, z, method="local")
        cpu = time.process_time() - c
        tm, _ = timed(op.matvec, v)
        nnz = getattr(op, "nnz", len(z))
        row(name, type(op).__name__, f"{tb:.0f}", f"{cpu:.0f}", f"{tm:.3f}", nnz, f"{getattr(op, 'error_factor', 0):.2e}",
            f"{peak_rss_gb():.2f}")
        print(f"load {os.getloadavg()[0]:.1f}", flush=True)
        del op


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10^4 points only")
    parser.add_argument("--million", nargs="*", choices=("delta", "heat"), default=None,
                        help="one mat-vec at 10^6 points only (kernels: delta, heat; default both)")
    args = parser.parse_args()
    print(f"machine : {cpu_model()}, {os.cpu_count()} logical cores, affinity {len(os.sched_getaffinity(0))}, "
          f"Python {platform.python_version()}, NumPy {np.__version__}, mfarray {mf.__version__}, "
          f"load {os.getloadavg()[0]:.1f}")
    if args.million is not None:
        million(args.million or ("delta", "heat"))
        return
    t, chart = timed(lambda: mf.select_chart(mf.sample_points(mf.fermat_quintic(), 200_000, seed=1)).compute())
    z = chart["z"].values[:10_000]
    print(f"sampled {len(z)} points of one chart in {t:.1f} s")
    run(z, "10^4 points of one chart", compare=True)
    if not args.quick:
        z = mf.sample_points(mf.fermat_quintic(), 100_000, seed=2).compute()["z"].values
        run(z, "10^5 points (all charts)", compare=False)
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
