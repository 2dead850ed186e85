"""Benchmark: empirical metric-NTK (2.7) of a width-64, 3-hidden-layer ReLU MLP, 9 outputs.

Full kernel (1000, 1000, 9, 9) in float64 on 1000 points of dimension 10 (the paper's
features are 10 real numbers), best of 3, next to the GEMM floor on the same machine (the
three (n c, 64) x (64, n c) signal GEMMs the layer-structured formula cannot avoid, written
into preallocated memory).  Optionally (``--nt``) neural-tangents' empirical NTK on the same
network and parameters, if it can be imported.

    python benchmarks/bench_empirical_ntk.py [--n 1000] [--nt] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from mfarray import networks as nw
from mfarray.kernels.empirical import empirical_ntk


def machine_info():
    from machine import cpu_model

    model = cpu_model()
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = "?"
    try:
        import threadpoolctl

        info = threadpoolctl.threadpool_info()
        blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads, "
                         f"{i.get('architecture')})" for i in info if i["user_api"] == "blas")
    except Exception:  # pragma: no cover
        pass
    return (f"CPU: {model}; cores available: {ncpu}; python {platform.python_version()}, "
            f"numpy {np.__version__}; BLAS: {blas}")


def best_of(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # the result is dropped before the next call
        ts.append(time.perf_counter() - t0)
    return min(ts), ts


def gemm_floor(n, c, widths, repeat):
    rng = np.random.default_rng(0)
    out = np.empty((n * c, n * c))
    mats = [(rng.standard_normal((n * c, d)), rng.standard_normal((d, n * c))) for d in widths]

    def run():
        for a, b in mats:
            np.matmul(a, b, out=out)
        return None

    run()
    return best_of(run, repeat)[0]


def _import_neural_tangents():
    """Import neural-tangents, patching names that newer JAX releases removed."""
    import types

    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        import neural_tangents as nt

        return nt
    except Exception:
        pass
    import jax.core
    import jax.extend.core as jec
    import jax.interpreters.ad as ad

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in dir(jec):
            if not name.startswith("_") and not hasattr(jax.core, name):
                setattr(jax.core, name, getattr(jec, name))
    if "jax.util" not in sys.modules:
        import jax._src.util as ju

        mod = types.ModuleType("jax.util")
        mod.__dict__.update({k: getattr(ju, k) for k in dir(ju) if not k.startswith("__")})
        sys.modules["jax.util"] = mod
    if not hasattr(ad, "zeros_like_p"):
        ad.zeros_like_p = jec.Primitive("zeros_like_compat")
    import neural_tangents as nt

    return nt


def bench_neural_tangents(cfg, params, x, ours, repeat):
    try:
        nt = _import_neural_tangents()
        import jax
        import jax.numpy as jnp
        from neural_tangents import stax
    except Exception as exc:  # pragma: no cover - optional
        print(f"neural-tangents: not importable ({exc!r})")
        return
    layers = []
    for d in cfg.widths[1:-1]:
        layers += [stax.Dense(d, W_std=cfg.sigma_w, b_std=cfg.sigma_b), stax.Relu()]
    layers.append(stax.Dense(cfg.c_out, W_std=cfg.sigma_w, b_std=cfg.sigma_b))
    _, apply_fn, _ = stax.serial(*layers)
    sp = []
    for W, b in params:
        sp += [(jnp.asarray(W), jnp.asarray(b)), ()]
    sp = sp[:-1]
    xj = jnp.asarray(x)
    print(f"neural-tangents {nt.__version__}, jax {jax.__version__} ({jax.devices()[0].platform})")
    impls = [nt.NtkImplementation.JACOBIAN_CONTRACTION, nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
             nt.NtkImplementation.STRUCTURED_DERIVATIVES]
    for impl in impls:
        try:
            fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0,
                                             implementation=impl))
            t0 = time.perf_counter()
            K = np.asarray(fn(xj, None, sp).block_until_ready())
            first = time.perf_counter() - t0
            err = np.abs(K - ours).max() / np.abs(ours).max()
            del K

            def run():
                return fn(xj, None, sp).block_until_ready()

            best, _ = best_of(run, repeat)
            print(f"  {impl.name:28s} best {best:7.2f} s  (first call incl. compile {first:.2f} s);"
                  f" max rel diff vs mfarray {err:.1e}")
        except Exception as exc:  # pragma: no cover
            print(f"  {impl.name:28s} failed: {type(exc).__name__}: {str(exc)[:120]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nt", action="store_true", help="also time neural-tangents, if importable")
    args = ap.parse_args(argv)

    n, d, width, depth, c = args.n, 10, 64, 3, 9
    cfg = nw.MLP((d,) + (width,) * depth + (c,), "relu", sigma_w=1.0, sigma_b=0.1)
    params = nw.init(cfg, 0)
    x = np.random.default_rng(1).standard_normal((n, d))

    print(machine_info())
    print(f"network: widths {cfg.widths}, relu, P = {nw.num_params(cfg)}; kernel "
          f"({n}, {n}, {c}, {c}) float64 = {n * n * c * c * 8 / 2**20:.0f} MiB")
    empirical_ntk(cfg, params, x[:50])  # warm-up
    best, ts = best_of(lambda: empirical_ntk(cfg, params, x), args.repeat)
    print(f"mfarray empirical_ntk: best of {args.repeat}: {best:.3f} s  (all: "
          + ", ".join(f"{t:.3f}" for t in ts) + ")")
    floor = gemm_floor(n, c, cfg.widths[1:-1], args.repeat)
    flops = 2.0 * (n * c) ** 2 * sum(cfg.widths[1:-1])
    print(f"GEMM floor ({depth} x ({n * c}, {width}) @ ({width}, {n * c}) into preallocated "
          f"output): {floor:.3f} s = {flops / floor / 1e9:.1f} GFLOP/s; "
          f"ratio mfarray / floor = {best / floor:.2f}")
    print("reference: neural-tangents' fastest implementation ~9 s on 2 cores; goal <= 3 s")
    if args.nt:
        bench_neural_tangents(cfg, params, x, empirical_ntk(cfg, params, x), args.repeat)


if __name__ == "__main__":
    main()
