"""Point sets and results on disk: xarray Datasets <-> Zarr v3 stores, at local paths or
fsspec URLs (``memory://``, ``s3://`` ...).

Complex arrays round-trip exactly (complex128 stored natively).  Attributes must be JSON:
complex values are split into real and imaginary lists before they get here.

Rules that keep data from being lost, faked or mixed up:

* Every store :func:`to_zarr` writes is marked with root attributes: ``mfarray_store`` -- its
  kind, ``"pointset"`` (a Dataset with ``z`` and ``g_fs``), ``"result"`` (a flow result: has
  ``g_train``) or ``"dataset"`` (anything else) --, ``mfarray_fingerprint`` (of the Dataset
  written) and ``mfarray_complete``, written ``False`` first and set ``True`` only after every
  chunk has been written and the metadata consolidated (plain ``xr.open_zarr`` opens the store
  without warnings).
* An interrupted write resumes: ``to_zarr`` of the same Dataset (same fingerprint: data,
  chunks, attributes) writes the chunks not recorded as done -- a chunk is recorded only after
  it is stored -- and ends with the bytes of an uninterrupted write.  An interrupted store of
  another Dataset is refused.
* ``overwrite=True`` replaces only a store that mfarray wrote, of the same kind (complete or
  not) and holding no file mfarray did not write, or an empty directory.  Anything else -- a
  plain file, a directory that is not a Zarr v3 group, a Zarr store without the mark or of
  another kind -- is refused with :class:`FileExistsError` naming the path and what it holds;
  nothing else is ever removed.
* Nothing is deleted before a write is known to go on: an overwrite checks the Dataset with
  xarray and writes the new root document before it removes the old store's files.
* A symlink at the path is followed to read (:func:`open_zarr`, :func:`holds`) and refused
  for a write: no store is resumed, replaced or deleted through a link.
* :func:`open_zarr` refuses a store whose completion mark is not ``True`` (an interrupted
  write, whose missing chunks would read as fill values, or a store written before the marks
  existed).

Modules: :mod:`.location` (local paths and URLs), :mod:`.marks` (the marks, the fingerprint,
what may be replaced), :mod:`.records` (the per-chunk done-records), :mod:`.write`
(:func:`to_zarr`), :mod:`.read` (:func:`open_zarr`).
"""

from .marks import (
           ATTR_COMPLETE,
           ATTR_FINGERPRINT,
           ATTR_KIND,
           KINDS,
           check_replaceable,
           fingerprint,
           store_kind,
)
from .read import open_zarr
from .write import holds, to_zarr

__all__ = ["ATTR_COMPLETE", "ATTR_FINGERPRINT", "ATTR_KIND", "KINDS", "check_replaceable", "fingerprint",
           "holds", "open_zarr", "store_kind", "to_zarr"]
