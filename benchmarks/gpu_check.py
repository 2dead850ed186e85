#!/usr/bin/env python
"""One prepared GPU check of mfarray on CuPy (run once on a GPU machine; < 5 minutes).

Parts, each in its own try/except so one failure still prints the rest:

0. device: name, memory, compute capability, CuPy / CUDA / NumPy versions.
(a) correctness
    e2e:    the README flow on the GPU: 60,000 Fermat-quintic points (seed 21), chart selected,
            train = first 1000 / test = next 500 points computed and moved onto the GPU (a Dataset
            of CuPy arrays), ``kernel_flow(train, gaussian_fs(sigma=0.05, squared=True),
            steps=50, test=test)`` on CuPy and on NumPy; g_train / g_test compared (PASS when
            the per-point relative error max|dg| / max|g| <= 1e-10), with the step histories.
    probes: other entry points on device point sets (predict, blockwise flow, sigma_measure,
            select_chart, evaluate), each PASS / FAIL / ERROR with its message.
    pytest: ``pytest -q -m gpu`` (the CuPy-marked tests) in a subprocess.
(b) timing: per-step cost of the same flow (dense operator on the GPU; 2,000 test points) at
    N_train = 10,000 and 40,000 (a 12.8 GB float64 kernel), and on the CPU at N_train = 10,000
    for comparison (abandoned after 60 s).  ms/step = (t(step S) - t(step 0)) / S, so the
    kernel build and the initial checks (reported as setup_s) are not in it.

A JSON summary goes to ``$OUT/gpu_check.json`` (``OUT`` set) or ``./gpu_check.json``.
Exit status: 0 when every part passed (or when there is nothing to check: no CuPy or no GPU),
1 otherwise.

Usage::

    python benchmarks/gpu_check.py                  # on a machine with CuPy and a GPU
    python benchmarks/gpu_check.py --numpy-dry-run  # the same logic, NumPy standing in, small N

On the shared H200 machines CuPy, NumPy, SciPy, xarray and pytest are installed, but not dask,
zarr (and numcodecs, donfig, google-crc32c) or array-api-compat: carry them as wheels and run
from the repository root with ``PYTHONPATH=.:/tmp/site`` (mfarray from the working tree).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-10


class _TooSlow(Exception):
    """Raised from a flow callback to abandon a run past its time limit."""


# ----------------------------------------------------------------------------- helpers


def _run_part(summary: dict, name: str, fn) -> dict:
    """Run ``fn() -> dict`` as one part: print its header, catch and record any exception."""
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    try:
        out = dict(fn() or {})
        out.setdefault("status", "ok")
    except Exception as exc:  # one failing part must not hide the others
        traceback.print_exc()
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-4000:]}
    out["seconds"] = round(time.perf_counter() - start, 3)
    print(f"-- {name}: {out['status']} ({out['seconds']:.1f} s)", flush=True)
    summary["parts"][name] = out
    return out


def _rel_err(a, b) -> dict:
    """Relative differences of metric arrays a, b (N, k, k) on the host: per point normwise
    (max |a - b| / max |b| over the point's entries; the PASS criterion) and entrywise."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return {"normwise": float("inf"), "entrywise": float("inf"), "shape": [list(a.shape), list(b.shape)]}
    n = max(a.shape[0], 1)
    diff = np.abs(a - b).reshape(n, -1)
    scale = np.abs(b).reshape(n, -1).max(axis=1)
    normwise = float(np.max(diff.max(axis=1) / np.where(scale > 0, scale, 1.0))) if a.size else 0.0
    big = np.abs(b) > 0
    entrywise = float(np.max(np.abs(a - b)[big] / np.abs(b)[big])) if big.any() else 0.0
    return {"normwise": normwise, "entrywise": entrywise}


class Backend:
    """The device namespace: CuPy, or NumPy standing in (``--numpy-dry-run``)."""

    def __init__(self, dry_run: bool):
        import numpy as np

        self.dry_run = dry_run
        if dry_run:
            self.xp, self.name = np, "numpy (dry run)"
        else:
            import cupy

            self.xp, self.name = cupy, "cupy"

    def asarray(self, a):
        import numpy as np

        return np.array(a, copy=True) if self.dry_run else self.xp.asarray(a)

    def is_device(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def to_device(self, ds):
        """A computed point set as a Dataset of device arrays (coordinates and attrs kept)."""
        import xarray as xr

        return xr.Dataset({k: (v.dims, self.asarray(v.values)) for k, v in ds.data_vars.items()},
                          coords=ds.coords, attrs=dict(ds.attrs))

    def synchronize(self):
        if not self.dry_run:
            self.xp.cuda.Device().synchronize()

    def free(self):
        """Give cached device memory back between runs."""
        if not self.dry_run:
            self.synchronize()
            self.xp.get_default_memory_pool().free_all_blocks()
            self.xp.get_default_pinned_memory_pool().free_all_blocks()

    def pool_bytes(self):
        return None if self.dry_run else int(self.xp.get_default_memory_pool().total_bytes())


# ----------------------------------------------------------------------------- parts


def device_info(be: Backend) -> dict:
    import numpy as np

    info = {"backend": be.name, "python": platform.python_version(), "numpy": np.__version__,
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if be.dry_run:
        info["device"] = "none: NumPy stands in for CuPy"
    else:
        cp = be.xp
        rt = cp.cuda.runtime
        dev = cp.cuda.Device().id
        props = rt.getDeviceProperties(dev)
        name = props["name"]
        free, _ = rt.memGetInfo()
        info.update({
            "device": name.decode() if isinstance(name, bytes) else str(name),
            "device_id": dev,
            "total_memory_gib": round(props["totalGlobalMem"] / 2**30, 2),
            "free_memory_gib": round(free / 2**30, 2),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": props.get("multiProcessorCount"),
            "cupy": cp.__version__,
            "cuda_runtime": rt.runtimeGetVersion(),
            "cuda_driver": rt.driverGetVersion(),
        })
    for key, value in info.items():
        print(f"  {key}: {value}")
    return info


def _flow_kernel():
    import mfarray as mf

    return functools.partial(mf.kernels.gaussian_fs, sigma=0.05, squared=True)


def readme_sets(n_samples=60_000, seed=21):
    """The README's train (1000) and test (500) points, computed (NumPy)."""
    import mfarray as mf

    one = mf.select_chart(mf.sample_points(mf.fermat_quintic(), n_samples, seed=seed))
    train, test = one.isel(point=slice(0, 1000)), one.isel(point=slice(1000, 1500))
    return train.compute(), test.compute()


def e2e(be: Backend, state: dict, steps: int = 50) -> dict:
    """The README flow on the device vs on NumPy."""
    import numpy as np

    import mfarray as mf
    from mfarray.flows.sites import materialize

    t = time.perf_counter()
    train, test = readme_sets()
    print(f"  points: train {train.sizes['point']}, test {test.sizes['point']}, chart {train.attrs.get('chart')} "
          f"({time.perf_counter() - t:.1f} s)")
    train_d, test_d = be.to_device(train), be.to_device(test)
    state.update(train=train, test=test, train_d=train_d, test_d=test_d)
    tr, te = materialize(train_d, test_d)
    kept = all(be.is_device(a) for a in (tr.z, tr.g0, tr.weight, tr.omega2, te.z, te.g0))
    print(f"  device arrays kept through materialize: {kept}")
    kernel = _flow_kernel()

    t = time.perf_counter()
    res_d = mf.kernel_flow(train_d, kernel, steps=steps, test=test_d)
    t_device = time.perf_counter() - t
    t = time.perf_counter()
    res_h = mf.kernel_flow(train, kernel, steps=steps, test=test)
    t_host = time.perf_counter() - t
    state.update(result_host=res_h, result_device=res_d)
    host_results = all(isinstance(res_d[v].data, np.ndarray) for v in ("g_train", "g_test", "dual"))

    err_train = _rel_err(res_d.g_train.values, res_h.g_train.values)
    err_test = _rel_err(res_d.g_test.values, res_h.g_test.values)
    same_history = {v: bool(np.array_equal(res_d[v].values, res_h[v].values)) for v in ("rejected", "rejected_test")}
    lr_err = float(np.max(np.abs(res_d.lr.values - res_h.lr.values) / np.maximum(np.abs(res_h.lr.values), 1e-300)))
    ev_d, ev_h = mf.evaluate(res_d), mf.evaluate(res_h)
    worst = max(err_train["normwise"], err_test["normwise"])
    passed = kept and host_results and worst <= RTOL
    verdict = "PASS" if passed else "FAIL"
    print(f"  flow {steps} steps: device {t_device:.2f} s (kernels compiled on first use), host {t_host:.2f} s")
    print(f"  g_train max rel err {err_train['normwise']:.3g} (entrywise {err_train['entrywise']:.3g}); "
          f"g_test {err_test['normwise']:.3g} (entrywise {err_test['entrywise']:.3g})")
    print(f"  histories: rejected equal {same_history}, lr max rel diff {lr_err:.3g}")
    print(f"  sigma_train final device {float(ev_d.sigma_train_final):.6g} host {float(ev_h.sigma_train_final):.6g}; "
          f"gain_test device {float(ev_d.gain_test):.4g} host {float(ev_h.gain_test):.4g}")
    print(f"  e2e: {verdict} (max relative error {worst:.3g}, rtol {RTOL:g})", flush=True)
    return {"status": "ok" if passed else "fail", "verdict": verdict, "max_rel_err": worst,
            "g_train_rel_err": err_train, "g_test_rel_err": err_test, "device_arrays_kept": kept,
            "results_on_host": host_results, "same_rejections": same_history, "lr_max_rel_diff": lr_err,
            "steps": steps, "device_seconds": t_device, "host_seconds": t_host,
            "gain_train": [float(ev_d.gain_train), float(ev_h.gain_train)],
            "gain_test": [float(ev_d.gain_test), float(ev_h.gain_test)]}


def probes(be: Backend, state: dict) -> dict:
    """Other entry points on device point sets, each compared with NumPy."""
    import numpy as np

    import mfarray as mf

    if "train_d" not in state:  # e2e skipped or failed early: make what the probes need
        train, test = readme_sets()
        state.update(train=train, test=test, train_d=be.to_device(train), test_d=be.to_device(test))
    train, test, train_d, test_d = state["train"], state["test"], state["train_d"], state["test_d"]
    if "result_host" not in state:
        state["result_host"] = mf.kernel_flow(train, _flow_kernel(), steps=50, test=test)
    result = state["result_host"]
    kernel = _flow_kernel()
    out = {}

    def probe(name, fn):
        try:
            ok, detail = fn()
            verdict = "PASS" if ok else "FAIL"
        except Exception as exc:
            verdict, detail = "ERROR", f"{type(exc).__name__}: {exc}"
            tb = traceback.extract_tb(exc.__traceback__)
            where = [f"{Path(f.filename).name}:{f.lineno}" for f in tb if "mfarray" in f.filename][-3:]
            if where:
                detail += f" (at {' <- '.join(reversed(where))})"
        print(f"  {name}: {verdict} {detail}", flush=True)
        out[name] = {"verdict": verdict, "detail": str(detail)[:2000]}

    def predict_on_device():
        new = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 20_000, seed=7), like=train).compute()
        g_h = mf.predict(result, new)
        g_d = mf.predict(result, be.to_device(new))
        err = _rel_err(g_d.values, g_h.values)["normwise"]
        return err <= RTOL, f"max rel err {err:.3g} on {new.sizes['point']} points"

    def blockwise_flow():
        steps = 10
        a = mf.kernel_flow(train_d, kernel, steps=steps, method="blockwise")
        b = mf.kernel_flow(train, kernel, steps=steps, method="dense")
        err = _rel_err(a.g_train.values, b.g_train.values)["normwise"]
        return err <= RTOL, f"blockwise on device vs dense on host, {steps} steps: max rel err {err:.3g}"

    def sigma_measure():
        a, b = mf.sigma_measure(train_d), mf.sigma_measure(train)
        return abs(a - b) <= 1e-12 * abs(b), f"device {a:.15g} host {b:.15g}"

    def select_chart():
        ds = mf.sample_points(mf.fermat_quintic(), 20_000, seed=5).compute()
        a, b = mf.select_chart(be.to_device(ds)), mf.select_chart(ds)
        same = np.array_equal(a["point"].values, b["point"].values)
        w = float(np.max(np.abs(mf.backend.to_numpy(a.weight.data) - b.weight.values)))
        return same and w <= 1e-12, f"same points {same}, max weight diff {w:.3g}"

    def evaluate_with_sets():
        ev = mf.evaluate(state.get("result_device", result), train_d, test_d)
        return bool(np.isfinite(float(ev.gain_train))), f"gain_train {float(ev.gain_train):.4g}"

    def network_flow():
        from mfarray import networks as nw

        cfg = nw.MLP((10, 32, 9), "relu")
        a = mf.network_flow(train_d, cfg, nw.init(cfg, 0, like=train_d.z.data), steps=3, lr=1e-3, center=True)
        b = mf.network_flow(train, cfg, nw.init(cfg, 0), steps=3, lr=1e-3, center=True)
        err = _rel_err(a.g_train.values, b.g_train.values)["normwise"]
        return err <= RTOL, f"centred MLP (10, 32, 9), 3 steps: max rel err {err:.3g}"

    for name, fn in (("predict_on_device_points", predict_on_device), ("blockwise_flow_on_device", blockwise_flow),
                     ("sigma_measure_on_device", sigma_measure), ("select_chart_on_device", select_chart),
                     ("evaluate_with_device_sets", evaluate_with_sets), ("network_flow_on_device", network_flow)):
        probe(name, fn)
        be.free()
    failed = [k for k, v in out.items() if v["verdict"] != "PASS"]
    return {"status": "ok" if not failed else "fail", "probes": out, "failed": failed}


def pytest_gpu(timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs"]
    print(f"  $ {' '.join(cmd)}  (cwd {REPO}, timeout {timeout} s)", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        print(tail[-3000:])
        return {"status": "error", "error": f"pytest timed out after {timeout} s", "tail": tail[-3000:]}
    text = proc.stdout + proc.stderr
    tail = "\n".join(text.strip().splitlines()[-25:])
    print("  " + tail.replace("\n", "\n  "), flush=True)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    ok = proc.returncode == 0
    if ok and "passed" not in last:
        ok = None  # nothing ran: every gpu test skipped or deselected
    return {"status": {True: "ok", False: "fail", None: "skipped"}[ok], "returncode": proc.returncode,
            "summary": last, "tail": tail[-3000:]}


def timing_sets(n_samples: int, seed: int, n_max: int, n_test: int):
    """Computed chart-(0, 1) points: (pool of train points, test points)."""
    import mfarray as mf

    t = time.perf_counter()
    ds = mf.sample_points(mf.fermat_quintic(), n_samples, seed=seed).compute()  # sampled once
    one = mf.select_chart(ds, patch=0, elim=1)
    n = one.sizes["point"]
    n_test = min(n_test, n // 4)
    test = one.isel(point=slice(n - n_test, n)).compute()
    pool = one.isel(point=slice(0, min(n_max, n - n_test))).compute()
    print(f"  {n_samples} samples -> {n} points in chart (0, 1): train pool {pool.sizes['point']}, "
          f"test {n_test} ({time.perf_counter() - t:.1f} s)", flush=True)
    return pool, test


def timed_flow(train, test, steps: int, limit: float | None = None) -> dict:
    """kernel_flow with the README kernel; per-step times from the step callback."""
    import numpy as np

    import mfarray as mf

    marks = []
    start = time.perf_counter()

    def callback(step, record):
        marks.append(time.perf_counter())
        if limit is not None and marks[-1] - start > limit and step < steps:
            raise _TooSlow(f"abandoned after {marks[-1] - start:.1f} s (> {limit:g} s) at step {step}")

    result = mf.kernel_flow(train, _flow_kernel(), steps=steps, test=test, callback=callback)
    total = time.perf_counter() - start
    gaps = np.diff(marks)
    return {"n_train": int(train.sizes["point"]), "n_test": int(test.sizes["point"]), "steps": steps,
            "setup_s": round(marks[0] - start, 3), "ms_per_step": round(1e3 * (marks[-1] - marks[0]) / steps, 3),
            "median_ms_per_step": round(1e3 * float(np.median(gaps)), 3), "total_s": round(total, 3),
            "halvings": int(result.rejected.sum()), "sigma_train_final": float(result.sigma_train[-1])}


def timing(be: Backend, sizes, cpu_size: int, cpu_limit: float, steps: int, n_samples: int, n_test: int) -> dict:
    pool, test = timing_sets(n_samples, seed=3, n_max=max(max(sizes), cpu_size), n_test=n_test)
    test_d = be.to_device(test)
    out = {"device": {}, "cpu": {}}
    errors = []
    for n in sizes:
        if n > pool.sizes["point"]:
            print(f"  N = {n}: only {pool.sizes['point']} train points available, skipped")
            continue
        try:
            be.free()
            train_d = be.to_device(pool.isel(point=slice(0, n)))
            r = timed_flow(train_d, test_d, steps)
            r["pool_bytes"] = be.pool_bytes()
            del train_d
            be.free()
            out["device"][str(n)] = r
            mem = "" if r["pool_bytes"] is None else f", memory pool {r['pool_bytes'] / 2**30:.1f} GiB"
            print(f"  {be.name} N = {n}: {r['ms_per_step']:.2f} ms/step (median {r['median_ms_per_step']:.2f}), "
                  f"setup {r['setup_s']:.2f} s, {r['halvings']} halvings{mem}", flush=True)
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"device N={n}: {type(exc).__name__}: {exc}")
            out["device"][str(n)] = {"error": errors[-1]}
            be.free()
    if cpu_size:
        try:
            r = timed_flow(pool.isel(point=slice(0, cpu_size)), test, steps, limit=cpu_limit)
            out["cpu"][str(cpu_size)] = r
            print(f"  numpy (CPU) N = {cpu_size}: {r['ms_per_step']:.2f} ms/step (median {r['median_ms_per_step']:.2f}), "
                  f"setup {r['setup_s']:.2f} s", flush=True)
            dev = out["device"].get(str(cpu_size), {})
            if "ms_per_step" in dev and dev["ms_per_step"] > 0:
                out["speedup_at_cpu_size"] = round(r["ms_per_step"] / dev["ms_per_step"], 2)
                print(f"  speed-up at N = {cpu_size}: {out['speedup_at_cpu_size']}x per step")
        except _TooSlow as exc:
            out["cpu"][str(cpu_size)] = {"skipped": str(exc)}
            print(f"  numpy (CPU) N = {cpu_size}: {exc}")
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"cpu N={cpu_size}: {type(exc).__name__}: {exc}")
            out["cpu"][str(cpu_size)] = {"error": errors[-1]}
    if errors:
        out["status"], out["errors"] = "error", errors
    return out


# ----------------------------------------------------------------------------- main


def _write(summary: dict) -> Path:
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numpy-dry-run", action="store_true",
                    help="run every part with NumPy standing in for CuPy and small N (no GPU needed)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="N_train for timing (default 10000 40000)")
    ap.add_argument("--cpu-size", type=int, default=None, help="N_train of the CPU timing (default 10000; 0: none)")
    ap.add_argument("--cpu-limit", type=float, default=60.0, help="abandon the CPU timing after this many seconds")
    ap.add_argument("--steps", type=int, default=20, help="timed flow steps per N")
    ap.add_argument("--pytest-timeout", type=int, default=150)
    ap.add_argument("--skip", nargs="*", default=[], choices=["e2e", "probes", "pytest", "timing"])
    args = ap.parse_args(argv)
    dry = args.numpy_dry_run

    if not dry:
        try:
            import cupy
        except ImportError:
            print("CuPy not installed: nothing to check")
            return 0
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDA driver or runtime missing
            print(f"CuPy is installed but no CUDA device is usable ({type(exc).__name__}: {exc}): nothing to check")
            return 0
        if count == 0:
            print("CuPy is installed but there is no CUDA device: nothing to check")
            return 0
    try:
        import mfarray  # noqa: F401  (after the CuPy check: a bare machine gets the message above)
    except ImportError as exc:
        print(f"mfarray cannot be imported ({exc}): install it with its dependencies (or set PYTHONPATH)")
        return 1

    sizes = args.sizes or ([1000, 2000] if dry else [10_000, 40_000])
    cpu_size = args.cpu_size if args.cpu_size is not None else (1000 if dry else 10_000)
    n_samples = 120_000 if dry else 1_000_000  # ~4.9 % of the samples land in chart (0, 1)
    n_test = 500 if dry else 2000

    be = Backend(dry)
    start = time.perf_counter()
    summary = {"script": "benchmarks/gpu_check.py", "mode": "numpy-dry-run" if dry else "cupy",
               "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
    state: dict = {}
    info = _run_part(summary, "device", lambda: device_info(be))
    summary["device"] = {k: v for k, v in info.items() if k not in ("status", "seconds")}
    if "e2e" not in args.skip:
        _run_part(summary, "e2e", lambda: e2e(be, state))
        be.free()
    if "probes" not in args.skip:
        _run_part(summary, "probes", lambda: probes(be, state))
        state.clear()
        be.free()
    if "pytest" not in args.skip:
        _run_part(summary, "pytest_gpu", lambda: pytest_gpu(args.pytest_timeout))
    if "timing" not in args.skip:
        _run_part(summary, "timing", lambda: timing(be, sizes, cpu_size, args.cpu_limit, args.steps, n_samples, n_test))

    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    bad = {k: v["status"] for k, v in summary["parts"].items() if v["status"] not in ("ok", "skipped")}
    summary["ok"] = not bad
    path = _write(summary)
    print(f"\n== summary ({summary['total_seconds']:.0f} s): " + ", ".join(
        f"{k} {v['status']}" + (f" [{v['verdict']}]" if "verdict" in v else "") for k, v in summary["parts"].items()))
    print(f"JSON summary: {path}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
