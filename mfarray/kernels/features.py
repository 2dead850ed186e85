"""Input features for kernels and networks, as swappable functions z -> x.

The paper (§3.1) feeds networks the real and imaginary parts of the homogeneous coordinates
in the patch normalisation (largest |z_i| scaled to 1).  Dask points give lazy features, one
task per chunk of points (:func:`map_point_chunks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import backend
from ..geometry.charts import patch_index, to_patch

if TYPE_CHECKING:
    import dask.array as da
    from numpy.typing import DTypeLike

Array = Any  # a NumPy, CuPy or Dask array


def map_point_chunks(fn: Callable[[Array], Array], z: da.Array, *, dtype: DTypeLike,
                     columns: int | None = None) -> da.Array:
    """``fn`` of a Dask z (n, n+1), lazily, chunk of points by chunk of points.

    ``fn`` maps in-memory points (m, n+1) to (m,) values (``columns=None``) or to (m, columns).
    The ambient axis of z is first rechunked to one chunk, so every task sees whole points; the
    result keeps z's chunks of points.
    """
    z = z.rechunk({1: -1})
    shape = (0,) if columns is None else (0, 0)
    meta = backend.namespace(z._meta).empty(shape, dtype=dtype)  # NumPy or CuPy, like z's chunks
    if columns is None:
        return z.map_blocks(fn, drop_axis=1, dtype=dtype, meta=meta)
    return z.map_blocks(fn, chunks=(z.chunks[0], (int(columns),)), dtype=dtype, meta=meta)


def patch_features(z: Array) -> Array:
    """(n, n+1) complex points -> (n, 2(n+1)) real features [Re z, Im z] with max |z_i| = 1.

    A Dask z gives a lazy Dask result chunked like z's points.
    """
    if backend.is_dask(z):
        real = z._meta.real.dtype
        return map_point_chunks(patch_features, z, dtype=real, columns=2 * z.shape[-1])
    xp = backend.namespace(z)
    za = to_patch(z, patch_index(z))
    return xp.concat([xp.real(za), xp.imag(za)], axis=-1)
