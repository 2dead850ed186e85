"""Array backend policy: which namespace, which dtype, whether an array is lazy.

Every bare formula in mfarray takes its array namespace from its inputs
(``array_api_compat.array_namespace``), so the same code runs on NumPy and on CuPy.
CuPy is only ever imported lazily, inside :func:`cupy`.  Dask arrays are recognised
here so that the thin lifting wrappers can map bare formulas over chunks.
"""

from __future__ import annotations

import array_api_compat

REAL = "float64"
COMPLEX = "complex128"


def namespace(*arrays):
    """The array-API namespace shared by ``arrays`` (NumPy or CuPy)."""
    return array_api_compat.array_namespace(*arrays)


def is_dask(x) -> bool:
    """True for a ``dask.array.Array`` (without importing dask if it is not loaded)."""
    return type(x).__module__.startswith("dask.")


def is_cupy(x) -> bool:
    return array_api_compat.is_cupy_array(x)


def cupy():
    """Import CuPy on demand; a clear error where it is not installed."""
    try:
        import cupy as cp
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "CuPy is not installed: install the GPU extra with `pip install mfarray[gpu]`"
        ) from exc
    return cp


def to_numpy(x):
    """A NumPy copy of a NumPy, CuPy or (computed) Dask array."""
    import numpy as np

    if is_dask(x):
        x = x.compute()
    if is_cupy(x):
        return x.get()
    return np.asarray(x)
