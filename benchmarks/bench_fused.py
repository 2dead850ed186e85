#!/usr/bin/env python
"""Benchmark: the fused numba kernel tiles against the NumPy paths (issue 10, the general case).

Side by side in one run, for ``gaussian_fs(sigma=0.3, squared=True)`` on Fermat-quintic points
and ``relu_ntk`` (defaults: depth 1, sigma_w 1, sigma_b 0) on their patch features (d = 10):

(a) one kernel tile of ``TILE x TILE`` (backend.TILE = 1024) entries, computed by the kernel spec
    as an operator computes it (hyper-parameter and value checks included), on one thread (the
    NumPy ReLU kernel with ``n_threads=1``, BLAS on one thread): CPU ns per entry;
(b) the ``BlockwiseOperator`` mat-vec ``K @ v``, v (n, 9) (the nine real metric coordinates of a
    3-fold), symmetric (tiles on and above the diagonal, each used for two products): on one
    worker thread at n = 4 TILE (CPU ns per kernel entry computed, products included: the
    measure least disturbed by other load on a shared machine), and on every usable core at
    n = 8000 and 20000 (wall ns and CPU ns of all threads per entry of the n x n matrix); the
    two paths alternate, best of ``--repeat``;
(c) the projected time of a frozen-kernel flow of 100 steps on N = 10^5 points: one train-train
    mat-vec per step (``KernelModel.line``), from the wall time per entry at the largest n
    (100 N^2 ns/entry), and from the one-worker CPU time per computed entry over the usable cores
    (what quiet cores would give: the load average is printed); test points, the loss and the
    validity checks not counted.

Usage::

    python benchmarks/bench_fused.py                 # n = 8000 and 20000 (~3 min on 2 cores)
    python benchmarks/bench_fused.py --sizes 4000    # quick
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import mfarray as mf
from mfarray import backend
from mfarray.kernels import fused, gaussian_fs, relu_ntk
from mfarray.kernels.features import patch_features
from mfarray.kernels.operators import BlockwiseOperator
from mfarray.sampling import sample_z

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

STEPS, N_FLOW = 100, 10**5


def kernels():
    """(label, points kind, {path: kernel spec}, {path: the spec on one thread})."""
    gauss = {"numpy": gaussian_fs.bind(sigma=0.3, squared=True, method="gemm"),
             "fused": gaussian_fs.bind(sigma=0.3, squared=True, method="fused")}
    relu = {"numpy": relu_ntk.bind(method="numpy"), "fused": relu_ntk.bind(method="fused")}
    return [("gaussian_fs(sigma=0.3, squared=True)", "z", gauss, gauss),
            ("relu_ntk(depth=1, sigma_w=1, sigma_b=0)", "x", relu,
             {"numpy": relu_ntk.bind(method="numpy", n_threads=1), "fused": relu["fused"]})]


def cpu_best(fns, repeat):
    """{key: best process CPU time of ``repeat`` calls of fns[key]}, the calls interleaved."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for key, fn in fns.items():
            t = time.process_time()
            fn()
            best[key] = min(best[key], time.process_time() - t)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8000, 20000])
    p.add_argument("--repeat", type=int, default=2, help="mat-vecs per size and path (best is reported)")
    p.add_argument("--tile-repeat", type=int, default=15)
    args = p.parse_args(argv)
    cores = backend.cores()
    print(f"CPU: {cpu_model()}, cores usable: {cores}, numpy {np.__version__}, "
          f"numba {fused.numba.__version__ if fused.available() else 'missing'}")
    print(f"load average: {os.getloadavg()}")
    n_max = max(args.sizes)
    z = sample_z(mf.fermat_quintic(), 0, 0, max(n_max, 2 * backend.TILE))
    pts = {"z": z, "x": patch_features(z)}
    v_all = np.random.default_rng(0).normal(size=(n_max, 9))
    t = backend.TILE
    rows = []
    for label, kind, specs, serial in kernels():
        a, b = pts[kind][:t], pts[kind][t:2 * t]
        for spec in specs.values():  # compile (or load the numba cache) and warm up
            spec(a[:64], b[:64])
        with backend.one_blas_thread():
            tile = cpu_best({path: (lambda s=spec, a=a, b=b: s(a, b)) for path, spec in serial.items()},
                            args.tile_repeat)
        rows.append((label, f"tile {t}x{t}, 1 thread", *(tile[p] / t**2 * 1e9 for p in ("numpy", "fused")), None))
        n1 = 4 * t
        with backend.one_blas_thread():  # (b), one worker: all of its work on this thread
            ops = {path: BlockwiseOperator(spec, pts[kind][:n1], pts[kind][:n1], workers=1)
                   for path, spec in serial.items()}
            one = {path: float("inf") for path in ops}
            for _ in range(args.repeat + 1):
                for path, op in ops.items():
                    t0 = time.thread_time()
                    op.matvec(v_all[:n1])
                    one[path] = min(one[path], time.thread_time() - t0)
        computed = 10 * t**2  # 4 x 4 tiles, 10 on and above the diagonal
        per_entry = [one[p] / computed * 1e9 for p in ("numpy", "fused")]
        rows.append((label, f"BlockwiseOperator n={n1}, 1 worker", *per_entry, None))
        for n in args.sizes:
            x, v = pts[kind][:n], v_all[:n]
            ops = {path: BlockwiseOperator(spec, x, x) for path, spec in specs.items()}
            res = {path: [float("inf"), float("inf"), None] for path in ops}
            for _ in range(args.repeat):
                for path, op in ops.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = op.matvec(v)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    r = res[path]
                    r[0], r[1], r[2] = min(r[0], wall / n**2 * 1e9), min(r[1], cpu / n**2 * 1e9), out
            dev = float(np.max(np.abs(res["fused"][2] - res["numpy"][2])) / np.max(np.abs(res["numpy"][2])))
            rows.append((label, f"BlockwiseOperator n={n}, wall, {cores} cores", res["numpy"][0], res["fused"][0], dev))
            rows.append((label, f"BlockwiseOperator n={n}, CPU", res["numpy"][1], res["fused"][1], None))
    print(f"load average after: {os.getloadavg()}")
    print()
    print("ns per entry (tile and 1 worker: CPU ns per kernel entry computed; all cores: ns per entry of the "
          "n x n matrix)")
    print(f"{'kernel':40s} {'measurement':40s} {'numpy':>8s} {'fused':>8s} {'speed-up':>8s}  max|dKv|/max|Kv|")
    for r in rows:
        dev = "" if r[4] is None else f"  {r[4]:.1e}"
        print(f"{r[0]:40s} {r[1]:40s} {r[2]:8.2f} {r[3]:8.2f} {r[2] / r[3]:7.2f}x{dev}")
    print()
    print(f"projected {STEPS} flow steps at N = {N_FLOW:.0e} (one train mat-vec per step, ns/entry at n = {n_max}):")
    for label, _, _, _ in kernels():
        wall = next(r for r in rows if r[0] == label and r[1].startswith(f"BlockwiseOperator n={n_max}, wall"))
        one = next(r for r in rows if r[0] == label and r[1].endswith("1 worker"))
        scale = 1e-9 * STEPS / 3600
        entries = N_FLOW**2 / 2 + N_FLOW * t / 2  # computed: tiles on and above the diagonal
        print(f"  {label:40s} from wall at n = {n_max}:  numpy {wall[2] * scale * N_FLOW**2:6.2f} h   "
              f"fused {wall[3] * scale * N_FLOW**2:6.2f} h")
        print(f"  {'':40s} from 1 worker / {cores} cores: numpy {one[2] * scale * entries / cores:6.2f} h   "
              f"fused {one[3] * scale * entries / cores:6.2f} h")


if __name__ == "__main__":
    main()
