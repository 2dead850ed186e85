"""Point sets and results on disk: xarray Datasets <-> Zarr v3 stores.

Complex arrays round-trip exactly (complex128 stored natively).  Attributes must be JSON:
complex values are split into real and imaginary lists before they get here.

Rules that keep data from being lost, faked or mixed up:

* Every store :func:`to_zarr` writes is marked with two root attributes:
  ``mfarray_store`` -- its kind, ``"pointset"`` (a Dataset with ``z`` and ``g_fs``),
  ``"result"`` (a flow result: has ``g_train``) or ``"dataset"`` (anything else) -- and
  ``mfarray_complete``, written ``False`` with the metadata and set ``True`` only after
  every chunk has been written.
* ``overwrite=True`` replaces only a store that mfarray wrote, of the same kind (complete or
  not), or an empty directory.  A plain file, a directory that is not a Zarr v3 group, a
  Zarr store without the mark or of another kind is refused with :class:`FileExistsError`
  naming the path and what it holds; nothing else is ever removed.
* :func:`open_zarr` refuses a store whose completion mark is not ``True`` (an interrupted
  write, whose missing chunks would read as fill values, or a store written before the marks
  existed).
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

ATTR_KIND = "mfarray_store"
ATTR_COMPLETE = "mfarray_complete"
KINDS = ("pointset", "result", "dataset")


def store_kind(ds: xr.Dataset) -> str:
    """The kind recorded for ``ds``: ``"result"`` (has ``g_train``), ``"pointset"`` (has ``z``
    and ``g_fs``) or ``"dataset"``."""
    if "g_train" in ds.variables:
        return "result"
    if "z" in ds.variables and "g_fs" in ds.variables:
        return "pointset"
    return "dataset"


def _root_attrs(path: Path) -> dict | None:
    """The root attributes of the Zarr v3 group at ``path``, or None when it is not one."""
    import zarr

    if not (path / "zarr.json").is_file():
        return None
    try:
        return dict(zarr.open_group(path, mode="r", zarr_format=3).attrs)
    except (OSError, ValueError, KeyError, TypeError):  # an array, a v2 store, bad metadata: not ours
        return None


def check_replaceable(path: str | os.PathLike, kind: str) -> None:
    """Raise :class:`FileExistsError` unless ``to_zarr(..., overwrite=True)`` of a ``kind``
    store may replace what is at ``path``: nothing, an empty directory, or a store mfarray
    wrote with ``mfarray_store == kind`` (complete or interrupted)."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    if not p.is_dir():
        raise FileExistsError(f"{path} is a file, not a Zarr store; refusing to overwrite it: choose another path")
    if not any(p.iterdir()):
        return
    attrs = _root_attrs(p)
    if attrs is None:
        raise FileExistsError(
            f"{path} is a directory that is not a Zarr v3 group written by mfarray (no readable zarr.json); "
            f"refusing to overwrite it: choose another path"
        )
    found = attrs.get(ATTR_KIND)
    if found != kind:
        held = f"an mfarray {found!r} store" if found else "a Zarr store not written by mfarray (no mfarray_store mark)"
        raise FileExistsError(
            f"{path} holds {held}; overwrite=True replaces only an mfarray {kind!r} store: "
            f"choose another path or remove it yourself"
        )


def to_zarr(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False, progress: bool = False):
    """Write a Dataset to a Zarr v3 store at ``path`` (computing lazy variables chunk by chunk).

    Refuses an existing path unless ``overwrite=True``, and even then replaces only a store
    mfarray wrote of the same kind (:func:`store_kind`; see :func:`check_replaceable`): a file,
    a foreign directory or store, or a store of another kind raises FileExistsError naming the
    path.  The root attributes record ``mfarray_store`` (the kind) and ``mfarray_complete``,
    which is ``False`` while chunks are written and set ``True`` last, so an interrupted write
    leaves a store that :func:`open_zarr` refuses.
    """
    import zarr

    kind = store_kind(ds)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} exists: choose another path or pass overwrite=True")
    if overwrite:
        check_replaceable(path, kind)
    ds = ds.copy()
    for name in ds.variables:  # xarray refuses to write chunk-encoding left over from a read
        ds[name].encoding = {}
    ds.attrs = {**ds.attrs, ATTR_KIND: kind, ATTR_COMPLETE: False}
    mode = "w" if overwrite else "w-"
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            ds.to_zarr(path, mode=mode, zarr_format=3, consolidated=False)
    else:
        ds.to_zarr(path, mode=mode, zarr_format=3, consolidated=False)
    zarr.open_group(path, mode="r+", zarr_format=3).attrs.update({ATTR_COMPLETE: True})


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a store written by :func:`to_zarr` (lazy, Dask-backed).

    Refuses (ValueError naming the path) a store whose ``mfarray_complete`` mark is not
    ``True``: an interrupted write, whose missing chunks would read as fill values, or a store
    without marks (written by an older mfarray, or not by mfarray).  The marks are removed
    from the returned Dataset's attributes.
    """
    p = Path(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no Zarr store at {path}")
    attrs = _root_attrs(p) if p.is_dir() else None
    if attrs is None:
        raise ValueError(f"{path} is not a Zarr v3 group (no readable zarr.json); mf.open_zarr reads stores "
                         f"written by mf.to_zarr")
    if ATTR_COMPLETE not in attrs:
        raise ValueError(
            f"{path} has no completion mark ({ATTR_COMPLETE}): it was written by an older mfarray, by another "
            f"program, or interrupted, so missing chunks could read as zeros.  Write it again with mf.to_zarr "
            f"(or `mfarray sample`) to a new path; xarray.open_zarr opens it at your own risk"
        )
    if attrs[ATTR_COMPLETE] is not True:
        raise ValueError(
            f"{path} is incomplete: the write that made it was interrupted, so missing chunks would read as fill "
            f"values.  Rewrite it with mf.to_zarr(ds, {str(path)!r}, overwrite=True) (or `mfarray sample "
            f"--overwrite`)"
        )
    ds = xr.open_zarr(p, zarr_format=3, consolidated=False)
    for key in (ATTR_KIND, ATTR_COMPLETE):
        ds.attrs.pop(key, None)
    return ds
