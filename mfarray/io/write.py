"""Writing a Dataset to a store that is complete, says it is not, or resumes where it stopped.

A write creates the root group with its marks first (``mfarray_complete = False`` and the
Dataset's fingerprint), then lets xarray write every variable through
:class:`~.records.DoneRecords`, a store wrapper that records each chunk as done *after* the
chunk is stored: a chunk file without its record (half-written when the process died) is
never trusted.  A rewrite of an interrupted store with a Dataset of the same fingerprint
skips the recorded chunks and writes the rest, so it ends with the bytes of an uninterrupted
write.  At the end the metadata is consolidated, the completion mark set, and the records and
Zarr's temporary files removed.

An overwrite deletes nothing before it knows the write can go on: xarray's checks of the
Dataset run first (on its metadata, in memory), then the new root document replaces the old
one in place (marked incomplete, resumable by no Dataset), and only then are the old store's
other files removed.
"""

from __future__ import annotations

import json
import os
import warnings

import xarray as xr

from .. import backend
from .location import (
    Location,
    clear,
    exists,
    files,
    followed,
    is_empty,
    is_file,
    locate,
    remove,
    zarr_store,
)
from .marks import (
    ATTR_COMPLETE,
    ATTR_FINGERPRINT,
    ATTR_KIND,
    DONE,
    MARKS,
    TEMPORARY,
    check_replaceable,
    fingerprint,
    refuse_link,
    root_attrs,
    store_kind,
)

# zarr's notes on consolidated v3 metadata and on files beside the hierarchy (the done-records,
# a user's file in a store being resumed)
_QUIET = ("Consolidated metadata is currently not part", "Object at .* is not recognized")


def _done_chunks(loc: Location) -> frozenset:
    """The chunk keys recorded as done in the store at ``loc``."""
    return frozenset(files(loc, under=DONE))


def _resume_from(loc: Location, ds: xr.Dataset, fp: str) -> frozenset:
    """The done chunks of the interrupted store at ``loc`` when its fingerprint is ``fp``;
    FileExistsError naming the path, what differs and the way out otherwise."""
    refuse_link(loc)
    attrs = root_attrs(loc) if not is_file(loc) else None
    if attrs is None or ATTR_KIND not in attrs or attrs.get(ATTR_COMPLETE) is not False:
        raise FileExistsError(f"{loc.text} exists: choose another path or pass overwrite=True")
    if attrs.get(ATTR_FINGERPRINT) != fp:
        differ = sorted(k for k in {*attrs, *ds.attrs} - set(MARKS) if _json(attrs.get(k)) != _json(ds.attrs.get(k)))
        raise FileExistsError(
            f"{loc.text} holds an interrupted mfarray write of another Dataset ("
            + (f"attributes {', '.join(differ)} differ" if differ else "other data or chunks, or an older mfarray")
            + "): resume it by writing the Dataset it was started with (the same call and chunks), "
              "or pass overwrite=True to replace it, or choose another path"
        )
    return _done_chunks(loc)


def _json(value) -> str:
    """An attribute value as the JSON a store holds (for comparing a stored one with a new one)."""
    return json.dumps(value, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def _discard(loc: Location, existed: bool) -> None:
    """Remove a store this write created (and its directory, if there was none before)."""
    if not exists(loc):
        return
    clear(loc)
    if loc.fs is None and not existed:
        os.rmdir(loc.root)


def _finish(loc: Location, store) -> None:
    """Consolidate the metadata, set the completion mark (kept in the consolidated root
    document), then remove the done-records and Zarr's temporaries."""
    import zarr

    with warnings.catch_warnings():
        for text in _QUIET:
            warnings.filterwarnings("ignore", message=text)
        zarr.consolidate_metadata(store, zarr_format=3)
    zarr.open_group(store, mode="r+", zarr_format=3).attrs.update({ATTR_COMPLETE: True})
    remove(loc, [DONE])
    if loc.fs is None:
        remove(loc, [f for f in files(loc) if TEMPORARY.fullmatch(f)])


def _prepared(ds: xr.Dataset) -> tuple[xr.Dataset, str, str]:
    """``ds`` as it is written (no leftover encodings, text as variable-length strings, no
    marks among its attributes), its kind and its fingerprint."""
    kind = store_kind(ds)
    ds = ds.copy()
    for name in ds.variables:  # xarray refuses to write chunk-encoding left over from a read
        ds[name].encoding = {}
    # text as Zarr v3 variable-length strings: fixed-width unicode has no v3 specification yet
    ds = ds.assign({n: v.astype(object) for n, v in ds.data_vars.items() if v.dtype.kind == "U"})
    ds = ds.assign_coords({n: v.astype(object) for n, v in ds.coords.items() if v.dtype.kind == "U"})
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in MARKS}
    return ds, kind, fingerprint(ds, kind)


def holds(path: str | os.PathLike, ds: xr.Dataset) -> bool:
    """Whether ``path`` (a symlink followed) is a complete store that :func:`to_zarr` wrote from
    ``ds`` (the same fingerprint): writing ``ds`` there again has nothing to do."""
    loc = followed(locate(path))
    if not exists(loc) or is_file(loc):
        return False
    attrs = root_attrs(loc) or {}
    _, kind, fp = _prepared(ds)
    return attrs.get(ATTR_COMPLETE) is True and attrs.get(ATTR_KIND) == kind and attrs.get(ATTR_FINGERPRINT) == fp


def _replace_root(loc: Location, store, ds: xr.Dataset, attrs: dict) -> None:
    """Make the replaceable store at ``loc`` the empty root group of ``ds``, deleting nothing
    until the write is known to go on: xarray's checks of ``ds`` first (metadata only, in
    memory), then the new root document over the old one, resumable by no Dataset while the
    old files are removed, then its fingerprint."""
    import zarr
    from zarr.storage import MemoryStore

    with warnings.catch_warnings():  # in-memory variables made lazy: nothing computed (text aside), no copy
        warnings.filterwarnings("ignore", message=_QUIET[1])
        warnings.filterwarnings("ignore", message="variable .* dtype=object")
        ds.chunk().assign_attrs(attrs).to_zarr(MemoryStore(), mode="w", zarr_format=3, consolidated=False,
                                               compute=False)
    root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    root.attrs.put({**attrs, ATTR_FINGERPRINT: None})
    clear(loc, keep=["zarr.json"])
    root.attrs.put(attrs)


def to_zarr(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False, progress: bool = False) -> None:
    """Write a Dataset to a Zarr v3 store at ``path`` (a local path or an fsspec URL),
    computing lazy variables chunk by chunk; the store ends with consolidated metadata.

    An existing ``path`` is refused (FileExistsError naming it), except: an interrupted
    mfarray store of the same Dataset (same fingerprint: data, chunks, attributes) is resumed,
    writing only the chunks not recorded as done; with ``overwrite=True``, a store that
    :func:`check_replaceable` allows is replaced from scratch, its files deleted only once the
    new root document is written.  A symlink at ``path`` is refused: pass the store's own path.
    The root attributes record ``mfarray_store`` (the kind), ``mfarray_fingerprint`` and
    ``mfarray_complete``, False while chunks are written and True last, so an interrupted write
    leaves a store that :func:`~mfarray.io.open_zarr` refuses and this function resumes.
    """
    import zarr

    from .records import DoneRecords

    loc = locate(path)
    ds, kind, fp = _prepared(ds)
    done = None
    if overwrite:
        check_replaceable(path, kind)
    elif exists(loc):
        done = _resume_from(loc, ds, fp)
    attrs = {**ds.attrs, ATTR_KIND: kind, ATTR_COMPLETE: False, ATTR_FINGERPRINT: fp}
    store, existed = zarr_store(loc), exists(loc)
    replacing = done is None and existed and not is_empty(loc)  # an mfarray store check_replaceable allows
    if replacing:
        _replace_root(loc, store, ds, attrs)
    try:  # the metadata (and in-memory variables): the marks go first, in the root group
        if done is None and not replacing:
            zarr.create_group(store=store, zarr_format=3, attributes=attrs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_QUIET[1])
            writes = ds.assign_attrs(attrs).to_zarr(DoneRecords(store, done or frozenset()), mode="a",
                                                    zarr_format=3, consolidated=False, compute=False)
    except Exception:
        if done is None:  # refused before any chunk was computed (e.g. by xarray): leave no store
            _discard(loc, existed)
        raise
    _compute(writes, progress)  # the chunks
    _finish(loc, store)


def _compute(writes, progress: bool) -> None:
    """Compute the delayed chunk writes.  With Dask's threaded scheduler they run on a pool of
    this call's own, shut down before it returns or raises: after a failed chunk Dask raises at
    once while its other threads are still writing, and a write (and its done-record) landing
    after ``to_zarr`` has raised would race a resume that starts right away.  Other schedulers
    (a ``dask.distributed`` client, "processes") ignore the pool."""
    from concurrent.futures import ThreadPoolExecutor

    import dask

    pool = ThreadPoolExecutor(backend.cores())
    try:
        with dask.config.set(pool=pool):
            if progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar():
                    writes.compute()
            else:
                writes.compute()
    finally:
        pool.shutdown(wait=True)
