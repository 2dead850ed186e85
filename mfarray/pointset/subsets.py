"""Random subsets of a point set: :func:`split` into train and test parts."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .charts import _renormalised, _require_point_set
from .provenance import derived_call

__all__ = ["split", "SPLIT_STREAM"]

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
