"""The marks of an mfarray store and the rule on what ``overwrite=True`` may replace.

Root attributes: ``mfarray_store`` (the kind), ``mfarray_complete`` (False until every chunk
is written) and ``mfarray_fingerprint`` (:func:`fingerprint` of the Dataset being written,
which a resumed write must match).  While a write runs, each chunk's done-record is a key
under :data:`DONE` in the store; a store's own files are its metadata, its arrays' chunks,
those records and Zarr's temporary ``*.partial`` files -- anything else is the user's.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import xarray as xr

from .location import (
    Location,
    exists,
    files,
    has_file,
    is_empty,
    is_file,
    link_target,
    locate,
    zarr_store,
)

if TYPE_CHECKING:
    import zarr

ATTR_KIND = "mfarray_store"
ATTR_COMPLETE = "mfarray_complete"
ATTR_FINGERPRINT = "mfarray_fingerprint"
MARKS = (ATTR_KIND, ATTR_COMPLETE, ATTR_FINGERPRINT)
KINDS = ("pointset", "result", "dataset")
DONE = ".mfarray_done"  # done-records: DONE/<chunk key>, one per chunk written
FORMAT = "mfarray-zarr-store-1"  # enters the fingerprint: bump when the layout of a write changes

# Zarr's LocalStore writes <key>.<32 hex>.partial, then renames it: left behind by a kill
TEMPORARY = re.compile(r"(?:[^/]+/)?zarr\.[0-9a-f]{32}\.partial|[^/]+/c(?:/\d+)*\.[0-9a-f]{32}\.partial")
_CHUNK = re.compile(r"c(?:/\d+)*")


def store_kind(ds: xr.Dataset) -> str:
    """The kind recorded for ``ds``: ``"result"`` (has ``g_train``), ``"pointset"`` (has ``z``
    and ``g_fs``) or ``"dataset"``."""
    if "g_train" in ds.variables:
        return "result"
    if "z" in ds.variables and "g_fs" in ds.variables:
        return "pointset"
    return "dataset"


def fingerprint(ds: xr.Dataset, kind: str) -> str:
    """A token of everything a write of ``ds`` puts in a store: kind, attributes, and per
    variable its dims, dtype, shape, chunks, attributes and data (a Dask array's graph name,
    a NumPy array's bytes).  Equal tokens: equal stores (Dask names are deterministic across
    processes for deterministic graphs; a random one makes a resume be refused, never wrong)."""
    from dask.base import is_dask_collection, tokenize

    variables = [
        (name, v.dims, v.dtype.str, v.shape, v.chunks, v.attrs,
         tokenize(v.data if is_dask_collection(v.data) else v.values))
        for name, v in sorted(ds.variables.items(), key=lambda item: str(item[0]))
    ]
    return tokenize(FORMAT, kind, sorted(map(str, ds.coords)), ds.attrs, variables)


def root_group(loc: Location) -> zarr.Group | None:
    """The root Zarr v3 group at ``loc`` (read only), or None when there is none readable."""
    import zarr

    if not has_file(loc, "zarr.json"):
        return None
    try:
        return zarr.open_group(zarr_store(loc, read_only=True), mode="r", zarr_format=3)
    except (OSError, ValueError, KeyError, TypeError):  # an array, a v2 store, bad metadata: not ours
        return None


def root_attrs(loc: Location) -> dict | None:
    """The root attributes of the Zarr v3 group at ``loc``, or None when it is not one."""
    group = root_group(loc)
    return None if group is None else dict(group.attrs)


def foreign_files(loc: Location) -> list[str]:
    """Files under the store ``loc`` that a write of mfarray did not make (see the module
    docstring): the user's, which no overwrite may delete."""
    names = files(loc)
    arrays = {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/zarr.json")}

    def own(rel):
        head, _, rest = rel.partition("/")
        return (rel == "zarr.json" or head == DONE or TEMPORARY.fullmatch(rel) is not None
                or (head in arrays and (rest == "zarr.json" or _CHUNK.fullmatch(rest) is not None)))

    return [n for n in names if not own(n)]


def refuse_link(loc: Location) -> None:
    """FileExistsError when ``loc`` is a local symlink: no write (nor delete) goes through one."""
    target = link_target(loc)
    if target is not None:
        raise FileExistsError(
            f"{loc.text} is a symbolic link (to {target}); mfarray never writes, resumes or replaces a store "
            f"through a link: pass the store's own path {target}, or choose another path"
        )


def check_replaceable(path: str | os.PathLike, kind: str) -> None:
    """Raise :class:`FileExistsError` unless ``to_zarr(..., overwrite=True)`` of a ``kind``
    store may replace what is at ``path`` (a local path or an fsspec URL): nothing, an empty
    directory, or a store mfarray wrote with ``mfarray_store == kind`` (complete or
    interrupted) holding no file that mfarray did not write.  A symlink at ``path`` is refused."""
    loc = locate(path)
    if not exists(loc):
        return
    refuse_link(loc)
    if is_file(loc):
        raise FileExistsError(f"{path} is a file, not a Zarr store; refusing to overwrite it: choose another path")
    if is_empty(loc):
        return
    attrs = root_attrs(loc)
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
    foreign = foreign_files(loc)
    if foreign:
        few = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{path} holds an mfarray {kind!r} store and {len(foreign)} file(s) mfarray did not write ({few}); "
            f"overwrite=True would delete them: move them out of the store or choose another path"
        )
