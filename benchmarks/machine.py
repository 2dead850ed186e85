"""What machine a benchmark ran on, and best-of timing (imported by the benchmark scripts, run as
`python benchmarks/x.py`)."""

import platform
import time


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def best_of(fn, repeat):
    """(best wall time of ``repeat`` calls, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def best_auto(fn, budget=1.0, lo=3, hi=30):
    """(best time, runs): at least ``lo`` runs, more (up to ``hi``) while within ``budget`` seconds."""
    best, t0, k = float("inf"), time.perf_counter(), 0
    while k < lo or (k < hi and time.perf_counter() - t0 < budget):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        k += 1
    return best, k


def load() -> str:
    """The load averages (1, 5, 15 min) from /proc/loadavg, or "?"."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:  # pragma: no cover
        return "?"


def machine_info() -> str:
    """One line: CPU, cores mfarray uses, Python and NumPy versions, load."""
    import numpy as np

    from mfarray import backend

    return (f"CPU: {cpu_model()}; cores available: {backend.cores()}; python {platform.python_version()}, "
            f"numpy {np.__version__}; load average {load()}")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (VmHWM of /proc/self/status), GB (2^30 bytes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")
