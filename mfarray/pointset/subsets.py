"""Subsets of point sets: :func:`split` into train and test parts, and :func:`sample_chart`,
the first ``n`` sampled points of one chart (the paper's rejection sampling, §3.1)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..geometry import Hypersurface, fermat_quintic
from .charts import _check_chart, _renormalised, _require_point_set, chart_counts, select_chart
from .construct import _check_count, sample_points
from .provenance import derived_call, format_call

__all__ = ["split", "sample_chart", "SPLIT_STREAM", "CHART_PROBE"]

#: how many sampled points decide sample_chart's default chart
CHART_PROBE = 20_000

SPLIT_STREAM = 0x53504C54  # "SPLT": split draws never share a random stream with sampled lines


def split(ds: xr.Dataset, test: float = 0.25, seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """A random split (train, test) of a point set: ``round(test * N)`` points go to test.

    The parts are disjoint and cover ds, keep the order of ds, and depend only on (N, test,
    seed): the same call on the lazy or the computed set, with any chunking, gives the same
    points (the ``point`` coordinate says which).  MC weights are renormalised to mean 1 in
    each part; attrs are kept, plus ``split`` = {part, test, seed, n_train, n_test}, and
    ``call`` becomes this call around ds's (``mfarray.split(<ds's call>, ...)[0]`` for train).  Lazy in,
    lazy out (ds.isel with the drawn indices).  The permutation comes from
    ``SeedSequence(seed, spawn_key=(SPLIT_STREAM,))``, apart from the sampler's line blocks.
    """
    _require_point_set(ds, needs=("weight",))
    if isinstance(test, (bool, np.bool_)) or not isinstance(test, (int, float, np.integer, np.floating)):
        raise TypeError(f"test must be a fraction of the points in (0, 1); got {test!r}")
    if not 0 < test < 1:
        raise ValueError(f"test must be a fraction of the points in (0, 1); got {test!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer; got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    n = ds.sizes["point"]
    n_test = int(round(test * n))
    if not 0 < n_test < n:
        raise ValueError(
            f"test={test!r} of {n} points leaves an empty {'test' if n_test == 0 else 'train'} part"
        )
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPLIT_STREAM,)))
    perm = rng.permutation(n)
    info = {"test": float(test), "seed": int(seed), "n_train": n - n_test, "n_test": n_test}
    parts = []
    for i, (part, index) in enumerate((("train", perm[n_test:]), ("test", perm[:n_test]))):
        out = _renormalised(ds.isel(point=np.sort(index)))
        out.attrs["split"] = {"part": part, **info}
        out.attrs["call"] = derived_call("mfarray.split", ds, test=float(test), seed=int(seed), suffix=f"[{i}]")
        parts.append(out)
    return parts[0], parts[1]


def sample_chart(surface: Hypersurface | None = None, n: int = 1000, *, seed: int = 0,
                 chart: tuple[int, int] | None = None) -> xr.Dataset:
    """The first ``n`` points of ``sample_points(surface, M, seed=seed)`` that lie in one chart.

    This is the paper's rejection sampling (§3.1) with a known outcome size: points are drawn
    in growing rounds (M doubles from an estimate) until ``n`` of them lie in the chart, so the
    result depends only on (surface, n, seed, chart) -- not on M -- and the first ``n1 < n``
    points of a call are the result for ``n1`` (nested sets, e.g. for distance scaling).
    ``chart=(patch, elim)``, or None for the chart :func:`select_chart` picks among the first
    :data:`CHART_PROBE` points of the seed (so it does not depend on n either).  The ``point`` coordinate is the index in the sample; weights renormalised to
    mean 1 over the ``n`` points.  The index of the kept points is computed (eagerly); the
    geometry stays lazy.
    """
    surface = fermat_quintic() if surface is None else surface
    if not isinstance(surface, Hypersurface):
        raise TypeError(f"surface must be a Hypersurface (mf.fermat_quintic(), or mf.geometry.surface_named(name)); "
                        f"got {type(surface).__name__}")
    n = _check_count("n", n, "a positive integer number of points")
    if n < 1:
        raise ValueError(f"n must be a positive integer number of points; got {n!r}")
    if chart is not None and (not isinstance(chart, (tuple, list)) or len(chart) != 2):
        raise TypeError(f"chart must be a (patch, elim) pair or None; got {chart!r}")
    if chart is None:
        chart = tuple(select_chart(sample_points(surface, CHART_PROBE, seed=seed)).attrs["chart"])
    _check_chart(surface, *chart)
    m = start = max(4 * n * surface.n_ambient * (surface.n_ambient - 1), 1000)  # ~ 1 in n(n+1) points per chart
    while True:
        ds = sample_points(surface, m, seed=seed)
        counts = chart_counts(ds)
        if counts.get(tuple(chart), 0) >= n:
            break
        if m >= 64 * start:  # a chart this rare on this surface is not a sampling plan
            raise ValueError(f"chart {tuple(chart)} holds {counts.get(tuple(chart), 0)} of {m} sampled points of "
                             f"{surface.label}, fewer than n = {n}: choose a populated chart (chart_counts) or None")
        m *= 2
    kept = select_chart(ds, *chart)
    out = _renormalised(kept.isel(point=slice(0, n)))
    out.attrs["call"] = format_call("mfarray.sample_chart", surface, n, seed=seed, chart=tuple(int(c) for c in chart))
    return out
