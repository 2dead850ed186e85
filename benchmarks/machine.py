"""What machine a benchmark ran on (imported by the benchmark scripts, run as `python benchmarks/x.py`)."""

import platform


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
