"""Low-rank (pivoted Cholesky) operators at 10^4 quintic points (issue 10): the rank each tol
needs and the build time, mat-vec time against dense and blockwise, and the 20-step flow
against the dense flow.

    nice -n 10 python benchmarks/bench_lowrank.py [--n 10000] [--rank 1000] [--steps 20]

One build per kernel to ``--rank`` with tol 0 records the relative residual trace after every
pivot (``PivotedCholesky.history``): the rank any tol needs is read off it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
from machine import best_of, cpu_model

import mfarray as mf
from mfarray.flows.frozen import kernel_spec
from mfarray.kernels import cosine_ntk, gaussian_fs, relu_ntk
from mfarray.kernels.features import patch_features
from mfarray.kernels.operators import BlockwiseOperator, DenseOperator
from mfarray.kernels.operators.lowrank import (
    LowRankWarning,
    lowrank_operators,
    pivoted_cholesky,
)

TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10)


def inputs(kernel, ds):
    z = ds.z.values
    return z if kernel_spec(kernel).inputs == "points" else patch_features(z)


def rank_for(history, tol):
    hit = np.nonzero(history <= tol)[0]
    return int(hit[0]) + 1 if hit.size else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--rank", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    n, m = args.n, args.n_test
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.python_version()}, numpy {np.__version__}")
    t = time.perf_counter()
    pts = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 26 * (n + m), seed=1)).compute()
    assert pts.sizes["point"] >= n + m, pts.sizes
    train, test = pts.isel(point=slice(0, n)), pts.isel(point=slice(n, n + m))
    print(f"points: {n} train + {m} test of one chart ({time.perf_counter() - t:.1f} s)")
    kernels = {"relu_ntk": relu_ntk, "gaussian_fs sigma=0.3": gaussian_fs.bind(sigma=0.3),
               "cosine_ntk sigma_w=1": cosine_ntk.bind(sigma_w=1.0)}
    print(f"\n## rank needed for residual trace <= tol * trace (one build to rank {args.rank}, tol 0)")
    print("| kernel | " + " | ".join(f"tol {t:g}" for t in TOLS) + " | rank reached | build s |")
    print("|---" * (len(TOLS) + 3) + "|")
    for name, k in kernels.items():
        x = inputs(k, train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowRankWarning)
            pc = pivoted_cholesky(k, x, rank=args.rank, tol=0.0)
        cells = [str(rank_for(pc.history, t) or f"> {pc.rank} ({pc.relative_residual:.1e} at {pc.rank})")
                 for t in TOLS]
        print(f"| {name} | " + " | ".join(cells) + f" | {pc.rank} | {pc.seconds:.1f} |")
        del pc
    print(f"\n## mat-vec (N, 9), N = {n}: best of 3")
    for name in ("relu_ntk", "gaussian_fs sigma=0.3"):
        k = kernels[name]
        x = inputs(k, train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowRankWarning)
            A, _ = lowrank_operators(k, x, rank=args.rank, tol=1e-6)
        v = np.random.default_rng(0).standard_normal((n, 9))
        t_low, y_low = _matvec_time(A, v, 3)
        tiled = BlockwiseOperator(k, x, x, 1024)
        t_blk, y_blk = _matvec_time(tiled, v, 1)
        t = time.perf_counter()
        dense = DenseOperator(tiled.to_dense(), symmetric=True)
        t_build = time.perf_counter() - t
        t_den, y_den = _matvec_time(dense, v, 3)
        err = np.linalg.norm(y_low - y_den)
        print(f"{name}: lowrank rank {A.rank} {t_low * 1e3:.1f} ms, dense {t_den * 1e3:.1f} ms (build "
              f"{t_build:.1f} s), blockwise {t_blk * 1e3:.0f} ms; |(K - LL^T) v|_F / |K v|_F = "
              f"{err / np.linalg.norm(y_den):.2e}, bound {A.error_bound(v) / np.linalg.norm(y_den):.2e}; "
              f"blockwise vs dense {np.linalg.norm(y_blk - y_den) / np.linalg.norm(y_den):.1e}")
        del dense, tiled
    print(f"\n## {args.steps}-step flow (defaults: sigma_squared, backtracking), {n} train + {m} test")
    print("| kernel | rank | rel. residual trace | sigma_train dense (start -> end) | max |d sigma_train| | "
          "max |d sigma_test| | dense s | lowrank s (incl. build) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("relu_ntk", "gaussian_fs sigma=0.3", "cosine_ntk sigma_w=1"):
        k = kernels[name]
        t = time.perf_counter()
        ref = mf.kernel_flow(train, k, steps=args.steps, test=test)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowRankWarning)
            A, B = lowrank_operators(k, inputs(k, train), inputs(k, test), rank=args.rank, tol=1e-6)
        got = _flow(train, test, k, A, B, args.steps)
        t_low = time.perf_counter() - t
        d_tr = float(np.abs(got["sigma_train"] - ref.sigma_train.values).max())
        d_te = float(np.abs(got["sigma_test"] - ref.sigma_test.values).max())
        print(f"| {name} | {A.rank} | {A.cholesky.relative_residual:.1e} | {float(ref.sigma_train[0]):.4f} -> "
              f"{float(ref.sigma_train[-1]):.4f} | {d_tr:.1e} | {d_te:.1e} | {t_ref:.1f} | {t_low:.1f} |")


def _matvec_time(op, v, repeat):
    return best_of(lambda: op.matvec(v), repeat)


def _flow(train, test, kernel, A, B, steps):
    """The flow with the train and test low-rank operators: kernel_flow with method="lowrank"
    routed to them (as the registration in as_operator would)."""
    from mfarray.flows import frozen

    original = frozen.as_operator

    def as_operator(kernel, x_out=None, x_in=None, *, method="auto", **kw):
        return A if x_out.shape[0] == A.shape[0] and x_out is x_in else B

    frozen.as_operator = as_operator
    try:
        r = mf.kernel_flow(train, kernel, steps=steps, test=test)
    finally:
        frozen.as_operator = original
    return {"sigma_train": r.sigma_train.values, "sigma_test": r.sigma_test.values}


if __name__ == "__main__":
    main()
