"""Reading a store written by :func:`mfarray.io.to_zarr`: complete ones only."""

from __future__ import annotations

import os

import xarray as xr

from .location import exists, followed, is_file, link_target, locate, zarr_store
from .marks import ATTR_COMPLETE, MARKS, root_group


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a store written by :func:`~mfarray.io.to_zarr` (lazy, Dask-backed); ``path`` is a
    local path or an fsspec URL.

    Refuses (ValueError naming the path) a store whose ``mfarray_complete`` mark, read from the
    root document itself, is not ``True``: an interrupted write, whose missing chunks would read
    as fill values, or a store without marks (written by an older mfarray, or not by mfarray).
    The marks are removed from the returned Dataset's attributes.  A symlink at ``path`` is
    followed.
    """
    loc = followed(locate(path))
    if not exists(loc):
        link = link_target(locate(path))
        raise FileNotFoundError(f"no Zarr store at {path}" + (f" (a symbolic link to {link}, which does not exist)"
                                                              if link else ""))
    group = None if is_file(loc) else root_group(loc)
    if group is None:
        raise ValueError(f"{path} is not a Zarr v3 group (no readable zarr.json); mf.open_zarr reads stores "
                         f"written by mf.to_zarr")
    attrs = dict(group.attrs)
    if ATTR_COMPLETE not in attrs:
        raise ValueError(
            f"{path} has no completion mark ({ATTR_COMPLETE}): it was written by an older mfarray, by another "
            f"program, or interrupted, so missing chunks could read as zeros.  Write it again with mf.to_zarr "
            f"(or `mfarray sample`) to a new path; xarray.open_zarr opens it at your own risk"
        )
    if attrs[ATTR_COMPLETE] is not True:
        raise ValueError(
            f"{path} is incomplete: the write that made it was interrupted, so missing chunks would read as fill "
            f"values.  Resume it by writing the same Dataset again, mf.to_zarr(ds, {str(path)!r}) (the chunks "
            f"already written are kept), or start again with overwrite=True (`mfarray sample --overwrite`)"
        )
    consolidated = group.metadata.consolidated_metadata is not None
    ds = xr.open_zarr(zarr_store(loc, read_only=True), zarr_format=3, consolidated=consolidated)
    for key in MARKS:
        ds.attrs.pop(key, None)
    return ds
