#!/usr/bin/env python
"""Measurement behind the flows' default loss (docs/paper-notes.md, "Default loss").

Train sigma gain (sigma_FS / sigma_final, B.11 measure) of the Delta kernel and the Gaussian
kernel (sigma = 0.05, heat form) on 1000 one-chart Fermat-quintic points (the README's set:
select_chart(sample_points(fermat_quintic(), 60000, seed=21)), first 1000), 500 steps, for the
paper's loss |1 - eta| (B.11) and (1 - eta)^2 (B.14), under every step control kernel_flow
offers: fixed steps, backtracking (adaptive), normalised updates, per-point clipping.

Usage: python benchmarks/loss_defaults.py   (about 2-4 minutes on 2 cores)
"""

from __future__ import annotations

import functools
import itertools

import mfarray as mf


def gain(train, kernel, **kw):
    try:
        r = mf.kernel_flow(train, kernel, **kw)
        tag = ""
    except mf.FlowError as err:
        r, tag = err.result, f" (FlowError at step {err.step})"
    s = r.sigma_train.values
    return s[0] / s[-1], int(r.step.values[-1]), tag


def main():
    one = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 60_000, seed=21)).compute()
    train = one.isel(point=slice(0, 1000))
    kernels = {"delta": mf.kernels.delta,
               "gaussian 0.05": functools.partial(mf.kernels.gaussian_fs, sigma=0.05, squared=True)}
    controls = {"fixed": dict(adaptive=False), "adaptive": dict(adaptive=True),
                "normalised": dict(adaptive=False, normalize=True),
                "normalised+adaptive": dict(adaptive=True, normalize=True),
                "clip 1": dict(adaptive=True, clip=1.0)}
    print("| kernel | loss | step control | best lr | train gain (500 steps) |")
    print("|---|---|---|---|---|")
    for (kname, kernel), loss, (cname, ctl) in itertools.product(kernels.items(), ("sigma", "sigma_squared"),
                                                                 controls.items()):
        best = max(((lr, *gain(train, kernel, steps=500, lr=lr, loss=loss, **ctl)) for lr in (1.0, 0.3, 0.1, 0.01)),
                   key=lambda t: t[1])
        print(f"| {kname} | {loss} | {cname} | {best[0]} | {best[1]:.3g}{best[3]} |", flush=True)
    r = mf.kernel_flow(train, kernels["delta"], steps=500)
    s = r.sigma_train.values
    first = next((i for i, v in enumerate(s) if s[0] / v >= 1e6), None)
    print(f"\ndefaults (sigma_squared, adaptive, lr 1), Delta: gain 1e6 first reached at step {first}")


if __name__ == "__main__":
    main()
