"""Benchmark: closed-form ReLU NTK on 5000 x 5000 points, d = 10, depth 3, float64.

Prints the time of ``relu_ntk`` (best of ``--repeat``) and a "floor" measured in
the same run on the same machine: one float64 GEMM (n x d @ d x n) plus the
element-wise passes the depth-L recursion fundamentally needs per layer on an
(n, n) array (one atan2, one sqrt, four multiply-adds; written in place with
plain NumPy), i.e. ``floor = t_gemm + L * (t_atan2 + t_sqrt + 4 t_fma)``.

Usage::

    python benchmarks/bench_relu_ntk.py [--n 5000] [--d 10] [--depth 3] [--repeat 3]

Reference: neural-tangents' jitted ``kernel_fn`` takes about 1.8 s for this
problem on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mfarray.kernels.relu import relu_ntk


from machine import cpu_model as _cpu_model  # noqa: E402  (benchmarks/machine.py)


def _best(f, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sigma-w", type=float, default=1.3)
    p.add_argument("--sigma-b", type=float, default=0.4)
    args = p.parse_args(argv)
    n, d, L = args.n, args.d, args.depth

    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {_cpu_model()}, cores available: {ncores}, numpy {np.__version__}")
    try:
        print(f"load average: {os.getloadavg()}")
    except OSError:
        pass

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))

    # --- floor ------------------------------------------------------------
    xT = np.ascontiguousarray(x.T)
    G = np.empty((n, n))
    t_gemm = _best(lambda: np.matmul(x, xT, out=G), args.repeat)
    A = np.abs(G) + 0.1
    B = np.empty_like(A)
    O = np.empty_like(A)
    np.copyto(B, A)
    t_atan2 = _best(lambda: np.arctan2(A, B, out=O), args.repeat)
    t_sqrt = _best(lambda: np.sqrt(A, out=O), args.repeat)

    def fma():
        np.multiply(A, 1.0001, out=O)
        np.add(O, B, out=O)

    t_fma = _best(fma, args.repeat)
    floor = t_gemm + L * (t_atan2 + t_sqrt + 4 * t_fma)
    A = B = O = G = None  # free them (a del would unbind the closures above)
    print(f"floor parts (n={n}): gemm {t_gemm:.3f} s, atan2 {t_atan2:.3f} s, "
          f"sqrt {t_sqrt:.3f} s, multiply-add {t_fma:.3f} s")
    print(f"floor = gemm + {L} x (atan2 + sqrt + 4 multiply-add) = {floor:.3f} s")

    # --- relu_ntk ---------------------------------------------------------
    for label, sw, sb in [("generic", args.sigma_w, args.sigma_b), ("Table 1", 5.716, 80.52)]:
        relu_ntk(x[:100], x[:100], depth=L, sigma_w=sw, sigma_b=sb)  # warm-up
        t = _best(lambda: relu_ntk(x, x, depth=L, sigma_w=sw, sigma_b=sb), args.repeat)
        print(f"relu_ntk {n}x{n}, d={d}, depth={L}, sigma_w={sw}, sigma_b={sb} ({label}): "
              f"{t:.3f} s (best of {args.repeat}); ratio to floor {t / floor:.2f}; "
              f"neural-tangents reference ~1.8 s -> {'faster' if t < 1.8 else 'slower'}")
        t1 = _best(lambda: relu_ntk(x, x, depth=L, sigma_w=sw, sigma_b=sb, n_threads=1),
                   args.repeat)
        print(f"    single thread: {t1:.3f} s; ratio to floor {t1 / floor:.2f}")


if __name__ == "__main__":
    main()
