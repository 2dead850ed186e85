"""Benchmark: every model on one split of Fermat-quintic points (issue 13,
mfarray.experiments.comparison.model_comparison) -- g_FS, the paper's kernels, the analytic,
initial and after-kernels, the one-chart network under Adam and under the kernel flows'
integrator, the phi-network and the phi-kernel -- as ONE joint table.

    python benchmarks/bench_model_comparison.py [--n-train 5000] [--n-test 2500] [--widths 64 256]
        [--depth 3] [--flow-steps 300] [--epochs 20] [--phi-epochs 20] [--kahler-degrees 3 4]
        [--kahler-steps 100] [--tuning mfarray-study/tuning.zarr] [--out comparison.zarr]
        [--markdown table.md] [--skip paper_kernels network_adam ...]

Points: ``sample_chart(quintic, n_train + n_test, seed=21)`` split in order (one chart), and
``sample_points(quintic, n_train + n_test, seed=22)`` split in order for the chart-free models.
``--tuning`` adds the tuned presets of a study's tuning store (``mfarray run``'s tuning.zarr,
via mfarray.study.run.tuned_presets) to Table 1's.  The table is printed (and written with
``--markdown``) with the machine, the load before and after, the date and the total time.

Cost (2-core machine shared with other jobs, load 4-5): a kernel flow step on 10^4 + 5000
points takes 0.7 s for a dense paper kernel (memory-bound: 1.2 GB of kernel per step), 0.2-0.3 s
for the 3 x 64 empirical NTK and about 1.5 s for the 3 x 256 one (matrix-free, O(n P)); the
defaults (5000 / 2500 points, 300 steps, widths 64 and 256) took 1739 s, 10^4 / 5000 points would
take an estimated 45-60 minutes (docs/feature-learning.md, "All models on one split").
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import load, machine_info

import mfarray as mf
from mfarray.experiments.comparison import ComparisonSpec, model_comparison
from mfarray.experiments.presets import PRESETS
from mfarray.study.report import comparison_table


def presets(tuning_path: str | None) -> dict:
    """Table 1's presets and the cosine-net NTK, plus ``<name>-tuned`` from a tuning store."""
    base = {name: PRESETS[name] for name in ("relu", "gaussian", "delta", "cosine")}
    if not tuning_path:
        return base
    from mfarray.study import StudyConfig
    from mfarray.study.run import tuned_presets

    return tuned_presets(StudyConfig(), mf.open_zarr(tuning_path))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=2500)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--flow-steps", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--phi-epochs", type=int, default=20)
    ap.add_argument("--kahler-degrees", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--kahler-steps", type=int, default=100)
    ap.add_argument("--skip", nargs="*", default=[], help="model families not to run (comparison.FAMILIES)")
    ap.add_argument("--tuning", default="", help="a study's tuning.zarr: add its tuned presets")
    ap.add_argument("--out", default="", help="write the Dataset to this Zarr store")
    ap.add_argument("--markdown", default="", help="write the table and its header to this file")
    args = ap.parse_args(argv)

    spec = ComparisonSpec(flow_steps=args.flow_steps, depth=args.depth, widths=tuple(args.widths),
                          epochs=args.epochs, phi_epochs=args.phi_epochs, kahler_degrees=tuple(args.kahler_degrees),
                          kahler_steps=args.kahler_steps, skip=tuple(args.skip))
    chosen = presets(args.tuning)
    info, start_load, t0 = machine_info(), load(), time.perf_counter()
    print(info, flush=True)
    X, n = mf.fermat_quintic(), args.n_train + args.n_test
    one = mf.sample_chart(X, n, seed=21).compute()
    every = mf.sample_points(X, n, seed=22).compute()
    print(f"sampled {n} one-chart and {n} all-chart points in {time.perf_counter() - t0:.1f} s", flush=True)
    cut = slice(0, args.n_train), slice(args.n_train, None)
    ds = model_comparison(one.isel(point=cut[0]), one.isel(point=cut[1]), train_all=every.isel(point=cut[0]),
                          test_all=every.isel(point=cut[1]), spec=spec, presets=chosen, progress=True)
    total = time.perf_counter() - t0
    header = [(f"Fermat quintic, {args.n_train} train / {args.n_test} test points (one chart; the chart-free models "
               f"on as many all-chart points); kernel flows and network_flow {args.flow_steps} steps; networks "
               f"{args.depth} x {', '.join(map(str, args.widths))} ReLU, Adam {args.epochs} epochs; phi-network "
               f"{args.phi_epochs} epochs; phi-kernel k = {', '.join(map(str, args.kahler_degrees))}, "
               f"{args.kahler_steps} steps; presets: {', '.join(chosen)}"
               + (f"; skipped: {', '.join(args.skip)}." if args.skip else ".")),
              (f"{info}; load at the start {start_load}, at the end {load()}; "
               f"{datetime.date.today().isoformat()}; {total:.0f} s in all (benchmarks/bench_model_comparison.py)."),
              ""]
    table = comparison_table(ds)
    print("\n" + "\n".join(header) + "\n" + table, flush=True)
    if args.out:
        mf.to_zarr(ds, args.out, overwrite=os.path.exists(args.out))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(header) + "\n" + table + "\n")


if __name__ == "__main__":
    main()
