"""Point sets and results on disk: xarray Datasets <-> Zarr v3 stores.

Complex arrays round-trip exactly (complex128 stored natively).  Attributes must be JSON:
complex values are split into real and imaginary lists before they get here.
"""

from __future__ import annotations

import os

import xarray as xr


def to_zarr(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False, progress: bool = False):
    """Write a Dataset to a Zarr v3 store at ``path`` (computing lazy variables chunk by chunk).

    Refuses to overwrite an existing store unless ``overwrite=True``.
    """
    mode = "w" if overwrite else "w-"
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists: choose another path or pass overwrite=True")
    ds = ds.copy()
    for name in ds.variables:  # xarray refuses to write chunk-encoding left over from a read
        ds[name].encoding = {}
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return ds.to_zarr(path, mode=mode, zarr_format=3, consolidated=False)
    return ds.to_zarr(path, mode=mode, zarr_format=3, consolidated=False)


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a store written by :func:`to_zarr` (lazy, Dask-backed)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Zarr store at {path}")
    return xr.open_zarr(path, zarr_format=3, consolidated=False)
