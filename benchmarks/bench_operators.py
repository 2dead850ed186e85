#!/usr/bin/env python
"""Benchmark: the kernel mat-vec ``K @ v`` at N = 20000 (paper §3.1's problem, scaled down).

Gaussian kernel exp(-|x - y|^2 / (2 s^2)) on d = 10 features, v of shape (N, 9) (the nine
real components of a metric; the scalar kernel acts on each, eq. 2.23).  Side by side:

(a) ``ZarrOperator``: K stored on disk (Zarr v3, chunks block x block, no compression),
    float32 and float64; build time of each store; mat-vec with the store in the page
    cache ("warm") and after evicting its chunk files from the page cache with
    ``posix_fadvise(DONTNEED)`` ("cold": really read from disk);
(b) ``BlockwiseOperator``: K recomputed block by block in every mat-vec (NumPy stream, and
    the lazy Dask graph on the threaded scheduler);
(c) ``DenseOperator``: K held in memory (float64, N^2 * 8 bytes = 3.2 GB at N = 20000;
    skipped when available memory is short).

Reported: seconds per mat-vec (best of ``--repeat``), effective GB/s = bytes of kernel read
(stores, dense) or produced (recomputed, counted as float64) per second, peak RSS.
Stores are written under /tmp and deleted afterwards.  Nothing is written to the repo.

Usage::

    python benchmarks/bench_operators.py            # N = 20000 (~4-5 min on 2 cores)
    python benchmarks/bench_operators.py --n 4000 --blocks 1024   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time

import dask
import dask.array as da
import numpy as np

from mfarray.kernels.operators import BlockwiseOperator, DenseOperator, ZarrOperator


def gaussian(x, y, s=1.0):
    d2 = np.sum(x * x, axis=1)[:, None] + np.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    np.clip(d2, 0.0, None, out=d2)
    d2 *= -1.0 / (2.0 * s * s)
    return np.exp(d2, out=d2)


from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def du_gb(path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total / 1e9


def evict(path) -> None:
    """Drop a store's files from the page cache (clean pages only; harmless)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def check(out, ref, tol):
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    if not err < tol:
        raise AssertionError(f"mat-vec disagrees with the reference: relative error {err:.2e} > {tol:.0e}")


def best_time(fn, repeat, before=None):
    times, out = [], None
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--blocks", default="4096,1024", help="Zarr chunk / blockwise tile sizes, comma-separated")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads for the store build")
    ap.add_argument("--no-dense", action="store_true")
    args = ap.parse_args()

    n, d = args.n, args.d
    blocks = [int(b) for b in args.blocks.split(",")]
    block = blocks[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    s = float(np.sqrt(d))  # length scale ~ typical distance: a non-trivial kernel
    kernel = lambda a, b: gaussian(a, b, s)  # noqa: E731
    v = rng.standard_normal((n, 9))

    print("== kernel mat-vec benchmark (mfarray.kernels.operators) ==")
    print(f"machine : {cpu_model()}, {os.cpu_count()} logical cores, "
          f"{mem_available_gb():.1f} GB available, {platform.system()} {platform.release()}")
    print(f"numpy {np.__version__}, dask {dask.__version__}, zarr {__import__('zarr').__version__}, "
          f"python {platform.python_version()}")
    print(f"problem : N = {n}, d = {d}, v (N, 9) float64, blocks = {blocks}, "
          f"K = {n * n / 1e6:.0f} M entries ({8 * n * n / 1e9:.2f} GB float64)")

    rows = []  # (label, seconds, bytes, note)
    builds = []
    ref = None
    tmp = tempfile.mkdtemp(prefix="mfarray-bench-ops-", dir="/tmp")
    try:
        # (b) recomputed blocks, first: it gives the reference result
        for b in blocks:
            op = BlockwiseOperator(kernel, x, x, block=b)
            t, out = best_time(lambda: op.matvec(v), args.repeat)
            ref = out if ref is None else ref
            check(out, ref, 1e-12)
            rows.append(("(b) blockwise recompute, NumPy stream", t, 8 * n * n, f"block {b}"))
            t, out = best_time(lambda: op.matvec(da.from_array(v, chunks=b)).compute(), args.repeat)
            rows.append(("(b) blockwise recompute, Dask graph", t, 8 * n * n, f"block {b}, {os.cpu_count()} threads"))
            check(out, ref, 1e-12)

        # (a) Zarr stores
        for b in blocks:
            for dt, itemsize in (("float32", 4), ("float64", 8)):
                path = os.path.join(tmp, f"K-{dt}-{b}.zarr")
                t0 = time.perf_counter()
                zop = ZarrOperator.build(kernel, x, None, path, block=b, dtype=dt, symmetric=True,
                                         workers=args.workers, name="gaussian", params={"s": s})
                tb = time.perf_counter() - t0
                builds.append(f"store build {dt}, block {b}: {tb:6.2f} s  ({du_gb(path):.2f} GB on disk, "
                              f"{zop.progress[1]} blocks, symmetric: upper blocks computed, "
                              f"{args.workers} threads)")
                zop = ZarrOperator.open(path)
                tol = 1e-6 if dt == "float32" else 1e-12
                t, out = best_time(lambda: zop.matvec(v), args.repeat)
                rows.append((f"(a) Zarr {dt}, warm page cache", t, itemsize * n * n, f"block {b}, stream + prefetch"))
                check(out, ref, tol)
                t, out = best_time(lambda: zop.matvec(v), args.repeat, before=lambda: evict(path))
                rows.append((f"(a) Zarr {dt}, cold (evicted)", t, itemsize * n * n, f"block {b}, stream + prefetch"))
                check(out, ref, tol)
                t, out = best_time(lambda: zop.matvec(da.from_array(v, chunks=b)).compute(), args.repeat)
                rows.append((f"(a) Zarr {dt}, Dask from_zarr", t, itemsize * n * n, f"block {b}, warm"))
                check(out, ref, tol)
                shutil.rmtree(path)
        rss_before_dense = peak_rss_gb()

        # (c) dense in memory
        need = 8 * n * n / 2**30
        avail = mem_available_gb()
        if args.no_dense or avail < 1.6 * need:
            rows.append(("(c) dense in memory", float("nan"), 8 * n * n, f"skipped ({avail:.1f} GB available)"))
        else:
            K = np.empty((n, n))
            t0 = time.perf_counter()
            for i0 in range(0, n, block):
                K[i0:i0 + block] = kernel(x[i0:i0 + block], x)
            builds.append(f"dense K fill, float64: {time.perf_counter() - t0:6.2f} s ({8 * n * n / 1e9:.2f} GB in RAM)")
            dop = DenseOperator(K)
            t, out = best_time(lambda: dop.matvec(v), args.repeat)
            rows.append(("(c) dense in memory, float64", t, 8 * n * n, "one GEMM"))
            check(out, ref, 1e-12)
            del K, dop
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    for line in builds:
        print(line)
    print()
    print(f"{'method':42s} {'s/matvec':>9s} {'GB/s':>7s}  note")
    print("-" * 80)
    for label, t, nbytes, note in rows:
        gbs = nbytes / t / 1e9 if t == t else float("nan")
        print(f"{label:42s} {t:9.3f} {gbs:7.2f}  {note}")
    print(f"\npeak RSS: {rss_before_dense:.2f} GB before the dense stage, {peak_rss_gb():.2f} GB overall")
    print("GB/s = kernel bytes read (stores, dense) or produced as float64 (recompute) per second")


if __name__ == "__main__":
    main()
