#!/usr/bin/env python
"""Benchmark: Shiffman-Zelditch point sampling on the Fermat quintic.

Measures, side by side in one run:

1. mfarray: ``sample_points(surface, N).compute()`` in memory (points, patches, Omega, g_FS,
   weights), points per second (best of several runs) and peak RSS;
2. a plain baseline in this file ("cymetric's approach"): a Python loop over random lines,
   coefficients of p(a + t b) expanded per line with binomial coefficients, ``numpy.roots``
   per line, then the *same* vectorised geometry as mfarray (``mfarray.points_from_z``), so
   the comparison isolates the point-generation strategy.  Run on fewer points and
   extrapolated linearly (its cost is a per-line Python loop);
3. mfarray streaming 10^6 points to a Zarr v3 store with ``mfarray.to_zarr``, for two chunk
   sizes (and a smaller N at the same chunk size), peak RSS versus the in-memory size of the
   dataset;
4. machine information.

Every measurement runs in a fresh subprocess (``--worker``) and reports that process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``; an idle interpreter that only did the imports
gives the baseline RSS.

Usage::

    python benchmarks/bench_sampling.py              # full run (~1-3 min on 2 cores)
    python benchmarks/bench_sampling.py --quick      # small sanity run
    python benchmarks/bench_sampling.py --markdown   # also print RESULTS.md-ready tables
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

FULL = dict(n_mem=100_000, n_base=10_000, n_stream=1_000_000, stream_chunks=(25_000, 100_000),
            n_stream_small=250_000, repeats=3, stream_repeats=2)
QUICK = dict(n_mem=10_000, n_base=2_000, n_stream=100_000, stream_chunks=(10_000, 40_000),
             n_stream_small=25_000, repeats=2, stream_repeats=1)
SEED = 0


# ----------------------------------------------------------------------------- helpers
def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def _imports():
    import dask  # noqa: F401
    import numpy  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import mfarray

    return mfarray


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def _fmt_rate(r: float) -> str:
    return f"{r:,.0f}"


# ------------------------------------------------------------------- baseline sampler
def _baseline_terms(surface):
    """Per monomial: coefficient and, per variable it contains, (index, power, binomials)."""
    terms = []
    for mono, c in zip(surface.monomials, surface.coefficients):
        factors = [(i, m, [math.comb(m, k) for k in range(m + 1)]) for i, m in enumerate(mono) if m]
        terms.append((c, factors))
    return terms


def baseline_line_coefficients(terms, degree, a, b, np):
    """Ascending coefficients of p(a + t b) for ONE line, expanded in plain NumPy."""
    total = np.zeros(degree + 1, dtype=np.complex128)
    for c, factors in terms:
        poly = np.array([c], dtype=np.complex128)
        for i, m, binom in factors:
            k = np.arange(m + 1)
            # (a_i + t b_i)^m = sum_k C(m, k) a_i^(m-k) b_i^k t^k
            poly = np.convolve(poly, np.asarray(binom) * a[i] ** (m - k) * b[i] ** k)
        total += poly
    return total


def baseline_sample_z(surface, n, seed, np):
    """n points on X: a Python loop over lines, numpy.roots per line (cymetric's strategy)."""
    d = surface.degree
    n_lines = -(-n // d)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n_lines, surface.n_ambient, 2))
    ab = x[..., 0] + 1j * x[..., 1]
    terms = _baseline_terms(surface)
    out = np.empty((n_lines * d, surface.n_ambient), dtype=np.complex128)
    for ell in range(n_lines):
        a, b = ab[0, ell], ab[1, ell]
        coeffs = baseline_line_coefficients(terms, d, a, b, np)
        t = np.roots(coeffs[::-1])  # numpy.roots wants descending coefficients
        out[ell * d:(ell + 1) * d] = a[None, :] + t[:, None] * b[None, :]
    return out[:n]


# ---------------------------------------------------------------------------- workers
def worker_idle(args):
    _imports()
    return {}


def worker_mfarray_mem(args):
    mfarray = _imports()
    surface = mfarray.fermat_quintic()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ds = mfarray.sample_points(surface, args.n, seed=SEED, chunk_size=args.chunk).compute()
        times.append(time.perf_counter() - t0)
        nbytes = ds.nbytes
        del ds
    best = min(times)
    return {"n": args.n, "chunk": args.chunk, "times": times, "best_s": best,
            "rate": args.n / best, "bytes_per_point": nbytes / args.n}


def worker_baseline(args):
    mfarray = _imports()
    import numpy as np

    surface = mfarray.fermat_quintic()
    loop_times, total_times, dropped = [], [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        z = baseline_sample_z(surface, args.n, SEED, np)
        t1 = time.perf_counter()
        # numpy.roots is not polished: drop the (rare) points that points_from_z would reject
        ok = surface.relative_residual(z) <= 1e-8
        ds = mfarray.points_from_z(surface, z[ok]).compute()
        t2 = time.perf_counter()
        loop_times.append(t1 - t0)
        total_times.append(t2 - t0)
        dropped = int((~ok).sum())
        del ds
    return {"n": args.n, "loop_times": loop_times, "total_times": total_times,
            "loop_rate": args.n / min(loop_times), "rate": args.n / min(total_times),
            "dropped": dropped, "geometry_s": min(total_times) - min(loop_times)}


def worker_stream(args):
    mfarray = _imports()
    surface = mfarray.fermat_quintic()
    tmp = tempfile.mkdtemp(prefix="mfarray-bench-")
    times = []
    try:
        for r in range(args.repeats):
            path = os.path.join(tmp, f"points{r}.zarr")
            t0 = time.perf_counter()
            ds = mfarray.sample_points(surface, args.n, seed=SEED, chunk_size=args.chunk)
            mfarray.to_zarr(ds, path)
            times.append(time.perf_counter() - t0)
            disk = sum(os.path.getsize(os.path.join(r_, f)) for r_, _, fs in os.walk(path) for f in fs)
            shutil.rmtree(path, ignore_errors=True)
        bpp = sum(v.dtype.itemsize * math.prod(v.shape) for v in ds.variables.values()) / args.n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dt = min(times)
    return {"n": args.n, "chunk": args.chunk, "times": times, "best_s": dt, "rate": args.n / dt,
            "disk_bytes": disk, "bytes_per_point": bpp}


PROFILE_PARTS = [  # (label, module file suffix, function name); cumulative times, may nest
    ("sample_z (whole point generation)", "mfarray/sampling.py", "sample_z"),
    ("  line_coefficients (p at d+1 points per line)", "mfarray/sampling.py", "line_coefficients"),
    ("  polyroots (batched Aberth)", "mfarray/roots.py", "polyroots"),
    ("  _polish (Newton, value_and_gradient)", "mfarray/sampling.py", "_polish"),
    ("_geometry_outputs (checks + chart geometry)", "mfarray/pointset/construct.py", "_geometry_outputs"),
    ("  chart_geometry", "mfarray/geometry/local.py", "chart_geometry"),
    ("Hypersurface.value_and_gradient (all callers)", "mfarray/geometry/hypersurface.py",
     "value_and_gradient"),
    ("Hypersurface.relative_residual (all callers)", "mfarray/geometry/hypersurface.py",
     "relative_residual"),
]


def worker_profile(args):
    """cProfile of sample_points(n).compute() on the synchronous scheduler: where time goes."""
    import cProfile
    import pstats

    import dask

    mfarray = _imports()
    surface = mfarray.fermat_quintic()
    mfarray.sample_points(surface, 1000, seed=SEED).compute()  # warm-up
    prof = cProfile.Profile()
    with dask.config.set(scheduler="synchronous"):
        t0 = time.perf_counter()
        prof.enable()
        mfarray.sample_points(surface, args.n, seed=SEED, chunk_size=args.chunk).compute()
        prof.disable()
        total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    parts = []
    for label, suffix, name in PROFILE_PARTS:
        ct = sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == name)
        calls = sum(v[1] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == name)
        parts.append((label, ct, calls))
    mf = sum(v[2] for (f, _, _), v in stats.items() if "/mfarray/" in f)
    np_ = sum(v[2] for (f, _, fn), v in stats.items() if f == "~")  # C builtins (numpy kernels)
    other = sum(v[2] for (f, _, _), v in stats.items() if "/dask/" in f or "/xarray/" in f)
    return {"n": args.n, "chunk": args.chunk, "total_s": total, "parts": parts,
            "dask_xarray_python_s": other, "builtin_s": np_, "mfarray_python_s": mf}


WORKERS = {"idle": worker_idle, "mfarray_mem": worker_mfarray_mem,
           "baseline": worker_baseline, "stream": worker_stream, "profile": worker_profile}


def run_worker(kind, n=0, chunk=0, repeats=1):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n),
           "--chunk", str(chunk), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"worker {kind} failed (rc={proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ machine info
def machine_info():
    import numpy as np

    from machine import cpu_model

    cpu = cpu_model()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        blas = "; ".join(
            f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer', '')}, "
            f"{i.get('num_threads')} threads)" for i in threadpool_info() if i.get("user_api") == "blas"
        ) or "none loaded"
    except ImportError:
        try:
            cfg = np.show_config(mode="dicts")
            blas = str(cfg["Build Dependencies"]["blas"].get("name"))
        except Exception:
            pass
    import dask
    import xarray
    import zarr

    import mfarray

    return {
        "CPU": cpu,
        "cores (os.cpu_count / affinity)": f"{os.cpu_count()} / {affinity}",
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        "BLAS": blas,
        "dask / xarray / zarr": f"{dask.__version__} / {xarray.__version__} / {zarr.__version__}",
        "mfarray": getattr(mfarray, "__version__", "?"),
        "OS": platform.platform(),
    }


# ----------------------------------------------------------------------------- report
def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def md_table(headers, rows):
    out = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (10^4 / 10^5 points)")
    p.add_argument("--markdown", action="store_true", help="also print RESULTS.md-ready tables")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (best of)")
    args = p.parse_args()

    if args.worker:
        res = WORKERS[args.worker](args)
        res["maxrss"] = _maxrss_bytes()
        print(json.dumps(res))
        return

    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    t_start = time.perf_counter()
    info = machine_info()
    print("== machine")
    for k, v in info.items():
        print(f"  {k:32s} {v}")
    print(f"  mode: {'quick' if args.quick else 'full'}; every measurement in a fresh subprocess\n")

    idle = run_worker("idle")
    rss0 = idle["maxrss"]
    mem = run_worker("mfarray_mem", cfg["n_mem"], 50_000, cfg["repeats"])
    base = run_worker("baseline", cfg["n_base"], 0, cfg["repeats"])
    sr = cfg["stream_repeats"]
    streams = [run_worker("stream", cfg["n_stream"], c, sr) for c in cfg["stream_chunks"]]
    streams.append(run_worker("stream", cfg["n_stream_small"], cfg["stream_chunks"][0], sr))
    prof = run_worker("profile", cfg["n_mem"], 50_000)
    bpp = mem["bytes_per_point"]

    # ---- 1+2: throughput
    extrap = cfg["n_mem"] / base["rate"]
    thr_headers = ["method", "points measured", "best time [s]", "points/s", "peak RSS", "RSS - idle"]
    thr_rows = [
        ["mfarray sample_points().compute() (chunk 50k)", f"{mem['n']:,}", f"{mem['best_s']:.3f}",
         _fmt_rate(mem["rate"]), _fmt_bytes(mem["maxrss"]), _fmt_bytes(mem["maxrss"] - rss0)],
        ["baseline: loop numpy.roots + points_from_z", f"{base['n']:,}", f"{min(base['total_times']):.3f}",
         _fmt_rate(base["rate"]), _fmt_bytes(base["maxrss"]), _fmt_bytes(base["maxrss"] - rss0)],
        ["baseline: root loop only", f"{base['n']:,}", f"{min(base['loop_times']):.3f}",
         _fmt_rate(base["loop_rate"]), "", ""],
        ["idle interpreter (imports only)", "", "", "", _fmt_bytes(rss0), ""],
    ]
    ratio = mem["rate"] / base["rate"]
    ratio_loop = mem["rate"] / base["loop_rate"]
    print(f"== 1+2. in-memory sampling with weights and g_FS, best of {cfg['repeats']}")
    print(table(thr_headers, thr_rows))
    print(f"  baseline measured on {base['n']:,} points and extrapolated linearly to "
          f"{cfg['n_mem']:,}: {extrap:.2f} s (vs mfarray {mem['best_s']:.2f} s)")
    print(f"  baseline geometry (points_from_z) share: {base['geometry_s']:.3f} s; "
          f"unpolished numpy.roots points dropped by the tol check: {base['dropped']}")
    print(f"  throughput ratio mfarray / baseline (full pipeline): {ratio:.1f}x  (goal >= 10x: "
          f"{'MET' if ratio >= 10 else 'NOT met'})")
    print(f"  throughput ratio mfarray full pipeline / baseline root loop alone: {ratio_loop:.1f}x\n")

    # ---- 3: streaming
    st_headers = ["N", "chunk_size", "time [s]", "points/s", "peak RSS", "RSS - idle",
                  "full dataset in memory", "(RSS - idle) / full", "store on disk"]
    st_rows = []
    for s in streams:
        full = s["bytes_per_point"] * s["n"]
        st_rows.append([f"{s['n']:,}", f"{s['chunk']:,}", f"{s['best_s']:.2f}", _fmt_rate(s["rate"]),
                        _fmt_bytes(s["maxrss"]), _fmt_bytes(s["maxrss"] - rss0), _fmt_bytes(full),
                        f"{(s['maxrss'] - rss0) / full:.2f}", _fmt_bytes(s["disk_bytes"])])
    print(f"== 3. streamed to Zarr v3 with mfarray.to_zarr (best of {sr}; peak RSS over the runs)")
    print(table(st_headers, st_rows))
    print(f"  dataset size: {bpp:.0f} bytes/point (z, patch, elim, omega2, g_fs, det_g_fs, weight)")
    print(f"  idle interpreter with imports: {_fmt_bytes(rss0)}\n")
    print(f"== profile: sample_points({prof['n']:,}, chunk_size={prof['chunk']:,}).compute(), "
          f"synchronous scheduler, under cProfile ({prof['total_s']:.2f} s incl. profiler overhead)")
    prof_rows = [[label, calls, f"{ct:.3f}", f"{100 * ct / prof['total_s']:.0f}%"]
                 for label, ct, calls in prof["parts"]]
    prof_rows.append(["dask + xarray Python code (self time)", "", f"{prof['dask_xarray_python_s']:.3f}",
                      f"{100 * prof['dask_xarray_python_s'] / prof['total_s']:.0f}%"])
    prof_headers = ["part (cumulative; indented rows are inside the row above)", "calls", "time [s]", "share"]
    print(table(prof_headers, prof_rows))
    print()
    print(f"total benchmark wall time: {time.perf_counter() - t_start:.0f} s")

    if args.markdown:
        print("\n---- markdown ----\n")
        print(md_table(["item", "value"], list(info.items())))
        print()
        print(md_table(thr_headers, thr_rows))
        print()
        print(f"Baseline extrapolated to {cfg['n_mem']:,} points: {extrap:.2f} s. "
              f"Ratio mfarray / baseline: **{ratio:.1f}x** (full pipeline), "
              f"{ratio_loop:.1f}x (vs baseline root loop alone).")
        print()
        print(md_table(st_headers, st_rows))
        print()
        print(md_table(prof_headers, [[r[0].replace("  ", "&nbsp;&nbsp;"), *r[1:]] for r in prof_rows]))


if __name__ == "__main__":
    main()
